"""Runs: one row per flow run (or CLI operation).

A run holds a liveness lock while it runs (:func:`storage.db.locks.hold_run_lock`). Every
reader here (:func:`get_run`, :func:`list_runs`) settles what it reads: a run marked
``running`` whose lock nobody holds died without finishing (killed, or its machine stopped),
so it is marked ``crashed``, and so are its child runs left ``running``.
"""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, cast, func, select, update
from sqlalchemy.orm import Session

from tierflow.storage.db.locks import held_run_locks
from tierflow.storage.db.models import RUN_STATUSES, Run
from tierflow.storage.errors import TierflowError

__all__ = [
    "CRASHED_MESSAGE",
    "child_runs",
    "completed_runs_with_key",
    "count_runs",
    "finish_run",
    "get_run",
    "list_runs",
    "lock_run",
    "run_id_of_flow_run",
    "settle_runs",
    "start_run",
]

CRASHED_MESSAGE = "its process ended without finishing (killed, or its machine stopped)"


def start_run(
    session: Session,
    *,
    flow_name: str,
    parameters: dict[str, Any] | None = None,
    flow_run_id: uuid.UUID | str | None = None,
    code_version: str | None = None,
    host: str | None = None,
    parent_id: int | None = None,
) -> Run:
    """Record a run as started now; an existing row for ``flow_run_id`` is reused (a resume).

    Returns
    -------
    Run
        The row, flushed (its ``id`` is set).
    """
    flow_run_uuid = uuid.UUID(str(flow_run_id)) if flow_run_id is not None else None
    run = None
    if flow_run_uuid is not None:
        run = session.scalars(select(Run).where(Run.flow_run_id == flow_run_uuid)).one_or_none()
    if run is None:
        run = Run(flow_run_id=flow_run_uuid, flow_name=flow_name)
        session.add(run)
    run.parameters = dict(parameters or {})
    run.parent_id = parent_id
    run.code_version = code_version
    run.host = host or socket.gethostname()
    run.status = "running"
    run.started_at = datetime.now(UTC)
    run.ended_at = None
    run.message = None
    session.flush()
    return run


def finish_run(session: Session, run: Run, status: str, message: str | None = None, result: dict[str, Any] | None = None) -> Run:
    """Record a run's end state (``completed``, ``failed``, ``cancelled`` or ``crashed``) and,
    if given, what it returned."""
    if status not in RUN_STATUSES:
        raise TierflowError(f"run status {status!r} is not one of {RUN_STATUSES}")
    run.status = status
    run.message = message
    if result is not None:
        run.result = result
    run.ended_at = datetime.now(UTC)
    session.flush()
    return run


def get_run(session: Session, ref: int | str | uuid.UUID) -> Run | None:
    """Find a run by numeric id, Prefect flow-run id, or a unique prefix of the flow-run id."""
    run = _find_run(session, ref)
    if run is not None:
        settle_runs(session, [run])
    return run


def _find_run(session: Session, ref: int | str | uuid.UUID) -> Run | None:
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        return session.get(Run, int(ref))
    text = str(ref).lower()
    try:
        return session.scalars(select(Run).where(Run.flow_run_id == uuid.UUID(text))).one_or_none()
    except ValueError:
        pass
    matches = session.scalars(select(Run).where(cast(Run.flow_run_id, String).startswith(text)).limit(2)).all()
    if len(matches) > 1:
        raise TierflowError(f"run prefix {ref!r} matches more than one run", hint="give more characters of the id")
    return matches[0] if matches else None


def run_id_of_flow_run(session: Session, flow_run_id: uuid.UUID | str) -> int | None:
    """The ``runs.id`` recorded for a Prefect flow run, or ``None`` if none is (the row is not
    settled: this only asks whether the flow-run id is taken)."""
    return session.scalars(select(Run.id).where(Run.flow_run_id == uuid.UUID(str(flow_run_id)))).first()


def lock_run(session: Session, run_id: int) -> Run | None:
    """The run ``run_id`` read under ``FOR UPDATE`` (held until the transaction ends), or ``None``."""
    return session.get(Run, run_id, with_for_update=True)


def child_runs(session: Session, parent_id: int, *, flow_name: str | None = None) -> list[Run]:
    """The runs started inside run ``parent_id`` (of ``flow_name`` only, if given), oldest first."""
    query = select(Run).where(Run.parent_id == parent_id).order_by(Run.id)
    if flow_name is not None:
        query = query.where(Run.flow_name == flow_name)
    return list(session.scalars(query))


def adopt_run(session: Session, run_id: int, parent_id: int) -> None:
    """Record run ``run_id`` as started inside ``parent_id`` when it has no parent yet (a run made
    before its parent's row existed: a pipeline's ingest)."""
    session.execute(update(Run).where(Run.id == run_id, Run.parent_id.is_(None)).values(parent_id=parent_id))


def completed_runs_with_key(session: Session, flow_name: str, key: str) -> list[Run]:
    """The completed ``flow_name`` runs whose parameters hold ``"key": key`` and that stored a
    result, newest first (a pipeline run with the same key did the same work)."""
    return list(session.scalars(
        select(Run).where(Run.flow_name == flow_name, Run.status == "completed", Run.parameters["key"].astext == key,
                          Run.result.is_not(None)).order_by(Run.id.desc())
    ))


def count_runs(session: Session, *, flow_name: str | None = None, top_level: bool = False) -> int:
    """How many runs :func:`list_runs` would list without a limit."""
    query = select(func.count()).select_from(Run)
    if flow_name:
        query = query.where(Run.flow_name == flow_name)
    if top_level:
        query = query.where(Run.parent_id.is_(None))
    return int(session.scalar(query) or 0)


def list_runs(session: Session, *, limit: int = 50, flow_name: str | None = None, top_level: bool = False) -> list[Run]:
    """The newest runs first (``top_level``: only runs not started inside another run)."""
    query = select(Run).order_by(Run.id.desc()).limit(limit)
    if flow_name:
        query = query.where(Run.flow_name == flow_name)
    if top_level:
        query = query.where(Run.parent_id.is_(None))
    runs = list(session.scalars(query))
    settle_runs(session, runs)
    return runs


def settle_runs(session: Session, runs: list[Run], message: str = CRASHED_MESSAGE) -> list[Run]:
    """Mark ``crashed`` (with ``message``) each of ``runs`` that says ``running`` while no live
    process holds its lock, and then its child runs left ``running`` the same way.

    A row is re-read under ``FOR UPDATE`` before it is marked: a run finishes by committing its
    end state and only then releasing its lock, so one that just finished is never marked.

    Returns
    -------
    list of Run
        The runs marked crashed (children included).
    """
    crashed: list[Run] = []
    suspects = [run for run in runs if run.status == "running"]
    while suspects:
        alive = held_run_locks(session, [run.id for run in suspects])
        dead = []
        for run in suspects:
            if run.id in alive:
                continue
            session.refresh(run, with_for_update=True)
            if run.status == "running":
                finish_run(session, run, "crashed", message=message)
                dead.append(run)
        crashed.extend(dead)
        suspects = list(session.scalars(
            select(Run).where(Run.parent_id.in_([run.id for run in dead]), Run.status == "running"))) if dead else []
    return crashed
