"""Record each flow run in the results database (status, parameters, timings, code version)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from storage.db.database import Database
from storage.db.models import Run
from storage.db.repo import finish_run, start_run

__all__ = ["code_version", "recorded_run"]


@functools.cache
def code_version() -> str:
    """tierflow's version, plus the git commit when running from a checkout."""
    try:
        text = version("tierflow")
    except PackageNotFoundError:
        text = "unknown"
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            if sha:
                text += f"+g{sha}"
        except (OSError, subprocess.SubprocessError):
            pass
    return text


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return flow_run.id
    except Exception:  # noqa: BLE001 - outside a flow run there is no id
        return None


@contextmanager
def recorded_run(db: Database, flow_name: str, parameters: dict[str, Any]) -> Iterator[int]:
    """Record a run as running, then completed or failed (with the error's first line).

    Yields
    ------
    int
        The ``runs.id`` of this run.
    """
    with db.session() as session:
        run = start_run(
            session, flow_name=flow_name, parameters=parameters, flow_run_id=_flow_run_id(), code_version=code_version()
        )
        run_id = run.id
    try:
        yield run_id
    except BaseException as exc:
        with db.session() as session:
            row = session.get(Run, run_id)
            if row is not None:
                status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
                finish_run(session, row, status, message=f"{type(exc).__name__}: {exc}"[:4000])
        raise
    with db.session() as session:
        row = session.get(Run, run_id)
        if row is not None:
            finish_run(session, row, "completed")
