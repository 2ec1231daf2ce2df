"""Promotion copies to Tier 1, re-reads and verifies the sha256, and only then records it;
a corrupted copy is detected, reported, discarded and not recorded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import zarr
from sqlalchemy import select

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.db.models import Artifact
from tierflow.storage.db.repo import add_artifact, get_snapshot, lineage_inputs, start_run
from tierflow.storage.errors import IntegrityError
from tierflow.storage.promotion import tree_digest


@pytest.fixture
def produced(project, raw_folder, prefect_api):
    """A snapshot, and a run that produced a table on Tier 2 and a zarr array on Tier 3."""
    from tierflow.flows.lifecycle.ingest import ingest

    configs = str(project / "configs")
    snap = ingest(str(raw_folder), "embryo", config_dir=configs)
    tiers = open_tiers(load_config(configs))
    table = b"label,area\n1,10\n2,20\n"
    tiers.output.put_bytes("run-x/features.csv", table)
    array = zarr.create_array(store=tiers.scratch.zarr_store("run-x/labels.zarr"), shape=(6, 8), chunks=(3, 4), dtype="uint32")
    array[:] = np.arange(48, dtype=np.uint32).reshape(6, 8)
    array_digest = tree_digest(
        [(info.key.removeprefix("run-x/labels.zarr/"), tiers.scratch.sha256(info.key)) for info in tiers.scratch.list("run-x/labels.zarr")]
    )
    db = open_database(load_db_config(configs))
    with db.session() as session:
        snapshot = get_snapshot(session, "embryo", snap["snapshot_id"])
        run = start_run(session, flow_name="pipeline")
        labels = add_artifact(session, kind="zarr", name="labels.zarr", tier="scratch", uri=tiers.scratch.uri("run-x/labels.zarr"),
                              bytes=tiers.scratch.usage("run-x/labels.zarr"), sha256=array_digest, run_id=run.id,
                              dataset="embryo", snapshot_pk=snapshot.id, input_snapshots=[snapshot.id])
        features = add_artifact(session, kind="table", name="features.csv", tier="output", uri=tiers.output.uri("run-x/features.csv"),
                                bytes=len(table), sha256=hashlib.sha256(table).hexdigest(), run_id=run.id,
                                dataset="embryo", snapshot_pk=snapshot.id, inputs=[labels.id])
        ids = {"run": run.id, "labels": labels.id, "features": features.id}
    yield {"configs": configs, "tiers": tiers, "db": db, "snapshot_id": snap["snapshot_id"], "table": table, **ids}
    db.dispose()


def test_promote_a_run_copies_verifies_and_records(produced):
    from tierflow.flows.lifecycle.promote import promote

    result = promote(run=str(produced["run"]), config_dir=produced["configs"])
    expected_key = f"promoted/embryo/{produced['snapshot_id']}/run-{produced['run']}/features.csv"
    assert [p["uri"] for p in result["promoted"]] == [produced["tiers"].source.uri(expected_key)]
    assert produced["tiers"].source.get_bytes(expected_key) == produced["table"]
    with produced["db"].session() as session:
        original = session.get(Artifact, produced["features"])
        assert original.promoted_at is not None and original.promoted_uri.endswith(expected_key)
        copy = session.scalars(select(Artifact).where(Artifact.tier == "source")).one()
        assert copy.sha256 == hashlib.sha256(produced["table"]).hexdigest()
        assert lineage_inputs(session, copy.id) == {("artifact", produced["features"])}
    # promoting the run again finds nothing left to promote
    assert promote(run=str(produced["run"]), config_dir=produced["configs"])["promoted"] == []


def test_promote_a_zarr_array_by_id(produced):
    from tierflow.flows.lifecycle.promote import promote

    result = promote(artifacts=[str(produced["labels"])], config_dir=produced["configs"])
    key = produced["tiers"].source.key_of(result["promoted"][0]["uri"])
    copy = zarr.open_array(store=produced["tiers"].source.zarr_store(key, read_only=True))
    np.testing.assert_array_equal(copy[:], np.arange(48, dtype=np.uint32).reshape(6, 8))


def test_a_copy_corrupted_in_transit_is_detected_and_not_recorded(produced):
    from tierflow.flows.lifecycle.promote import promote

    def flip_a_byte(tier, key):
        # Fault injection (the only fake): silently corrupt the fresh Tier 1 copy, as a bad
        # disk or network would, before tierflow reads it back.
        path = tier.root / key
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match="not promoted") as info:
        promote(run=str(produced["run"]), config_dir=produced["configs"], after_copy=flip_a_byte)
    assert "features.csv" in str(info.value)
    with produced["db"].session() as session:
        assert session.get(Artifact, produced["features"]).promoted_at is None
        assert session.scalars(select(Artifact).where(Artifact.tier == "source")).all() == []
    assert list(produced["tiers"].source.list("promoted")) == []  # the bad copy was discarded


def test_an_artifact_changed_after_it_was_recorded_is_not_promoted(produced):
    from tierflow.flows.lifecycle.promote import promote

    produced["tiers"].output.put_bytes("run-x/features.csv", b"label,area\n1,99\n")
    with pytest.raises(IntegrityError, match="recorded as"):
        promote(run=str(produced["run"]), config_dir=produced["configs"])
    with produced["db"].session() as session:
        assert session.get(Artifact, produced["features"]).promoted_at is None
    assert list(produced["tiers"].source.list("promoted")) == []
