"""The block engine's guarantees: resume computes only the failed blocks and gives the same
result bit for bit; a re-run is served by the ledger; a parameter change recomputes; two
concurrent runs never compute a block twice; the CLI shows it all."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zarr
from sqlalchemy import select

from tierflow.configs import load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.storage.db.models import BlockRecord

from conftest import run_cli

SHAPE, BLOCKS = (37, 101, 77), (16, 32, 32)


@pytest.fixture
def source(tmp_path):
    data = np.random.default_rng(7).integers(0, 4000, SHAPE, dtype=np.uint16)
    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=SHAPE, chunks=BLOCKS, dtype="uint16")
    array[:] = data
    return str(tmp_path / "in.zarr")


@pytest.fixture
def ledger(project):
    db = open_database(load_db_config(project / "configs"))

    def rows(run_id=None, status=None):
        query = select(BlockRecord.block_id, BlockRecord.status, BlockRecord.run_id, BlockRecord.op)
        if run_id is not None:
            query = query.where(BlockRecord.run_id == run_id)
        if status is not None:
            query = query.where(BlockRecord.status == status)
        with db.session() as session:
            return session.execute(query).all()

    yield rows
    db.dispose()


def test_resume_recomputes_only_the_failed_blocks_and_matches_an_uninterrupted_run(project, source, tmp_path, ledger, prefect_api):
    from tierflow.flows.ops.flow import BlockFailuresError, resume_op, run_op

    configs = str(project / "configs")
    broken = {"0.1.2", "2.3.0", "1.0.1"}

    def fault(block_id):  # fault injection (the only fake): these blocks fail on every attempt
        if block_id in broken:
            raise RuntimeError(f"injected fault in block {block_id}")

    with pytest.raises(BlockFailuresError) as info:
        run_op(
            "gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs, fault=fault
        )
    assert set(info.value.block_ids) == broken
    assert f"tierflow resume {info.value.run_id}" in info.value.hint
    first = info.value.run_id
    assert {r.block_id for r in ledger(first, "failed")} == broken
    assert len({r.block_id for r in ledger(first, "done")}) == 36 - 3

    resumed = resume_op(str(first), config_dir=configs)
    assert resumed["computed"] == 3 and resumed["skipped"] == 33
    assert {r.block_id for r in ledger(resumed["run_id"])} == broken  # only they ran again

    run_op("gaussian", source, str(tmp_path / "clean.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], zarr.open_array(str(tmp_path / "clean.zarr"))[:])


def _attempts(project, run_id, block_id):
    """(attempt, status) of every ledger row of one block in one run, in attempt order."""
    db = open_database(load_db_config(project / "configs"))
    try:
        with db.session() as session:
            rows = session.execute(
                select(BlockRecord.attempt, BlockRecord.status)
                .where(BlockRecord.run_id == run_id, BlockRecord.block_id == block_id)
                .order_by(BlockRecord.attempt)
            ).all()
        return [tuple(row) for row in rows]
    finally:
        db.dispose()


def test_a_deterministic_block_error_is_not_retried(project, source, tmp_path, prefect_api):
    """The fault hook (the only fake) raises ValueError on one block: a retry would fail the
    same way, so Prefect does not retry its batch; the ledger shows attempt 1 only."""
    from tierflow.flows.ops.flow import BlockFailuresError, run_op

    calls = []

    def fault(block_id):
        if block_id == "1.1.1":
            calls.append(block_id)
            raise ValueError("injected deterministic fault")

    with pytest.raises(BlockFailuresError) as info:
        run_op(
            "gaussian",
            source,
            str(tmp_path / "out.zarr"),
            {"sigma": 2.0},
            block_shape=BLOCKS,
            workers=2,
            config_dir=str(project / "configs"),
            fault=fault,
        )
    assert info.value.block_ids == ["1.1.1"] and "ValueError" in info.value.first_error
    assert calls == ["1.1.1"]
    assert _attempts(project, info.value.run_id, "1.1.1") == [(1, "failed")]


def test_a_transient_block_error_is_retried_and_the_block_ends_done(project, source, tmp_path, ledger, prefect_api):
    """The fault hook (the only fake: a flaky disk cannot be had on demand) raises OSError(EIO)
    once on one block: Prefect retries its batch, the block is done at attempt 2 and the output
    equals an uninterrupted run."""
    import errno

    from tierflow.flows.ops.flow import run_op

    calls = []

    def fault(block_id):
        if block_id == "1.1.1":
            calls.append(block_id)
            if len(calls) == 1:
                raise OSError(errno.EIO, "injected transient I/O error")

    configs = str(project / "configs")
    result = run_op(
        "gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs, fault=fault
    )
    assert calls == ["1.1.1", "1.1.1"]
    assert _attempts(project, result["run_id"], "1.1.1") == [(1, "failed"), (2, "done")]
    assert len({r.block_id for r in ledger(result["run_id"], "done")}) == 36
    assert result["computed"] == 36  # the blocks the failed attempt finished count too (it said 31)
    run_op("gaussian", source, str(tmp_path / "clean.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], zarr.open_array(str(tmp_path / "clean.zarr"))[:])


def test_label_resumes_after_the_merge_without_relabelling_everything(project, tmp_path, ledger, prefect_api):
    from tierflow.flows.ops.flow import BlockFailuresError, resume_op, run_op

    mask = (np.random.default_rng(1).random(SHAPE) > 0.7).astype(np.uint8)
    array = zarr.create_array(str(tmp_path / "mask.zarr"), shape=SHAPE, chunks=BLOCKS, dtype="uint8")
    array[:] = mask

    def fault(unit):  # fault injection: one relabel block fails
        if unit == "relabel:2.0.2":
            raise RuntimeError("injected relabel fault")

    with pytest.raises(BlockFailuresError) as info:
        run_op(
            "label",
            str(tmp_path / "mask.zarr"),
            str(tmp_path / "labels.zarr"),
            {"connectivity": 26},
            block_shape=BLOCKS,
            workers=2,
            config_dir=str(project / "configs"),
            fault=fault,
        )
    assert info.value.block_ids == ["2.0.2"]
    resumed = resume_op(str(info.value.run_id), config_dir=str(project / "configs"))
    stages = sorted({(r.op, r.block_id) for r in ledger(resumed["run_id"])})
    assert stages == [("label:relabel", "2.0.2")]  # no local labelling, no merge again
    from scipy import ndimage

    _, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert zarr.open_array(str(tmp_path / "labels.zarr"))[:].max() == count


def test_rerun_is_served_by_the_ledger_and_a_parameter_change_recomputes(project, source, tmp_path, ledger, prefect_api):
    from tierflow.flows.ops.flow import run_op

    configs = str(project / "configs")
    first = run_op("gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    again = run_op("gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 2.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    assert (first["computed"], again["computed"], again["batches"]) == (36, 0, 0)
    assert ledger(again["run_id"]) == []
    changed = run_op("gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 1.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    assert changed["computed"] == 36 and changed["op_key"] != first["op_key"]
    # a changed input recomputes the blocks that read the changed chunk: chunk 0.0.0 lies in the
    # read ROIs (block + halo of 3) of the 2 x 2 x 2 blocks at the origin corner
    zarr.open_array(source, mode="r+")[0, 0, 0] = 1
    touched = run_op("gaussian", source, str(tmp_path / "out.zarr"), {"sigma": 1.0}, block_shape=BLOCKS, workers=2, config_dir=configs)
    assert touched["computed"] == 8


def test_a_deleted_or_overwritten_output_is_computed_again(project, source, tmp_path, ledger, prefect_api):
    import shutil

    from scipy import ndimage

    from tierflow.flows.ops.flow import run_op

    configs, out = str(project / "configs"), str(tmp_path / "out.zarr")
    data = zarr.open_array(source)[:]

    def expected(sigma):
        return np.clip(np.rint(ndimage.gaussian_filter(data.astype(np.float32), sigma, mode="reflect", truncate=4.0)), 0, 65535).astype(
            np.uint16
        )

    def run(sigma):
        return run_op("gaussian", source, out, {"sigma": sigma, "backend": "scipy"}, block_shape=BLOCKS, workers=2, config_dir=configs)

    assert run(2.0)["computed"] == 36
    shutil.rmtree(out)  # the user deletes the output: the ledger must not vouch for it any more
    assert run(2.0)["computed"] == 36
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected(2.0))
    assert run(1.0)["computed"] == 36  # another op key overwrites the same output ...
    assert run(2.0)["computed"] == 36  # ... so sigma=2's done blocks there are stale
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected(2.0))
    assert len(ledger(status="stale")) == 36 * 3


def test_two_concurrent_runs_compute_each_block_once(project, source, tmp_path, ledger, prefect_api):
    from tierflow.flows.ops.flow import run_op

    results = []

    def run():
        results.append(
            run_op(
                "gaussian",
                source,
                str(tmp_path / "out.zarr"),
                {"sigma": 2.0},
                block_shape=BLOCKS,
                workers=2,
                config_dir=str(project / "configs"),
            )
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    done = [r.block_id for r in ledger(status="done")]
    assert len(done) == len(set(done)) == 36  # every block computed exactly once
    assert sum(r["computed"] for r in results) == 36


def test_op_status_and_resume_from_the_command_line(project, source, tmp_path, prefect_api):
    env = {"PREFECT_API_URL": prefect_api}
    out = tmp_path / "cli.zarr"
    done = run_cli(
        "op",
        "gaussian",
        "--input",
        source,
        "--output",
        str(out),
        "--param",
        "sigma=2",
        "--block-shape",
        "16,32,32",
        "--workers",
        "2",
        cwd=project,
        env=env,
    )
    assert "36 of 36 blocks computed" in done.stdout and "blocks" in done.stderr
    result = json.loads(
        run_cli(
            "op", "gaussian", "-i", source, "-o", str(out), "-p", "sigma=2", "--block-shape", "16,32,32", "--json", cwd=project, env=env
        ).stdout
    )
    assert result["computed"] == 0
    report = json.loads(run_cli("status", str(result["run_id"] - 1), "--json", cwd=project).stdout)
    assert report["stages"]["gaussian"] == {"done": 36, "failed": 0, "failed_blocks": []}
    bad = run_cli(
        "op",
        "gaussian",
        "-i",
        source,
        "-o",
        str(tmp_path / "x.zarr"),
        "-p",
        "sigma=2",
        "-p",
        "colour=red",
        cwd=project,
        env=env,
        check=False,
    )
    assert bad.returncode == 1 and "colour" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli(
        "op",
        "gaussian",
        "-i",
        str(tmp_path / "nope.zarr"),
        "-o",
        str(tmp_path / "y.zarr"),
        "-p",
        "sigma=2",
        cwd=project,
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "nope.zarr does not exist" in missing.stderr


def test_the_dask_backend_gives_the_thread_backends_result(project, source, tmp_path, ledger, prefect_api, monkeypatch):
    from tierflow.flows.ops.flow import run_op

    configs = str(project / "configs")
    threads = run_op("gaussian", source, str(tmp_path / "threads.zarr"), {"sigma": 1.5}, block_shape=BLOCKS, workers=2, config_dir=configs)
    monkeypatch.setenv("TIERFLOW_EXECUTION__BACKEND", "dask")  # a LocalCluster of 2 worker processes
    dask = run_op("gaussian", source, str(tmp_path / "dask.zarr"), {"sigma": 1.5}, block_shape=BLOCKS, workers=2, config_dir=configs)
    assert threads["computed"] == dask["computed"] == 36
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "dask.zarr"))[:], zarr.open_array(str(tmp_path / "threads.zarr"))[:])
    assert len({r.block_id for r in ledger(dask["run_id"], status="done")}) == 36


def test_repairing_one_input_chunk_recomputes_only_the_blocks_that_read_it(project, source, tmp_path, ledger, prefect_api):
    from scipy import ndimage

    from tierflow.flows.ops.flow import run_op
    from tierflow.storage.geometry import BlockGrid, Roi

    configs, out = str(project / "configs"), str(tmp_path / "out.zarr")

    def run():
        return run_op("gaussian", source, out, {"sigma": 2.0, "backend": "scipy"}, block_shape=BLOCKS, workers=2, config_dir=configs)

    assert run()["computed"] == 36
    array = zarr.open_array(source, mode="r+")
    repaired = Roi((16, 32, 32), BLOCKS)  # chunk 1.1.1 is rewritten (the user repairs it)
    array[repaired.slices] = np.random.default_rng(11).integers(0, 4000, BLOCKS, dtype=np.uint16)
    halo = (int(3.0 * 2.0 + 0.5),) * 3  # the gaussian's kernel radius: blocks whose read ROI touches the chunk
    grid = BlockGrid(SHAPE, BLOCKS, halo)
    readers = {
        b.block_id
        for b in grid
        if all(r.offset[i] < b.read_roi.end[i] and b.read_roi.offset[i] < r.end[i] for r in [repaired] for i in range(3))
    }
    assert 1 < len(readers) < 36
    again = run()
    assert again["computed"] == len(readers) and again["skipped"] == 36 - len(readers)
    assert {r.block_id for r in ledger(again["run_id"], "done")} == readers
    expected = np.clip(np.rint(ndimage.gaussian_filter(array[:].astype(np.float32), 2.0, mode="reflect", truncate=4.0)), 0, 65535)
    np.testing.assert_array_equal(zarr.open_array(out)[:], expected.astype(np.uint16))
    assert run()["computed"] == 0  # and then it is up to date again


def test_a_byte_identical_copy_of_a_snapshot_is_recognised(project, raw_folder, tmp_path, prefect_api):
    import shutil

    from tierflow.flows.lifecycle.ingest import ingest
    from tierflow.flows.ops.flow import run_op

    configs = str(project / "configs")
    snap = ingest(str(raw_folder), "embryo", config_dir=configs)
    tier1 = project / "var" / "tier1-source" / "snapshots" / "embryo" / snap["snapshot_id"]
    copy = tmp_path / "copy-of-snapshot"
    shutil.copytree(tier1, copy)  # new files, new mtimes, the same bytes (and manifest)
    out = str(tmp_path / "staged.zarr")
    first = run_op("convert", str(tier1 / "s1" / "emb_c0_t000.tif"), out, {}, block_shape=(2, 16, 16), workers=1, config_dir=configs)
    again = run_op("convert", str(copy / "s1" / "emb_c0_t000.tif"), out, {}, block_shape=(2, 16, 16), workers=1, config_dir=configs)
    assert first["computed"] == 8 and again["computed"] == 0 and again["op_key"] == first["op_key"]
    (copy / "s1" / "emb_c0_t000.tif").write_bytes(b"changed")  # a changed copy is not vouched for
    from tierflow.storage.fingerprints import snapshot_content_id

    assert snapshot_content_id(copy / "s1" / "emb_c0_t000.tif") is None
    assert snapshot_content_id(copy / "s1" / "emb_c0_t001.tif") is not None
