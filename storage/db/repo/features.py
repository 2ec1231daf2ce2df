"""Per-object feature tables."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tierflow.storage.db.models import ObjectFeature, ObjectIntensity

__all__ = ["FEATURE_COLUMNS", "SHAPE_COLUMNS", "ObjectCentroid", "add_object_features", "count_objects", "object_centroids"]

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

SHAPE_COLUMNS = (
    "volume_um3",
    "area_um2",
    "centroid_z_um",
    "centroid_y_um",
    "centroid_x_um",
    "axis_major_length",
    "axis_minor_length",
    "axis_major_length_um",
    "axis_minor_length_um",
    "eccentricity",
    "elongation",
    "flatness",
    "surface_area_um2",
    "perimeter_um",
)
"""Optional float columns of a feature row (missing or None: NULL); ``exposed_faces`` is an
optional integer."""


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

    Each row has the keys of :data:`FEATURE_COLUMNS`, optionally those of :data:`SHAPE_COLUMNS`
    and ``exposed_faces``, and optionally ``intensity``: a mapping ``channel -> {"min", "max",
    "mean", "sum"}``.
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
            | {column: row.get(column) for column in (*SHAPE_COLUMNS, "exposed_faces")}
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



class ObjectCentroid(NamedTuple):
    """Where one stored object is, as :func:`object_centroids` reads it."""

    dataset: str | None
    sample: str | None
    time_point: int
    label: int
    centroid_z: float
    centroid_y: float
    centroid_x: float


def object_centroids(session: Session, run_ids: Collection[int]) -> list[ObjectCentroid]:
    """The objects the ``features`` runs ``run_ids`` stored, with their centroids (what tracking links)."""
    rows = session.execute(
        select(ObjectFeature.dataset, ObjectFeature.sample, ObjectFeature.time_point, ObjectFeature.label,
               ObjectFeature.centroid_z, ObjectFeature.centroid_y, ObjectFeature.centroid_x)
        .where(ObjectFeature.run_id.in_(list(run_ids)))
    )
    return [ObjectCentroid(*row) for row in rows]
