"""Sharded op outputs (``[execution].shard_outputs``): each block is one zarr v3 shard holding
small chunks, on local disk and on S3 (SeaweedFS, and Ceph RGW when marked): the values are
SciPy's, the layout and the objects stored are what the setting promises, a re-run is answered
by the ledger, and an output of the other layout is refused before any work, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage
from zarr.storage import ObjectStore

from conftest import run_cli
from tierflow.tasks.ops.filters import cast_output

SHAPE = (16, 64, 48)
BLOCK = (8, 32, 32)
BLOCKS = 2 * 2 * 2
INNER = (8, 8, 8)  # each axis cut in 4 (or 2) where that leaves at least 8 voxels
SHARDED = {"TIERFLOW_EXECUTION__SHARD_OUTPUTS": "true"}


class Local:
    """Outputs as local zarr folders; inputs too."""

    def __init__(self, project: Path, tmp_path: Path) -> None:
        self.project, self.root = project, tmp_path / "data"
        self.root.mkdir()

    def uri(self, name: str) -> str:
        return str(self.root / name)

    def read(self, name: str) -> zarr.Array:
        return zarr.open_array(self.root / name, mode="r")

    def objects(self, name: str) -> list[str]:
        return sorted(str(p.relative_to(self.root / name)) for p in (self.root / name).rglob("*") if p.is_file())


class OnS3:
    """Outputs in the scratch tier's bucket, read back straight from the bucket (obstore, not
    through tierflow); the input is uploaded there as another program would."""

    def __init__(self, project: Path, endpoint, bucket: str) -> None:
        self.project, self.endpoint, self.bucket = project, endpoint, bucket

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/lab/scratch/{name}"

    def read(self, name: str) -> zarr.Array:
        store = ObjectStore(self.endpoint.obstore_store(self.bucket, prefix=f"lab/scratch/{name}"), read_only=True)
        return zarr.open_array(store=store, mode="r")

    def objects(self, name: str) -> list[str]:
        listed = self.endpoint.boto3_client().list_objects_v2(Bucket=self.bucket, Prefix=f"lab/scratch/{name}/")
        return sorted(item["Key"][len(f"lab/scratch/{name}/"):] for item in listed.get("Contents", []))


@pytest.fixture(params=["local", "seaweedfs_http", pytest.param("ceph_rgw", marks=pytest.mark.ceph)])
def place(request, project, tmp_path):
    if request.param == "local":
        return Local(project, tmp_path)
    endpoint = request.getfixturevalue(request.param)
    bucket = endpoint.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.scratch]\nbackend = "s3"\nroot = "s3://{bucket}/lab/scratch"\nendpoint_url = "{endpoint.endpoint_url}"\n'
        f'access_key_id = "{endpoint.access_key}"\nsecret_access_key = "{endpoint.secret_key}"\nverify = false\n')
    return OnS3(project, endpoint, bucket)


@pytest.fixture
def volume(tmp_path) -> tuple[str, np.ndarray]:
    data = ndimage.gaussian_filter(np.random.default_rng(7).random(SHAPE), 1.5) * 40000
    data = data.astype(np.uint16)
    array = zarr.create_array(tmp_path / "in.zarr", shape=SHAPE, chunks=BLOCK, dtype=data.dtype)
    array[:] = data
    return str(tmp_path / "in.zarr"), data


def _op(place, *args: str, env: dict[str, str] | None = None, check: bool = True):
    return run_cli("op", *args, "--block-shape", ",".join(map(str, BLOCK)), "--json", cwd=place.project, env=env, check=check)


def _check_sharded(place, name: str) -> zarr.Array:
    array = place.read(name)
    assert tuple(array.shards) == BLOCK and tuple(array.chunks) == INNER
    codecs = json.loads(json.dumps(array.metadata.to_dict()))["codecs"]
    assert codecs[0]["name"] == "sharding_indexed" and tuple(codecs[0]["configuration"]["chunk_shape"]) == INNER
    # one object per block, as unsharded, plus zarr.json
    assert place.objects(name) == sorted(["zarr.json", *(f"c/{z}/{y}/{x}" for z in range(2) for y in range(2) for x in range(2))])
    return array


def test_a_sharded_gaussian_and_label_equal_scipy_and_store_one_object_per_block(place, volume, prefect_api):
    source, data = volume
    env = {**SHARDED, "PREFECT_API_URL": prefect_api}
    first = json.loads(_op(place, "gaussian", "-i", source, "-o", place.uri("smooth.zarr"), "-p", "sigma=1.5", env=env).stdout)
    assert first["computed"] == first["blocks"] == BLOCKS
    smooth = _check_sharded(place, "smooth.zarr")
    expected = cast_output(ndimage.gaussian_filter(data.astype(np.float32), 1.5, mode="reflect", truncate=4.0), "uint16")
    assert np.abs(smooth[:].astype(np.int64) - expected).max() <= 1
    # a re-run is the ledger's answer; the same request unsharded is another output layout
    again = json.loads(_op(place, "gaussian", "-i", source, "-o", place.uri("smooth.zarr"), "-p", "sigma=1.5", env=env).stdout)
    assert again["computed"] == 0 and again["op_key"] == first["op_key"]

    value = int(np.percentile(expected, 80))  # some 30 objects, many across blocks
    mask = smooth[:] > value
    _op(place, "threshold", "-i", place.uri("smooth.zarr"), "-o", place.uri("mask.zarr"), "-p", f"value={value}", env=env)
    np.testing.assert_array_equal(_check_sharded(place, "mask.zarr")[:] > 0, mask)
    _op(place, "label", "-i", place.uri("mask.zarr"), "-o", place.uri("labels.zarr"), "-p", "connectivity=26", env=env)
    labels = _check_sharded(place, "labels.zarr")[:]
    reference, count = ndimage.label(mask, np.ones((3, 3, 3)))
    assert count > 10 and labels.max() == count
    pairs = set(zip(labels.ravel().tolist(), reference.ravel().tolist(), strict=True))
    assert len(pairs) == count + 1 and {a for a, _ in pairs} == set(range(count + 1))  # the same partition


def test_an_output_of_the_other_layout_is_refused_before_any_work_and_keeps_its_ledger(place, volume, prefect_api):
    source, _ = volume
    env = {"PREFECT_API_URL": prefect_api}
    _op(place, "gaussian", "-i", source, "-o", place.uri("smooth.zarr"), "-p", "sigma=1", env=env)
    before = place.objects("smooth.zarr")
    before_values = place.read("smooth.zarr")[:]
    assert place.read("smooth.zarr").shards is None and len(before) == BLOCKS + 1
    done = _op(place, "gaussian", "-i", source, "-o", place.uri("smooth.zarr"), "-p", "sigma=1", env={**env, **SHARDED}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    first = done.stderr.strip().splitlines()[0]
    assert place.uri("smooth.zarr") in first and f"chunks {BLOCK}" in first and f"chunks {INNER} in shards {BLOCK}" in first, done.stderr
    assert "set shard_outputs = false" in done.stderr  # the setting that writes into it
    assert place.objects("smooth.zarr") == before
    np.testing.assert_array_equal(place.read("smooth.zarr")[:], before_values)
    again = json.loads(_op(place, "gaussian", "-i", source, "-o", place.uri("smooth.zarr"), "-p", "sigma=1", env=env).stdout)
    assert again["computed"] == 0, again  # the refused run made no done block stale
    # the other way round: a sharded output refuses an unsharded run, and another block shape
    _op(place, "gaussian", "-i", source, "-o", place.uri("sharded.zarr"), "-p", "sigma=1", env={**env, **SHARDED})
    refused = _op(place, "gaussian", "-i", source, "-o", place.uri("sharded.zarr"), "-p", "sigma=1", env=env, check=False)
    assert refused.returncode == 1 and f"chunks {INNER} in shards {BLOCK}" in refused.stderr, refused.stderr
    assert "set shard_outputs = true" in refused.stderr
    other = run_cli("op", "gaussian", "-i", source, "-o", place.uri("sharded.zarr"), "-p", "sigma=2", "--block-shape", "16,16,16",
                    cwd=place.project, env={**env, **SHARDED}, check=False)
    assert other.returncode == 1 and f"exists with shards {BLOCK}" in other.stderr, other.stderr
    again = json.loads(_op(place, "gaussian", "-i", source, "-o", place.uri("sharded.zarr"), "-p", "sigma=1",
                           env={**env, **SHARDED}).stdout)
    assert again["computed"] == 0, again


def test_label_refuses_an_output_of_the_other_layout_before_its_local_pass(place, volume, prefect_api):
    source, data = volume
    env = {"PREFECT_API_URL": prefect_api}
    _op(place, "threshold", "-i", source, "-o", place.uri("mask.zarr"), "-p", f"value={int(np.median(data))}", env=env)
    _op(place, "label", "-i", place.uri("mask.zarr"), "-o", place.uri("labels.zarr"), env=env)
    before = place.objects("labels.zarr")
    done = _op(place, "label", "-i", place.uri("mask.zarr"), "-o", place.uri("labels.zarr"), "-p", "connectivity=6",
               env={**env, **SHARDED}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert place.uri("labels.zarr") in done.stderr and f"chunks {INNER} in shards {BLOCK}" in done.stderr, done.stderr
    assert place.objects("labels.zarr") == before
    # nothing of the new run's local pass was stored: only the first run's merge state is there
    state = place.objects("labels.zarr.tierflow-label")
    assert len({name.split("/")[0] for name in state}) == 1, state


def test_a_failed_sharded_run_resumes_sharded_whatever_the_setting(place, volume, prefect_api):
    from tierflow.flows.ops.flow import BlockFailuresError, run_op

    source, data = volume
    broken = {"0.1.0", "1.0.1"}

    def fault(block_id):  # fault injection (the only fake): these blocks fail on every attempt
        if block_id in broken:
            raise RuntimeError(f"injected fault in block {block_id}")

    with pytest.raises(BlockFailuresError) as info:
        run_op("gaussian", source, place.uri("smooth.zarr"), {"sigma": 1.5}, block_shape=BLOCK, workers=2,
               config_dir=str(place.project / "configs"), fault=fault, shard_outputs=True)
    assert set(info.value.block_ids) == broken
    # the setting is off in the configuration: the run's record says sharded, and resume writes so
    shown = run_cli("runs", "show", str(info.value.run_id), "--json", cwd=place.project).stdout
    assert '"shard_outputs": true' in shown, shown
    resumed = json.loads(run_cli("resume", str(info.value.run_id), "--json", cwd=place.project,
                                 env={"PREFECT_API_URL": prefect_api}).stdout)
    assert resumed["computed"] == len(broken), resumed
    smooth = _check_sharded(place, "smooth.zarr")
    expected = cast_output(ndimage.gaussian_filter(data.astype(np.float32), 1.5, mode="reflect", truncate=4.0), "uint16")
    assert np.abs(smooth[:].astype(np.int64) - expected).max() <= 1
