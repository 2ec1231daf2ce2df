"""The results views (migration 0007) on rows written by the repo functions the flows use:
which run's objects a ``WHERE`` selects, which track run gives the track ids, the channel
pivot and the JSON of every channel, track kinematics and blocks per stage; the views come
with the migration and go with its downgrade. A real pipeline run: tests/test_pipeline.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tierflow.storage.db.database import Database
from tierflow.storage.db.migrate import downgrade, upgrade
from tierflow.storage.db.repo import (add_object_features, add_track_rows, finish_run, record_blocks, result_scope, start_run,
                                      view_rows)
from tierflow.storage.errors import TierflowError

VIEWS = {"pipeline_objects", "track_summary", "stage_blocks"}


def _views(db: Database) -> set[str]:
    with db.engine.connect() as connection:
        return set(connection.execute(text("SELECT viewname FROM pg_views WHERE schemaname = current_schema()")).scalars())


def test_the_views_come_with_the_migration_and_go_with_its_downgrade(db: Database) -> None:
    assert _views(db) == VIEWS
    downgrade(db, "0006")
    assert _views(db) == set()
    assert "object_features" in db.row_counts()  # the tables stay
    upgrade(db)
    assert _views(db) == VIEWS


def _object(label: int, means: dict[str, float], time_point: int = 0) -> dict:
    return {"label": label, "time_point": time_point, "area": 10 * label, "centroid_z": 1.0, "centroid_y": 2.0 * label,
            "centroid_x": 3.0, "bbox_min_z": 0, "bbox_min_y": 0, "bbox_min_x": 0, "bbox_max_z": 2, "bbox_max_y": 4, "bbox_max_x": 6,
            "volume_um3": 2.5 * label,
            "intensity": {ch: {"min": m - 1, "max": m + 1, "mean": m, "sum": m * 10 * label} for ch, m in means.items()}}


def _track_run(session, pipeline: int, features: list[int], track_ids: dict[int, int], status: str = "completed") -> int:
    run = start_run(session, flow_name="track", parameters={"runs": features, "max_distance": 5.0}, parent_id=pipeline)
    add_track_rows(session, "points", [{"track_id": track, "time_point": 0, "label": label, "centroid_z": 1.0, "centroid_y": 2.0,
                                        "centroid_x": 3.0} for label, track in track_ids.items()], run_id=run.id, sample="s1")
    finish_run(session, run, status, result={"length_unit": "µm", "time_unit": "s", "frame_interval": 2.0})
    return run.id


@pytest.fixture
def runs(db: Database) -> dict[str, int]:
    """A pipeline run with a features op run (objects 1 and 2 of sample s1; channels c0, c1 and
    a stage-named one) tracked by three track runs (an older one, the newest completed one, a
    newer failed one; object 2 is in none), and a features run of its own (channel c9)."""
    with db.session() as session:
        pipeline = start_run(session, flow_name="pipeline", parameters={"dataset": "d"})
        features = start_run(session, flow_name="op", parameters={"op": "features", "output": "file:///w/k/features/s1_t000.csv"},
                             parent_id=pipeline.id)
        add_object_features(session, [_object(1, {"c0": 100.0, "c1": 7.5, "smooth": 3.0}), _object(2, {"c0": 200.0, "c1": 8.5})],
                            run_id=features.id, artifact_id=None, dataset="d", sample="s1")
        alone = start_run(session, flow_name="op", parameters={"op": "features"})
        add_object_features(session, [_object(5, {"c9": 42.0})], run_id=alone.id, artifact_id=None, dataset="d", sample="s2")
        ids = {"pipeline": pipeline.id, "features": features.id, "alone": alone.id,
               "old_track": _track_run(session, pipeline.id, [features.id], {1: 11}),
               "track": _track_run(session, pipeline.id, [features.id], {1: 22}),
               "failed_track": _track_run(session, pipeline.id, [features.id], {1: 33}, status="failed")}
        served = start_run(session, flow_name="pipeline", parameters={"dataset": "d"})
        finish_run(session, served, "completed", result={"cached": True, "served_from_run": pipeline.id})
        ids["served"] = served.id
    return ids


def test_one_select_gives_objects_with_track_ids_and_channel_means(db: Database, runs: dict[str, int]) -> None:
    with db.session() as session:
        rows = session.execute(text("SELECT label, track_id, track_run, features_run, voxel_count, volume_um3, c0_mean, c1_mean, "
                                    "c2_mean, intensities FROM pipeline_objects WHERE pipeline_run = :run ORDER BY label"),
                               {"run": runs["pipeline"]}).mappings().all()
        alone = session.execute(text("SELECT label, pipeline_run, c0_mean, c7_mean, intensities -> 'c9' ->> 'mean' AS c9 "
                                     "FROM pipeline_objects WHERE features_run = :run"), {"run": runs["alone"]}).mappings().one()
    assert [(r["label"], r["track_id"]) for r in rows] == [(1, 22), (2, None)]  # newest completed track run; 2 untracked
    assert {r["track_run"] for r in rows} == {runs["track"]} and {r["features_run"] for r in rows} == {runs["features"]}
    assert [(r["c0_mean"], r["c1_mean"], r["c2_mean"]) for r in rows] == [(100.0, 7.5, None), (200.0, 8.5, None)]
    assert [(r["voxel_count"], r["volume_um3"]) for r in rows] == [(10, 2.5), (20, 5.0)]
    assert rows[0]["intensities"]["smooth"] == {"min": 2.0, "max": 4.0, "mean": 3.0, "sum": 30.0}  # any channel name, in JSON
    assert "smooth" not in rows[1]["intensities"]
    # a features run of its own is its own pipeline_run; a channel past c7 is only in the JSON
    assert (alone["label"], alone["pipeline_run"], alone["c0_mean"], alone["c7_mean"]) == (5, runs["alone"], None, None)
    assert float(alone["c9"]) == 42.0


def test_result_scope_says_where_a_runs_objects_are(db: Database, runs: dict[str, int]) -> None:
    with db.session() as session:
        pipeline = result_scope(session, runs["pipeline"])
        assert (pipeline.column, pipeline.run_id) == ("pipeline_run", runs["pipeline"])
        assert pipeline.sql == f"SELECT * FROM pipeline_objects WHERE pipeline_run = {runs['pipeline']}"
        assert (result_scope(session, runs["features"]).column, result_scope(session, runs["alone"]).column) == ("features_run",) * 2
        served = result_scope(session, runs["served"])
        assert (served.run_id, served.served_from, served.asked) == (runs["pipeline"], runs["pipeline"], runs["served"])
        assert len(view_rows(session, "pipeline_objects", served.column, served.run_id).rows) == 2
        with pytest.raises(TierflowError, match="'track' run, which stored no objects") as refused:
            result_scope(session, runs["track"])
        assert f"WHERE track_run = {runs['track']}" in refused.value.hint
        with pytest.raises(TierflowError, match="run 999999 is not in the results database"):
            result_scope(session, 999999)


def test_track_summary_and_stage_blocks_need_no_quoting(db: Database, runs: dict[str, int]) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with db.session() as session:
        add_track_rows(session, "kinematics", [{"track_id": 22, "n_points": 3, "start": 2, "end": 6, "path_length": 8.0,
                                                "net_displacement": 6.0, "mean_speed": 1.0, "max_speed": 1.5}],
                       run_id=runs["track"], sample="s1", dataset="d")
        add_track_rows(session, "msd", [{"track_id": 22, "lag": lag, "lag_time": 2.0 * lag, "msd": 3.0 * 2.0 * lag + 1, "n_pairs": 1}
                                        for lag in (1, 2, 3)], run_id=runs["track"], sample="s1")
        record_blocks(session, [{"run_id": runs["features"], "op": "features", "op_key": "k", "array_uri": "a", "block_id": str(n),
                                 "status": status, "attempt": attempt, "seconds": 0.5, "bytes": 100,
                                 "started_at": start + timedelta(seconds=n), "finished_at": start + timedelta(seconds=n + 1)}
                                for n, (status, attempt) in enumerate([("done", 1), ("failed", 1), ("done", 2), ("running", 1)])])
        track = session.execute(text("SELECT track_id, first_time_point, last_time_point, duration_frames, duration, straightness, "
                                     "msd_slope, msd_lags, length_unit, time_unit, pipeline_run FROM track_summary "
                                     "WHERE track_run = :run"), {"run": runs["track"]}).mappings().one()
        stage = session.execute(text("SELECT stage, op, op_runs, attempts, done, failed, running, stale, retries, block_seconds, "
                                     "bytes, started_at, ended_at FROM stage_blocks WHERE pipeline_run = :run"),
                                {"run": runs["pipeline"]}).mappings().one()
    assert dict(track) == {"track_id": 22, "first_time_point": 2, "last_time_point": 6, "duration_frames": 4, "duration": 8.0,
                           "straightness": 0.75, "msd_slope": pytest.approx(3.0), "msd_lags": 3, "length_unit": "µm",
                           "time_unit": "s", "pipeline_run": runs["pipeline"]}
    assert dict(stage) == {"stage": "features", "op": "features", "op_runs": 1, "attempts": 4, "done": 2, "failed": 1, "running": 1,
                           "stale": 0, "retries": 1, "block_seconds": 2.0, "bytes": 400, "started_at": start,
                           "ended_at": start + timedelta(seconds=4)}


def test_the_export_has_every_channel_and_typed_columns(db: Database, runs: dict[str, int]) -> None:
    from tierflow.flows.cli.results import objects_frame

    with db.session() as session:
        stored = view_rows(session, "pipeline_objects", "pipeline_run", runs["pipeline"])
    frame = objects_frame(stored.columns, stored.rows)
    assert "intensities" not in frame and not any(c in frame for c in ("c2_mean", "c7_mean"))  # no column for an absent channel
    assert frame["track_id"].dtype == "Int64" and frame["track_id"].tolist()[0] == 22 and frame["track_id"].isna().tolist() == [False, True]
    assert frame["c0_mean"].tolist() == [100.0, 200.0] and frame["c1_sum"].tolist() == [75.0, 170.0]
    assert frame["smooth_mean"].tolist()[0] == 3.0 and frame["smooth_mean"].isna().tolist() == [False, True]
