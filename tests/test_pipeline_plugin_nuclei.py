"""Pipelines end to end through the CLI: a project's own spec using a plugin op (labops' tophat)
runs, equals SciPy / scikit-image on the whole volume, is served from cache the second time and
resumes after a kill without redoing its finished stages; the shipped `nuclei` pipeline scores a
higher instance F1 than the default `cells` pipeline (Otsu + connected components) on touching
nuclei with ground truth."""

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

from conftest import REPO_ROOT, TIERFLOW, run_cli
from test_pipeline_specs import _local, _same_partition

SPOTS = """
name = "spots"
description = "bright spots of channel 0: smoothed, background removed by a white top-hat (labops), thresholded, labelled"

[params]
sigma = { default = 1.0, description = "smoothing, voxels" }
radius = { default = 2, description = "top-hat ball radius, voxels: above a spot's radius" }
level = { default = "250", description = "top-hat intensity above which a voxel is a spot" }

[[stages]]
name = "smooth"
op = "gaussian"
input = "raw.c0"
params = { sigma = "{sigma}" }

[[stages]]
name = "tophat"
op = "tophat"                # the plugin's op (package labops, entry point group tierflow.ops)
input = "smooth"
params = { radius = "{radius}" }

[[stages]]
name = "mask"
op = "threshold"
input = "tophat"
params = { value = "{level}" }

[[stages]]
name = "spots"
op = "label"
input = "mask"
params = { connectivity = 6 }

[outputs]
features = { labels = "spots", channels = "raw" }
pyramid = { inputs = ["spots"], levels = 2 }
promote = ["smooth", "tophat", "spots"]
"""

POINTS = [(sample, time_point) for sample in ("s1", "s2") for time_point in (0, 1)]


def _db(project: Path):
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(project / "configs"))


def _scalar(db, sql: str, **params) -> int:
    with db.session() as session:
        return session.execute(text(sql), params).scalar_one()


def _smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """The gaussian op on a whole volume (float32, reflected edges, rounded back to uint16)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma, mode="reflect", truncate=4.0)
    return np.clip(np.rint(smooth), 0, 65535).astype(np.uint16)


def _spots_reference(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """white top-hat (ball of radius 2) -> > 250 -> 6-connected components, on a whole smoothed
    volume with scikit-image / SciPy: the top-hat image and the labels."""
    from skimage.morphology import ball, white_tophat

    tophat = white_tophat(smooth, footprint=ball(2))
    labels, _ = ndimage.label(tophat > 250)
    return tophat, labels


def _block_rows(db, parent: int, op: str) -> int:
    """Ledger rows of ``op`` (a LIKE pattern) written by the child op runs of pipeline run ``parent``."""
    return _scalar(db, "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id WHERE r.parent_id = :p AND b.op LIKE :op",
                   p=parent, op=op)


def _kill_once(process: subprocess.Popen, db, dataset: str, op: str) -> int:
    """SIGKILL the pipeline run of ``dataset`` (its process group) once ``op`` writes blocks;
    the killed run's id."""
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            started = _scalar(db, "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id JOIN runs p ON p.id = r.parent_id "
                                  "WHERE b.op = :op AND p.parameters->>'dataset' = :d", op=op, d=dataset)
            if started or process.poll() is not None:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    return _scalar(db, "SELECT id FROM runs WHERE flow_name = 'pipeline' AND parameters->>'dataset' = :d", d=dataset)


def test_a_spec_with_a_plugin_op_runs_from_cache_and_resumed(project: Path, raw_folder: Path, prefect_api: str) -> None:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("labops")
    except PackageNotFoundError:
        pytest.fail("the example plugin examples/labops is not installed in this venv: run `make venv` "
                    "(or `.venv/bin/pip install -e examples/labops`)")
    env = {"PREFECT_API_URL": prefect_api}
    (project / "configs" / "pipelines").mkdir()
    (project / "configs" / "pipelines" / "spots.toml").write_text(SPOTS)
    listed = {p["name"]: p for p in json.loads(run_cli("pipelines", "list", "--json", cwd=project).stdout)}
    assert [s["op"] for s in listed["spots"]["stages"]] == ["gaussian", "tophat", "threshold", "label"]
    assert "50" in listed["spots"]["params"]["radius"]["allowed"]  # the plugin's own bound (le=50)

    args = ("run", "pipeline", "spots", "--raw", str(raw_folder), "--param", "block_shape=2,16,16", "--json")
    started = time.perf_counter()
    result = json.loads(run_cli(*args[:3], "--dataset", "emb", *args[3:], cwd=project, env=env).stdout)
    print(f"spots (gaussian -> tophat -> threshold -> label) on 4 volumes of 4x32x32: {time.perf_counter() - started:.1f} s, "
          f"{result['objects']} objects")
    assert result["params"] == {"sigma": 1.0, "radius": 2, "level": "250", "block_shape": [2, 16, 16]}
    objects = pd.read_csv(_local(result["promoted"]["tables/objects.csv"]))
    for sample, time_point in POINTS:
        name = f"{sample}_t{time_point:03d}"
        # smoothed block-wise in float32, a voxel may round the other way than on the whole volume
        smooth = zarr.open_array(str(_local(result["promoted"][f"smooth/{name}.zarr"])), mode="r")[:]
        scipy_smooth = _smooth(tifffile.imread(raw_folder / sample / f"emb_c0_t{time_point:03d}.tif"), 1.0)
        assert np.abs(smooth.astype(int) - scipy_smooth).max() <= 1 and np.mean(smooth != scipy_smooth) < 1e-3
        # the plugin stage's output (promoted to Tier 1) is scikit-image's top-hat of the whole
        # smoothed volume, and so are the labels downstream; on the SciPy-smoothed one they agree
        tophat, reference = _spots_reference(smooth)
        assert reference.max() >= 5
        np.testing.assert_array_equal(zarr.open_array(str(_local(result["promoted"][f"tophat/{name}.zarr"])), mode="r")[:], tophat)
        scipy_tophat, scipy_labels = _spots_reference(scipy_smooth)
        assert np.abs(tophat.astype(int) - scipy_tophat).max() <= 1 and np.mean(tophat != scipy_tophat) < 1e-3
        _same_partition(scipy_labels, reference)
        labels = zarr.open_array(str(_local(result["promoted"][f"spots/{name}.zarr"])), mode="r")[:]
        _same_partition(labels, reference)
        pyramid = zarr.open_group(str(_local(result["promoted"][f"pyramids/{name}.ome.zarr"])), mode="r")
        np.testing.assert_array_equal(pyramid["0"][:], labels)
        table = objects[(objects["sample"] == sample) & (objects["time_point"] == time_point)]
        ids = np.arange(1, reference.max() + 1)
        areas = ndimage.sum_labels(np.ones_like(reference), reference, ids)
        np.testing.assert_array_equal(np.sort(table["area"].to_numpy()), np.sort(areas))
        for channel in (0, 1):
            image = tifffile.imread(raw_folder / sample / f"emb_c{channel}_t{time_point:03d}.tif").astype(np.float64)
            np.testing.assert_allclose(np.sort(table[f"c{channel}_mean"].to_numpy()), np.sort(ndimage.mean(image, reference, ids)),
                                       rtol=1e-6)
    db = _db(project)
    assert _block_rows(db, result["run_id"], "tophat") == 4 * 8  # 4 volumes of 2x2x2 blocks

    # the same spec, raw folder and parameters again: served from the first run, no op runs
    op_runs = _scalar(db, "SELECT count(*) FROM runs WHERE flow_name = 'op'")
    again = json.loads(run_cli(*args[:3], "--dataset", "emb", *args[3:], cwd=project, env=env).stdout)
    assert again["cached"] is True and again["served_from_run"] == result["run_id"]
    assert again["promoted"] == result["promoted"] and again["objects"] == result["objects"]
    assert _scalar(db, "SELECT count(*) FROM runs WHERE flow_name = 'op'") == op_runs

    # killed once the threshold stage (after the top-hat) writes blocks, resumed: the same
    # outputs, and neither the smoothing nor the top-hat does a block again
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | env
    process = subprocess.Popen([TIERFLOW, *args[:3], "--dataset", "killed", *args[3:-1]], cwd=project, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    killed = _kill_once(process, db, "killed", "threshold")
    assert _block_rows(db, killed, "gaussian") == _block_rows(db, killed, "tophat") == 32
    assert _scalar(db, "SELECT count(*) FROM runs WHERE parent_id = :r AND flow_name = 'promote'", r=killed) == 0  # killed mid-way
    resumed = json.loads(run_cli("resume", str(killed), "--json", cwd=project, env=env).stdout)
    assert resumed["cached"] is False and resumed["objects"] == result["objects"]
    for sample, time_point in POINTS:
        name = f"{sample}_t{time_point:03d}"
        for stage in ("tophat", "spots"):
            ours = zarr.open_array(str(_local(resumed["promoted"][f"{stage}/{name}.zarr"])), mode="r")[:]
            np.testing.assert_array_equal(ours, zarr.open_array(str(_local(result["promoted"][f"{stage}/{name}.zarr"])), mode="r")[:])
    pd.testing.assert_frame_equal(pd.read_csv(_local(resumed["promoted"]["tables/objects.csv"])).drop(columns=["dataset"], errors="ignore"),
                                  objects.drop(columns=["dataset"], errors="ignore"))
    assert _block_rows(db, resumed["run_id"], "gaussian") == _block_rows(db, resumed["run_id"], "tophat") == 0
    assert _block_rows(db, resumed["run_id"], "label%") > 0  # what the kill cut short is done now


# -- nuclei.toml against cells.toml on touching nuclei ---------------------------------------------

def _whole_volume_chains(image: np.ndarray) -> dict[str, np.ndarray]:
    """Both pipelines' chains on the whole volume with SciPy / scikit-image (the nuclei chain as
    the usual tutorial recipe: peak_local_max seeds, a watershed of the negated distance)."""
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    smooth = _smooth(image, 1.0)
    mask = smooth > threshold_otsu(smooth)
    cells, _ = ndimage.label(mask, np.ones((3, 3, 3)))
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(distance, min_distance=3, threshold_abs=0.0, exclude_border=False)
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return {"cells": cells, "nuclei": watershed(-distance, markers=markers, mask=mask, connectivity=1)}


def test_the_nuclei_pipeline_beats_otsu_and_connected_components(project: Path, tmp_path: Path, prefect_api: str) -> None:
    from tierflow.flows.pipeline.library import load_spec
    from tierflow.tasks.ops.evaluation import match_instances
    from tierflow.tasks.synthetic_nuclei import NucleiSpec, touching_nuclei

    env = {"PREFECT_API_URL": prefect_api}
    image, truth = touching_nuclei(NucleiSpec(shape=(32, 128, 128), clusters=14, seed=2))
    raw = tmp_path / "raw"
    (raw / "s1").mkdir(parents=True)
    tifffile.imwrite(raw / "s1" / "nuc_c0_t000.tif", image, photometric="minisblack")
    # cells as shipped, keeping its label image (a project's spec of the same name wins): the
    # same stages and parameters, so the same segmentation, readable from Tier 1 afterwards
    shipped = REPO_ROOT / "configs" / "pipelines" / "cells.toml"
    assert shipped.read_text().rstrip().rsplit("\n[", 1)[1].startswith("outputs]")  # [outputs] is the last table
    (project / "configs" / "pipelines").mkdir()
    kept = project / "configs" / "pipelines" / "cells.toml"
    kept.write_text(shipped.read_text() + 'promote = ["label"]\n')
    assert load_spec(kept).stages == load_spec(shipped).stages and load_spec(kept).params == load_spec(shipped).params

    common = ("--param", "block_shape=16,64,64", "--json")
    started = time.perf_counter()
    nuclei = json.loads(run_cli("run", "pipeline", "nuclei", "--dataset", "nuc", "--raw", str(raw), *common, cwd=project, env=env).stdout)
    middle = time.perf_counter()
    cells = json.loads(run_cli("run", "pipeline", "cells", "--dataset", "nuc", "--snapshot", nuclei["snapshot_id"], *common,
                               cwd=project, env=env).stdout)
    print(f"nuclei run {middle - started:.1f} s, cells run {time.perf_counter() - middle:.1f} s (32x128x128, blocks 16x64x64)")
    assert cells["snapshot_id"] == nuclei["snapshot_id"] and cells["key"] != nuclei["key"]
    found = {"nuclei": zarr.open_array(str(_local(nuclei["promoted"]["nuclei/s1_t000.zarr"])), mode="r")[:],
             "cells": zarr.open_array(str(_local(cells["promoted"]["label/s1_t000.zarr"])), mode="r")[:]}
    whole = _whole_volume_chains(image)
    _same_partition(found["cells"], whole["cells"])  # cells: exactly SciPy's Otsu + 26-connected components
    assert match_instances(whole["nuclei"], found["nuclei"]).f1 == 1.0  # nuclei: scikit-image's watershed's objects
    assert nuclei["objects"] == len(np.unique(found["nuclei"])) - 1 and cells["objects"] == int(found["cells"].max())
    nuclei_score, cells_score = match_instances(truth, found["nuclei"]), match_instances(truth, found["cells"])
    for name, score in (("cells", cells_score), ("nuclei", nuclei_score)):
        print(f"{name:7s} F1 at IoU >= 0.5: {score.f1:.3f} (precision {score.precision:.3f}, recall {score.recall:.3f}, "
              f"{score.predicted_objects} objects, {score.true_objects} true nuclei)")
    assert nuclei_score.f1 > cells_score.f1 and nuclei_score.f1 >= 0.9
    pyramids = {name for name in nuclei["promoted"] if name.startswith("pyramids/")}
    assert pyramids == {"pyramids/s1_t000_c0.ome.zarr", "pyramids/s1_t000_nuclei.ome.zarr"}
