"""Work pools and deployments: ``tierflow deploy`` creates the two pools and applies
``deployments/prefect.yaml`` with Prefect's own ``prefect deploy``.

Pools:

* ``tierflow-local`` (type ``process``): flow runs are processes on the worker's machine;
* ``tierflow-slurm`` (type ``tierflow-slurm``): each flow run is an sbatch job (see
  :mod:`flows.slurm.worker`); ``[slurm].pool_concurrency`` caps how many run at once (also
  editable in the UI, on the pool's page).

Both pools' job templates carry ``TIERFLOW_HOME`` (this checkout) in their environment: the
deployments' pull step makes it the working directory of every run, where ``configs/`` is found.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.configs import TierflowConfig
from tierflow.storage.errors import TierflowError

__all__ = ["LOCAL_POOL", "SLURM_POOL", "PoolReport", "apply_deployments", "ensure_pools", "project_home"]

LOCAL_POOL = "tierflow-local"
SLURM_POOL = "tierflow-slurm"


@dataclass(frozen=True)
class PoolReport:
    name: str
    type: str
    created: bool
    concurrency_limit: int | None


def project_home(config: TierflowConfig) -> Path:
    """The checkout the deployments run in: the folder holding ``configs/``."""
    config_dir = config.meta.config_dir
    if config_dir is None:
        raise TierflowError("deployments need a tierflow checkout (a folder with configs/): none was found from here",
                            hint="run `tierflow deploy` inside the checkout, or pass --config path/to/configs")
    return Path(config_dir).resolve().parent


def require_server(config: TierflowConfig) -> str:
    """The Prefect API URL deployments and workers talk to (never the ephemeral server): the
    environment's, ``[prefect].api_url``, else the managed local server (started if needed)."""
    url = os.environ.get("PREFECT_API_URL") or config.prefect.api_url
    if not url and config.prefect.server == "managed":
        from tierflow.flows.runtime.prefect_server import ensure_server

        url = ensure_server(config).api_url
    if not url:
        raise TierflowError("deployments need a Prefect server, and [prefect].api_url is empty",
                            hint="start one with `prefect server start` and set api_url = \"http://127.0.0.1:4200/api\" "
                                 "under [prefect] in configs/tierflow.user.toml (or export PREFECT_API_URL)")
    return url


def _template(worker_type: str, home: Path) -> dict[str, Any]:
    from prefect.workers.base import BaseWorker

    worker_class = BaseWorker.get_worker_class_from_type(worker_type)
    if worker_class is None:
        raise TierflowError(f"no Prefect worker type {worker_type!r} is installed",
                            hint="reinstall tierflow (`make venv`): its entry point registers tierflow-slurm")
    template = worker_class.get_default_base_job_template()
    template["variables"]["properties"]["env"]["default"] = {"TIERFLOW_HOME": str(home)}
    return template


def ensure_pools(config: TierflowConfig) -> list[PoolReport]:
    """Create ``tierflow-local`` and ``tierflow-slurm`` if missing; set the SLURM pool's
    concurrency limit from ``[slurm].pool_concurrency`` (0 leaves the pool's limit as it is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    from tierflow.flows.slurm.worker import WORKER_TYPE

    home = project_home(config)
    reports = []
    with get_client(sync_client=True) as client:
        for name, worker_type in ((LOCAL_POOL, "process"), (SLURM_POOL, WORKER_TYPE)):
            limit = config.slurm.pool_concurrency or None if name == SLURM_POOL else None
            try:
                pool = client.read_work_pool(name)
                created = False
                if pool.type != worker_type:
                    raise TierflowError(f"work pool {name!r} exists with type {pool.type!r}, not {worker_type!r}",
                                        hint=f"delete it (`prefect work-pool delete {name}`) and run `tierflow deploy` again")
                update = {"base_job_template": _template(worker_type, home)}
                if limit is not None:
                    update["concurrency_limit"] = limit
                client.update_work_pool(name, WorkPoolUpdate(**update))
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=name, type=worker_type, base_job_template=_template(worker_type, home),
                                                       concurrency_limit=limit))
                created = True
            pool = client.read_work_pool(name)
            reports.append(PoolReport(name, worker_type, created, pool.concurrency_limit))
    return reports


def apply_deployments(config: TierflowConfig, *, names: list[str] | None = None) -> str:
    """Run ``prefect deploy --prefect-file deployments/prefect.yaml --all`` (or ``--name`` for
    each of ``names``) in the checkout; returns its output."""
    home = project_home(config)
    prefect_file = home / "deployments" / "prefect.yaml"
    if not prefect_file.is_file():
        raise TierflowError(f"{prefect_file} is missing", hint="restore it from git: it declares tierflow's deployments")
    env = dict(os.environ, TIERFLOW_HOME=str(home), PREFECT_API_URL=require_server(config))
    selection = ["--all"] if not names else [arg for name in names for arg in ("--name", name)]
    command = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file), *selection]
    result = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TierflowError(f"`prefect deploy` failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout
