"""Every run tees its log to a persistent file on Tier 4 (``logs/runs/``), next to what Prefect
shows, so a run's story survives the terminal and the Prefect server's retention."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tierflow.configs import TierflowConfig

__all__ = ["run_log_path", "tee_run_log"]

_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "tierflow")


def run_log_path(config: TierflowConfig, label: str) -> Path:
    """``<ephemeral>/logs/runs/<label>.log`` (the folder is created)."""
    folder = Path(config.tier_root("ephemeral")) / "logs" / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{label}.log"


@contextmanager
def tee_run_log(config: TierflowConfig, label: str) -> Iterator[Path]:
    """Append the records of Prefect's flow/task-run loggers and tierflow's own to the run log
    while the block runs; yields its path. Messages never carry credentials (tiers and the
    database mask them in every repr)."""
    path = run_log_path(config, label)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
