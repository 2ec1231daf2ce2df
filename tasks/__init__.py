"""Tasks of tierflow: one retryable unit of work each, thin wrappers over ``storage`` and
the pure kernels in ``tasks.ops``. Tasks never read configuration."""
