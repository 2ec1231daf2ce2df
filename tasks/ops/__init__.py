"""Pure image kernels: NumPy in, NumPy out. No Prefect, no I/O, no configuration.

Each block-wise operation is written once here and bound to block-wise execution by
``tasks.engine``. Signatures follow scikit-image: image first, keyword-only options, axes
named (z, y, x) (or (y, x) in 2-D), dtype policy explicit.
"""
