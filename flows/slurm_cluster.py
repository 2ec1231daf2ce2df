"""Block work on SLURM: Dask workers in SLURM jobs (dask-jobqueue's SLURMCluster) behind
Prefect's DaskTaskRunner (prefect-dask), configured by ``[slurm]``.

The flow process runs the Dask scheduler; ``sbatch`` starts worker jobs, which connect back to
it and run the batch tasks. Jobs adapt to the work between one and ``max_jobs``. Workers inherit
the submitting environment (``sbatch --export=ALL``, SLURM's default) and are told the Prefect
API the flow reports to, so their task runs show in the same flow run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from configs import TierflowConfig

__all__ = ["slurm_cluster_kwargs", "slurm_task_runner"]


def slurm_cluster_kwargs(config: TierflowConfig, *, api_url: str | None = None) -> dict[str, Any]:
    """SLURMCluster keyword arguments from ``[slurm]`` (job logs under Tier 4's ``logs/slurm``)."""
    settings = config.slurm
    logs = Path(config.tier_root("ephemeral")) / "logs" / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    prologue = [f"export PREFECT_API_URL={api_url}"] if api_url else []
    return {
        "cores": settings.cores_per_job,
        "processes": 1,
        "memory": settings.memory_per_job,
        "walltime": settings.walltime,
        "queue": settings.partition or None,
        "account": settings.account or None,
        "job_extra_directives": list(settings.job_directives),
        "job_script_prologue": prologue,
        "python": settings.python or sys.executable,
        "log_directory": str(logs),
        "scheduler_options": {"dashboard_address": None},
    }


def slurm_task_runner(config: TierflowConfig, workers: int) -> Any:
    """A DaskTaskRunner whose workers are SLURM jobs (1 to ``max_jobs`` or ``workers``)."""
    from prefect.settings import PREFECT_API_URL  # type: ignore[attr-defined]
    from prefect_dask import DaskTaskRunner

    jobs = config.slurm.max_jobs or workers
    return DaskTaskRunner(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=slurm_cluster_kwargs(config, api_url=PREFECT_API_URL.value() or None),
        adapt_kwargs={"minimum": 1, "maximum": jobs},
    )
