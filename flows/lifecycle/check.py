"""``cluster-check``: a flow that tells where it ran — host, SLURM job, Python, tierflow's
configuration and whether the results database answers. Deploy it on a pool to check a new
worker or cluster set-up before the real work (`prefect deployment run cluster-check/check-slurm`).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from typing import Any

from prefect import flow, get_run_logger

__all__ = ["cluster_check"]


@flow(name="cluster-check", log_prints=False)
def cluster_check(seconds: float = 0.0, database: bool = True) -> dict[str, Any]:
    """Report the machine and SLURM job this flow run is in; wait ``seconds`` (to watch a run
    in the UI or test cancellation); with ``database``, record the check as a run in the
    results database (so it shows in `tierflow runs list`)."""
    logger = get_run_logger()
    report: dict[str, Any] = {
        "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "python": sys.executable, "python_version": platform.python_version(), "cwd": os.getcwd(),
    }
    if database:
        from tierflow.configs import load_config, load_db_config
        from tierflow.flows.runtime.database import open_database
        from tierflow.flows.runtime.runs import recorded_run

        db = open_database(load_db_config(), migrate=True)
        with recorded_run(db, "cluster-check", {"seconds": seconds, **report}) as run_id:
            report["run_id"] = int(run_id)
            report["config_dir"] = str(load_config().meta.config_dir)
            _wait(seconds)
    else:
        _wait(seconds)
    logger.info(f"cluster-check: {report}")
    return report


def _wait(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(1.0, end - time.monotonic()))
