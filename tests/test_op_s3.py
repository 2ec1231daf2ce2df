"""`tierflow op` with TIFF inputs on S3 (a stack, a folder of slices) and outputs on S3, against
SeaweedFS and a real Ceph RADOS Gateway; an output on a write-once (Tier 1) or read-only tier
is refused before any work with one line naming the URI and the tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage
from zarr.storage import ObjectStore

from conftest import run_cli
from tierflow.tasks.ops.filters import cast_output

SERVERS = ["seaweedfs_http", pytest.param("ceph_rgw", marks=pytest.mark.ceph)]
SHAPE = (7, 40, 33)


@pytest.fixture(params=SERVERS)
def endpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def s3_project(project, endpoint):
    """A project with Tier 1 and scratch in one bucket (``lab/source``, ``lab/scratch``)."""
    bucket = endpoint.new_bucket()
    text = ""
    for name in ("source", "scratch"):
        text += (f'[tiers.{name}]\nbackend = "s3"\nroot = "s3://{bucket}/lab/{name}"\nendpoint_url = "{endpoint.endpoint_url}"\n'
                 f'access_key_id = "{endpoint.access_key}"\nsecret_access_key = "{endpoint.secret_key}"\nverify = false\n\n')
    (project / "configs" / "tierflow.user.toml").write_text(text)
    return project, bucket, endpoint


def _upload_tiff(client, bucket: str, key: str, data: np.ndarray, tmp_path: Path, *, slices: bool) -> None:
    """Put a TIFF stack (or a folder of 2-D slices) in the bucket as another program would:
    plain PUTs, no tierflow metadata."""
    if not slices:
        tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
        client.upload_file(str(tmp_path / "stack.tif"), bucket, key)
        return
    for z, plane in enumerate(data):
        tifffile.imwrite(tmp_path / f"z{z:04d}.tif", plane, photometric="minisblack")
        client.upload_file(str(tmp_path / f"z{z:04d}.tif"), bucket, f"{key}/z{z:04d}.tif")


def _read_zarr(endpoint, bucket: str, key: str) -> np.ndarray:
    """An output array read straight from the bucket (obstore, not through tierflow)."""
    return zarr.open_array(store=ObjectStore(endpoint.obstore_store(bucket, prefix=key), read_only=True), mode="r")[:]


@pytest.mark.parametrize("slices", [False, True], ids=["stack", "slices"])
def test_op_reads_a_tiff_on_s3_and_writes_to_s3(s3_project, tmp_path, prefect_api, slices):
    project, bucket, endpoint = s3_project
    data = np.random.default_rng(5).integers(0, 4000, SHAPE, dtype=np.uint16)
    key = "incoming/emb_c0_t000" + ("" if slices else ".tif")
    _upload_tiff(endpoint.boto3_client(), bucket, key, data, tmp_path, slices=slices)
    env = {"PREFECT_API_URL": prefect_api}
    params = ["-p", "sigma=1.5", "-p", "backend=scipy", "-p", "mode=reflect", "-p", "truncate=4"]
    args = ["op", "gaussian", "-i", f"s3://{bucket}/{key}", "-o", f"s3://{bucket}/lab/scratch/smooth.zarr", *params,
            "--block-shape", "4,16,16", "--json"]
    first = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    assert first["computed"] == first["blocks"] == 2 * 3 * 3
    expected = cast_output(ndimage.gaussian_filter(data.astype(np.float32), 1.5, mode="reflect", truncate=4.0), "uint16")
    np.testing.assert_array_equal(_read_zarr(endpoint, bucket, "lab/scratch/smooth.zarr"), expected)
    # the same input again: the verified local copy is reused and the ledger answers, nothing is computed
    again = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    assert again["computed"] == 0 and again["op_key"] == first["op_key"]


def test_a_download_that_does_not_match_the_recorded_sha256_is_refused(s3_project, tmp_path):
    from tierflow.configs import load_config
    from tierflow.flows.ops.flow import locate_input
    from tierflow.storage.errors import IntegrityError

    project, bucket, endpoint = s3_project
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros(SHAPE, np.uint16), photometric="minisblack")
    # an object whose recorded sha256 (tierflow's metadata) is not that of its bytes
    endpoint.boto3_client().put_object(Bucket=bucket, Key="incoming/bad.tif", Body=(tmp_path / "stack.tif").read_bytes(),
                                       Metadata={"sha256": "0" * 64})
    config = load_config(project / "configs")
    with pytest.raises(IntegrityError, match=f"s3://{bucket}/incoming/bad.tif"):
        locate_input(config, f"s3://{bucket}/incoming/bad.tif")
    assert not [p for p in (config.tmp_dir / "s3-inputs").rglob("*") if p.is_file()]  # nothing kept


@pytest.mark.parametrize("where", ["lab/source/results/smooth.zarr", "elsewhere/smooth.zarr"], ids=["in-tier1", "tier1-bucket"])
def test_an_output_on_a_write_once_s3_tier_is_refused_before_any_work(s3_project, tmp_path, prefect_api, where):
    project, bucket, endpoint = s3_project
    client = endpoint.boto3_client()
    _upload_tiff(client, bucket, "incoming/in.tif", np.ones(SHAPE, np.uint16), tmp_path, slices=False)
    before = {item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    done = run_cli("op", "convert", "-i", f"s3://{bucket}/incoming/in.tif", "-o", f"s3://{bucket}/{where}", cwd=project,
                   env={"PREFECT_API_URL": prefect_api}, check=False)
    root = f"s3://{bucket}/lab/source" if where.startswith("lab/source") else f"s3://{bucket}"
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.strip().splitlines()[0]
    if where.startswith("lab/source"):  # inside Tier 1's root: the placement check answers first
        assert first == (f"error: output s3://{bucket}/{where} lies inside Tier 1 ({root}), which is write-once: "
                         "an op never writes there"), done.stderr
    else:  # elsewhere in Tier 1's bucket: the tier's write-once capability refuses it
        assert first == (f"error: output s3://{bucket}/{where} is on tier source ({root}), which is write-once: "
                         "an operation cannot write there"), done.stderr
    assert "tierflow promote" in done.stderr
    assert {item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", [])} == before
    assert not (project / "var" / "tier4-ephemeral" / "tmp" / "s3-inputs").exists()  # the input was not even fetched


def test_an_output_on_a_read_only_tier_is_refused(s3_project):
    """No configured tier is read-only today (a backend declares it); the capability is honoured."""
    from tierflow.configs import load_config
    from tierflow.flows.ops.flow import output_location
    from tierflow.flows.runtime.tiers import s3_tier_of
    from tierflow.storage.arrays import ArrayLocation, check_writable
    from tierflow.storage.errors import TierError

    project, bucket, _ = s3_project
    config = load_config(project / "configs")
    location = output_location(config, f"s3://{bucket}/lab/scratch/ok.zarr")  # scratch takes writes
    assert location.tier.name == "scratch" and location.key == "ok.zarr"
    tier, key = s3_tier_of(config, f"s3://{bucket}/lab/scratch/ok.zarr")
    tier.read_only = True
    with pytest.raises(TierError, match=rf"output s3://{bucket}/lab/scratch/ok.zarr is on tier scratch .* read-only"):
        check_writable(ArrayLocation(tier, key))
