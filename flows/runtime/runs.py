"""Record each flow run in the results database (status, parameters, timings, code version)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from tierflow.flows.runtime.version import code_version
from tierflow.storage.db.database import Database
from tierflow.storage.db.locks import hold_run_lock
from tierflow.storage.db.repo import finish_run, lock_run, run_id_of_flow_run, start_run

__all__ = ["RunRecord", "cancel_live_runs", "code_version", "recorded_run", "run_to_resume"]

_LIVE: dict[int, Database] = {}
"""The runs this process is running now (run id -> its database), for :func:`cancel_live_runs`."""


def _flow_run_id() -> str | None:
    import sys

    if "prefect" not in sys.modules:
        return None  # no flow run without Prefect (a cached op is answered without importing it)
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
    the error's first line; ``cancelled`` when stopped by Ctrl-C or SIGTERM). A run inside
    another one (``parent_id``) is keyed by its Prefect flow run only if no sibling is (op runs
    of one pipeline stage share the stage's flow run). While it runs, the run holds its
    liveness lock (:func:`storage.db.locks.hold_run_lock`), taken before the ``running`` row is
    committed: if this process dies, readers see the lock gone and mark the run crashed.

    Yields
    ------
    RunRecord
        The ``runs.id`` of this run; set ``.result`` to store what the run returned.
    """
    flow_run_id = _flow_run_id()
    with ExitStack() as alive:
        with db.session() as session:
            if parent_id is not None and flow_run_id is not None:
                # an op run inside a pipeline stage shares the stage's flow run with its siblings
                taken = run_id_of_flow_run(session, flow_run_id)
                flow_run_id = None if taken is not None else flow_run_id
            run = start_run(
                session, flow_name=flow_name, parameters=parameters, flow_run_id=flow_run_id,
                code_version=code_version(), parent_id=parent_id,
            )
            record = RunRecord(run.id)
            alive.enter_context(hold_run_lock(db, run.id))
        _LIVE[record] = db
        alive.callback(_LIVE.pop, record, None)
        try:
            yield record
        except BaseException as exc:
            status, message = _end_of(exc)
            _finish(db, record, status, message=message)
            raise
        _finish(db, record, "completed", result=_json_safe(record.result) if record.result is not None else None)


def stop_message(signum: int) -> str:
    """How a run stopped by ``signum`` is recorded."""
    import signal

    return f"StopRequested: stopped by {signal.Signals(signum).name}"


def _end_of(exc: BaseException) -> tuple[str, str]:
    """The status and message of a run that ``exc`` ended: ``cancelled`` when the process was
    asked to stop (Ctrl-C, or SIGTERM, which Prefect raises as ``TerminationSignal`` inside a
    flow run), else ``failed``."""
    from prefect.exceptions import TerminationSignal

    if isinstance(exc, TerminationSignal):
        return "cancelled", stop_message(exc.signal)
    status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
    return status, f"{type(exc).__name__}: {exc}"[:4000]


def _finish(db: Database, run_id: int, status: str, *, message: str | None = None, result: dict[str, Any] | None = None,
            only_running: bool = False) -> None:
    with db.session() as session:
        row = lock_run(session, run_id)
        if row is not None and (row.status == "running" or not only_running):
            finish_run(session, row, status, message=message, result=result)


def cancel_live_runs(reason: str) -> list[int]:
    """Mark every run this process is running ``cancelled`` with ``reason`` (a run that ended
    meanwhile keeps its end state); for a process about to stop (see :mod:`flows.runtime.stopping`).

    Returns
    -------
    list of int
        The run ids visited.
    """
    visited = []
    for run_id, db in list(_LIVE.items()):
        _finish(db, run_id, "cancelled", message=reason, only_running=True)
        visited.append(run_id)
    return visited


def _json_safe(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def run_to_resume(db: Database, run: str, flow_name: str) -> dict[str, Any]:
    """The recorded parameters of ``run`` (an id or a Prefect flow-run id) so it can be run
    again. Reading it settles it: a run still marked running whose process died is marked
    crashed, with its child runs (see :func:`storage.db.repo.runs.settle_runs`).

    Raises
    ------
    TierflowError
        If there is no such run, it is not a ``flow_name`` run, or it is still running in a live
        process (two runs would compute the same blocks).
    """
    from tierflow.storage.db.repo import child_runs, get_run
    from tierflow.storage.errors import TierflowError

    with db.session() as session:
        row = get_run(session, run)
        if row is None:
            raise TierflowError(f"no run {run!r}", hint="see `tierflow runs list`")
        if row.flow_name != flow_name:
            raise TierflowError(f"run {row.id} is a {row.flow_name!r} run; this resumes {flow_name} runs")
        if row.status == "running":
            raise TierflowError(f"run {row.id} is still running on {row.host} (its process holds the run's lock)",
                                hint=f"wait for it to end, or stop it (Ctrl-C or kill), then `tierflow resume {row.id}`")
        crashed = [str(r.flow_run_id) for r in [row, *child_runs(session, row.id)] if r.status == "crashed" and r.flow_run_id]
        parameters = dict(row.parameters)
    _crash_in_prefect(dict.fromkeys(crashed), f"tierflow run {row.id}: {row.message or 'its process ended without finishing'}")
    return parameters


def _crash_in_prefect(flow_run_ids: Iterable[str], message: str) -> None:
    """End the Prefect flow runs of a dead run as Crashed (:mod:`flows.runtime.crashed_runs`); a
    Prefect server that cannot be told is logged, not fatal: the resume goes on."""
    import logging

    from tierflow.flows.runtime.crashed_runs import crash_flow_run

    for flow_run_id in flow_run_ids:
        try:
            crash_flow_run(flow_run_id, message)
        except Exception as exc:  # noqa: BLE001 - the server may not know it (another server, a deleted run)
            logging.getLogger(__name__).warning("could not mark flow run %s crashed in Prefect: %s", flow_run_id, exc)
