"""An op's output is guarded: it never resolves into Tier 1 (POSIX or S3, by any spelling of the
path), never equals, lies inside or holds one of the op's inputs, and belongs to one op key at a
time (a run with other parameters is refused while another writes the output).

The only fault injected is the block engine's test hook, used to hold a run mid-way."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.db.repo import add_artifact, get_snapshot, start_run
from tierflow.storage.promotion import tree_digest

from conftest import run_cli

OPS = {  # op -> (params, extra inputs): every kind of op and every helper folder it writes
    "convert": ({}, {}),
    "gaussian": ({"sigma": 1.0}, {}),
    "threshold": ({"value": 10}, {}),
    "label": ({}, {}),
    "downsample": ({"levels": 2}, {}),
    "features": ({"time_point": 0}, {}),
}


def _posix_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _s3_tree(client, bucket: str) -> dict[str, tuple[str, str]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: (item["ETag"], str(item["LastModified"])) for page in pages for item in page.get("Contents", [])}


def _tier1_with_results(project: Path, raw_folder: Path) -> dict[str, str]:
    """Ingest a snapshot and promote a zarr array to Tier 1; returns Tier 1 locations by kind,
    as op outputs would name them (paths or s3:// URIs), plus a scratch array shaped like the
    promoted one (the input that would overwrite it chunk for chunk)."""
    from tierflow.flows.lifecycle.ingest import ingest
    from tierflow.flows.lifecycle.promote import promote

    configs = str(project / "configs")
    snap = ingest(str(raw_folder), "embryo", config_dir=configs)
    tiers = open_tiers(load_config(configs))
    array = zarr.create_array(store=tiers.scratch.zarr_store("run-x/labels.zarr"), shape=(6, 8), chunks=(3, 4), dtype="uint16")
    array[:] = np.arange(48, dtype=np.uint16).reshape(6, 8)
    digest = tree_digest([(info.key.removeprefix("run-x/labels.zarr/"), tiers.scratch.sha256(info.key))
                          for info in tiers.scratch.list("run-x/labels.zarr")])
    db = open_database(load_db_config(configs))
    with db.session() as session:
        snapshot = get_snapshot(session, "embryo", snap["snapshot_id"])
        run = start_run(session, flow_name="pipeline")
        artifact = add_artifact(session, kind="zarr", name="labels.zarr", tier="scratch", uri=tiers.scratch.uri("run-x/labels.zarr"),
                                bytes=tiers.scratch.usage("run-x/labels.zarr"), sha256=digest, run_id=run.id,
                                dataset="embryo", snapshot_pk=snapshot.id, input_snapshots=[snapshot.id])
        artifact_id = artifact.id
    db.dispose()
    promoted = promote(artifacts=[str(artifact_id)], config_dir=configs)["promoted"][0]["uri"]
    source = tiers.source.uri().rstrip("/")
    snapshot_uri = f"{source}/snapshots/embryo/{snap['snapshot_id']}"
    local = (lambda uri: uri.removeprefix("file://")) if source.startswith("file://") else (lambda uri: uri)
    return {
        "root": local(source),
        "snapshot folder": local(snapshot_uri),
        "raw file in a snapshot": local(f"{snapshot_uri}/s1/emb_c0_t000.tif"),
        "promoted array": local(promoted),
        "new path under the root": local(f"{source}/promoted/embryo/new.zarr"),
        "input": local(tiers.scratch.uri("run-x/labels.zarr")),
    }


@pytest.fixture
def posix_tier1(project, raw_folder, prefect_api, tmp_path):
    places = _tier1_with_results(project, raw_folder)
    root = Path(places["root"])
    (tmp_path / "link").symlink_to(root / "promoted")  # a symlink from outside into Tier 1
    places["through a symlink"] = str(tmp_path / "link" / "embryo" / "x.zarr")
    places["with '..' in it"] = str(root / "snapshots" / ".." / "promoted" / "y.zarr")
    places["the folder that holds Tier 1"] = str(root.parent)
    return places, lambda: _posix_tree(root)


@pytest.fixture
def s3_tier1(project, raw_folder, prefect_api, seaweedfs_http):
    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{seaweedfs_http.endpoint_url}"\n'
        f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\n'
    )
    places = _tier1_with_results(project, raw_folder)
    places["the bucket itself"] = f"s3://{bucket}"
    client = seaweedfs_http.boto3_client()
    return places, lambda: _s3_tree(client, bucket)


def _refuses_every_tier1_output(project: Path, places: dict[str, str], tree, data) -> None:
    from tierflow.flows.ops.flow import run_op
    from tierflow.flows.execution.placement import OutputPlacementError

    before = tree()
    assert len(before) > 5  # a snapshot and a promoted array are there to be protected
    op = data.draw(st.sampled_from(sorted(OPS)), label="op")
    where = data.draw(st.sampled_from(sorted(set(places) - {"input"})), label="where")
    params, _ = OPS[op]
    with pytest.raises(OutputPlacementError) as refused:
        run_op(op, places["input"], places[where], dict(params), block_shape=(3, 4), workers=1, config_dir=str(project / "configs"))
    assert "Tier 1" in str(refused.value) and "promote" in refused.value.hint
    assert tree() == before


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_op_writes_into_a_posix_tier_1(project, posix_tier1, data):
    places, tree = posix_tier1
    _refuses_every_tier1_output(project, places, tree, data)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_op_writes_into_an_s3_tier_1(project, s3_tier1, data):
    places, tree = s3_tier1
    _refuses_every_tier1_output(project, places, tree, data)


def test_the_command_line_refuses_tier_1_and_input_outputs_before_any_work(project, posix_tier1, tmp_path):
    places, tree = posix_tier1
    before = tree()
    source = places["input"]
    digest = _posix_tree(Path(source))
    cases = [
        (["convert", "-i", source, "-o", places["promoted array"], "--block-shape", "3,4"], "Tier 1"),
        (["gaussian", "-i", source, "-o", places["snapshot folder"] + "/extra.zarr", "-p", "sigma=1"], "Tier 1"),
        (["label", "-i", source, "-o", places["through a symlink"]], "Tier 1"),
        (["gaussian", "-i", source, "-o", source, "-p", "sigma=1", "--block-shape", "3,4"], "is the input -i"),
        (["gaussian", "-i", source, "-o", os.path.join(source, "c"), "-p", "sigma=1"], "is inside the input -i"),
        (["gaussian", "-i", source, "-o", str(Path(source).parent), "-p", "sigma=1"], "holds the input -i"),
        (["watershed", "-i", str(tmp_path / "other.zarr"), "-o", source, "--with", f"markers={source}"], "input --with markers"),
        (["gaussian", "-i", str(tmp_path / "other.zarr"), "-o", source, "--mask", source, "-p", "sigma=1"], "input --mask"),
    ]
    for args, culprit in cases:
        done = run_cli("op", *args, cwd=project, check=False)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert culprit in done.stderr and "Traceback" not in done.stdout + done.stderr, done.stderr
        assert "hint:" in done.stderr
    # a tier root pointed into Tier 1 (scratch or output = a snapshot or promoted folder) is
    # refused when the configuration loads, whatever the command
    for key, where in (("SCRATCH", places["snapshot folder"]), ("OUTPUT", places["promoted array"]),
                       ("EPHEMERAL", places["root"]), ("SCRATCH", places["the folder that holds Tier 1"])):
        env = {f"TIERFLOW_TIERS__{key}__ROOT": where}
        for args in (["op", "gaussian", "-i", source, "-o", str(tmp_path / "elsewhere.zarr"), "-p", "sigma=1"],
                     ["run", "pipeline", "--dataset", "embryo", "--raw", str(tmp_path)], ["retention"]):
            done = run_cli(*args, cwd=project, env=env, check=False)
            assert done.returncode != 0 and "overlap" in done.stderr and "Traceback" not in done.stderr, (args, env, done.stderr)
            assert f"tiers.{key.lower()}" in done.stderr
    assert tree() == before
    assert _posix_tree(Path(source)) == digest  # the input is untouched


def test_two_runs_with_different_parameters_never_share_an_output(project, tmp_path, prefect_api):
    """sigma=1 holds the output mid-run; sigma=3 on the same output is refused meanwhile; the
    output ends entirely sigma=1's, and a later sigma=3 run recomputes every block."""
    from scipy import ndimage

    from tierflow.flows.ops.flow import run_op
    from tierflow.flows.execution.outputs import OutputBusyError

    shape, blocks = (20, 48, 40), (10, 16, 16)
    data = np.random.default_rng(3).integers(0, 4000, shape, dtype=np.uint16)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=blocks, dtype="uint16")[:] = data
    configs, source, out = str(project / "configs"), str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr")
    writing, release = threading.Event(), threading.Event()

    def hold(block_id: str) -> None:  # the test hook: the first run waits mid-way until released
        writing.set()
        assert release.wait(120)

    def run(sigma: float, fault=None) -> dict:
        return run_op("gaussian", source, out, {"sigma": sigma, "backend": "scipy"}, block_shape=blocks, workers=2,
                      config_dir=configs, fault=fault)

    first: list[dict] = []
    holder = threading.Thread(target=lambda: first.append(run(1.0, hold)))
    holder.start()
    try:
        assert writing.wait(120)
        with pytest.raises(OutputBusyError) as busy:
            run(3.0)
        assert out in str(busy.value) or Path(out).as_uri() in str(busy.value)
    finally:
        release.set()
        holder.join(300)
    grid_blocks = 2 * 3 * 3

    def expected(sigma: float) -> np.ndarray:
        smooth = ndimage.gaussian_filter(data.astype(np.float32), sigma, mode="reflect", truncate=4.0)
        return np.clip(np.rint(smooth), 0, 65535).astype(np.uint16)

    assert first and first[0]["computed"] == grid_blocks
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected(1.0))
    assert run(3.0)["computed"] == grid_blocks  # the ledger does not vouch for sigma=1's blocks
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected(3.0))
    assert run(1.0)["computed"] == grid_blocks  # nor for sigma=3's once sigma=1 wrote again
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected(1.0))


def test_an_existing_output_chunked_otherwise_is_refused_before_any_block_runs(project, tmp_path, prefect_api):
    """An output whose chunks are not the block shape would have blocks straddle chunks (two
    writers, one chunk): refused up front, naming output, chunks and block shape; nothing runs
    (the test hook records every block that would), input and output stay byte for byte."""
    from tierflow.errors import TierflowError
    from tierflow.flows.ops.flow import run_op

    shape, blocks = (20, 48, 40), (10, 16, 16)
    data = np.random.default_rng(4).integers(0, 4000, shape, dtype=np.uint16)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=shape, chunks=blocks, dtype="uint16")[:] = data
    out = zarr.create_array(str(tmp_path / "out.zarr"), shape=shape, chunks=(8, 16, 16), dtype="uint16")
    out[:] = 7
    before_in, before_out = _posix_tree(tmp_path / "in.zarr"), _posix_tree(tmp_path / "out.zarr")
    ran: list[str] = []
    with pytest.raises(TierflowError) as refused:
        run_op("gaussian", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), {"sigma": 1.0}, block_shape=blocks, workers=2,
               config_dir=str(project / "configs"), fault=ran.append)
    message = str(refused.value)
    assert "out.zarr" in message and "(8, 16, 16)" in message and "(10, 16, 16)" in message and "straddle" in message
    assert "--block-shape 8,16,16" in message
    assert ran == []
    assert _posix_tree(tmp_path / "in.zarr") == before_in and _posix_tree(tmp_path / "out.zarr") == before_out
    db = open_database(load_db_config(project / "configs"))
    try:
        from sqlalchemy import func, select

        from tierflow.storage.db.models import BlockRecord

        with db.session() as session:
            assert session.scalar(select(func.count()).select_from(BlockRecord)) == 0  # no block recorded, none made stale
    finally:
        db.dispose()
