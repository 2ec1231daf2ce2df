"""Bad input gets a clear error, through the real CLI (issue 11, point 9).

``test_every_bad_input_gets_a_clear_error`` scans the error paths: for each (command, bad input)
the command exits non-zero before any flow or database starts, prints no traceback, names the
culprit (file, key, page, chunk), gives a hint, and writes or changes nothing (every file of the
project, inputs included, has the same sha256 afterwards). The tests after it cover the errors
that can only show once work has started (a page or chunk that cannot be decoded, a full disk,
re-promoting).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from conftest import REPO_ROOT, require_service, run_cli

STACK = np.random.default_rng(0).integers(0, 4000, (8, 32, 32), dtype=np.uint16)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (folders and links included by name)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _truncated_tiff(path: Path) -> Path:
    tifffile.imwrite(path, STACK, photometric="minisblack")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mixed_tiff(path: Path) -> Path:
    """Four pages written as separate images, the last of another shape (tifffile: four series)."""
    with tifffile.TiffWriter(path) as writer:
        for plane in (STACK[0], STACK[1], STACK[2], STACK[3, :16, :16]):
            writer.write(plane, photometric="minisblack", contiguous=False)
    return path


def _corrupt_page_tiff(path: Path, page: int) -> Path:
    """A zlib TIFF whose headers are whole but whose ``page`` holds garbage instead of zlib data."""
    tifffile.imwrite(path, STACK, photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[page].dataoffsets[0], tif.pages[page].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset + 2: offset + count] = b"\xff" * (count - 2)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project (committed default configs) with good and bad inputs next to it."""
    root = tmp_path_factory.mktemp("bad-input") / "project"
    (root / "configs").mkdir(parents=True)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    array = zarr.create_array(str(root / "in.zarr"), shape=STACK.shape, chunks=(4, 16, 16), dtype=STACK.dtype)
    array[:] = STACK
    _truncated_tiff(root / "trunc.tif")
    _mixed_tiff(root / "mixed.tif")
    (root / "notatiff.tif").write_bytes(b"this is a text file, named .tif by mistake\n" * 10)
    (root / "slices").mkdir()
    for z, plane in enumerate((STACK[0], STACK[1], STACK[2, :16, :16])):
        tifffile.imwrite(root / "slices" / f"z{z:03d}.tif", plane, photometric="minisblack")
    for name, make in (("raw_trunc", _truncated_tiff), ("raw_mixed", _mixed_tiff)):
        (root / name / "s1").mkdir(parents=True)
        tifffile.imwrite(root / name / "s1" / "emb_c0_t000.tif", STACK, photometric="minisblack")
        make(root / name / "s1" / "emb_c0_t001.tif")
    return root


OP = ("op", "-i", "in.zarr", "-o", "out.zarr")
RUN = ("run", "pipeline", "--dataset", "emb", "--snapshot", "0123abcd")

# (id, command, what the message must name)
BAD_INPUTS = [
    ("sigma-nan", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=nan"), ["sigma", "nan", "finite"]),
    ("sigma-inf", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=inf"), ["sigma", "inf"]),
    ("sigma-negative", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=-1"), ["sigma", "-1", "> 0"]),
    ("sigma-zero", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=0"), ["sigma", "> 0"]),
    ("sigma-text", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=abc"), ["sigma", "abc"]),
    ("sigma-missing", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr"), ["sigma", "-p sigma="]),
    ("sigma-no-equals", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma"), ["sigma", "key=value"]),
    ("truncate-zero", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", "-p", "truncate=0"), ["truncate"]),
    ("mode-unknown", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", "-p", "mode=sideways"), ["mode", "mirror"]),
    ("bioimage-cpp-reflect", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", "-p", "backend=bioimage-cpp"),
     ["bioimage-cpp", "mode=mirror truncate=3", "mode='reflect'"]),
    ("out-dtype", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", "-p", "out_dtype=float99"), ["out_dtype"]),
    ("param-unknown", ("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", "-p", "radius=3"), ["radius", "sigma"]),
    ("threshold-text", ("op", "threshold", "-i", "in.zarr", "-o", "out.zarr", "-p", "value=abc"), ["value", "abc", "otsu"]),
    ("threshold-nan", ("op", "threshold", "-i", "in.zarr", "-o", "out.zarr", "-p", "value=nan"), ["value", "nan"]),
    ("above-maybe", ("op", "threshold", "-i", "in.zarr", "-o", "out.zarr", "-p", "above=maybe"), ["above", "true or false"]),
    ("halo-negative", ("op", "watershed", "-i", "in.zarr", "-o", "out.zarr", "-p", "halo=-1"), ["halo", ">= 0"]),
    ("mask-above-inf", ("op", "watershed", "-i", "in.zarr", "-o", "out.zarr", "-p", "mask_above=inf"), ["mask_above"]),
    ("connectivity-5", ("op", "label", "-i", "in.zarr", "-o", "out.zarr", "-p", "connectivity=5"), ["connectivity", "26"]),
    ("connectivity-text", ("op", "label", "-i", "in.zarr", "-o", "out.zarr", "-p", "connectivity=abc"), ["connectivity", "abc"]),
    ("levels-zero", ("op", "downsample", "-i", "in.zarr", "-o", "out.zarr", "-p", "levels=0"), ["levels", ">= 1"]),
    ("levels-fraction", ("op", "downsample", "-i", "in.zarr", "-o", "out.zarr", "-p", "levels=2.5"), ["levels", "2.5"]),
    ("method-unknown", ("op", "downsample", "-i", "in.zarr", "-o", "out.zarr", "-p", "method=bicubic"), ["method", "bicubic"]),
    ("voxel-negative", ("op", "downsample", "-i", "in.zarr", "-o", "out.zarr", "-p", "voxel_size=1,-1,1"), ["voxel_size"]),
    ("time-point-negative", ("op", "features", "-i", "in.zarr", "-o", "out.zarr", "-p", "time_point=-1"), ["time_point"]),
    ("op-unknown", ("op", "blur", "-i", "in.zarr", "-o", "out.zarr"), ["blur", "gaussian"]),
    ("block-shape-text", ("op", "convert", "-i", "in.zarr", "-o", "out.zarr", "--block-shape", "a,b,c"), ["--block-shape", "a,b,c"]),
    ("block-shape-zero", ("op", "convert", "-i", "in.zarr", "-o", "out.zarr", "--block-shape", "0,16,16"), ["--block-shape", "0,16,16"]),
    ("block-shape-2d", ("op", "convert", "-i", "in.zarr", "-o", "out.zarr", "--block-shape", "4,4"), ["--block-shape", "3 positive"]),
    ("block-shape-4d", ("op", "convert", "-i", "in.zarr", "-o", "out.zarr", "--block-shape", "4,4,4,4"), ["--block-shape"]),
    ("input-missing", ("op", "convert", "-i", "missing.zarr", "-o", "out.zarr"), ["missing.zarr"]),
    ("tiff-truncated", ("op", "convert", "-i", "trunc.tif", "-o", "out.zarr"), ["trunc.tif", "page 4 of 8", "truncated"]),
    ("tiff-mixed-shapes", ("op", "convert", "-i", "mixed.tif", "-o", "out.zarr"), ["mixed.tif", "(16, 16)", "(32, 32)", "series"]),
    ("tiff-not-a-tiff", ("op", "convert", "-i", "notatiff.tif", "-o", "out.zarr"), ["notatiff.tif", "cannot be opened as TIFF"]),
    ("slices-mixed-shapes", ("op", "convert", "-i", "slices", "-o", "out.zarr"), ["z002.tif", "(16, 16)", "z000.tif"]),
    ("pipeline-sigma-nan", (*RUN, "--param", "sigma=nan"), ["sigma", "nan", "finite"]),
    ("pipeline-sigma-range", (*RUN, "--param", "sigma=100"), ["sigma", "<= 50"]),
    ("pipeline-threshold-text", (*RUN, "--param", "threshold=abc"), ["threshold", "abc", "otsu"]),
    ("pipeline-threshold-inf", (*RUN, "--param", "threshold=inf"), ["threshold", "inf"]),
    ("pipeline-block-shape-text", (*RUN, "--param", "block_shape=a,b,c"), ["block_shape", "a,b,c"]),
    ("pipeline-block-shape-zero", (*RUN, "--param", "block_shape=0,1,1"), ["block_shape", "0,1,1"]),
    ("pipeline-connectivity", (*RUN, "--param", "connectivity=5"), ["connectivity", "6, 18 or 26"]),
    ("pipeline-max-distance-inf", (*RUN, "--param", "max_distance=inf"), ["max_distance", "finite"]),
    ("pipeline-levels-zero", (*RUN, "--param", "pyramid_levels=0"), ["pyramid_levels", ">= 1"]),
    ("pipeline-param-unknown", (*RUN, "--param", "colour=red"), ["colour", "sigma"]),
    ("pipeline-dataset-markup-close", ("run", "pipeline", "--dataset", "[/]x", "--snapshot", "0123abcd"), ["[/]x", "dataset"]),
    ("pipeline-dataset-markup-style", ("run", "pipeline", "--dataset", "[red]x[/red]", "--snapshot", "0123abcd"), ["[red]x[/red]"]),
    ("pipeline-raw-truncated", ("run", "pipeline", "--dataset", "emb", "--raw", "raw_trunc"), ["s1/emb_c0_t001.tif", "page 4 of 8"]),
    ("pipeline-raw-mixed", ("run", "pipeline", "--dataset", "emb", "--raw", "raw_mixed"), ["s1/emb_c0_t001.tif", "series"]),
    ("ingest-truncated", ("ingest", "raw_trunc", "--dataset", "emb"), ["s1/emb_c0_t001.tif", "page 4 of 8", "nothing was ingested"]),
    ("ingest-mixed", ("ingest", "raw_mixed", "--dataset", "emb"), ["s1/emb_c0_t001.tif", "(16, 16)"]),
    ("ingest-dataset-markup", ("ingest", "raw_trunc", "--dataset", "[/]x"), ["[/]x"]),
    ("serve-ephemeral", ("serve", "--tier", "ephemeral", "--port", "1"), ["ephemeral", "--tier source"]),
    ("serve-scratch", ("serve", "--tier", "scratch", "--port", "1"), ["scratch", "--tier source"]),
]


@pytest.mark.parametrize(("command", "culprits"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_every_bad_input_gets_a_clear_error(bad_inputs: Path, command: tuple[str, ...], culprits: list[str]) -> None:
    before = tree_digest(bad_inputs)
    done = run_cli(*command, cwd=bad_inputs, check=False)
    shown = done.stdout + done.stderr
    assert done.returncode == 1, shown
    assert "Traceback" not in shown
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: "), shown
    assert "\nhint: " in "\n" + done.stderr, shown
    for culprit in culprits:
        assert culprit in done.stderr, (culprit, shown)
    assert tree_digest(bad_inputs) == before  # nothing written, changed or lost; no database, no flow started


def test_a_page_that_cannot_be_decoded_is_named_with_its_file(project: Path, prefect_api: str) -> None:
    """Headers whole, page 5's compressed bytes garbage: found when the page is read."""
    source = _corrupt_page_tiff(project / "damaged.tif", page=5)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    done = run_cli("op", "convert", "-i", str(source), "-o", "out.zarr", cwd=project, env={"PREFECT_API_URL": prefect_api}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert f"{source}: page 5 cannot be read" in done.stderr and "hint: " in done.stderr
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("op", [("gaussian", "sigma=1"), ("threshold", "value=100")], ids=["with-halo", "without-halo"])
def test_a_truncated_zarr_chunk_is_named_with_its_input_array(project: Path, prefect_api: str, op: tuple[str, str]) -> None:
    source = project / "in.zarr"
    array = zarr.create_array(str(source), shape=STACK.shape, chunks=(4, 16, 16), dtype=STACK.dtype)
    array[:] = STACK
    chunk = source / "c" / "1" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:7])
    before = tree_digest(source)
    done = run_cli("op", op[0], "-i", str(source), "-o", "out.zarr", "-p", op[1], "--block-shape", "8,32,32", cwd=project,
                   env={"PREFECT_API_URL": prefect_api}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert f"input {source.as_uri()}: chunk(s) c/1/0/1 cannot be decoded" in done.stderr, done.stderr
    assert "repair or re-create" in done.stderr
    assert tree_digest(source) == before


def test_a_truncated_zarr_chunk_on_s3_is_named_with_its_input_array(project: Path, prefect_api: str, seaweedfs_http) -> None:
    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.scratch]\nbackend = "s3"\nroot = "s3://{bucket}/scratch"\nendpoint_url = "{seaweedfs_http.endpoint_url}"\n'
        f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\nverify = false\n'
    )
    from tierflow.configs import load_config
    from tierflow.flows.runtime.tiers import open_tiers

    scratch = open_tiers(load_config(project / "configs")).scratch
    array = zarr.create_array(store=scratch.zarr_store("in.zarr"), shape=STACK.shape, chunks=(4, 16, 16), dtype=STACK.dtype)
    array[:] = STACK
    client = seaweedfs_http.boto3_client()
    key = "scratch/in.zarr/c/1/1/0"
    whole = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=whole[:7])
    done = run_cli("op", "gaussian", "-i", f"s3://{bucket}/scratch/in.zarr", "-o", f"s3://{bucket}/scratch/out.zarr", "-p", "sigma=1",
                   cwd=project, env={"PREFECT_API_URL": prefect_api}, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert f"input s3://{bucket}/scratch/in.zarr: chunk(s) c/1/1/0 cannot be decoded" in done.stderr, done.stderr
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == whole[:7]  # the input is left as it was


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True).returncode == 0


def test_a_full_disk_in_a_pipeline_says_to_resume_the_pipeline_run(project: Path, raw_folder: Path, prefect_api: str) -> None:
    """Scratch on a real 48 KiB tmpfs: staging fills it. The error names the pipeline run (not
    the child op run); after the disk is grown, resuming that run completes the pipeline."""
    scratch = project.parent / "small-scratch"
    require_service(os.geteuid() == 0 and _mount_tmpfs(scratch, "48k"), "a small tmpfs to fill (mount, as root)",
                    "run this test as root")
    try:
        (project / "configs" / "tierflow.user.toml").write_text(f'[tiers.scratch]\nroot = "{scratch}"\n')
        env = {"PREFECT_API_URL": prefect_api}
        done = run_cli("run", "pipeline", "--dataset", "emb", "--raw", str(raw_folder), cwd=project, env=env, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
        runs = json.loads(run_cli("runs", "list", "--all", "--json", cwd=project).stdout)
        pipeline_run = next(r["id"] for r in runs if r["flow"] == "pipeline")
        child_runs = [r["id"] for r in runs if r["flow"] == "op"]
        assert f"pipeline run {pipeline_run}, stage stage: the disk of {scratch.as_uri()} is full" in done.stderr, done.stderr
        assert f"hint: free space on {scratch.as_uri()}" in done.stderr and f"`tierflow resume {pipeline_run}`" in done.stderr
        assert not any(f"tierflow resume {child}`" in done.stderr for child in child_runs if child != pipeline_run)
        subprocess.run(["mount", "-o", "remount,size=64m", str(scratch)], check=True)
        resumed = run_cli("resume", str(pipeline_run), "--json", cwd=project, env=env)
        assert json.loads(resumed.stdout)["objects"] > 0
    finally:
        subprocess.run(["umount", str(scratch)], capture_output=True)


def test_promoting_again_says_already_promoted_and_changes_nothing(project: Path, raw_folder: Path, prefect_api: str) -> None:
    from tierflow.configs import load_config, load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.tiers import open_tiers
    from tierflow.storage.db.repo import add_artifact, get_snapshot, start_run

    env = {"PREFECT_API_URL": prefect_api}
    snapshot_id = run_cli("ingest", str(raw_folder), "--dataset", "emb", cwd=project, env=env).stdout.strip().splitlines()[-1]
    configs = project / "configs"
    table = b"label,area\n1,12\n"
    open_tiers(load_config(configs)).output.put_bytes("run-1/objects.csv", table)
    db = open_database(load_db_config(configs))
    with db.session() as session:
        run = start_run(session, flow_name="pipeline")
        artifact = add_artifact(session, kind="table", name="objects.csv", tier="output",
                                uri=open_tiers(load_config(configs)).output.uri("run-1/objects.csv"), bytes=len(table),
                                sha256=hashlib.sha256(table).hexdigest(), run_id=run.id, dataset="emb",
                                snapshot_pk=get_snapshot(session, "emb", snapshot_id).id)
        artifact_id = artifact.id
    db.dispose()
    first = json.loads(run_cli("promote", "--artifact", str(artifact_id), "--json", cwd=project, env=env).stdout)
    promoted_uri = first["promoted"][0]["uri"]
    tier1 = tree_digest(project / "var" / "tier1-source")
    artifacts = run_cli("artifacts", "list", "--all", "--json", cwd=project).stdout

    again = run_cli("promote", "--artifact", str(artifact_id), cwd=project, env=env, check=False)
    assert again.returncode == 1 and "Traceback" not in again.stdout + again.stderr
    assert "IntegrityError" not in again.stderr and "sqlalchemy" not in again.stderr.lower()
    assert f"artifact {artifact_id} (objects.csv) is already promoted, to {promoted_uri}" in again.stderr
    assert "nothing was changed" in again.stderr and "hint: " in again.stderr
    assert tree_digest(project / "var" / "tier1-source") == tier1
    assert run_cli("artifacts", "list", "--all", "--json", cwd=project).stdout == artifacts
