"""The main job as a user runs it: `tierflow demo` end to end, checked against SciPy and
scikit-image on the same synthetic data and against the generator's ground truth; a re-run
served from cache; a run killed mid-stage and resumed gives the same results; the memory guard
stops a run cleanly; what the Prefect UI shows."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from sqlalchemy import text

from conftest import REPO_ROOT, TIERFLOW, run_cli

RESULT_TABLES = ("runs", "snapshots", "snapshot_files", "artifacts", "artifact_lineage", "block_ledger", "object_features",
                 "object_intensities", "retention_events", "track_points", "track_kinematics", "track_msd")


def _project(root: Path) -> Path:
    (root / "configs").mkdir(parents=True)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    return root


def _stop(root: Path) -> None:
    from tierflow.storage.db.embedded import EmbeddedPostgres

    EmbeddedPostgres(root / "var" / "tier4-ephemeral" / "state" / "postgres").stop()


def _db(root: Path):
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(root / "configs"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory, prefect_api):
    """`tierflow demo --json` in a fresh project, reporting to the test Prefect server."""
    root = _project(tmp_path_factory.mktemp("demo"))
    env = {"PREFECT_API_URL": prefect_api}
    started = time.perf_counter()
    done = run_cli("demo", "--json", cwd=root, env=env)
    result = json.loads(done.stdout)
    result["_seconds"] = time.perf_counter() - started
    yield root, result, env
    _stop(root)


def test_the_demo_promotes_verified_results_and_reclaims_scratch(demo):
    from tierflow.storage.promotion import tree_digest

    root, result, _ = demo
    print(f"demo: {result['_seconds']:.0f} s, {result['objects']} objects, {result['tracks']} tracks, linking {result['linking']}")
    source = root / "var" / "tier1-source"
    assert (source / "snapshots" / "demo" / result["snapshot_id"] / "manifest.json").is_file()
    db = _db(root)
    with db.session() as session:
        for table in RESULT_TABLES:
            assert session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0, f"no rows in {table}"
        promoted = session.execute(text("SELECT uri, sha256, bytes FROM artifacts WHERE tier = 'source'")).all()
        scratch = session.execute(text("SELECT uri, deleted_at FROM artifacts WHERE tier = 'scratch' AND run_id = :r"),
                                  {"r": result["run_id"]}).all()
    # every promoted artifact on Tier 1 hashes to the digest recorded at promotion
    # one OME-Zarr image per sample (every channel and time point, its labels), 4 tables, 2 reports
    assert len(promoted) == len(result["promoted"]) == 2 + 4 + 2
    assert sorted(result["images"]) == ["sample1", "sample2"] and result["images"]["sample1"]["shape"] == [10, 2, 32, 256, 256]
    for uri, sha256, size in promoted:
        path = Path(uri[len("file://"):])
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        if path.is_dir():
            import hashlib

            entries = [(p.relative_to(path).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]
            assert tree_digest(entries) == sha256, uri
        else:
            import hashlib

            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, uri
        assert sum(p.stat().st_size for p in files) == size
    # this run's scratch is gone, on disk and in the database
    assert scratch and all(deleted is not None for _, deleted in scratch)
    assert not any((root / "var" / "tier3-scratch").rglob("*.zarr"))
    assert result["tier_usage"]["reclaimed"] == result["tier_usage"]["written_scratch"] > 0


def _reference_objects(raw: Path, sigma: float) -> pd.DataFrame:
    """The same segmentation on each whole volume with SciPy / scikit-image."""
    frames = []
    for stack in sorted(raw.glob("*/*_c0_t*.tif")):
        image = tifffile.imread(stack)
        smooth = np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float32), sigma, mode="reflect", truncate=4.0)), 0, 65535)
        smooth = smooth.astype(np.uint16)
        labels, _ = ndimage.label(smooth > threshold_otsu(smooth), structure=np.ones((3, 3, 3)))
        table = pd.DataFrame(regionprops_table(labels, properties=("label", "area", "centroid")))
        table["sample"] = stack.parent.name
        table["time_point"] = int(stack.stem.rsplit("_t", 1)[1])
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def test_demo_objects_equal_a_whole_volume_scipy_segmentation(demo):
    root, result, _ = demo
    objects = pd.read_csv(Path(result["promoted"]["tables/objects.csv"][len("file://"):]))
    reference = _reference_objects(root / "var" / "demo" / "raw", sigma=1.0)
    ours = objects.groupby(["sample", "time_point"]).size()
    theirs = reference.groupby(["sample", "time_point"]).size()
    pd.testing.assert_series_equal(ours, theirs, check_names=False)
    # same objects: sorted volumes per time point agree (float32 smoothing may move a voxel)
    for key, group in objects.groupby(["sample", "time_point"]):
        expected = np.sort(reference.set_index(["sample", "time_point"]).loc[key]["area"].to_numpy())
        np.testing.assert_allclose(np.sort(group["area"].to_numpy()), expected, rtol=0.02, atol=2)
    db = _db(root)
    with db.session() as session:
        stored = session.execute(text("SELECT count(*) FROM object_features f JOIN runs r ON r.id = f.run_id WHERE r.parent_id = :r"),
                                 {"r": result["run_id"]}).scalar_one()
    assert stored == len(objects) == result["objects"]


def test_demo_tracks_match_the_ground_truth(demo):
    _, result, _ = demo
    print(f"linking accuracy {result['linking']['accuracy']:.1%} ({result['linking']['correct']}/{result['linking']['links']}), "
          f"{result['linking']['detected']:.1%} of true cells detected")
    assert result["linking"]["accuracy"] >= 0.85
    assert result["linking"]["detected"] >= 0.9
    assert result["divisions"] >= 2


def test_a_rerun_with_the_same_snapshot_and_parameters_is_served_from_cache(demo):
    root, result, env = demo
    again = json.loads(
        run_cli("run", "pipeline", "--dataset", "demo", "--snapshot", result["snapshot_id"], "--json", cwd=root, env=env).stdout
    )
    assert again["cached"] is True and again["served_from_run"] == result["run_id"]
    assert again["objects"] == result["objects"] and again["promoted"] == result["promoted"]


def test_the_prefect_ui_shows_progress_objects_and_the_report(demo, prefect_api):
    from prefect.client.orchestration import get_client

    async def artifacts(key: str) -> list[dict]:  # newest first, as the UI's Artifacts page lists them
        async with get_client() as client:
            # the REST filter directly: the 3.8 client sends empty flow/task-run filters that
            # leave out artifacts made by flows (not tasks)
            response = await client._client.post(
                "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "limit": 5, "sort": "CREATED_DESC"}
            )
            response.raise_for_status()
            return response.json()

    from tierflow.flows.runtime.progress import progress_key

    root, result, env = demo
    flow_run = json.loads(run_cli("runs", "show", str(result["run_id"]), "--json", cwd=root, env=env).stdout)["flow_run_id"]
    for stage in ("stage", "smooth", "threshold", "label", "features", "image"):
        progress = asyncio.run(artifacts(progress_key(result["run_id"], stage, flow_run)))  # the run's own bars
        assert progress and float(progress[0]["data"]) == 100.0, stage
    report = asyncio.run(artifacts("pipeline-report"))
    assert report and result["snapshot_id"] in report[0]["data"] and "neuroglancer" in report[0]["data"].lower()
    table = asyncio.run(artifacts("pipeline-objects"))
    assert table and len(json.loads(table[0]["data"])) == min(1000, result["objects"])
    link = next(iter(result["links"].values()))
    from urllib.parse import unquote

    state = json.loads(unquote(link.split("#!", 1)[1]))
    assert state["layers"][0]["source"].startswith("zarr://http://127.0.0.1:9000/promoted/demo/")


def test_one_select_on_pipeline_objects_gives_each_object_its_track_id_and_channel_means(demo):
    """The views answer "objects of run R with track ids and channel means" in one SELECT: the
    means equal SciPy's over the promoted segmentation and the raw TIFFs, the track ids those of
    the run's track points joined by hand."""
    import zarr

    root, result, _ = demo
    run = result["run_id"]
    with _db(root).session() as session:
        view = pd.DataFrame(session.execute(text("SELECT sample, time_point, label, track_id, c0_mean, c1_mean, c2_mean "
                                                 "FROM pipeline_objects WHERE pipeline_run = :r"), {"r": run}).mappings().all())
        points = pd.DataFrame(session.execute(text("SELECT p.sample, p.time_point, p.label, p.track_id FROM track_points p "
                                                   "JOIN runs t ON t.id = p.run_id WHERE t.parent_id = :r AND t.flow_name = 'track'"),
                                              {"r": run}).mappings().all())
    assert len(view) == result["objects"] and not view.duplicated(["sample", "time_point", "label"]).any()
    assert view["c2_mean"].isna().all()  # the demo has channels c0 and c1
    checked = 0
    for sample, image in result["images"].items():
        labels = zarr.open_array(f"{image['uri'][len('file://'):]}/labels/cells/0", mode="r")
        for time_point in range(labels.shape[0]):
            segmentation = np.asarray(labels[time_point]).squeeze()
            ids = np.unique(segmentation)
            ids = ids[ids > 0]
            ours = view[(view["sample"] == sample) & (view["time_point"] == time_point)].set_index("label").sort_index()
            assert ours.index.tolist() == ids.tolist(), (sample, time_point)
            for channel in (0, 1):
                raw = tifffile.imread(root / "var" / "demo" / "raw" / sample / f"{sample}_c{channel}_t{time_point:03d}.tif")
                np.testing.assert_allclose(ours[f"c{channel}_mean"].to_numpy(), ndimage.mean(raw, segmentation, ids), rtol=1e-9)
            checked += len(ids)
    assert checked == result["objects"]
    merged = view.merge(points, on=["sample", "time_point", "label"], how="left", suffixes=("", "_points"))
    assert merged["track_id"].notna().all() and (merged["track_id"] == merged["track_id_points"]).all()
    assert merged["track_id"].nunique() > 1


def test_results_psql_url_and_pgpass_reach_the_views_without_digging_in_var(demo, tmp_path, monkeypatch):
    import importlib.util
    import io
    import re

    from tierflow.storage.db.embedded import EmbeddedPostgres, client_binary

    root, result, env = demo
    run, objects = result["run_id"], result["objects"]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    csv = pd.read_csv(io.StringIO(run_cli("results", str(run), "--format", "csv", cwd=root, env=env).stdout))
    assert len(csv) == objects and {"track_id", "c0_mean", "c1_mean", "c0_sum", "c1_max"} <= set(csv.columns)
    preview = run_cli("results", str(run), cwd=root, env=env).stdout
    assert f"of {objects} objects" in preview and f"SELECT * FROM pipeline_objects WHERE pipeline_run = {run}" in preview
    parquet = run_cli("results", str(run), "--output", str(tmp_path / "objects.parquet"), cwd=root, env=env, check=False)
    if importlib.util.find_spec("pyarrow"):
        assert parquet.returncode == 0 and len(pd.read_parquet(tmp_path / "objects.parquet")) == objects
    else:
        assert parquet.returncode == 1 and "needs the pyarrow package" in parquet.stderr and "pip install pyarrow" in parquet.stderr
    with _db(root).session() as session:
        track_run = session.execute(text("SELECT id FROM runs WHERE parent_id = :r AND flow_name = 'track'"), {"r": run}).scalar_one()
    refused = run_cli("results", str(track_run), cwd=root, env=env, check=False)
    assert refused.returncode == 1 and f"run {track_run} is a 'track' run, which stored no objects" in refused.stderr
    # psql: the embedded server's own, and the system's (an older client) if there is one
    query = f"select count(*), count(track_id) from pipeline_objects where pipeline_run = {run}"
    assert run_cli("db", "psql", "--", "-Atc", query, cwd=root).stdout.strip() == f"{objects}|{objects}"
    if Path("/usr/bin/psql").exists():
        assert run_cli("db", "psql", "--psql", "/usr/bin/psql", "--", "-Atc", query, cwd=root).stdout.strip() == f"{objects}|{objects}"
    # the URL hides the password unless asked; pgpass stores it where psql and pandas look
    password = EmbeddedPostgres(root / "var" / "tier4-ephemeral" / "state" / "postgres").password()
    masked = run_cli("db", "url", cwd=root)
    assert password not in masked.stdout + masked.stderr and ":***@" in masked.stdout
    shown = run_cli("db", "url", "--show-password", cwd=root)
    assert password in shown.stdout and "contains the database password" in shown.stderr
    pgpass = tmp_path / "pgpass"
    written = run_cli("db", "pgpass", "--file", str(pgpass), cwd=root)
    assert password not in written.stdout + written.stderr and pgpass.stat().st_mode & 0o777 == 0o600
    assert pgpass.read_text().strip().endswith(f":{password}")
    url = re.search(r"psql '(\S+)'", written.stdout).group(1)
    assert f"PGPASSFILE={pgpass} psql" in " ".join(written.stdout.split())  # another file than ~/.pgpass must be named
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    psql = str(client_binary("psql") or "psql")
    counted = subprocess.run([psql, url, "-Atc", f"select sum(done) from stage_blocks where pipeline_run = {run}"], capture_output=True,
                             text=True, timeout=120, env=os.environ | {"PGPASSFILE": str(pgpass)})
    assert counted.returncode == 0 and int(counted.stdout) > 0, counted.stderr
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        frame = pd.read_sql(text("SELECT * FROM track_summary WHERE pipeline_run = :r"), engine, params={"r": run})
    finally:
        engine.dispose()
    assert len(frame) == result["tracks"] and {"first_time_point", "last_time_point", "mean_speed", "msd_slope"} <= set(frame.columns)


@pytest.fixture
def small_raw(tmp_path):
    from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw

    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SyntheticSpec(samples=1, time_points=4, shape=(32, 128, 128), cells=4, divisions=1, touching_pairs=0))
    return raw


def _tables(result: dict) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(Path(result["promoted"][f"tables/{name}.csv"][len("file://") :])) for name in ("objects", "tracks")}


def test_a_run_killed_mid_stage_resumes_to_the_same_results(project, small_raw, prefect_api):
    env = {"PREFECT_API_URL": prefect_api}
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | env
    reference = json.loads(
        run_cli(
            "run", "pipeline", "--dataset", "whole", "--raw", str(small_raw), "--param", "sigma=1.5", "--json", cwd=project, env=env
        ).stdout
    )
    process = subprocess.Popen(
        [TIERFLOW, "run", "pipeline", "--dataset", "killed", "--raw", str(small_raw), "--param", "sigma=1.5"],
        cwd=project,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    db = _db(project)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill it once the threshold stage has started writing blocks
            with db.session() as session:
                started = session.execute(
                    text(
                        "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id JOIN runs p ON p.id = r.parent_id "
                        "WHERE b.op = 'threshold' AND p.parameters->>'dataset' = 'killed'"
                    )
                ).scalar_one()
            if started or process.poll() is not None:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with db.session() as session:
        killed_run, status = session.execute(
            text("SELECT id, status FROM runs WHERE flow_name = 'pipeline' AND parameters->>'dataset' = 'killed'")
        ).one()
    assert status == "running"  # killed: nobody could record its end
    resumed = json.loads(run_cli("resume", str(killed_run), "--json", cwd=project, env=env).stdout)
    assert resumed["cached"] is False and resumed["objects"] == reference["objects"]
    for name, table in _tables(resumed).items():  # equal but for the dataset's name
        pd.testing.assert_frame_equal(
            table.drop(columns=["dataset"], errors="ignore"), _tables(reference)[name].drop(columns=["dataset"], errors="ignore"), obj=name
        )
    # seen again after its resume, the killed run reads crashed in every reader
    assert json.loads(run_cli("status", str(killed_run), "--json", cwd=project, env=env).stdout)["status"] == "crashed"
    listed = {r["id"]: r["status"] for r in json.loads(run_cli("runs", "list", "--json", cwd=project, env=env).stdout)}
    assert listed[killed_run] == "crashed" and listed[resumed["run_id"]] == "completed"
    with db.session() as session:
        assert session.execute(text("SELECT status FROM runs WHERE id = :r"), {"r": killed_run}).scalar_one() == "crashed"
        # the resumed run did not redo the smoothing the killed one had finished
        redone = session.execute(
            text("SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id WHERE r.parent_id = :r AND b.op = 'gaussian'"),
            {"r": resumed["run_id"]},
        ).scalar_one()
    assert redone == 0


def test_the_memory_guard_stops_a_run_cleanly_and_resume_goes_on(project, small_raw, prefect_api):
    env = {"PREFECT_API_URL": prefect_api}
    run_cli("ingest", str(small_raw), "--dataset", "tight", cwd=project, env=env)
    db = _db(project)
    with db.session() as session:
        snapshot = session.execute(text("SELECT snapshot_id FROM snapshots WHERE dataset = 'tight'")).scalar_one()
    stopped = run_cli(
        "run",
        "pipeline",
        "--dataset",
        "tight",
        "--snapshot",
        snapshot,
        cwd=project,
        env={**env, "TIERFLOW_EXECUTION__MEMORY_LIMIT_PERCENT": "0.5"},
        check=False,
    )
    assert stopped.returncode == 1
    assert "error: stopped before stage 'stage'" in stopped.stderr and "([execution].memory_limit_percent)" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    with db.session() as session:
        run_id, status = session.execute(
            text("SELECT id, status FROM runs WHERE flow_name = 'pipeline' AND parameters->>'dataset' = 'tight'")
        ).one()
    assert status == "failed"
    assert "([execution].memory_limit_percent)" in run_cli("status", str(run_id), cwd=project, env=env).stdout  # not Rich markup
    finished = json.loads(run_cli("resume", str(run_id), "--json", cwd=project, env=env).stdout)
    assert finished["objects"] > 0


def test_pipeline_parameters_are_validated_with_the_key_at_fault(project):
    from tierflow.configs import load_config
    from tierflow.flows.pipeline.flow import PipelineParams
    from tierflow.storage.errors import TierflowError

    config = load_config(project / "configs")
    assert PipelineParams.from_config(config, {"sigma": "2", "block_shape": "8,64,64"}).block_shape == (8, 64, 64)
    with pytest.raises(TierflowError, match=r"pipeline parameter sigma"):
        PipelineParams.from_config(config, {"sigma": "-1"})
    with pytest.raises(TierflowError, match=r"no parameter\(s\) \['sigmaa'\]"):
        PipelineParams.from_config(config, {"sigmaa": "1"})
    with pytest.raises(TierflowError, match="neither 'otsu' nor a number"):
        PipelineParams.from_config(config, {"threshold": "auto"})
