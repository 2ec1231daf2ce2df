"""The S3 path whole, on SeaweedFS and on a real Ceph RADOS Gateway: ingest -> pipeline ->
promote -> retention with Tier 1 in a bucket, and a run with scratch and output in the same
bucket too. Every promoted artifact is read back from the bucket with a client of its own and
hashed against the digest tierflow recorded; the run's scratch is gone from its tier and marked
deleted; the objects equal a whole-volume SciPy segmentation of the same data."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from sqlalchemy import text

from conftest import run_cli
from test_pipeline import _reference_objects

SERVERS = ["seaweedfs_http", pytest.param("ceph_rgw", marks=pytest.mark.ceph)]
SIGMA = 1.5


def _s3_tier_toml(name: str, endpoint, bucket: str, prefix: str) -> str:
    verify = f'"{endpoint.verify}"' if isinstance(endpoint.verify, str) else str(endpoint.verify).lower()
    return (f'[tiers.{name}]\nbackend = "s3"\nroot = "s3://{bucket}/{prefix}"\nendpoint_url = "{endpoint.endpoint_url}"\n'
            f'access_key_id = "{endpoint.access_key}"\nsecret_access_key = "{endpoint.secret_key}"\nverify = {verify}\n'
            "multipart_threshold_mb = 5\nmultipart_chunk_mb = 5\n\n")


def _bucket_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/`` (relative key -> bytes), read straight from the bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _read_back_digest(client, bucket: str, key: str) -> tuple[str, int]:
    """sha256 (a folder: tierflow's tree digest, computed here independently) and bytes of an
    object or folder of objects in the bucket."""
    try:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return hashlib.sha256(data).hexdigest(), len(data)
    except client.exceptions.NoSuchKey:
        pass
    objects = _bucket_objects(client, bucket, key)
    assert objects, f"nothing at s3://{bucket}/{key}"
    lines = "".join(f"{relative}\0{hashlib.sha256(data).hexdigest()}\n" for relative, data in sorted(objects.items()))
    return hashlib.sha256(lines.encode()).hexdigest(), sum(len(data) for data in objects.values())


@pytest.fixture(params=SERVERS)
def endpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def small_raw(tmp_path):
    from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw

    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SyntheticSpec(samples=1, time_points=2, shape=(16, 96, 96), cells=4, divisions=1, touching_pairs=0,
                                           radius=(3.0, 7.0, 7.0)))
    return raw


@pytest.mark.parametrize("on_s3", [("source",), ("source", "output", "scratch")], ids=["tier1", "all-tiers"])
def test_pipeline_with_tiers_on_s3_promotes_verified_copies_and_reclaims_scratch(project, small_raw, endpoint, on_s3, prefect_api):
    bucket = endpoint.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        "".join(_s3_tier_toml(name, endpoint, bucket, f"lab/{name}") for name in on_s3)
        + '[pipeline]\nblock_shape = [8, 96, 96]\npyramid_levels = 2\n')
    env = {"PREFECT_API_URL": prefect_api}
    result = json.loads(run_cli("run", "pipeline", "--dataset", "embryo", "--raw", str(small_raw), "--param", f"sigma={SIGMA}",
                                "--json", cwd=project, env=env).stdout)
    client = endpoint.boto3_client()
    snapshot = f"lab/source/snapshots/embryo/{result['snapshot_id']}"
    assert json.loads(client.get_object(Bucket=bucket, Key=f"{snapshot}/manifest.json")["Body"].read())["files"]

    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        promoted = session.execute(text("SELECT uri, sha256, bytes FROM artifacts WHERE tier = 'source'")).all()
        scratch = session.execute(text("SELECT uri, deleted_at FROM artifacts WHERE tier = 'scratch' AND run_id = :r"),
                                  {"r": result["run_id"]}).all()
    db.dispose()
    # every promoted artifact, re-read from the bucket, hashes to the digest recorded at promotion
    assert len(promoted) == len(result["promoted"]) == 1 + 4 + 2  # 1 sample image (2 time points, labels), 4 tables, 2 reports
    for uri, sha256, size in promoted:
        assert uri.startswith(f"s3://{bucket}/lab/source/promoted/embryo/{result['snapshot_id']}/"), uri
        assert _read_back_digest(client, bucket, uri[len(f"s3://{bucket}/"):]) == (sha256, size), uri
    # this run's scratch is gone from its tier and marked deleted
    assert scratch and all(deleted is not None for _, deleted in scratch)
    if "scratch" in on_s3:
        assert all(uri.startswith(f"s3://{bucket}/lab/scratch/") for uri, _ in scratch)
        assert not [key for key in _bucket_objects(client, bucket, "lab/scratch") if ".zarr/" in key]
    else:
        assert not any((project / "var" / "tier3-scratch").rglob("*.zarr"))
    assert result["tier_usage"]["reclaimed"] == result["tier_usage"]["written_scratch"] > 0
    # the objects, read back from Tier 1, are a whole-volume segmentation's
    objects_key = result["promoted"]["tables/objects.csv"][len(f"s3://{bucket}/"):]
    objects = pd.read_csv(client.get_object(Bucket=bucket, Key=objects_key)["Body"])
    reference = _reference_objects(small_raw, sigma=SIGMA)
    pd.testing.assert_series_equal(objects.groupby(["sample", "time_point"]).size(),
                                   reference.groupby(["sample", "time_point"]).size(), check_names=False)
    assert len(objects) == result["objects"] > 0
