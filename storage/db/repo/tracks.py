"""Tracks, per-track kinematics and mean squared displacements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from tierflow.storage.db.models import TrackKinematics, TrackMsd, TrackPoint

__all__ = ["TrackRows", "add_track_rows", "track_rows"]

_TABLES = {"points": TrackPoint, "kinematics": TrackKinematics, "msd": TrackMsd}


def add_track_rows(session: Session, table: str, rows: Iterable[Mapping[str, Any]], *, run_id: int, **common: Any) -> int:
    """Bulk-insert rows into ``track_points``, ``track_kinematics`` or ``track_msd`` ("points",
    "kinematics", "msd"); ``common`` values (e.g. dataset, sample) are added to every row."""
    model = _TABLES[table]
    columns = {column.name for column in model.__table__.columns}
    values = [{k: v for k, v in {**row, **common, "run_id": run_id}.items() if k in columns} for row in rows]
    if values:
        session.execute(insert(model), values)
    return len(values)



@dataclass(frozen=True)
class TrackRows:
    """Rows of one track table, as :func:`track_rows` reads them (``pd.DataFrame(rows, columns=columns)``)."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def track_rows(session: Session, table: str, run_id: int | None, columns: Sequence[str] | None = None) -> TrackRows:
    """The rows a ``track`` run stored in ``track_points``, ``track_kinematics`` or ``track_msd``
    ("points", "kinematics", "msd"): ``columns`` of them, by default every column but ``id``,
    ``run_id`` and the timestamps (in table order)."""
    model = _TABLES[table]
    if columns is None:
        columns = [c.name for c in model.__table__.columns if c.name not in ("id", "created_at", "updated_at", "run_id")]
    rows = session.execute(select(*[getattr(model, c) for c in columns]).where(model.run_id == run_id)).all()
    return TrackRows(tuple(columns), [tuple(row) for row in rows])
