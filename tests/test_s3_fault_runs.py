"""``tierflow ingest`` and ``tierflow promote`` with Tier 1 on S3 behind a faulty network
(issue 11): SeaweedFS behind ``tests/fault_proxy.py`` (the one fault injector: resets before and
after the server acted, bodies cut short, a close right after ``100 Continue``, latency; seeded,
~10 % of requests).

Each command completes, or fails cleanly (a one-line error, no traceback) and completes when run
again; none hangs (each is bounded by ``run_cli``'s timeout). Afterwards every object is re-read
straight from SeaweedFS (not through the proxy): every manifest and promotion checksum matches,
and no object on Tier 1 looks complete but is not. The tally (tried / completed first time /
completed on a re-run) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from sqlalchemy import select

from conftest import run_cli
from fault_proxy import FaultProxy
from tierflow.storage.db.models import Artifact
from tierflow.storage.db.repo import add_artifact, get_snapshot, start_run
from tierflow.storage.promotion import tree_digest

#: (seed, share of requests faulted): ~10 % as in the field, and 30 % runs that, before issue 11
#: was fixed, wedged ingest ("no object ...", seed 13) and broke promotion (IncompleteReadError).
#: ``S3_FAULT_RUNS="1:0.1,2:0.1"`` chooses others.
RUNS = [(int(seed), float(rate)) for seed, rate in
        (item.split(":") for item in os.environ.get("S3_FAULT_RUNS", "1:0.1,2:0.1,3:0.1,13:0.3,14:0.3").split(","))]
MAX_RERUNS = 2
TALLY: dict[str, list[int]] = {}


def _run_until_done(command: list[str], project, env, name: str) -> tuple[dict, int]:
    """Run a CLI command, re-running it after a clean failure; returns its JSON and the re-runs needed."""
    for attempt in range(MAX_RERUNS + 1):
        done = run_cli(*command, "--json", cwd=project, env=env, check=False)  # run_cli bounds it: a hang fails
        if done.returncode == 0:
            return json.loads(done.stdout), attempt
        assert "Traceback" not in done.stderr, f"{name} did not fail cleanly:\n{done.stderr[-3000:]}"
        assert done.stderr.strip(), f"{name} failed without a message"
        assert "no object" not in done.stderr and "IncompleteRead" not in done.stderr, done.stderr  # issue 11's messages
        print(f"\n{name} attempt {attempt + 1} failed cleanly: {done.stderr.strip().splitlines()[0][:300]}")
    raise AssertionError(f"{name} did not complete in {MAX_RERUNS + 1} runs:\n{done.stderr[-3000:]}")


def _direct_objects(client, bucket: str) -> dict[str, bytes]:
    """Every object of the bucket, read straight from SeaweedFS (claims left out)."""
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys if "/.tierflow-claims/" not in key}


def _stored_sha256(client, bucket: str, key: str) -> str | None:
    return client.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("sha256")


@pytest.fixture
def big_raw(raw_folder):
    """The small raw folder plus a 6.5 MB stack (a multipart upload, with its write-once claim)."""
    (raw_folder / "s3").mkdir()
    stack = np.random.default_rng(5).integers(0, 4000, (4, 1024, 800), dtype=np.uint16)
    tifffile.imwrite(raw_folder / "s3" / "emb_c0_t000.tif", stack, photometric="minisblack")
    return raw_folder


def _produce(project, snapshot_id: str) -> int:
    """A run with three Tier 2 artifacts (a table, a 6 MiB blob, a zarr array); returns its id."""
    from tierflow.configs import load_config, load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.tiers import open_tiers

    tiers = open_tiers(load_config(project / "configs"))
    table, blob = b"label,area\n1,10\n2,20\n", np.random.default_rng(7).bytes(6 * 1024 * 1024)
    tiers.output.put_bytes("run-x/features.csv", table)
    tiers.output.put_bytes("run-x/blob.bin", blob)
    array = zarr.create_array(store=tiers.output.zarr_store("run-x/labels.zarr"), shape=(6, 8), chunks=(3, 4), dtype="uint32")
    array[:] = np.arange(48, dtype=np.uint32).reshape(6, 8)
    zarr_sha = tree_digest(
        [(i.key.removeprefix("run-x/labels.zarr/"), tiers.output.sha256(i.key)) for i in tiers.output.list("run-x/labels.zarr")]
    )
    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        snapshot = get_snapshot(session, "embryo", snapshot_id)
        run = start_run(session, flow_name="pipeline")
        for kind, name, sha in (
            ("table", "features.csv", hashlib.sha256(table).hexdigest()),
            ("table", "blob.bin", hashlib.sha256(blob).hexdigest()),
            ("zarr", "labels.zarr", zarr_sha),
        ):
            uri = tiers.output.uri(f"run-x/{name}")
            add_artifact(
                session,
                kind=kind,
                name=name,
                tier="output",
                uri=uri,
                bytes=tiers.output.usage(f"run-x/{name}"),
                sha256=sha,
                run_id=run.id,
                dataset="embryo",
                snapshot_pk=snapshot.id,
                input_snapshots=[snapshot.id],
            )
        run_id = run.id
    db.dispose()
    return int(run_id)


def _check_snapshot(client, bucket: str, snapshot_id: str, objects: dict[str, bytes]) -> None:
    prefix = f"lab/snapshots/embryo/{snapshot_id}"
    manifest = json.loads(objects[f"{prefix}/manifest.json"])
    expected = {f"{prefix}/{entry['relative_path']}": entry for entry in manifest["files"]}
    assert set(k for k in objects if k.startswith("lab/snapshots/")) == {*expected, f"{prefix}/manifest.json"}
    for key, entry in expected.items():
        data = objects[key]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"]), key
        assert _stored_sha256(client, bucket, key) in (None, entry["sha256"]), key  # no lying metadata


def _check_promoted(project, client, bucket: str, objects: dict[str, bytes]) -> int:
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        copies = session.scalars(select(Artifact).where(Artifact.tier == "source")).all()
        originals = session.scalars(select(Artifact).where(Artifact.tier == "output")).all()
        assert all(a.promoted_at is not None for a in originals) and len(copies) == len(originals) == 3
        promoted = {k: v for k, v in objects.items() if k.startswith("lab/promoted/")}
        for copy in copies:
            key = "lab/" + copy.uri.split("/lab/", 1)[1]
            if copy.kind == "zarr":
                entries = [
                    (k.removeprefix(key + "/"), hashlib.sha256(v).hexdigest()) for k, v in promoted.items() if k.startswith(key + "/")
                ]
                assert tree_digest(entries) == copy.sha256, copy.uri
            else:
                assert hashlib.sha256(promoted[key]).hexdigest() == copy.sha256, copy.uri
                assert _stored_sha256(client, bucket, key) in (None, copy.sha256)
        recorded = {("lab/" + c.uri.split("/lab/", 1)[1]) for c in copies}
        assert all(any(k == r or k.startswith(r + "/") for r in recorded) for k in promoted)  # nothing unrecorded
    db.dispose()
    return len(promoted)


@pytest.mark.parametrize(("seed", "rate"), RUNS)
def test_ingest_and_promote_through_a_faulty_network(seed, rate, project, big_raw, seaweedfs_http, prefect_api):
    bucket = seaweedfs_http.new_bucket()
    client = seaweedfs_http.boto3_client()
    with FaultProxy(seaweedfs_http.endpoint_url.removeprefix("http://"), rate=rate, seed=seed) as proxy:
        (project / "configs" / "tierflow.user.toml").write_text(
            f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{proxy.url}"\n'
            f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\nverify = false\n'
            "multipart_threshold_mb = 5\nmultipart_chunk_mb = 5\n"
        )
        env = {"PREFECT_API_URL": prefect_api}
        ingested, ingest_reruns = _run_until_done(["ingest", str(big_raw), "--dataset", "embryo"], project, env, "ingest")
        run_id = _produce(project, ingested["snapshot_id"])
        _, promote_reruns = _run_until_done(["promote", "--run", str(run_id)], project, env, "promote")
    objects = _direct_objects(client, bucket)
    _check_snapshot(client, bucket, ingested["snapshot_id"], objects)
    promoted_objects = _check_promoted(project, client, bucket, objects)
    TALLY[f"seed {seed}"] = [ingest_reruns, promote_reruns]
    print(
        f"\nS3 fault run seed {seed} at {rate:.0%}: {proxy.counts['requests']} requests, {proxy.faults} faults {dict(proxy.counts)}; "
        f"ingest re-runs {ingest_reruns}, promote re-runs {promote_reruns}; {len(objects)} objects verified "
        f"({promoted_objects} promoted)"
    )
    tried = 2 * len(TALLY)
    first = sum(r == 0 for runs in TALLY.values() for r in runs)
    print(f"S3 fault runs so far: tried {tried}, completed first time {first}, completed on a re-run {tried - first}")
