"""The repository's read functions that flows and the CLI call (instead of building queries),
against rows inserted into real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tierflow.storage.db.database import Database, postgres_url
from tierflow.storage.db.repo import (
    BlockAttempt,
    ManifestEntry,
    ObjectCentroid,
    TierUsage,
    add_artifact,
    add_object_features,
    add_track_rows,
    artifact_by_id,
    artifacts_by_ids,
    block_attempts,
    block_counts,
    child_runs,
    completed_runs_with_key,
    count_done_since,
    finish_run,
    live_usage_by_tier,
    lock_run,
    mark_deleted,
    mark_promoted,
    match_snapshots,
    object_centroids,
    promotable_artifacts,
    record_blocks,
    record_snapshot,
    run_id_of_flow_run,
    snapshot_by_pk,
    snapshot_paths,
    start_run,
    track_rows,
)
from tierflow.storage.errors import DatabaseError


def test_runs_by_flow_run_children_lock_and_key(db: Database) -> None:
    flow_run_id = uuid.uuid4()
    with db.session() as session:
        parent = start_run(session, flow_name="pipeline", parameters={"key": "k1"}, flow_run_id=flow_run_id)
        track_a = start_run(session, flow_name="track", parent_id=parent.id)
        op = start_run(session, flow_name="op", parent_id=parent.id)
        track_b = start_run(session, flow_name="track", parent_id=parent.id)
        other = start_run(session, flow_name="pipeline", parameters={"key": "k1"})
        same_key = start_run(session, flow_name="pipeline", parameters={"key": "k1"})
        no_result = start_run(session, flow_name="pipeline", parameters={"key": "k1"})
        finish_run(session, parent, "completed", result={"report_uri": "r1"})
        finish_run(session, other, "failed", result={"report_uri": "r2"})
        finish_run(session, same_key, "completed", result={"report_uri": "r3"})
        finish_run(session, no_result, "completed")
        ids = {name: run.id for name, run in [("parent", parent), ("track_a", track_a), ("op", op), ("track_b", track_b),
                                               ("same_key", same_key)]}
    with db.session() as session:
        assert run_id_of_flow_run(session, flow_run_id) == ids["parent"]
        assert run_id_of_flow_run(session, str(flow_run_id)) == ids["parent"]
        assert run_id_of_flow_run(session, uuid.uuid4()) is None
        assert [r.id for r in child_runs(session, ids["parent"])] == [ids["track_a"], ids["op"], ids["track_b"]]
        assert [r.id for r in child_runs(session, ids["parent"], flow_name="track")] == [ids["track_a"], ids["track_b"]]
        assert child_runs(session, ids["op"]) == []
        assert [r.id for r in completed_runs_with_key(session, "pipeline", "k1")] == [ids["same_key"], ids["parent"]]
        assert completed_runs_with_key(session, "pipeline", "k2") == []
        assert completed_runs_with_key(session, "track", "k1") == []
        locked = lock_run(session, ids["op"])
        assert locked is not None and locked.id == ids["op"] and locked.status == "running"
        assert lock_run(session, 10**9) is None


def test_snapshots_by_pk_prefix_and_paths(db: Database) -> None:
    files = [ManifestEntry("s1/c1_t000.tif", 20, "b" * 64), ManifestEntry("s1/c0_t000.tif", 10, "a" * 64)]
    with db.session() as session:
        first = record_snapshot(session, dataset="d", snapshot_id="abc123", uri="u1", manifest_sha256="m" * 64, files=files)
        second = record_snapshot(session, dataset="d", snapshot_id="abd456", uri="u2", manifest_sha256="n" * 64, files=[])
        record_snapshot(session, dataset="e", snapshot_id="abc999", uri="u3", manifest_sha256="o" * 64, files=[])
        pks = first.id, second.id
    with db.session() as session:
        assert snapshot_by_pk(session, pks[0]).snapshot_id == "abc123"
        assert snapshot_by_pk(session, 10**9) is None
        assert [s.snapshot_id for s in match_snapshots(session, "d", "ab")] == ["abc123", "abd456"]
        assert [s.id for s in match_snapshots(session, "d", "abc")] == [pks[0]]
        assert match_snapshots(session, "d", "x") == []
        assert snapshot_paths(session, pks[0]) == ["s1/c0_t000.tif", "s1/c1_t000.tif"]
        assert snapshot_paths(session, pks[1]) == []


def test_artifacts_by_id_promotable_and_usage(db: Database) -> None:
    with db.session() as session:
        run = start_run(session, flow_name="pipeline")
        other_run = start_run(session, flow_name="pipeline")
        out_a = add_artifact(session, kind="zarr", name="a", tier="output", uri="u-a", bytes=100, run_id=run.id)
        scratch = add_artifact(session, kind="zarr", name="s", tier="scratch", uri="u-s", bytes=40, run_id=run.id)
        promoted = add_artifact(session, kind="table", name="p", tier="output", uri="u-p", bytes=7, run_id=run.id)
        deleted = add_artifact(session, kind="table", name="x", tier="output", uri="u-x", bytes=1000, run_id=run.id)
        out_b = add_artifact(session, kind="table", name="b", tier="output", uri="u-b", bytes=3, run_id=run.id)
        add_artifact(session, kind="table", name="o", tier="output", uri="u-o", bytes=5, run_id=other_run.id)
        mark_promoted(session, promoted, "file:///t1/p")
        mark_deleted(session, deleted)
        ids = {"a": out_a.id, "s": scratch.id, "b": out_b.id, "x": deleted.id, "run": run.id}
    with db.session() as session:
        assert artifact_by_id(session, ids["s"]).uri == "u-s"
        assert artifact_by_id(session, 10**9) is None
        assert [a.uri for a in artifacts_by_ids(session, [ids["b"], ids["a"], 10**9])] == ["u-a", "u-b"]
        assert artifacts_by_ids(session, []) == []
        assert [a.id for a in promotable_artifacts(session, ids["run"])] == [ids["a"], ids["b"]]
        assert live_usage_by_tier(session) == [TierUsage("output", 4, 100 + 7 + 3 + 5), TierUsage("scratch", 1, 40)]


def test_block_attempts_counts_and_done_since(db: Database) -> None:
    with db.session() as session:
        run = start_run(session, flow_name="pipeline")
        child = start_run(session, flow_name="op", parent_id=run.id)
        base = {"run_id": child.id, "op": "gaussian", "op_key": "k", "array_uri": "file:///w/smooth.zarr"}
        record_blocks(session, [
            base | {"block_id": "0.0.0", "status": "failed", "error": "boom"},
            base | {"block_id": "0.0.0", "status": "done"},
            base | {"block_id": "0.0.1", "status": "done"},
            base | {"block_id": "0.0.2", "status": "done", "array_uri": "file:///elsewhere.zarr"},
        ])
        record_blocks(session, [{"run_id": run.id, "op": "label", "op_key": "l", "array_uri": "file:///w/labels.zarr",
                                 "block_id": "0.0.0", "status": "running"}])
        run_id, child_id = run.id, child.id
    with db.session() as session:
        assert block_attempts(session, child_id) == [
            BlockAttempt("gaussian", "0.0.0", "failed", "boom"), BlockAttempt("gaussian", "0.0.0", "done", None),
            BlockAttempt("gaussian", "0.0.1", "done", None), BlockAttempt("gaussian", "0.0.2", "done", None),
        ]
        assert block_counts(session, [run_id, child_id]) == {"done": 3, "failed": 1, "running": 1}
        assert block_counts(session, [run_id]) == {"running": 1}
        assert block_counts(session, []) == {}
        before = datetime.now(UTC) - timedelta(hours=1)
        assert count_done_since(session, "file:///w/", before) == 2
        assert count_done_since(session, "file:///elsewhere", before) == 1
        assert count_done_since(session, "file:///w/", datetime.now(UTC) + timedelta(hours=1)) == 0


def test_count_done_since_raises_a_tierflow_error_when_the_database_cannot_answer(empty_db: Database) -> None:
    with pytest.raises(DatabaseError, match="file:///w/"), empty_db.session() as session:  # no ledger table yet
        count_done_since(session, "file:///w/", datetime.now(UTC))


def test_object_centroids_and_track_rows(db: Database) -> None:
    feature = {"area": 5, "bbox_min_z": 0, "bbox_min_y": 0, "bbox_min_x": 0, "bbox_max_z": 1, "bbox_max_y": 1, "bbox_max_x": 1}
    with db.session() as session:
        features = start_run(session, flow_name="features")
        other = start_run(session, flow_name="features")
        add_object_features(session, [feature | {"label": 1, "time_point": 0, "centroid_z": 1.0, "centroid_y": 2.0, "centroid_x": 3.0},
                                       feature | {"label": 2, "time_point": 1, "centroid_z": 4.0, "centroid_y": 5.0, "centroid_x": 6.0}],
                            run_id=features.id, artifact_id=None, dataset="d", sample="s1")
        add_object_features(session, [feature | {"label": 9, "time_point": 0, "centroid_z": 0.0, "centroid_y": 0.0, "centroid_x": 0.0}],
                            run_id=other.id, artifact_id=None)
        track = start_run(session, flow_name="track")
        add_track_rows(session, "points", [
            {"track_id": 1, "parent_track_id": None, "time_point": 0, "label": 1, "centroid_z": 1.0, "centroid_y": 2.0, "centroid_x": 3.0},
            {"track_id": 1, "parent_track_id": None, "time_point": 1, "label": 2, "centroid_z": 4.0, "centroid_y": 5.0, "centroid_x": 6.0},
        ], run_id=track.id, dataset="d", sample="s1")
        add_track_rows(session, "msd", [{"track_id": 1, "lag": 1, "lag_time": 0.5, "msd": 27.0, "n_pairs": 1}],
                       run_id=track.id, sample="s1")
        ids = features.id, other.id, track.id
    with db.session() as session:
        assert sorted(object_centroids(session, [ids[0]])) == [
            ObjectCentroid("d", "s1", 0, 1, 1.0, 2.0, 3.0),
            ObjectCentroid("d", "s1", 1, 2, 4.0, 5.0, 6.0),
        ]
        assert len(object_centroids(session, ids[:2])) == 3
        assert object_centroids(session, []) == []
        points = track_rows(session, "points", ids[2])
        assert set(points.columns) == {
            "dataset",
            "sample",
            "track_id",
            "parent_track_id",
            "time_point",
            "label",
            "centroid_z",
            "centroid_y",
            "centroid_x",
            "displacement",
            "speed",
        }
        assert sorted(dict(zip(points.columns, row, strict=False))["label"] for row in points.rows) == [1, 2]
        chosen = track_rows(session, "points", ids[2], ["time_point", "track_id", "centroid_x"])
        assert chosen.columns == ("time_point", "track_id", "centroid_x") and sorted(chosen.rows) == [(0, 1, 3.0), (1, 1, 6.0)]
        msd = track_rows(session, "msd", ids[2])
        assert [dict(zip(msd.columns, row, strict=False)) for row in msd.rows] == [
            {"sample": "s1", "track_id": 1, "lag": 1, "lag_time": 0.5, "msd": 27.0, "n_pairs": 1}
        ]
        assert track_rows(session, "kinematics", ids[2]).rows == []
        assert track_rows(session, "points", None).rows == []


def test_postgres_url_holds_every_part_and_hides_the_password() -> None:
    url = postgres_url(user="u", password="s3cret", host="db.example", port=5433, dbname="results")
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2",
        "u",
        "s3cret",
        "db.example",
        5433,
        "results",
    )
    assert "s3cret" not in Database(url).masked_url
