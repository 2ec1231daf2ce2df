"""The README's lifecycle walk-through through the installed `tierflow` command: ingest (twice),
list, promote, retention --dry-run then for real, tiers, preflight."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import zarr

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.db.models import RetentionEvent
from tierflow.storage.db.repo import add_artifact, get_snapshot, start_run

from conftest import run_cli


def test_ingest_promote_retention_from_the_command_line(project, raw_folder, prefect_api):
    env = {"PREFECT_API_URL": prefect_api}
    first = run_cli("ingest", str(raw_folder), "--dataset", "embryo", cwd=project, env=env)
    snapshot_id = first.stdout.strip().splitlines()[-1]
    assert len(snapshot_id) == 16 and "new snapshot: 8 files" in first.stderr
    again = run_cli("ingest", str(raw_folder), "--dataset", "embryo", cwd=project, env=env)
    assert again.stdout.strip().splitlines()[-1] == snapshot_id and "already present" in again.stderr
    listed = json.loads(run_cli("snapshots", "list", "--json", cwd=project).stdout)
    assert [(s["dataset"], s["snapshot_id"], s["files"]) for s in listed] == [("embryo", snapshot_id, 8)]

    # a run derived a scratch array and a Tier 2 table from the snapshot
    configs = project / "configs"
    tiers = open_tiers(load_config(configs))
    smooth = zarr.create_array(store=tiers.scratch.zarr_store("run-1/smooth.zarr"), shape=(4, 8, 8), chunks=(2, 4, 4), dtype="float32")
    smooth[:] = np.ones((4, 8, 8), dtype="float32")
    table = b"label,area\n1,12\n"
    tiers.output.put_bytes("run-1/features.csv", table)
    db = open_database(load_db_config(configs))
    with db.session() as session:
        snapshot = get_snapshot(session, "embryo", snapshot_id)
        run = start_run(session, flow_name="pipeline")
        array = add_artifact(session, kind="zarr", name="smooth.zarr", tier="scratch", uri=tiers.scratch.uri("run-1/smooth.zarr"),
                             bytes=tiers.scratch.usage("run-1/smooth.zarr"), run_id=run.id, dataset="embryo",
                             snapshot_pk=snapshot.id, input_snapshots=[snapshot.id])
        add_artifact(session, kind="table", name="features.csv", tier="output", uri=tiers.output.uri("run-1/features.csv"),
                     bytes=len(table), sha256=hashlib.sha256(table).hexdigest(), run_id=run.id, dataset="embryo",
                     snapshot_pk=snapshot.id, inputs=[array.id])
        run_id, array_bytes = run.id, array.bytes

    # before promotion nothing is reclaimable from scratch
    dry = json.loads(run_cli("retention", "--dry-run", "--json", cwd=project, env=env).stdout)
    assert dry["plan"] == []

    promoted = json.loads(run_cli("promote", "--run", str(run_id), "--json", cwd=project, env=env).stdout)
    assert len(promoted["promoted"]) == 1
    key = tiers.source.key_of(promoted["promoted"][0]["uri"])
    assert key == f"promoted/embryo/{snapshot_id}/run-{run_id}/features.csv" and tiers.source.get_bytes(key) == table

    dry = json.loads(run_cli("retention", "--dry-run", "--json", cwd=project, env=env).stdout)
    assert [(item["uri"], item["bytes"]) for item in dry["plan"]] == [(tiers.scratch.uri("run-1/smooth.zarr"), array_bytes)]
    assert dry["accounting"]["scratch"]["reclaimable"] == array_bytes
    assert tiers.scratch.exists("run-1/smooth.zarr/zarr.json")  # a dry run deletes nothing

    real = json.loads(run_cli("retention", "--json", cwd=project, env=env).stdout)
    assert [(item["uri"], item["bytes"]) for item in real["plan"]] == [(item["uri"], item["bytes"]) for item in dry["plan"]]
    assert list(tiers.scratch.list("run-1")) == []
    assert tiers.output.exists("run-1/features.csv")  # still inside its grace period
    with db.session() as session:
        events = session.query(RetentionEvent).all()
        assert [(e.uri, e.bytes, e.action) for e in events] == [(tiers.scratch.uri("run-1/smooth.zarr"), array_bytes, "deleted")]
    db.dispose()

    table_out = run_cli("retention", "--dry-run", cwd=project, env=env).stdout
    assert "would delete 0 item(s)" in table_out and "storage per tier" in table_out

    listed_tiers = {row["tier"]: row for row in json.loads(run_cli("tiers", "--json", cwd=project).stdout)}
    assert listed_tiers["source"]["write_once"] is True and listed_tiers["scratch"]["write_once"] is False
    assert listed_tiers["source"]["used_bytes"] == tiers.source.usage("")

    artifacts = json.loads(run_cli("artifacts", "list", "--all", "--json", cwd=project).stdout)
    assert sorted((a["name"], a["tier"], a["deleted_at"] is not None, a["promoted_at"] is not None) for a in artifacts) == [
        ("features.csv", "output", False, True),   # the Tier 2 original, promoted
        ("features.csv", "source", False, False),  # its verified Tier 1 copy
        ("smooth.zarr", "scratch", True, False),   # consumed scratch, reclaimed
    ]


def test_preflight_from_the_command_line(project, raw_folder):
    stack = raw_folder / "s1" / "emb_c0_t000.tif"
    report = json.loads(run_cli("preflight", str(stack), "--block-shape", "2,16,16", "--workers", "2", "--json", cwd=project).stdout)
    assert report["ram_level"] == "ok" and report["peak_ram_bytes"] > 0
    done = run_cli("preflight", str(stack), "--block-shape", "2,16,16", "--workers", "2", cwd=project)
    assert "peak RAM" in done.stdout
