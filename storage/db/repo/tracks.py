"""Tracks, per-track kinematics and mean squared displacements."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from tierflow.storage.db.models import TrackKinematics, TrackMsd, TrackPoint

__all__ = ["add_track_rows"]

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
