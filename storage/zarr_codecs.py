"""Which codec pipeline zarr decodes chunks with: zarrs' (Rust) for local arrays opened read-only.

On 2 cores the codec, not the disk or the arithmetic, bounds a block-wise op. ``zarrs``
(zarrs-python, a zarr-python 3 codec pipeline in Rust) read 512 MiB of zstd chunks 1.3x (block
by block) to 1.7x (whole array) faster than zarr-python's own pipeline here, but wrote zstd no
faster (slower in a block-wise copy) and rewrites chunk files in place, where zarr-python writes
a temporary file and renames it (a reader never sees half a chunk); see ``benchmarks/codecs.py``
and README "Codecs". So tierflow decodes with zarrs and encodes with zarr-python: zarrs serves
arrays in a local folder (zarr's ``LocalStore``) opened read-only, which is how every op opens its
inputs; writable arrays and every other store keep zarr-python's pipeline
(:class:`LocalZarrsPipeline`; zarrs rebuilds an object store of its own from an
``ObjectStore``'s settings, so an S3 tier's TLS roots, timeouts and retries would be lost).

The choice is ``[execution].codec_pipeline``: ``auto`` (zarrs when installed), ``zarrs`` or
``zarr-python``; :func:`use_codec_pipeline` applies it to this process and, through
``ZARR_CODEC_PIPELINE__PATH``, to the worker processes it starts (the class is found there
through tierflow's ``zarr.codec_pipeline`` entry point). Only decoding changes: the bytes on
disk are zarr-python's, readable by any zarr v3 reader.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from tierflow.storage.errors import TierflowError

__all__ = ["PIPELINES", "LocalZarrsPipeline", "active_pipeline", "decodes_with_zarrs", "use_codec_pipeline", "with_zarr_python",
           "zarrs_installed"]

PIPELINES = ("auto", "zarrs", "zarr-python")
"""The values of ``[execution].codec_pipeline``."""

DEFAULT_PATH = "zarr.core.codec_pipeline.BatchedCodecPipeline"
LOCAL_ZARRS_PATH = "tierflow.storage.zarr_codecs.LocalZarrsPipeline"


def zarrs_installed() -> bool:
    return importlib.util.find_spec("zarrs") is not None


def _local(store: Any) -> bool:
    from zarr.storage import LocalStore

    return isinstance(store, LocalStore)


if zarrs_installed():
    from zarrs import ZarrsCodecPipeline as _Base

    class LocalZarrsPipeline(_Base):
        """zarrs' pipeline for arrays in a local folder opened read-only; zarr-python's for
        writable arrays and every other store (raising ``NotImplementedError`` here makes zarr
        build its own pipeline from the codecs)."""

        @classmethod
        def from_array_metadata_and_store(cls, array_metadata: Any, store: Any) -> Any:
            if not (_local(store) and store.read_only):
                raise NotImplementedError("zarrs decodes local arrays opened read-only only")
            return super().from_array_metadata_and_store(array_metadata, store)

else:  # zarrs missing: the name still resolves (a worker's environment may name it), as zarr-python's pipeline
    from zarr.core.codec_pipeline import BatchedCodecPipeline as _Base

    class LocalZarrsPipeline(_Base):  # type: ignore[no-redef]
        """zarr-python's pipeline (zarrs is not installed)."""


def use_codec_pipeline(choice: str = "auto") -> str:
    """Make ``choice`` (one of :data:`PIPELINES`) the codec pipeline of the arrays this process
    and the worker processes it starts from now on open; returns ``"zarrs"`` or ``"zarr-python"``.

    Raises
    ------
    TierflowError
        For an unknown choice, or ``zarrs`` when the package is not installed.
    """
    import zarr
    from zarr.registry import register_pipeline

    if choice not in PIPELINES:
        raise TierflowError(f"[execution].codec_pipeline {choice!r} is not one of {', '.join(PIPELINES)}",
                            hint='set codec_pipeline = "auto" in configs/tierflow.user.toml (zarrs for local arrays when installed)')
    use_zarrs = choice == "zarrs" or (choice == "auto" and zarrs_installed())
    if use_zarrs and not zarrs_installed():
        raise TierflowError("[execution].codec_pipeline = \"zarrs\", but the package zarrs is not installed",
                            hint="pip install zarrs, or set codec_pipeline = \"auto\" (or \"zarr-python\")")
    path = LOCAL_ZARRS_PATH if use_zarrs else DEFAULT_PATH
    register_pipeline(LocalZarrsPipeline)
    zarr.config.set({"codec_pipeline.path": path})
    os.environ["ZARR_CODEC_PIPELINE__PATH"] = path  # worker processes (Dask, SLURM) started from here
    return active_pipeline()


def active_pipeline() -> str:
    """``"zarrs"`` when local arrays opened read-only now decode with zarrs, else ``"zarr-python"``."""
    import zarr

    return "zarrs" if zarr.config.get("codec_pipeline.path") == LOCAL_ZARRS_PATH and zarrs_installed() else "zarr-python"


def decodes_with_zarrs(array: Any) -> bool:
    """Whether zarrs decodes ``array`` (a zarr ``Array``)."""
    return getattr(array._async_array.codec_pipeline, "impl", None) is not None


def with_zarr_python(array: Any) -> Any:
    """``array`` decoded by zarr-python's pipeline: zarrs reports a damaged chunk as an
    ``OSError`` (``incomplete frame``), as an unreachable store would be; zarr-python's codecs
    raise ``RuntimeError``/``ValueError`` for damage, which tells the two apart."""
    import copy

    from zarr import Array
    from zarr.core.array import create_codec_pipeline

    if not decodes_with_zarrs(array):
        return array
    inner = copy.copy(array._async_array)
    # without a store, zarr builds the pipeline from the codecs: zarr-python's (zarrs' from_codecs too)
    object.__setattr__(inner, "codec_pipeline", create_codec_pipeline(inner.metadata))
    return Array(inner)
