"""Helpers for tests that start, signal and kill real ``tierflow`` processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import zarr
from sqlalchemy import text

from conftest import TIERFLOW


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> object:
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def project_db(project: Path):
    """The project's results database, started and migrated."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(project / "configs"), migrate=True)


def write_volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 4000, shape, dtype=np.uint16)
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=data.dtype)[:] = data
    return data


def spawn(project: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
    """Start the installed ``tierflow`` as a user would, in a session of its own; its output goes
    to pipes, or to ``log`` (for a process that is killed rather than read)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    full_env |= {"TIERFLOW_PREFECT__SERVER": "ephemeral"} | (env or {})  # as run_cli: no managed server per project
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            [TIERFLOW, *args],
            cwd=project,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT if log else subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    finally:
        if log is not None:
            out.close()


def running_run(db, flow: str = "op") -> int | None:
    """The id of a ``flow`` run whose row says running (raw SQL: no reader settles it)."""
    with db.session() as session:
        return session.execute(
            text("SELECT id FROM runs WHERE flow_name = :f AND status = 'running' ORDER BY id LIMIT 1"), {"f": flow}
        ).scalar()


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (a zombie is dead: it only waits for its parent to read its status)."""
    found = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def advisory_locks_held(db) -> int:
    """Advisory locks held on this database (run liveness and block locks)."""
    with db.session() as session:
        return session.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND "
                "database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar_one()
