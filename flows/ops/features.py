"""Per-object features of a label array, merged exactly across blocks, stored in PostgreSQL
(object_features + object_intensities) and written as a CSV table (``features`` op)."""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from tierflow.errors import InvalidParameterError
from tierflow.flows.ops.request import OpContext
from tierflow.storage.db.repo import SHAPE_COLUMNS, add_object_features
from tierflow.storage.geometry import BlockGrid
from tierflow.tasks.blockwise import open_source, plan_batches
from tierflow.tasks.feature_blocks import FeatureJob, feature_partials
from tierflow.tasks.ops.features import features_table, merge_partials, parse_voxel_size
from tierflow.tasks.ops.units import seconds, to_micrometres

__all__ = ["PhysicalScale", "feature_rows", "physical_scale", "run_features"]

_SPATIAL = "zyx"


class PhysicalScale(NamedTuple):
    """The voxel size (µm per axis, or None) and time interval (s, or None) of a features run,
    and where each came from."""

    voxel_size: tuple[float, ...] | None
    source: str
    time_interval: float | None


def physical_scale(ctx: OpContext) -> PhysicalScale:
    """The voxel size: the ``voxel_size`` (or ``spacing``) parameter, else the labels' metadata,
    else the first intensity input's that has one; and the time interval of the same metadata.

    Raises
    ------
    InvalidParameterError
        If the parameter does not have one positive number per spatial axis of the input.
    """
    ndim = len(ctx.shape)
    key = "voxel_size" if ctx.params.get("voxel_size") else "spacing"
    given = ctx.params.get(key)
    interval = None
    found: tuple[tuple[float, ...], str] | None = None
    for name, ref in [("labels", ctx.source), *sorted(ctx.extras.items())]:
        meta = open_source(ref).metadata
        axes = _SPATIAL[-ndim:]
        if interval is None:
            interval = seconds(meta.time_interval, meta.units.get("t"))
        sizes = to_micrometres(meta.voxel_size(axes), [meta.units.get(a) for a in axes])
        if found is None and sizes is not None:
            found = (sizes, f"metadata of {name} ({ctx.input if name == 'labels' else ref})")
    if given:
        try:
            return PhysicalScale(parse_voxel_size(given, ndim), f"parameter {key}", interval)
        except ValueError as exc:
            raise InvalidParameterError(f"{ctx.spec.name}: parameter {key}={given!r}: {exc}",
                                        hint=f"give {ndim} sizes in µm, {','.join(_SPATIAL[-ndim:])}, e.g. "
                                             f"{','.join(['2', '0.5', '0.5'][-ndim:])}") from None
    if found is not None:
        return PhysicalScale(found[0], found[1], interval)
    return PhysicalScale(None, "unknown", interval)


def feature_rows(table: pd.DataFrame, channels: list[str], time_point: int) -> list[dict[str, Any]]:
    """Rows for :func:`storage.db.repo.add_object_features` (2-D tables get z = 0)."""
    frame = table.copy()
    for axis in ("centroid_z", "bbox_min_z"):
        if axis not in frame:
            frame[axis] = 0
    if "bbox_max_z" not in frame:
        frame["bbox_max_z"] = 1
    rows = []
    for record in frame.to_dict("records"):
        row = {key: record[key] for key in ("label", "area", "centroid_z", "centroid_y", "centroid_x", "bbox_min_z", "bbox_min_y",
                                            "bbox_min_x", "bbox_max_z", "bbox_max_y", "bbox_max_x")}
        row = {k: (int(v) if k not in ("centroid_z", "centroid_y", "centroid_x") else float(v)) for k, v in row.items()}
        row |= {k: _float_or_none(record.get(k)) for k in SHAPE_COLUMNS}
        row["exposed_faces"] = None if record.get("exposed_faces") is None else int(record["exposed_faces"])
        row["time_point"] = time_point
        row["intensity"] = {ch: {stat: float(record[f"{ch}_{stat}"]) for stat in ("min", "max", "mean", "sum")} for ch in channels}
        rows.append(row)
    return rows


def _float_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def run_features(ctx: OpContext) -> dict[str, Any]:
    """Compute, merge and store the features; the CSV goes to ``target`` (a file key)."""
    db, run_id, op_key, source, target = ctx.db, ctx.run_id, ctx.op_key, ctx.source, ctx.target
    shape, block_shape, params, workers, max_batches = ctx.shape, ctx.block_shape, ctx.params, ctx.workers, ctx.max_batches
    extras = ctx.extras
    time_point = int(params.get("time_point") or 0)
    scale = physical_scale(ctx)  # a bad voxel size is refused before any block is read
    job = FeatureJob(op_key=op_key, run_id=run_id, source=source, channels=dict(extras), table_uri=target.uri, shape=tuple(shape),
                     block_shape=tuple(block_shape), db=db)
    grid = BlockGrid(shape, block_shape)
    batches = plan_batches(grid, [b.block_id for b in grid], max_batches=max_batches, min_batches=2 * workers)
    with ctx.runner() as runner:
        futures = [runner.submit(feature_partials, parameters={"job": job, "block_ids": batch}) for batch in batches]
        parts = []
        for future, batch in zip(futures, batches, strict=True):
            parts.append(future.result())
            if ctx.progress is not None:
                ctx.progress(len(batch))
    table = features_table(merge_partials(parts), time_point=time_point, voxel_size=scale.voxel_size)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    target.tier.put_bytes(target.key, buffer.getvalue().encode())
    with db.session() as session:
        stored = add_object_features(session, feature_rows(table, sorted(extras), time_point), run_id=run_id, artifact_id=None,
                                     dataset=params.get("dataset"), sample=params.get("sample"))
    return {"objects": int(len(table)), "stored": stored, "blocks": len(grid), "computed": len(grid), "table": target.uri,
            "channels": sorted(extras), "total_area": int(np.sum(table["area"])) if len(table) else 0,
            "voxel_size": list(scale.voxel_size) if scale.voxel_size else None, "voxel_size_from": scale.source,
            "length_unit": "µm" if scale.voxel_size else "voxel", "time_interval": scale.time_interval}
