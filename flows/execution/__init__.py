"""Where block work runs: task runners (threads, Dask, SLURM), batches, output claims and leases,
output placement rules, SLURM clusters and SLURM-aware retries."""
