"""Per-object feature tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tierflow.storage.db.models import ObjectFeature, ObjectIntensity

__all__ = ["FEATURE_COLUMNS", "add_object_features", "count_objects"]

FEATURE_COLUMNS = (
    "label",
    "time_point",
    "area",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "bbox_min_z",
    "bbox_min_y",
    "bbox_min_x",
    "bbox_max_z",
    "bbox_max_y",
    "bbox_max_x",
)


def add_object_features(
    session: Session,
    rows: Iterable[Mapping[str, Any]],
    *,
    run_id: int | None,
    artifact_id: int | None,
    dataset: str | None = None,
    sample: str | None = None,
) -> int:
    """Insert objects and their per-channel intensities; returns how many objects.

    Each row has the keys of :data:`FEATURE_COLUMNS` and optionally ``intensity``: a mapping
    ``channel -> {"min", "max", "mean", "sum"}``.
    """
    rows = list(rows)
    if not rows:
        return 0
    objects = []
    for row in rows:
        missing = [column for column in FEATURE_COLUMNS if column not in row]
        if missing:
            raise ValueError(f"object {row.get('label')!r}: feature row lacks {missing}")
        objects.append(
            {column: row[column] for column in FEATURE_COLUMNS}
            | {"run_id": run_id, "artifact_id": artifact_id, "dataset": dataset, "sample": sample}
        )
    ids = session.scalars(insert(ObjectFeature).returning(ObjectFeature.id, sort_by_parameter_order=True), objects).all()
    intensities = [
        {"feature_id": feature_id, "channel": str(channel), **{k: float(v) for k, v in stats.items()}}
        for feature_id, row in zip(ids, rows, strict=True)
        for channel, stats in (row.get("intensity") or {}).items()
    ]
    if intensities:
        session.execute(insert(ObjectIntensity), intensities)
    return len(ids)


def count_objects(session: Session, *, run_id: int | None = None, artifact_id: int | None = None) -> int:
    """How many objects a run (or a label array) has in the table."""
    query = select(func.count()).select_from(ObjectFeature)
    if run_id is not None:
        query = query.where(ObjectFeature.run_id == run_id)
    if artifact_id is not None:
        query = query.where(ObjectFeature.artifact_id == artifact_id)
    return int(session.scalar(query) or 0)
