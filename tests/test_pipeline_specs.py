"""Pipelines as data: a TOML spec is validated before anything runs (each error names the file,
the stage and the key), listed by `tierflow pipelines list`, run end to end through the CLI
(outputs checked against SciPy on the whole volume), served from cache the second time and
resumed after a kill; its deployment's run form in the Prefect UI is the spec's typed
parameters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage
from sqlalchemy import text

from conftest import TIERFLOW, run_cli

BLOBS = """
name = "blobs"
description = "bright blobs of channel 1: smoothed, a fixed threshold, 6-connected components"

[params]
sigma = { default = 1.5, le = 20, description = "smoothing of channel 1, voxels" }
level = { default = "2000", description = "intensity above which a voxel is foreground" }

[[stages]]
name = "smooth"
op = "gaussian"
input = "raw.c1"
params = { sigma = "{sigma}" }

[[stages]]
name = "mask"
op = "threshold"
input = "smooth"
params = { value = "{level}" }

[[stages]]
name = "objects"
op = "label"
input = "mask"
params = { connectivity = 6 }

[outputs]
features = { labels = "objects", channels = ["raw.c0"] }
pyramid = { inputs = ["objects"], levels = 2 }
promote = ["objects"]
"""


def _spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _break(old: str, new: str) -> str:
    assert old in BLOBS
    return BLOBS.replace(old, new, 1)


BAD_SPECS = [
    ("unknown-op", _break('op = "threshold"', 'op = "binarize"'), "stage 'mask'", "'op'", "binarize"),
    ("unknown-op-param", _break("params = { connectivity = 6 }", "params = { connectivity = 6, conectivity = 6 }"),
     "stage 'objects'", "'params.conectivity'", "conectivity"),
    ("ill-typed-op-param", _break("params = { connectivity = 6 }", "params = { connectivity = 5 }"), "stage 'objects'",
     "'params.connectivity'", "5"),
    ("text-for-a-number", _break('params = { value = "{level}" }', 'params = { value = "bright" }'), "stage 'mask'",
     "'params.value'", "bright"),
    ("missing-input", _break('input = "smooth"', 'input = "smoothed"'), "stage 'mask'", "'input'", "smoothed"),
    ("cyclic-input", _break('input = "raw.c1"', 'input = "objects"'), "stage 'smooth'", "'input'", "read each other"),
    ("unknown-param-reference", _break('params = { sigma = "{sigma}" }', 'params = { sigma = "{sigmaa}" }'), "stage 'smooth'",
     "'params.sigma'", "{sigmaa}"),
    ("default-out-of-the-op-range", _break("default = 1.5, le = 20", "default = -1.0"), "[params]", "'sigma'", "-1.0"),
    ("missing-op", _break('op = "gaussian"\n', ""), "stage 'smooth'", "'op'", "missing"),
    ("extra-input-not-taken", _break('input = "mask"\n', 'input = "mask"\nwith = { markers = "smooth" }\n'), "stage 'objects'",
     "'with.markers'", "markers"),
    ("features-of-a-mask", _break('labels = "objects"', 'labels = "mask"'), "[outputs]", "'features.labels'", "label image"),
]


@pytest.mark.parametrize(("text", "where", "key", "culprit"), [case[1:] for case in BAD_SPECS], ids=[case[0] for case in BAD_SPECS])
def test_a_bad_spec_is_refused_naming_its_file_stage_and_key(tmp_path: Path, text: str, where: str, key: str, culprit: str) -> None:
    from tierflow.errors import TierflowError
    from tierflow.flows.pipeline.library import load_spec

    path = _spec(tmp_path, text)
    with pytest.raises(TierflowError) as caught:
        load_spec(path)
    message = caught.value.message
    assert message.startswith(f"{path}: {where}, key {key}"), message
    assert culprit in message + (caught.value.hint or ""), message
    assert caught.value.hint


def test_a_bad_spec_or_parameter_stops_the_cli_before_anything_runs(project: Path, raw_folder: Path, tmp_path: Path) -> None:
    path = _spec(tmp_path, _break('input = "smooth"', 'input = "smoothed"'))
    done = run_cli("run", "pipeline", str(path), "--dataset", "emb", "--raw", str(raw_folder), cwd=project, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {path}: stage 'mask', key 'input'") and "\nhint: " in done.stderr
    good = _spec(tmp_path, BLOBS, "blobs.toml")
    for param, culprits in (("sigma=30", ["sigma", "<= 20"]), ("sigmaa=1", ["sigmaa", "level"]), ("level=dark", ["level", "dark", "otsu"])):
        done = run_cli("run", "pipeline", str(good), "--dataset", "emb", "--raw", str(raw_folder), "--param", param, cwd=project,
                       check=False)
        assert done.returncode == 1 and all(c in done.stderr for c in culprits), done.stderr
    assert not (project / "var").exists()  # no database, no tier, no flow


def test_pipelines_list_shows_tierflows_and_the_projects_own(project: Path) -> None:
    (project / "configs" / "pipelines").mkdir()
    (project / "configs" / "pipelines" / "blobs.toml").write_text(BLOBS)
    listed = json.loads(run_cli("pipelines", "list", "--json", cwd=project).stdout)
    by_name = {p["name"]: p for p in listed}
    assert list(by_name)[0] == "cells" and {"cells", "blobs"} <= set(by_name)
    cells = by_name["cells"]
    assert cells["file"].endswith("configs/pipelines/cells.toml")
    assert [s["name"] for s in cells["stages"]] == ["smooth", "threshold", "label"]
    assert cells["params"]["sigma"] == {"default": 1.0, "help": "gaussian smoothing before the threshold, voxels",
                                        "allowed": "a finite number > 0 and <= 50"}
    assert cells["params"]["connectivity"]["allowed"] == "6, 18 or 26"
    blobs = by_name["blobs"]
    assert blobs["file"] == str(project / "configs" / "pipelines" / "blobs.toml")
    assert blobs["description"].startswith("bright blobs") and blobs["params"]["sigma"]["allowed"] == "a finite number > 0 and <= 20"
    assert blobs["params"]["level"]["allowed"] == "'otsu' or a finite number"  # from the op it feeds


def _reference(raw: Path, sample: str, time_point: int, sigma: float, level: float) -> np.ndarray:
    image = tifffile.imread(raw / sample / f"emb_c1_t{time_point:03d}.tif")
    smooth = np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float32), sigma, mode="reflect", truncate=4.0)), 0, 65535)
    labels, _ = ndimage.label(smooth.astype(np.uint16) > level)
    return labels


def _same_partition(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ((ours > 0) == (theirs > 0)).all()
    pairs = {(int(a), int(b)) for a, b in zip(ours[ours > 0], theirs[theirs > 0], strict=True)}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == int(theirs.max())


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):])


def test_a_custom_spec_runs_end_to_end_from_cache_and_resumed(project: Path, raw_folder: Path, tmp_path: Path, prefect_api: str) -> None:
    env = {"PREFECT_API_URL": prefect_api}
    spec = _spec(tmp_path, BLOBS, "blobs.toml")
    args = ("run", "pipeline", str(spec), "--raw", str(raw_folder), "--param", "sigma=1.0", "--param", "level=1900",
            "--param", "block_shape=2,16,16", "--json")
    started = time.perf_counter()
    result = json.loads(run_cli(*args[:2], args[2], "--dataset", "emb", *args[3:], cwd=project, env=env).stdout)
    seconds = time.perf_counter() - started
    print(f"blobs on 8 volumes of 4x32x32: {seconds:.1f} s, {result['objects']} objects")
    assert result["params"] == {"sigma": 1.0, "level": "1900", "block_shape": [2, 16, 16]}
    objects = pd.read_csv(_local(result["promoted"]["tables/objects.csv"]))
    for sample in ("s1", "s2"):
        for time_point in (0, 1):
            name = f"{sample}_t{time_point:03d}"
            reference = _reference(raw_folder, sample, time_point, 1.0, 1900)
            labels = zarr.open_array(str(_local(result["promoted"][f"objects/{name}.zarr"])), mode="r")[:]  # promoted to Tier 1
            _same_partition(labels, reference)
            pyramid = zarr.open_group(str(_local(result["promoted"][f"pyramids/{name}.ome.zarr"])), mode="r")
            np.testing.assert_array_equal(pyramid["0"][:], labels)
            table = objects[(objects["sample"] == sample) & (objects["time_point"] == time_point)]
            assert len(table) == reference.max()
            image = tifffile.imread(raw_folder / sample / f"emb_c0_t{time_point:03d}.tif")
            ids = np.arange(1, reference.max() + 1)
            areas = ndimage.sum_labels(np.ones_like(reference), reference, ids)
            means = ndimage.mean(image.astype(np.float64), reference, ids)
            np.testing.assert_array_equal(np.sort(table["area"].to_numpy()), np.sort(areas))
            np.testing.assert_allclose(np.sort(table["c0_mean"].to_numpy()), np.sort(means), rtol=1e-6)
    assert result["tracks"] == 0 and not {"tables/tracks.csv", "tables/msd.csv"} & set(result["promoted"])  # no [outputs] track
    assert not any((project / "var" / "tier3-scratch").rglob("*.zarr"))  # scratch reclaimed

    again = run_cli(*args[:3], "--dataset", "emb", *args[3:-1], cwd=project, env=env).stdout  # as a user reads it
    head = next(line for line in again.splitlines() if line.startswith("pipeline run"))
    assert f"served from cache (run {result['run_id']})" in head and head.endswith(f"-> {result['objects']} objects")  # no tracks
    assert f"look at the results: tierflow runs show {int(head.split()[2])}" in again
    # the cached run computed nothing: its status shows the stages of the run it was served from, and says so
    cached_status = json.loads(run_cli("status", head.split()[2], "--json", cwd=project, env=env).stdout)
    first_status = json.loads(run_cli("status", str(result["run_id"]), "--json", cwd=project, env=env).stdout)
    assert cached_status["served_from_run"] == result["run_id"] and cached_status["stages"] == first_status["stages"] != {}
    shown = run_cli("runs", "show", head.split()[2], cwd=project, env=env).stdout
    assert f"served from the cache of run {result['run_id']}" in " ".join(shown.split())
    # the same parameters with another spec is another pipeline: never served from this one
    cells = json.loads(run_cli("run", "pipeline", "--dataset", "emb", "--snapshot", result["snapshot_id"], "--param",
                               "block_shape=2,16,16", "--json", cwd=project, env=env).stdout)
    assert cells["cached"] is False and cells["key"] != result["key"]

    # killed once the threshold stage writes blocks, resumed: the smoothing is not done again
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | env
    process = subprocess.Popen([TIERFLOW, *args[:3], "--dataset", "killed", *args[3:-1]], cwd=project, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    db = open_database(load_db_config(project / "configs"))
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            with db.session() as session:
                started_blocks = session.execute(text(
                    "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id JOIN runs p ON p.id = r.parent_id "
                    "WHERE b.op = 'threshold' AND p.parameters->>'dataset' = 'killed'")).scalar_one()
            if started_blocks or process.poll() is not None:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with db.session() as session:
        killed = session.execute(
            text("SELECT id FROM runs WHERE flow_name = 'pipeline' AND parameters->>'dataset' = 'killed'")).scalar_one()
    resumed = json.loads(run_cli("resume", str(killed), "--json", cwd=project, env=env).stdout)
    assert resumed["cached"] is False and resumed["objects"] == result["objects"]
    pd.testing.assert_frame_equal(pd.read_csv(_local(resumed["promoted"]["tables/objects.csv"])).drop(columns=["dataset"], errors="ignore"),
                                  objects.drop(columns=["dataset"], errors="ignore"))
    with db.session() as session:
        redone = session.execute(text(
            "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id WHERE r.parent_id = :r AND b.op = 'gaussian'"),
            {"r": resumed["run_id"]}).scalar_one()
    assert redone == 0


def test_each_pipeline_deployment_has_its_parameters_as_a_typed_run_form(project: Path, prefect_api: str) -> None:
    """The deployments `tierflow deploy` writes per pipeline: their parameter schema (the UI's
    run form) types, bounds and describes the spec's parameters, and Prefect enforces it."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from tierflow.flows.pipeline.deployments import deploy_pipelines

    (project / "configs" / "pipelines").mkdir()
    (project / "configs" / "pipelines" / "blobs.toml").write_text(BLOBS)
    with get_client(sync_client=True) as client:  # what `prefect deploy` makes of deployments/prefect.yaml
        flow_id = client.create_flow_from_name("pipeline")
        for pool in ("local", "slurm"):
            try:
                client.create_work_pool(WorkPoolCreate(name=f"tierflow-{pool}", type="process"))
            except Exception:  # noqa: BLE001 - made by an earlier test of this session
                pass
            client.create_deployment(flow_id=flow_id, name=f"pipeline-{pool}", entrypoint="flows/pipeline/flow.py:pipeline",
                                     work_pool_name=f"tierflow-{pool}", tags=["tierflow"])
    made = deploy_pipelines(str(project / "configs"))
    assert {(m.name, m.pipeline) for m in made} >= {("pipeline-local", "cells"), ("pipeline-blobs-local", "blobs"),
                                                     ("pipeline-blobs-slurm", "blobs")}
    api = httpx.Client(base_url=prefect_api, timeout=30)
    deployment = api.get("/deployments/name/pipeline/pipeline-blobs-local").json()
    schema = deployment["parameter_openapi_schema"]
    assert deployment["parameters"] == {"spec": "blobs"} and deployment["enforce_parameter_schema"] is True
    assert deployment["entrypoint"] == "flows/pipeline/flow.py:pipeline" and deployment["tags"] == ["tierflow"]
    form = schema["definitions"][schema["properties"]["params"]["allOf"][0]["$ref"].rsplit("/", 1)[1]]
    assert form["properties"]["sigma"] == {"default": 1.5, "description": "smoothing of channel 1, voxels", "exclusiveMinimum": 0.0,
                                           "maximum": 20.0, "title": "Sigma", "type": "number"}
    assert form["properties"]["level"]["description"] == "intensity above which a voxel is foreground"
    cells = api.get("/deployments/name/pipeline/pipeline-local").json()["parameter_openapi_schema"]
    cells_form = cells["definitions"][cells["properties"]["params"]["allOf"][0]["$ref"].rsplit("/", 1)[1]]
    assert cells_form["properties"]["connectivity"]["enum"] == [6, 18, 26]
    assert cells_form["properties"]["sigma"]["maximum"] == 50.0
    # Prefect checks a run's parameters against the form before the run exists
    refused = api.post(f"/deployments/{deployment['id']}/create_flow_run",
                       json={"parameters": {"dataset": "emb", "params": {"sigma": 30}}, "state": {"type": "SCHEDULED"}})
    assert refused.status_code in (409, 422), refused.text
    assert "sigma" in refused.text or "20" in refused.text
    accepted = api.post(f"/deployments/{deployment['id']}/create_flow_run",
                        json={"parameters": {"dataset": "emb", "params": {"sigma": 2.0}}, "state": {"type": "SCHEDULED"}})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["parameters"] == {"spec": "blobs", "dataset": "emb", "params": {"sigma": 2.0}}
    api.delete(f"/flow_runs/{accepted.json()['id']}")
