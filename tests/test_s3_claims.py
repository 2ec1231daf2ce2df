"""A multipart upload to Tier 1 killed midway (issue 11, point 6), on SeaweedFS and on the real
Ceph RGW (which ignores If-None-Match on CompleteMultipartUpload: that is why claims exist).

A real process is SIGKILLed during a real multipart upload (slowed by ``tests/fault_proxy.py``'s
latency so the kill lands between parts). The re-run names the claim, its age and when it goes
stale; once stale (``claim_stale_seconds``, a per-tier config key), retention lists (dry run)
and clears the unfinished upload and the claim, and the upload then succeeds; an upload to the
same key clears them on its own too."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from conftest import REPO_ROOT, run_cli
from fault_proxy import FaultProxy
from tierflow.storage.db.models import RetentionEvent
from tierflow.storage.errors import KeyClaimedError
from tierflow.storage.retention import apply_retention, plan_leftovers
from tierflow.storage.tiers import S3Tier

MIB = 1024 * 1024
KEY = "snapshots/embryo/0123456789abcdef/s1/emb_c0_t000.tif"
WAIT_SECONDS = 120

#: The killed writer: a write-once multipart upload, one 5 MiB part at a time.
WRITER = """
import os, sys
from tierflow.storage.tiers import S3Tier
tier = S3Tier("source", os.environ["ROOT"], endpoint_url=os.environ["URL"], access_key_id=os.environ["AK"],
              secret_access_key=os.environ["SK"], verify=False, multipart_threshold=5 << 20, multipart_chunksize=5 << 20,
              max_concurrency=1, write_once=True)
tier.put_file(os.environ["KEY"], sys.argv[1])
"""


def _tier(endpoint, bucket: str, **options) -> S3Tier:
    return S3Tier("source", f"s3://{bucket}/lab", endpoint_url=endpoint.endpoint_url, region=endpoint.region,
                  access_key_id=endpoint.access_key, secret_access_key=endpoint.secret_key, verify=False,
                  multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, write_once=True, **options)


def _wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {WAIT_SECONDS} s")


def _uploads(endpoint, bucket: str) -> list[dict]:
    return endpoint.boto3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _parts(endpoint, bucket: str) -> int:
    client = endpoint.boto3_client()
    return sum(len(client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []))
               for u in _uploads(endpoint, bucket))


def _killed_upload(endpoint, bucket: str, data_file, key: str = KEY) -> int:
    """Start a write-once multipart upload of ``data_file`` to ``key`` in a child process and
    SIGKILL it once a part is stored; returns the child's pid."""
    with FaultProxy(endpoint.endpoint_url.removeprefix("http://"), rate=1.0, modes=("latency",), seed=3) as proxy:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ROOT": f"s3://{bucket}/lab", "URL": proxy.url,
               "AK": endpoint.access_key, "SK": endpoint.secret_key, "KEY": key}
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(data_file)], env=env, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: _parts(endpoint, bucket) >= 1 or child.poll() is not None, "a first part")
            assert child.poll() is None, child.stderr.read().decode()
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=WAIT_SECONDS)
            child.stderr.close()
    return child.pid


@pytest.fixture(params=["seaweedfs_http", pytest.param("ceph_rgw", marks=pytest.mark.ceph)])
def endpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "big.tif"
    path.write_bytes(os.urandom(16 * MIB))
    return path


def test_a_killed_upload_is_named_then_cleared_by_retention(endpoint, data_file, db):
    bucket = endpoint.new_bucket()
    pid = _killed_upload(endpoint, bucket, data_file)
    tier = _tier(endpoint, bucket)
    assert not tier.exists(KEY) and len(_uploads(endpoint, bucket)) == 1

    with pytest.raises(KeyClaimedError) as info:  # the re-run at once: the claim is named, not "no object"
        tier.put_file(KEY, data_file)
    message = str(info.value)
    assert tier.uri(f".tierflow-claims/{KEY}") in message and f"pid {pid}" in message
    assert "s old" in message and "goes stale at" in message and "claim_stale_seconds = 3600" in message
    assert "no object" not in message and "[tiers.source].claim_stale_seconds" in info.value.hint
    assert tier.leftovers(datetime.now(UTC)) == []  # nothing is stale within the hour

    tier = _tier(endpoint, bucket, claim_stale_seconds=1)
    leftovers = _wait_for(lambda: len(tier.leftovers(datetime.now(UTC))) == 2 and tier.leftovers(datetime.now(UTC)), "stale debris")
    assert sorted((item.kind, item.key) for item in leftovers) == [("claim", KEY), ("multipart-upload", KEY)]
    upload = next(item for item in leftovers if item.kind == "multipart-upload")
    assert upload.bytes >= 5 * MIB and upload.upload_id == _uploads(endpoint, bucket)[0]["UploadId"]

    plan = plan_leftovers({"source": tier}, datetime.now(UTC))  # a dry run: listed, nothing touched
    assert {item.uri for item in plan} == {item.uri for item in leftovers} and len(_uploads(endpoint, bucket)) == 1
    with db.session() as session:
        apply_retention(session, {"source": tier}, plan, run_id=None, now=datetime.now(UTC))
    assert _uploads(endpoint, bucket) == []
    claims = endpoint.boto3_client().list_objects_v2(Bucket=bucket, Prefix="lab/.tierflow-claims/").get("KeyCount", 0)
    assert claims == 0
    with db.session() as session:
        assert sorted(e.uri for e in session.scalars(select(RetentionEvent))) == sorted(item.uri for item in plan)

    tier.put_file(KEY, data_file)  # the key is free again
    stored = endpoint.boto3_client().get_object(Bucket=bucket, Key=f"lab/{KEY}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(data_file.read_bytes()).hexdigest()


def test_an_upload_to_the_same_key_clears_a_stale_claim_and_upload(endpoint, data_file):
    bucket = endpoint.new_bucket()
    _killed_upload(endpoint, bucket, data_file)
    tier = _tier(endpoint, bucket, claim_stale_seconds=1)
    _wait_for(lambda: len(tier.leftovers(datetime.now(UTC))) == 2, "stale debris")
    info = tier.put_file(KEY, data_file)
    assert info.sha256 == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert _uploads(endpoint, bucket) == []  # the killed upload was aborted, not left to take space
    stored = endpoint.boto3_client().get_object(Bucket=bucket, Key=f"lab/{KEY}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == info.sha256
    # the new claim stays (it keeps a late writer out), and goes once stale
    assert [item.kind for item in _wait_for(lambda: tier.leftovers(datetime.now(UTC)), "the finished claim")] == ["claim"]


def test_retention_lists_and_clears_debris_of_an_s3_tier_1(project, seaweedfs_http, data_file, prefect_api):
    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{seaweedfs_http.endpoint_url}"\n'
        f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\nverify = false\n'
        "claim_stale_seconds = 1\nconnect_timeout_seconds = 3\nread_timeout_seconds = 30\nmax_attempts = 4\nretry_mode = \"adaptive\"\n"
    )
    from tierflow.configs import load_config
    from tierflow.flows.runtime.tiers import open_tiers

    source = open_tiers(load_config(project / "configs")).source
    assert (source.claim_stale_seconds, source.connect_timeout, source.read_timeout, source.max_attempts, source.retry_mode) == (
        1, 3, 30, 4, "adaptive")
    _killed_upload(seaweedfs_http, bucket, data_file)
    _wait_for(lambda: len(source.leftovers(datetime.now(UTC))) == 2, "stale debris")
    env = {"PREFECT_API_URL": prefect_api}
    dry = json.loads(run_cli("retention", "--dry-run", "--json", cwd=project, env=env).stdout)
    listed = [item for item in dry["plan"] if item["tier"] == "source"]
    assert sorted(item["leftover"]["kind"] for item in listed) == ["claim", "multipart-upload"]
    assert all(KEY in item["uri"] for item in listed) and len(_uploads(seaweedfs_http, bucket)) == 1
    done = json.loads(run_cli("retention", "--json", cwd=project, env=env).stdout)
    assert sorted(item["uri"] for item in done["plan"] if item["tier"] == "source") == sorted(item["uri"] for item in listed)
    assert _uploads(seaweedfs_http, bucket) == []
    again = json.loads(run_cli("retention", "--dry-run", "--json", cwd=project, env=env).stdout)
    assert [item for item in again["plan"] if item["tier"] == "source"] == []


def test_ingest_after_a_killed_upload_names_the_claim_then_completes(project, raw_folder, seaweedfs_http, prefect_api):
    """The user's path of issue 11: the snapshot upload was killed; the re-run names the claim
    (not "no object"); with a short claim_stale_seconds the next re-run completes."""
    import numpy as np
    import tifffile

    from tierflow.storage.snapshots import build_manifest

    (raw_folder / "s3").mkdir()
    big = raw_folder / "s3" / "emb_c0_t000.tif"
    tifffile.imwrite(big, np.random.default_rng(5).integers(0, 4000, (10, 1024, 800), dtype=np.uint16), photometric="minisblack")
    snapshot_id = build_manifest(raw_folder, "embryo").snapshot_id
    key = f"snapshots/embryo/{snapshot_id}/s3/emb_c0_t000.tif"
    bucket = seaweedfs_http.new_bucket()
    settings = (f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{seaweedfs_http.endpoint_url}"\n'
                f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\n'
                "verify = false\nmultipart_threshold_mb = 5\nmultipart_chunk_mb = 5\n")
    (project / "configs" / "tierflow.user.toml").write_text(settings)
    pid = _killed_upload(seaweedfs_http, bucket, big, key)
    env = {"PREFECT_API_URL": prefect_api}

    rerun = run_cli("ingest", str(raw_folder), "--dataset", "embryo", cwd=project, env=env, check=False)
    assert rerun.returncode != 0 and "Traceback" not in rerun.stderr
    shown = rerun.stdout + rerun.stderr
    assert f"s3://{bucket}/lab/.tierflow-claims/{key}" in shown and f"pid {pid}" in shown and "goes stale at" in shown
    assert "claim_stale_seconds" in shown and "no object" not in shown

    (project / "configs" / "tierflow.user.toml").write_text(settings + "claim_stale_seconds = 1\n")
    client = seaweedfs_http.boto3_client()
    _wait_for(lambda: (datetime.now(UTC) - client.head_object(Bucket=bucket, Key=f"lab/.tierflow-claims/{key}")["LastModified"])
              .total_seconds() > 1, "a stale claim")
    done = json.loads(run_cli("ingest", str(raw_folder), "--dataset", "embryo", "--json", cwd=project, env=env).stdout)
    assert done["snapshot_id"] == snapshot_id
    stored = client.get_object(Bucket=bucket, Key=f"lab/{key}")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert _uploads(seaweedfs_http, bucket) == []  # the killed upload was aborted by the re-run
