"""tierflow on SLURM: the scheduler's command-line tools (sbatch, squeue, scontrol, sacct,
scancel), the ``tierflow-slurm`` Prefect worker type that runs each flow run as an sbatch job,
and the batch scripts it writes."""
