"""The results views (``pipeline_objects``, ``track_summary``, ``stage_blocks``; migration 0007)
read per run: what ``tierflow results`` exports and what a notebook queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, select, text
from sqlalchemy.orm import Session

from tierflow.storage.db.models import ObjectFeature, Run
from tierflow.storage.errors import TierflowError

__all__ = ["OBJECTS_VIEW", "ResultScope", "ViewRows", "count_view_rows", "result_scope", "view_rows"]

OBJECTS_VIEW = "pipeline_objects"

_VIEWS = {"pipeline_objects": "sample, time_point, label", "track_summary": "sample, track_id", "stage_blocks": "started_at, stage, op"}
_KEYS = ("pipeline_run", "features_run", "track_run")


@dataclass(frozen=True)
class ResultScope:
    """Which rows of the views belong to a run: ``WHERE <column> = <run_id>``.

    ``asked`` is the run the user named; ``run_id`` differs from it when that run was served
    from the cache of an earlier identical run (``served_from``)."""

    asked: int
    run_id: int
    flow_name: str
    column: str
    served_from: int | None = None

    @property
    def sql(self) -> str:
        """The one ``SELECT`` that gives these objects (to show a user)."""
        return f"SELECT * FROM {OBJECTS_VIEW} WHERE {self.column} = {self.run_id}"


@dataclass(frozen=True)
class ViewRows:
    """Rows of a view (``pd.DataFrame(rows, columns=columns)``)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def result_scope(session: Session, run_id: int) -> ResultScope:
    """Where the objects of run ``run_id`` are: a ``pipeline`` run by ``pipeline_run`` (the run
    it was served from, if it was), a run that stored objects itself (a ``features`` op) by
    ``features_run``.

    Raises
    ------
    TierflowError
        If no such run exists, or it is neither a pipeline run nor a run that stored objects.
    """
    run = session.get(Run, run_id)
    if run is None:
        raise TierflowError(f"run {run_id} is not in the results database", hint="see `tierflow runs list` for run ids")
    served = (run.result or {}).get("served_from_run") if run.flow_name == "pipeline" else None
    target = int(served) if served is not None else run_id
    stored = session.scalar(select(exists().where(ObjectFeature.run_id == target)))
    if stored and run.flow_name != "pipeline":
        return ResultScope(run_id, target, run.flow_name, "features_run")
    if run.flow_name == "pipeline":
        return ResultScope(run_id, target, run.flow_name, "pipeline_run", int(served) if served is not None else None)
    tracked = f"; the objects it tracked: SELECT * FROM {OBJECTS_VIEW} WHERE track_run = {run_id}" if run.flow_name == "track" else ""
    raise TierflowError(f"run {run_id} is a {run.flow_name!r} run, which stored no objects",
                        hint=f"give a pipeline run or a features op run (`tierflow runs list`){tracked}")


def view_rows(session: Session, view: str, column: str, run_id: int, *, limit: int | None = None) -> ViewRows:
    """The rows of ``view`` whose ``column`` (``pipeline_run``, ``features_run`` or
    ``track_run``) is ``run_id``, in a stable order (objects by sample, time point, label)."""
    if view not in _VIEWS or column not in _KEYS:
        raise ValueError(f"unknown view {view!r} or key {column!r}")
    query = f"SELECT * FROM {view} WHERE {column} = :run ORDER BY {_VIEWS[view]}" + (" LIMIT :limit" if limit is not None else "")
    result = session.execute(text(query), {"run": run_id} | ({"limit": limit} if limit is not None else {}))
    return ViewRows(tuple(result.keys()), [tuple(row) for row in result])


def count_view_rows(session: Session, view: str, column: str, run_id: int) -> int:
    """How many rows :func:`view_rows` would return."""
    if view not in _VIEWS or column not in _KEYS:
        raise ValueError(f"unknown view {view!r} or key {column!r}")
    return int(session.scalar(text(f"SELECT count(*) FROM {view} WHERE {column} = :run"), {"run": run_id}) or 0)
