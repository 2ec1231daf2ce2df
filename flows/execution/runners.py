"""The Prefect task runner that block work runs on, chosen by ``[execution].backend``.

* ``threads``: Prefect's thread pool in the flow's process. The kernels release the GIL
  (OpenCV, NumPy, the zarr codecs), and a task run costs ~17 ms here, against ~274 ms on a
  Dask LocalCluster: the default.
* ``dask``: a Dask LocalCluster of worker processes through prefect-dask, one thread each
  (for kernels that hold the GIL, or to see the work in Dask's dashboard).
* ``slurm``: Dask workers in SLURM jobs (dask-jobqueue's SLURMCluster), see
  :mod:`flows.execution.slurm_cluster` (lost batches are retried by :mod:`flows.execution.slurm_retries`).

Task arguments cross process boundaries on the Dask backends, which is why they are paths,
block ids and picklable handles (:class:`storage.db.database.Database`, tiers) only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tierflow.configs import TierflowConfig

__all__ = ["block_task_runner", "op_workers"]


def op_workers(config: TierflowConfig, resources: Mapping[str, Any], workers: int) -> int:
    """The batches of an op that run at once: ``workers``, at most its ``resources["threads"]``
    and its ``resources["gpu"]`` (one batch per GPU) on the threads and dask backends (on SLURM
    each worker job asks for the op's resources instead, see :mod:`flows.execution.slurm_cluster`)."""
    if config.execution.backend == "slurm":
        return workers
    caps = [int(resources[key]) for key in ("threads", "gpu") if resources.get(key)]
    return max(1, min([workers, *caps]))


def block_task_runner(config: TierflowConfig, workers: int, *, extra_threads: int = 0, memory_factor: float = 1.0,
                      resources: Mapping[str, Any] | None = None) -> Any:
    """A fresh task runner for ``workers`` parallel batches (``extra_threads`` more threads on
    the thread backend, for I/O-bound batches submitted alongside; ``memory_factor`` times
    ``[slurm].memory_per_job`` for SLURM worker jobs, for batches that ran out of memory;
    ``resources``: the op's, which SLURM worker jobs ask for)."""
    backend = config.execution.backend
    if backend == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers + extra_threads)
    from prefect_dask import DaskTaskRunner

    if backend == "dask":
        from prefect.settings import PREFECT_API_URL  # type: ignore[attr-defined]

        api_url = PREFECT_API_URL.value()
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
                            # worker processes report their task runs to the flow's Prefect API
                            "env": {"PREFECT_API_URL": api_url} if api_url else {}},
        )
    from tierflow.flows.execution.slurm_cluster import slurm_task_runner

    return slurm_task_runner(config, workers, memory_factor=memory_factor, resources=resources)
