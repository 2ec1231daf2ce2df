"""Ingest: a raw folder becomes a content-addressed, immutable snapshot on Tier 1, recorded in
PostgreSQL; ingesting again is a no-op; changed content never overwrites."""

from __future__ import annotations

import hashlib
import json

import pytest

from tierflow.configs import load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.storage.db.repo import get_snapshot, snapshot_files
from tierflow.storage.errors import InvalidNameError, RawLayoutError, SnapshotConflictError
from tierflow.storage.tiers import PosixTier


def tier1_files(project):
    root = project / "var" / "tier1-source"
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_ingest_twice_gives_the_same_id_and_writes_nothing_new(project, raw_folder, prefect_api):
    from tierflow.flows.lifecycle.ingest import ingest

    first = ingest(str(raw_folder), "embryo", config_dir=str(project / "configs"))
    assert first["files"] == 8 and first["uploaded"] == 8 and first["new"] is True
    snapshot_root = project / "var" / "tier1-source" / "snapshots" / "embryo" / first["snapshot_id"]
    manifest = json.loads((snapshot_root / "manifest.json").read_text())
    # every raw file is on Tier 1 byte for byte, and the manifest lists its real sha256
    for entry in manifest["files"]:
        raw_bytes = (raw_folder / entry["relative_path"]).read_bytes()
        assert (snapshot_root / entry["relative_path"]).read_bytes() == raw_bytes
        assert entry["sha256"] == hashlib.sha256(raw_bytes).hexdigest() and entry["bytes"] == len(raw_bytes)
        assert entry["media_type"] == "image/tiff"
    before = tier1_files(project)

    second = ingest(str(raw_folder), "embryo", config_dir=str(project / "configs"))
    assert second["snapshot_id"] == first["snapshot_id"]
    assert second["uploaded"] == 0 and second["new"] is False
    assert tier1_files(project) == before  # no new or rewritten objects

    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        snapshot = get_snapshot(session, "embryo", first["snapshot_id"])
        assert snapshot.file_count == 8 and snapshot.total_bytes == first["bytes"]
        rows = {row.relative_path: row.sha256 for row in snapshot_files(session, snapshot)}
        assert rows == {entry["relative_path"]: entry["sha256"] for entry in manifest["files"]}
    db.dispose()


def test_changed_content_gets_a_new_id_and_an_existing_id_is_never_overwritten(project, raw_folder, prefect_api):
    from tierflow.flows.lifecycle.ingest import ingest

    first = ingest(str(raw_folder), "embryo", config_dir=str(project / "configs"))
    victim = raw_folder / "s1" / "emb_c0_t000.tif"
    victim.write_bytes(victim.read_bytes()[:-2] + b"\x00\x01")
    second = ingest(str(raw_folder), "embryo", config_dir=str(project / "configs"))
    assert second["snapshot_id"] != first["snapshot_id"] and second["uploaded"] == 8

    # a manifest claiming the first id with the changed bytes is refused on upload
    from tierflow.storage.snapshots import Manifest, build_manifest, upload_snapshot_file

    changed = build_manifest(raw_folder, "embryo")
    tier = PosixTier("source", project / "var" / "tier1-source", write_once=True)
    entry = next(e for e in changed.files if e.relative_path == "s1/emb_c0_t000.tif")

    class SameId(Manifest):
        @property
        def snapshot_id(self):  # the first snapshot's id, with changed content
            return first["snapshot_id"]

    with pytest.raises(SnapshotConflictError, match="different content"):
        upload_snapshot_file(tier, SameId("embryo", changed.files), raw_folder, entry)
    original = project / "var" / "tier1-source" / "snapshots" / "embryo" / first["snapshot_id"] / "s1" / "emb_c0_t000.tif"
    assert original.read_bytes() != victim.read_bytes()


@pytest.mark.parametrize("name", ["../up", "a/b", "/abs", "tab\tname", "..", "new\nline", ""])
def test_unsafe_dataset_names_are_refused(project, raw_folder, name, prefect_api):
    from tierflow.flows.lifecycle.ingest import ingest

    with pytest.raises(InvalidNameError):
        ingest(str(raw_folder), name, config_dir=str(project / "configs"))
    assert not (project / "var" / "tier1-source").exists()


def test_a_folder_without_the_raw_layout_is_refused_with_every_problem(project, tmp_path, prefect_api):
    from tierflow.flows.lifecycle.ingest import ingest

    raw = tmp_path / "messy"
    (raw / "empty_sample").mkdir(parents=True)
    (raw / "loose.tif").write_bytes(b"x")
    with pytest.raises(RawLayoutError) as info:
        ingest(str(raw), "messy", config_dir=str(project / "configs"))
    assert "loose.tif" in str(info.value) and "empty_sample" in str(info.value)
