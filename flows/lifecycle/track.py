"""The ``track`` flow: link the objects of feature runs across time points, compute per-track
kinematics and MSD, and store all three in PostgreSQL (track_points, track_kinematics,
track_msd)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from tierflow.configs import load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.runs import recorded_run
from tierflow.storage.db.repo import add_track_rows, object_centroids
from tierflow.storage.errors import TierflowError
from tierflow.tasks.ops.tracking import kinematics, link_tracks

__all__ = ["track"]


@flow(name="track")
def track(
    runs: list[int],
    max_distance: float,
    allow_splits: bool = True,
    max_gap: int = 0,
    frame_interval: float = 1.0,
    spacing: list[float] | None = None,
    config_dir: str | None = None,
    parent_run: int | None = None,
) -> dict[str, Any]:
    """Track the objects that the ``features`` runs ``runs`` stored (one run per time point, or
    one run with many), per dataset and sample.

    Returns
    -------
    dict
        ``run_id``, ``tracks``, ``points``, ``divisions`` and the mean speed over tracks.
    """
    logger = get_run_logger()
    db = open_database(load_db_config(config_dir), migrate=True)
    with db.session() as session:
        rows = object_centroids(session, runs)
    if not rows:
        raise TierflowError(f"runs {runs} stored no object features", hint="run `tierflow op features` for each time point first")
    objects = pd.DataFrame(rows, columns=["dataset", "sample", "time_point", "label", "centroid_z", "centroid_y", "centroid_x"])
    objects["sample"] = objects["sample"].fillna("")
    summary = {"tracks": 0, "points": 0, "divisions": 0}
    with recorded_run(db, "track", {"runs": runs, "max_distance": max_distance, "allow_splits": allow_splits,
                                    "max_gap": max_gap, "frame_interval": frame_interval}, parent_id=parent_run) as run_id:
        for (dataset, sample), group in objects.groupby(["dataset", "sample"], dropna=False):
            linked = link_tracks(group.drop(columns=["dataset", "sample"]), max_distance=max_distance,
                                 allow_splits=allow_splits, spacing=spacing, max_gap=max_gap)
            per_track, msd = kinematics(linked, spacing=spacing, frame_interval=frame_interval)
            points = linked.astype({"parent_track_id": "object"}).where(linked.notna(), None)
            common = {"dataset": None if pd.isna(dataset) else dataset, "sample": sample}
            with db.session() as session:
                add_track_rows(session, "points", points.to_dict("records"), run_id=run_id, **common)
                add_track_rows(session, "kinematics", per_track.astype(object).where(per_track.notna(), None).to_dict("records"),
                               run_id=run_id, **common)
                add_track_rows(session, "msd", msd.to_dict("records"), run_id=run_id, sample=sample)
            summary["tracks"] += int(linked["track_id"].nunique())
            summary["points"] += len(linked)
            summary["divisions"] += int(linked.drop_duplicates("track_id")["parent_track_id"].notna().sum())
        logger.info("tracked %d objects into %d tracks (%d divisions)", summary["points"], summary["tracks"], summary["divisions"])
    return {"run_id": run_id, **summary}
