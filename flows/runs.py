"""Record each flow run in the results database (status, parameters, timings, code version)."""

from __future__ import annotations

import functools
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from sqlalchemy import select

from storage.db.database import Database
from storage.db.models import Run
from storage.db.repo import finish_run, start_run

__all__ = ["RunRecord", "code_version", "recorded_run", "run_to_resume"]


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


class RunRecord(int):
    """The ``runs.id`` of a recorded run (an int), with a place for what the run returns."""

    result: dict[str, Any] | None = None


@contextmanager
def recorded_run(db: Database, flow_name: str, parameters: dict[str, Any], *, parent_id: int | None = None) -> Iterator[RunRecord]:
    """Record a run as running, then completed (with ``run.result`` if set) or failed (with
    the error's first line). A run inside another one (``parent_id``) is keyed by its Prefect
    flow run only if no sibling is (op runs of one pipeline stage share the stage's flow run).

    Yields
    ------
    RunRecord
        The ``runs.id`` of this run; set ``.result`` to store what the run returned.
    """
    flow_run_id = _flow_run_id()
    with db.session() as session:
        if parent_id is not None and flow_run_id is not None:
            # an op run inside a pipeline stage shares the stage's flow run with its siblings
            taken = session.scalars(select(Run.id).where(Run.flow_run_id == uuid.UUID(str(flow_run_id)))).first()
            flow_run_id = None if taken is not None else flow_run_id
        run = start_run(
            session, flow_name=flow_name, parameters=parameters, flow_run_id=flow_run_id,
            code_version=code_version(), parent_id=parent_id,
        )
        record = RunRecord(run.id)
    run_id = record
    try:
        yield record
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
            finish_run(session, row, "completed", result=_json_safe(record.result) if record.result is not None else None)


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def run_to_resume(db: Database, run: str, flow_name: str, *, mark_crashed: bool = False) -> dict[str, Any]:
    """The recorded parameters of ``run`` (an id or a Prefect flow-run id) so it can be run
    again; with ``mark_crashed``, a run still marked running (its process died) is marked
    crashed first.

    Raises
    ------
    TierflowError
        If there is no such run, or it is not a ``flow_name`` run.
    """
    from storage.db.repo import get_run
    from storage.errors import TierflowError

    with db.session() as session:
        row = get_run(session, run)
        if row is None:
            raise TierflowError(f"no run {run!r}", hint="see `tierflow runs list`")
        if row.flow_name != flow_name:
            raise TierflowError(f"run {row.id} is a {row.flow_name!r} run; this resumes {flow_name} runs")
        if mark_crashed and row.status == "running":
            finish_run(session, row, "crashed", message="its process ended without finishing; resumed by a new run")
        return dict(row.parameters)
