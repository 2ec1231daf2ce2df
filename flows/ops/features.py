"""Per-object features of a label array, merged exactly across blocks, stored in PostgreSQL
(object_features + object_intensities) and written as a CSV table (``features`` op)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from tierflow.flows.ops.request import OpContext
from tierflow.storage.db.repo import add_object_features
from tierflow.storage.geometry import BlockGrid
from tierflow.tasks.blockwise import plan_batches
from tierflow.tasks.feature_blocks import FeatureJob, feature_partials
from tierflow.tasks.ops.features import features_table, merge_partials

__all__ = ["feature_rows", "run_features"]


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
        row["time_point"] = time_point
        row["intensity"] = {ch: {stat: float(record[f"{ch}_{stat}"]) for stat in ("min", "max", "mean", "sum")} for ch in channels}
        rows.append(row)
    return rows


def run_features(ctx: OpContext) -> dict[str, Any]:
    """Compute, merge and store the features; the CSV goes to ``target`` (a file key)."""
    db, run_id, op_key, source, target = ctx.db, ctx.run_id, ctx.op_key, ctx.source, ctx.target
    shape, block_shape, params, workers, max_batches = ctx.shape, ctx.block_shape, ctx.params, ctx.workers, ctx.max_batches
    extras = ctx.extras
    time_point = int(params.get("time_point") or 0)
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
    table = features_table(merge_partials(parts), time_point=time_point)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    target.tier.put_bytes(target.key, buffer.getvalue().encode())
    with db.session() as session:
        stored = add_object_features(session, feature_rows(table, sorted(extras), time_point), run_id=run_id, artifact_id=None,
                                     dataset=params.get("dataset"), sample=params.get("sample"))
    return {"objects": int(len(table)), "stored": stored, "blocks": len(grid), "computed": len(grid), "table": target.uri,
            "channels": sorted(extras), "total_area": int(np.sum(table["area"])) if len(table) else 0}
