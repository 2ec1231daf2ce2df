"""Block work on SLURM: Dask workers in SLURM jobs (dask-jobqueue's SLURMCluster) behind
Prefect's DaskTaskRunner (prefect-dask), configured by ``[slurm]``.

The flow process runs the Dask scheduler; ``sbatch`` starts worker jobs, which connect back to
it and run the batch tasks. Jobs adapt to the work between one and ``max_jobs``. Workers inherit
the submitting environment (``sbatch --export=ALL``, SLURM's default) and are told the Prefect
API the flow reports to, so their task runs show in the same flow run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tierflow.configs import TierflowConfig

__all__ = ["slurm_cluster_kwargs", "slurm_task_runner"]


def slurm_cluster_kwargs(config: TierflowConfig, *, api_url: str | None = None, memory_factor: float = 1.0,
                         resources: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """SLURMCluster keyword arguments from ``[slurm]`` (job logs under Tier 4's ``logs/slurm``;
    ``memory_factor`` times ``memory_per_job``). An op's ``resources`` (``OpSpec.resources``)
    ask each worker job for its ``memory`` instead of ``memory_per_job`` and for ``--gpus=N``."""
    from tierflow.flows.execution.slurm_retries import scale_memory

    settings = config.slurm
    resources = resources or {}
    memory = str(resources.get("memory") or settings.memory_per_job)
    logs = Path(config.tier_root("ephemeral")) / "logs" / "slurm"
    logs.mkdir(parents=True, exist_ok=True)
    prologue = [line for line in settings.preamble.splitlines() if line.strip()]
    prologue += [f"export PREFECT_API_URL={api_url}", "export PREFECT_SERVER_EPHEMERAL_ENABLED=false"] if api_url else []
    directives = list(settings.job_directives)
    directives += [f"--qos={settings.qos}"] if settings.qos else []
    directives += [f"--constraint={settings.constraint}"] if settings.constraint else []
    directives += [f"--gpus={int(resources['gpu'])}"] if resources.get("gpu") else []
    return {
        "cores": settings.cores_per_job,
        "processes": 1,
        "memory": scale_memory(memory, memory_factor) if memory_factor != 1.0 else memory,
        "walltime": settings.walltime,
        "queue": settings.partition or None,
        "account": settings.account or None,
        "job_extra_directives": directives,
        "job_name": "tierflow-blocks",
        "job_script_prologue": prologue,
        "python": settings.python or sys.executable,
        "log_directory": str(logs),
        "scheduler_options": {"dashboard_address": None},
    }


def slurm_task_runner(config: TierflowConfig, workers: int, *, memory_factor: float = 1.0,
                      resources: Mapping[str, Any] | None = None) -> Any:
    """A DaskTaskRunner whose workers are SLURM jobs (1 to ``max_jobs`` or ``workers``)."""
    from prefect.settings import PREFECT_API_URL  # type: ignore[attr-defined]
    from prefect_dask import DaskTaskRunner

    import dask

    jobs = config.slurm.max_jobs or workers
    # a task whose worker job died is not re-run by Dask on a job of the same size: the flow
    # asks SLURM why the job ended and decides (flows.execution.slurm_retries)
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    return DaskTaskRunner(
        cluster_class="dask_jobqueue.SLURMCluster",
        cluster_kwargs=slurm_cluster_kwargs(config, api_url=PREFECT_API_URL.value() or None, memory_factor=memory_factor,
                                             resources=resources),
        adapt_kwargs={"minimum": 1, "maximum": jobs},
    )
