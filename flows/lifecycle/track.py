"""The ``track`` flow: link the objects of feature runs across time points, compute per-track
kinematics and MSD, and store all three in PostgreSQL (track_points, track_kinematics,
track_msd)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from tierflow.configs import load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.progress import StageProgress
from tierflow.flows.runtime.run_names import track_run_name
from tierflow.flows.runtime.runs import recorded_run
from tierflow.storage.db.repo import add_track_rows, get_run, object_centroids
from tierflow.storage.errors import InvalidParameterError, TierflowError
from tierflow.tasks.ops.tracking import kinematics, link_tracks, point_steps

__all__ = ["recorded_scale", "track"]


def _three(sizes: list[float] | tuple[float, ...] | None, what: str) -> tuple[float, ...] | None:
    """A voxel size as (z, y, x): 2-D sizes (y, x) get z = 1 (2-D objects are stored at z = 0)."""
    if sizes is None:
        return None
    values = tuple(float(v) for v in sizes)
    if len(values) == 2:
        values = (1.0, *values)
    if len(values) != 3 or not all(v > 0 and v < float("inf") for v in values):
        raise InvalidParameterError(f"track: {what} {list(sizes)} must be 3 positive numbers z,y,x (or 2, y,x)",
                                    hint="e.g. --spacing 2,0.65,0.65 (µm)")
    return values


def recorded_scale(results: dict[int, dict[str, Any] | None]) -> tuple[tuple[float, ...] | None, float | None]:
    """The voxel size (µm, z,y,x) and time interval (s) the ``features`` runs recorded (from a
    parameter or their inputs' metadata); None where no run knows it.

    Raises
    ------
    TierflowError
        If two runs recorded different values (naming them).
    """
    found: dict[str, dict[Any, list[int]]] = {"voxel_size": {}, "time_interval": {}}
    for run_id, result in sorted(results.items()):
        for key in found:
            value = (result or {}).get(key)
            if value is not None:
                found[key].setdefault(tuple(value) if isinstance(value, list) else value, []).append(run_id)
    for key, values in found.items():
        if len(values) > 1:
            detail = "; ".join(f"runs {ids}: {value}" for value, ids in values.items())
            raise TierflowError(f"the features runs recorded different {key}s ({detail})",
                                hint=f"give --{'spacing' if key == 'voxel_size' else 'frame-interval'} to track them in one unit")
    voxel = next(iter(found["voxel_size"]), None)
    interval = next(iter(found["time_interval"]), None)
    return _three(voxel, "the recorded voxel size") if voxel else None, interval


@flow(name="track", flow_run_name=track_run_name)
def track(
    runs: list[int],
    max_distance: float,
    allow_splits: bool = True,
    max_gap: int = 0,
    frame_interval: float | None = None,
    spacing: list[float] | None = None,
    config_dir: str | None = None,
    parent_run: int | None = None,
) -> dict[str, Any]:
    """Track the objects that the ``features`` runs ``runs`` stored (one run per time point, or
    one run with many), per dataset and sample.

    Linking uses ``spacing`` if given (``max_distance`` in its units), else voxels. Kinematics,
    MSD and each point's ``displacement`` and ``speed`` use ``spacing``, else the voxel size the
    features runs recorded (µm), else voxels; and ``frame_interval``, else the time interval the
    runs recorded (s), else 1 (per frame). The units are in the result (``length_unit``,
    ``time_unit``) and the run's record.

    Returns
    -------
    dict
        ``run_id``, ``tracks``, ``points``, ``divisions`` and the mean speed over tracks.
    """
    logger = get_run_logger()
    db = open_database(load_db_config(config_dir), migrate=True)
    link_spacing = _three(spacing, "--spacing")
    with db.session() as session:
        rows = object_centroids(session, runs)
        results = {run: (found.result if (found := get_run(session, run)) is not None else None) for run in runs}
    voxel, interval = recorded_scale(results)
    physical = link_spacing or voxel
    step_time = frame_interval if frame_interval is not None else (interval or 1.0)
    units = {"length_unit": "µm" if physical else "voxel",
             "time_unit": "s" if frame_interval is not None or interval else "frame",
             "spacing": list(physical) if physical else None, "frame_interval": step_time}
    if not rows:
        raise TierflowError(f"runs {runs} stored no object features", hint="run `tierflow op features` for each time point first")
    objects = pd.DataFrame(rows, columns=["dataset", "sample", "time_point", "label", "centroid_z", "centroid_y", "centroid_x"])
    objects["sample"] = objects["sample"].fillna("")
    summary: dict[str, Any] = {"tracks": 0, "points": 0, "divisions": 0, **units}
    with recorded_run(db, "track", {"runs": runs, "max_distance": max_distance, "allow_splits": allow_splits,
                                    "max_gap": max_gap, "frame_interval": frame_interval, "spacing": spacing},
                      parent_id=parent_run) as run_id:
        groups = objects.groupby(["dataset", "sample"], dropna=False)
        progress = StageProgress("track", groups.ngroups, run=int(run_id), unit="samples")
        for (dataset, sample), group in groups:
            linked = link_tracks(group.drop(columns=["dataset", "sample"]), max_distance=max_distance,
                                 allow_splits=allow_splits, spacing=link_spacing, max_gap=max_gap)
            per_track, msd = kinematics(linked, spacing=physical, frame_interval=step_time)
            linked = linked.join(point_steps(linked, spacing=physical, frame_interval=step_time))
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
            logger.info("sample %s: %d objects over %d time point(s) linked into %d tracks", sample or "-", len(linked),
                        linked["time_point"].nunique(), linked["track_id"].nunique())
            progress.advance(1)
        progress.finish()
        logger.info("tracked %d objects into %d tracks (%d divisions); lengths in %s, times in %s", summary["points"],
                    summary["tracks"], summary["divisions"], summary["length_unit"], summary["time_unit"])
        run_id.result = {"run_id": int(run_id), **summary}
    return {"run_id": run_id, **summary}
