"""Repository functions round-trip through real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError

from tierflow.storage.db.models import ArtifactLineage, ObjectIntensity, Run
from tierflow.storage.db.repo import (
    ManifestEntry,
    add_artifact,
    add_object_features,
    block_progress,
    count_objects,
    done_blocks,
    failed_blocks,
    finish_run,
    get_artifact,
    get_run,
    get_snapshot,
    lineage_inputs,
    list_artifacts,
    list_runs,
    mark_deleted,
    mark_promoted,
    record_blocks,
    record_retention_event,
    record_snapshot,
    snapshot_files,
    start_run,
)
from tierflow.storage.errors import TierflowError

from sqlalchemy import select


def test_runs_start_finish_and_are_found_by_id_uuid_or_prefix(db):
    flow_run_id = uuid.uuid4()
    with db.session() as session:
        run = start_run(session, flow_name="pipeline", parameters={"sigma": 2.0}, flow_run_id=flow_run_id, code_version="abc")
        finish_run(session, run, "completed")
        run_id = run.id
    with db.session() as session:
        by_id = get_run(session, run_id)
        assert by_id is not None and by_id.status == "completed" and by_id.parameters == {"sigma": 2.0}
        assert by_id.seconds is not None and by_id.seconds >= 0
        assert get_run(session, str(flow_run_id)).id == run_id
        assert get_run(session, str(flow_run_id)[:8]).id == run_id
        assert [r.id for r in list_runs(session)] == [run_id]
        with pytest.raises(TierflowError):
            finish_run(session, by_id, "exploded")
    with db.session() as session:  # a resume reuses the row of the same flow run
        again = start_run(session, flow_name="pipeline", flow_run_id=flow_run_id)
        assert again.id == run_id and again.status == "running"


def test_snapshots_are_idempotent_and_immutable(db):
    files = [ManifestEntry("s1/c0_t000.tif", 10, "a" * 64, "image/tiff"), ManifestEntry("s1/c1_t000.tif", 20, "b" * 64)]
    with db.session() as session:
        snap = record_snapshot(session, dataset="d", snapshot_id="sha-1", uri="file:///t1/d/sha-1", manifest_sha256="m" * 64, files=files)
        first_pk = snap.id
    with db.session() as session:
        again = record_snapshot(session, dataset="d", snapshot_id="sha-1", uri="file:///t1/d/sha-1", manifest_sha256="m" * 64, files=files)
        assert again.id == first_pk
        stored = get_snapshot(session, "d", "sha-1")
        assert (stored.file_count, stored.total_bytes) == (2, 30)
        assert [(f.relative_path, f.bytes, f.sha256) for f in snapshot_files(session, stored)] == [
            (e.relative_path, e.bytes, e.sha256) for e in files
        ]
        with pytest.raises(TierflowError, match="immutable"):
            record_snapshot(session, dataset="d", snapshot_id="sha-1", uri="x", manifest_sha256="n" * 64, files=files)


def test_artifacts_lineage_promotion_and_deletion(db):
    with db.session() as session:
        run = start_run(session, flow_name="pipeline")
        snap = record_snapshot(session, dataset="d", snapshot_id="s", uri="u", manifest_sha256="m" * 64, files=[])
        raw = add_artifact(
            session,
            kind="zarr",
            name="raw",
            tier="scratch",
            uri="file:///scratch/raw.zarr",
            bytes=100,
            run_id=run.id,
            input_snapshots=[snap.id],
        )
        labels = add_artifact(
            session, kind="zarr", name="labels", tier="scratch", uri="file:///scratch/labels.zarr", bytes=50, run_id=run.id, inputs=[raw.id]
        )
        table = add_artifact(
            session,
            kind="table",
            name="features",
            tier="output",
            uri="file:///out/f.parquet",
            sha256="c" * 64,
            run_id=run.id,
            inputs=[labels.id, raw.id],
        )
        assert lineage_inputs(session, table.id) == {("artifact", labels.id), ("artifact", raw.id)}
        assert lineage_inputs(session, raw.id) == {("snapshot", snap.id)}
        mark_promoted(session, table, "file:///t1/promoted/d/s/run/f.parquet")
        mark_deleted(session, raw)
        with pytest.raises(TierflowError):
            add_artifact(session, kind="zarr", name="x", tier="tier9", uri="u9")
    with db.session() as session:
        assert get_artifact(session, "file:///out/f.parquet").promoted_uri.endswith("f.parquet")
        assert [a.name for a in list_artifacts(session, tier="scratch")] == ["labels"]
        assert [a.name for a in list_artifacts(session, tier="scratch", include_deleted=True)] == ["raw", "labels"]


def test_lineage_edges_need_exactly_one_input(db):
    with db.session() as session:
        artifact = add_artifact(session, kind="zarr", name="a", tier="scratch", uri="u-a")
        artifact_id = artifact.id
    with pytest.raises(IntegrityError, match="one_input"):
        with db.session() as session:
            session.add(ArtifactLineage(artifact_id=artifact_id))


def test_block_ledger_done_failed_and_progress(db):
    with db.session() as session:
        run = start_run(session, flow_name="op")
        base = {"run_id": run.id, "op": "gaussian", "op_key": "k1", "array_uri": "file:///a.zarr"}
        record_blocks(
            session,
            [
                base | {"block_id": "0.0.0", "status": "done", "seconds": 0.5, "bytes": 1024, "host": "n1"},
                base | {"block_id": "0.0.1", "status": "failed", "error": "boom"},
                base | {"block_id": "0.0.2", "status": "failed", "error": "boom"},
                base | {"block_id": "0.0.2", "status": "done", "attempt": 2},
                base | {"block_id": "0.0.3", "status": "done", "op_key": "other-params"},
            ],
        )
        with pytest.raises(ValueError, match="0.0.9"):
            record_blocks(session, [base | {"block_id": "0.0.9", "status": "maybe"}])
        run_id = run.id
    with db.session() as session:
        assert done_blocks(session, "k1", "file:///a.zarr") == {"0.0.0", "0.0.2"}
        assert failed_blocks(session, run_id) == ["0.0.1"]
        assert block_progress(session, run_id) == {"done": 3, "failed": 2}


def test_object_features_with_intensities(db):
    rows = [
        {
            "label": label,
            "time_point": 0,
            "area": 10 * label,
            "centroid_z": 1.0,
            "centroid_y": 2.0,
            "centroid_x": 3.0,
            "bbox_min_z": 0,
            "bbox_min_y": 0,
            "bbox_min_x": 0,
            "bbox_max_z": 2,
            "bbox_max_y": 3,
            "bbox_max_x": 4,
            "intensity": {"c0": {"min": 1, "max": 9, "mean": 5.0, "sum": 50.0 * label}, "c1": {"min": 0, "max": 1, "mean": 0.5, "sum": 5}},
        }
        for label in (1, 2, 3)
    ]
    with db.session() as session:
        run = start_run(session, flow_name="features")
        labels = add_artifact(session, kind="zarr", name="labels", tier="scratch", uri="u-labels", run_id=run.id)
        assert add_object_features(session, rows, run_id=run.id, artifact_id=labels.id, dataset="d", sample="s1") == 3
        run_id = run.id
    with db.session() as session:
        assert count_objects(session, run_id=run_id) == 3
        sums = (
            session.execute(select(ObjectIntensity.sum).where(ObjectIntensity.channel == "c0").order_by(ObjectIntensity.sum))
            .scalars()
            .all()
        )
        assert sums == [50.0, 100.0, 150.0]


def test_retention_events(db):
    with db.session() as session:
        event = record_retention_event(session, tier="scratch", uri="file:///s/x.zarr", action="deleted", bytes=123, reason="promoted")
        assert event.id >= 1 and event.occurred_at is not None
        with pytest.raises(ValueError):
            record_retention_event(session, tier="scratch", uri="u", action="shredded", bytes=0, reason="?")


def test_run_status_is_checked_by_the_database(db):
    with pytest.raises(IntegrityError, match="ck_runs_status"):
        with db.session() as session:
            session.add(Run(flow_name="x", status="exploded"))
