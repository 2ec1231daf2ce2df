"""S3 under a faulty network (issue 11, points 5 and 7), on a real SeaweedFS behind
``tests/fault_proxy.py`` (the one fault injector, see its docstring): a body cut short is fetched
again and never kept, a local copy is reused only if it matches the manifest, and no request
waits forever — neither boto3's (a stalled answer, a close right after ``100 Continue``) nor
zarr's through obstore."""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest
import zarr

from fault_proxy import FaultProxy
from tierflow.storage.errors import IntegrityError, TransferError
from tierflow.storage.snapshots import Manifest, ManifestEntry, fetch_snapshot_path
from tierflow.storage.tiers import S3Tier, download_verified

MIB = 1024 * 1024
#: Far above what a bounded failure takes here (a few seconds), far below "forever".
BOUND_SECONDS = 60


def _tier(endpoint, bucket: str, url: str, **options) -> S3Tier:
    return S3Tier("source", f"s3://{bucket}/lab", endpoint_url=url, region=endpoint.region, access_key_id=endpoint.access_key,
                  secret_access_key=endpoint.secret_key, verify=False, multipart_threshold=5 * MIB,
                  multipart_chunksize=5 * MIB, **options)


@pytest.fixture
def stored(seaweedfs_http):
    """A 3 MiB object in a fresh bucket, written straight to SeaweedFS; its bytes and sha256."""
    bucket = seaweedfs_http.new_bucket()
    data = np.random.default_rng(1).integers(0, 256, 3 * MIB, dtype=np.uint8).tobytes()
    direct = _tier(seaweedfs_http, bucket, seaweedfs_http.endpoint_url, write_once=True)
    direct.put_bytes("snapshots/embryo/0123456789abcdef/s1/emb_c0_t000.tif", data)
    return {"bucket": bucket, "data": data, "sha256": hashlib.sha256(data).hexdigest(),
            "key": "snapshots/embryo/0123456789abcdef/s1/emb_c0_t000.tif"}


@pytest.fixture(params=["seaweedfs_http", pytest.param("ceph_rgw", marks=pytest.mark.ceph)])
def endpoint(request):
    """Where write-once semantics matter: SeaweedFS, and Ceph RGW (If-None-Match ignored on Complete)."""
    return request.getfixturevalue(request.param)


def _proxy(endpoint, **options) -> FaultProxy:
    return FaultProxy(endpoint.endpoint_url.removeprefix("http://"), **options)


def test_a_truncated_download_is_fetched_again_and_a_broken_local_copy_is_not_reused(seaweedfs_http, stored, tmp_path):
    size, sha256 = len(stored["data"]), stored["sha256"]
    local = tmp_path / "tmp" / "s1" / "emb_c0_t000.tif"
    local.parent.mkdir(parents=True)
    local.write_bytes(stored["data"][:32])  # what the cut-off download of issue 11 left behind
    with _proxy(seaweedfs_http, rate=1.0, modes=("truncate",), limit=1) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, write_once=True)
        assert download_verified(tier, stored["key"], local, size=size, sha256=sha256) == "downloaded"
    assert proxy.counts["truncate"] == 1  # the first body was cut short...
    assert hashlib.sha256(local.read_bytes()).hexdigest() == sha256  # ...and fetched again
    assert sorted(p.name for p in local.parent.iterdir()) == ["emb_c0_t000.tif"]  # no partial file left
    # a matching copy is reused without a single request
    with _proxy(seaweedfs_http, rate=1.0, modes=("reset",)) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, write_once=True)
        assert download_verified(tier, stored["key"], local, size=size, sha256=sha256) == "reused"
    assert proxy.counts["requests"] == 0


def test_the_pipeline_fetch_verifies_against_the_snapshot_manifest(seaweedfs_http, stored, tmp_path):
    tier = _tier(seaweedfs_http, stored["bucket"], seaweedfs_http.endpoint_url, write_once=True)
    entry = ManifestEntry("s1/emb_c0_t000.tif", len(stored["data"]), stored["sha256"])
    manifest = Manifest("embryo", (entry,))
    tier.copy(stored["key"], f"{manifest.prefix}/{entry.relative_path}")
    local_root = tmp_path / "pipeline-tmp"
    stale = local_root / entry.relative_path
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 32)
    with _proxy(seaweedfs_http, rate=1.0, modes=("truncate",), limit=2) as proxy:
        fetched = fetch_snapshot_path(
            _tier(seaweedfs_http, stored["bucket"], proxy.url, write_once=True), manifest, "s1/emb_c0_t000.tif", local_root
        )
    assert proxy.counts["truncate"] == 2 and fetched == stale
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == stored["sha256"]

    # the manifest says other bytes than Tier 1 holds: a clear error naming object and snapshot, nothing kept
    wrong = Manifest("embryo", (ManifestEntry("s1/emb_c0_t000.tif", len(stored["data"]), "0" * 64),))
    tier.copy(stored["key"], f"{wrong.prefix}/{entry.relative_path}")
    elsewhere = tmp_path / "other"
    with pytest.raises(IntegrityError) as info:
        fetch_snapshot_path(tier, wrong, "s1/emb_c0_t000.tif", elsewhere)
    message = str(info.value)
    assert tier.uri(f"{wrong.prefix}/s1/emb_c0_t000.tif") in message and f"snapshot embryo/{wrong.snapshot_id}" in message
    assert "3 attempt(s)" in message and "hint:" in message
    assert not any(p.is_file() for p in elsewhere.rglob("*"))


def test_a_stalled_answer_ends_in_a_bounded_time(seaweedfs_http, stored):
    with _proxy(seaweedfs_http, rate=1.0, modes=("stall",)) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, read_timeout=1, connect_timeout=1, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(TransferError, match="after 2 attempt") as info:
            tier.get_bytes(stored["key"])
        elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS and proxy.counts["stall"] == 2
    assert "hint:" in str(info.value) and stored["key"] in str(info.value)


def test_a_close_right_after_100_continue_ends_in_a_bounded_time(seaweedfs_http, stored, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MIB))
    with _proxy(seaweedfs_http, rate=1.0, modes=("close_after_continue",)) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, max_attempts=3, read_timeout=5)
        tier.write_once = False
        started = time.monotonic()
        with pytest.raises(TransferError):
            tier.put_file("uploads/big.bin", big)  # a file body: botocore sends Expect: 100-continue
        elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS and proxy.counts["close_after_continue"] == 3


def test_zarr_through_obstore_is_bounded_too(seaweedfs_http, stored):
    direct = _tier(seaweedfs_http, stored["bucket"], seaweedfs_http.endpoint_url)
    array = zarr.create_array(store=direct.zarr_store("arrays/a.zarr"), shape=(4, 4), chunks=(2, 2), dtype="uint16")
    array[:] = np.arange(16, dtype=np.uint16).reshape(4, 4)
    with _proxy(seaweedfs_http, rate=1.0, modes=("stall",)) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, read_timeout=1, connect_timeout=1, max_attempts=2)
        started = time.monotonic()
        with pytest.raises(Exception) as info:  # obstore's own error type
            zarr.open_array(store=tier.zarr_store("arrays/a.zarr", read_only=True))[:]
        elapsed = time.monotonic() - started
    assert elapsed < BOUND_SECONDS and proxy.counts["stall"] >= 1
    assert "timed out" in str(info.value).lower() or "timeout" in str(info.value).lower()


def test_a_claim_whose_answer_was_lost_is_still_ours(endpoint):
    """The claim PUT is carried out but its answer lost: the client's retry is refused by our own
    claim, which must not be mistaken for another writer's (that wedged the key for an hour)."""
    data, bucket = np.random.default_rng(2).bytes(6 * MIB), endpoint.new_bucket()
    with _proxy(endpoint, rate=1.0, modes=("reset_after",), limit=1, match=(b"PUT ", b".tierflow-claims")) as proxy:
        tier = _tier(endpoint, bucket, proxy.url, write_once=True)
        info = tier.put_bytes("claimed/big.bin", data)
    assert proxy.counts["reset_after"] == 1
    direct = endpoint.boto3_client().get_object(Bucket=bucket, Key="lab/claimed/big.bin")["Body"].read()
    assert hashlib.sha256(direct).hexdigest() == info.sha256 == hashlib.sha256(data).hexdigest()


def test_a_lost_complete_multipart_answer_leaves_the_right_object(endpoint):
    """CompleteMultipartUpload is carried out but its answer lost; the client retries it. Either
    the server accepts the retry, or tierflow accepts the object it finds with this upload's size
    and sha256; no upload is left behind."""
    data, bucket = np.random.default_rng(3).bytes(6 * MIB), endpoint.new_bucket()
    with _proxy(endpoint, rate=1.0, modes=("reset_after",), limit=1, match=(b"POST ", b"uploadId=")) as proxy:
        tier = _tier(endpoint, bucket, proxy.url, write_once=True)
        info = tier.put_bytes("completed/big.bin", data)
    assert proxy.counts["reset_after"] == 1
    client = endpoint.boto3_client()
    direct = client.get_object(Bucket=bucket, Key="lab/completed/big.bin")["Body"].read()
    assert hashlib.sha256(direct).hexdigest() == info.sha256 == hashlib.sha256(data).hexdigest()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_whole_object_reads_survive_a_body_cut_short(seaweedfs_http, stored):
    """Promotion's read-back check (``sha256``) and manifest reads (``get_bytes``) re-read a body cut short."""
    with _proxy(seaweedfs_http, rate=1.0, modes=("truncate",), limit=2, match=(b"GET ",)) as proxy:
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, write_once=True)
        assert tier.sha256(stored["key"]) == stored["sha256"]
        assert tier.get_bytes(stored["key"]) == stored["data"]
    assert proxy.counts["truncate"] == 2
    with _proxy(seaweedfs_http, rate=1.0, modes=("truncate",), match=(b"GET ",)) as proxy:  # cut short every time
        tier = _tier(seaweedfs_http, stored["bucket"], proxy.url, write_once=True, max_attempts=2)
        with pytest.raises(TransferError, match=stored["key"]):
            tier.get_bytes(stored["key"])
