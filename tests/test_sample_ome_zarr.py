"""Microscope files in, viewer-ready OME-Zarr out: `tierflow run pipeline` on OME-TIFF volumes
(2 samples x 2 channels x 3 time points, with voxel size, time increment and channel names)
writes ONE OME-Zarr 0.5 image per sample (axes t, c, z, y, x at the physical scale, omero
channels, a pyramid, the segmentation under labels/cells), promoted to Tier 1. Checked: it
validates with ome-zarr-models (ome-zarr-py is not installable beside tierflow's boto3: its s3fs
pins an older botocore, so it is read here with zarr and the models); every channel and time
point equals the TIFF it came from; level 1 equals a NumPy box mean of the whole volume; the
labels equal the pipeline's segmentation (promoted as a stage) and their level 1 holds only ids
of level 0; one Neuroglancer link per sample (channels + labels); `tierflow view` serves it and
answers byte ranges; on SeaweedFS, a sharded image reads back equal and a block shape that would
split shards is refused before any work."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from conftest import REPO_ROOT, TIERFLOW, run_cli

VOXEL = (2.0, 0.5, 0.5)  # z, y, x micrometres
INTERVAL = 30.0  # seconds
CHANNELS = ("DAPI", "GFP")
SHAPE = (8, 48, 64)
TIMES = 3


def _write_raw(raw: Path) -> None:
    """OME-TIFF volumes in tierflow's raw layout: blobs (channel 0) and a dimmer, wider copy (1)."""
    rng = np.random.default_rng(7)
    for sample in ("s1", "s2"):
        (raw / sample).mkdir(parents=True)
        for t in range(TIMES):
            seeds = np.zeros(SHAPE, np.float32)
            points = rng.integers((1, 4, 4), (SHAPE[0] - 1, SHAPE[1] - 4, SHAPE[2] - 4), size=(6, 3))
            seeds[tuple(points.T)] = 1.0
            for c, name in enumerate(CHANNELS):
                blobs = ndimage.gaussian_filter(seeds, (1.0, 3.0, 3.0) if c == 0 else (1.5, 5.0, 5.0))
                image = (blobs / blobs.max() * (3000 if c == 0 else 1500) + rng.normal(200, 20, SHAPE)).clip(0, 65535).astype(np.uint16)
                tifffile.imwrite(raw / sample / f"{sample}_c{c}_t{t:03d}.ome.tif", image, ome=True, metadata={
                    "axes": "ZYX", "PhysicalSizeZ": VOXEL[0], "PhysicalSizeY": VOXEL[1], "PhysicalSizeX": VOXEL[2],
                    "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm",
                    "TimeIncrement": INTERVAL, "TimeIncrementUnit": "s", "Channel": {"Name": [name]}})


def _spec(folder: Path) -> Path:
    """cells, with its segmentation kept too (to compare the image's labels with)."""
    text = (REPO_ROOT / "configs" / "pipelines" / "cells.toml").read_text().replace("[outputs]\n", '[outputs]\npromote = ["label"]\n')
    path = folder / "cells_kept.toml"
    path.write_text(text.replace('name = "cells"', 'name = "cells_kept"', 1))
    return path


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):])


@pytest.fixture(scope="module")
def run(tmp_path_factory, prefect_api):
    import shutil

    root = tmp_path_factory.mktemp("omezarr")
    project = root / "project"
    (project / "configs").mkdir(parents=True)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, project / "configs" / default.name)
    _write_raw(root / "raw")
    started = time.perf_counter()
    result = json.loads(run_cli("run", "pipeline", str(_spec(root)), "--dataset", "omz", "--raw", str(root / "raw"),
                                "--param", "block_shape=4,32,32", "--param", "pyramid_levels=3", "--json", cwd=project,
                                env={"PREFECT_API_URL": prefect_api}).stdout)
    print(f"pipeline on 2 samples x 2 channels x 3 time points of {SHAPE}: {time.perf_counter() - started:.1f} s")
    yield project, root / "raw", result
    from tierflow.storage.db.embedded import EmbeddedPostgres

    EmbeddedPostgres(project / "var" / "tier4-ephemeral" / "state" / "postgres").stop()


def test_one_ome_zarr_per_sample_at_the_physical_scale_validates(run):
    from ome_zarr_models.v05 import Image, ImageLabel

    _, _, result = run
    assert sorted(result["images"]) == ["s1", "s2"]
    assert sorted(name for name in result["promoted"] if name.startswith("images/")) == ["images/s1.ome.zarr", "images/s2.ome.zarr"]
    assert not [name for name in result["promoted"] if name.startswith("pyramids/")]  # no per-volume pyramids any more
    for sample, summary in result["images"].items():
        assert summary["shape"] == [TIMES, 2, *SHAPE] and summary["channels"] == list(CHANNELS) and summary["labels"] == ["cells"]
        group = zarr.open_group(str(_local(summary["uri"])), mode="r")
        image = Image.from_zarr(group)  # ome-zarr-models: metadata, arrays, dimension names, labels group
        multiscale = image.ome_attributes.multiscales[0]
        assert [a.name for a in multiscale.axes] == ["t", "c", "z", "y", "x"]
        assert [a.type for a in multiscale.axes] == ["time", "channel", "space", "space", "space"]
        assert [a.unit for a in multiscale.axes] == ["second", None, "micrometer", "micrometer", "micrometer"]
        scales = [d.coordinateTransformations[0].scale for d in multiscale.datasets]
        assert scales[0] == [INTERVAL, 1.0, *VOXEL]
        assert scales[1] == [INTERVAL, 1.0, VOXEL[0] * 2, VOXEL[1] * 2, VOXEL[2] * 2]
        assert [tuple(group[d.path].shape) for d in multiscale.datasets] == [(3, 2, 8, 48, 64), (3, 2, 4, 24, 32), (3, 2, 2, 12, 16)]
        omero = group.attrs["ome"]["omero"]["channels"]
        assert [c["label"] for c in omero] == list(CHANNELS) and [c["color"] for c in omero] == ["00FF00", "FF00FF"]
        for channel in omero:
            window = channel["window"]
            assert window["min"] <= window["start"] < window["end"] <= window["max"]
        labels = ImageLabel.from_zarr(group["labels/cells"])
        label_meta = labels.attributes.ome.image_label
        assert label_meta.source.image == "../../" and label_meta.colors
        assert group["labels"].attrs["ome"]["labels"] == ["cells"]
        assert tuple(group["labels/cells/0"].shape) == (3, 1, 8, 48, 64)
        assert labels.ome_attributes.multiscales[0].datasets[0].coordinateTransformations[0].scale == [INTERVAL, 1.0, *VOXEL]
        # the feature table, referenced from the image
        table = group.attrs["tierflow"]["tables"]["objects"]
        assert (_local(summary["uri"]) / table["path"]).resolve().is_file() and table["rows"] == {"sample": sample}


def test_the_image_holds_every_channel_and_time_point_and_the_labels_the_segmentation(run):
    _, raw, result = run
    for sample, summary in result["images"].items():
        group = zarr.open_group(str(_local(summary["uri"])), mode="r")
        level0, level1 = group["0"][:], group["1"][:]
        labels0, labels1 = group["labels/cells/0"][:], group["labels/cells/1"][:]
        for t in range(TIMES):
            for c in range(2):
                volume = tifffile.imread(raw / sample / f"{sample}_c{c}_t{t:03d}.ome.tif")
                np.testing.assert_array_equal(level0[t, c], volume)
                boxes = volume.astype(np.float64).reshape(4, 2, 24, 2, 32, 2).mean(axis=(1, 3, 5))
                np.testing.assert_array_equal(level1[t, c], np.rint(boxes).astype(np.uint16))
            segmentation = zarr.open_array(str(_local(result["promoted"][f"label/{sample}_t{t:03d}.zarr"])), mode="r")[:]
            np.testing.assert_array_equal(labels0[t, 0], segmentation)
            assert segmentation.max() > 0
            assert set(np.unique(labels1[t, 0])) <= set(np.unique(segmentation))  # mode: never a new id
        values = [c["label-value"] for c in group["labels/cells"].attrs["ome"]["image-label"]["colors"]]
        assert values == sorted(set(np.unique(labels0)) - {0})


def _state(link: str) -> dict:
    return json.loads(unquote(link.split("#!", 1)[1]))


def test_one_link_per_sample_shows_channels_labels_and_time(run):
    _, _, result = run
    assert sorted(result["links"]) == ["images/s1.ome.zarr", "images/s2.ome.zarr"]
    for sample, summary in result["images"].items():
        state = _state(summary["link"])
        assert summary["link"] == result["links"][summary["name"]]
        assert [(layer["type"], layer["name"]) for layer in state["layers"]] == [
            ("image", f"{sample} DAPI"), ("image", f"{sample} GFP"), ("segmentation", f"{sample} cells")]
        source = f"zarr://http://127.0.0.1:9000/promoted/omz/{result['snapshot_id'][:16]}"
        assert state["layers"][0]["source"].startswith(source) and state["layers"][0]["source"].endswith(f"images/{sample}.ome.zarr")
        assert state["layers"][2]["source"] == state["layers"][0]["source"] + "/labels/cells"
        assert [layer.get("localPosition") for layer in state["layers"][:2]] == [[0], [1]]
        assert state["dimensions"] == {"t": [INTERVAL, "s"], "z": [VOXEL[0] * 1e-6, "m"], "y": [VOXEL[1] * 1e-6, "m"],
                                       "x": [VOXEL[2] * 1e-6, "m"]}
    report = _local(result["promoted"]["report.md"]).read_text()
    assert "## Images" in report and report.count("[Neuroglancer](") == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("what", ["image", "run"])
def test_tierflow_view_serves_the_image_and_links_channels_and_labels(run, what):
    project, _, result = run
    image = _local(result["images"]["s1"]["uri"])
    port = _free_port()
    target = str(image) if what == "image" else str(result["run_id"])
    process = subprocess.Popen([TIERFLOW, "view", target, "--port", str(port), "--json"], cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.poll() is not None else "no output"
        shown = json.loads(line)
        name = "s1.ome.zarr" if what == "image" else "images/s1.ome.zarr"
        assert Path(shown["root"]) == (image.parent if what == "image" else image.parent.parent)
        state = _state(shown["links"][name])
        assert [layer["type"] for layer in state["layers"]] == ["image", "image", "segmentation"]
        assert state["layers"][0]["source"] == f"zarr://http://127.0.0.1:{port}/{name}"
        assert state["layers"][2]["source"] == f"zarr://http://127.0.0.1:{port}/{name}/labels/cells"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/{name}/zarr.json", headers={"Range": "bytes=0-9"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206 and response.headers["Access-Control-Allow-Origin"] == "*"
            assert response.read() == (image / "zarr.json").read_bytes()[:10]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _s3_tiers(endpoint, bucket: str) -> str:
    from test_s3_end_to_end import _s3_tier_toml

    return "".join(_s3_tier_toml(name, endpoint, bucket, f"lab/{name}") for name in ("source", "output", "scratch"))


def test_a_sharded_image_on_seaweedfs_reads_back_equal(project, tmp_path, seaweedfs_http, prefect_api):
    from zarr.storage import ObjectStore

    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(_s3_tiers(seaweedfs_http, bucket) + "[pipeline]\nshard_shape = [4, 32, 32]\n")
    _write_raw(tmp_path / "raw")
    result = json.loads(run_cli("run", "pipeline", str(_spec(tmp_path)), "--dataset", "omz", "--raw", str(tmp_path / "raw"),
                                "--param", "block_shape=8,32,64", "--param", "pyramid_levels=2", "--json", cwd=project,
                                env={"PREFECT_API_URL": prefect_api}).stdout)
    assert result["params"]["shard_shape"] == [4, 32, 32]
    for sample, summary in result["images"].items():
        key = summary["uri"][len(f"s3://{bucket}/"):]
        store = ObjectStore(seaweedfs_http.obstore_store(bucket, prefix=key), read_only=True)  # a client of its own
        group = zarr.open_group(store, mode="r")
        level0 = group["0"]
        assert level0.shards == (1, 1, 4, 32, 32) and level0.chunks == (1, 1, 4, 8, 8)  # 64 chunks per stored object
        objects = [item["path"] for batch in seaweedfs_http.obstore_store(bucket).list(prefix=f"{key}/0/c") for item in batch]
        assert len(objects) == TIMES * 2 * 2 * 2 * 2  # t x c x shards along z, y, x (8/4, 48/32, 64/32)
        for t in range(TIMES):
            for c in range(2):
                np.testing.assert_array_equal(level0[t, c], tifffile.imread(tmp_path / "raw" / sample / f"{sample}_c{c}_t{t:03d}.ome.tif"))
        assert group["labels/cells/0"].shards == (1, 1, 4, 32, 32) and group["labels/cells/0"][:].max() > 0


def test_a_block_shape_that_splits_shards_is_refused_before_any_work(project, tmp_path, seaweedfs_http, prefect_api):
    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(_s3_tiers(seaweedfs_http, bucket))
    _write_raw(tmp_path / "raw")
    done = run_cli("run", "pipeline", "--dataset", "omz", "--raw", str(tmp_path / "raw"), "--param", "block_shape=4,16,48",
                   "--param", "shard_shape=4,32,32", "--json", cwd=project, env={"PREFECT_API_URL": prefect_api}, check=False)
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "images/s1.ome.zarr/0" in message and "shard shape (1, 1, 4, 32, 32)" in message and "block shape (1, 1, 4, 16, 48)" in message
    client = seaweedfs_http.boto3_client()
    written = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="lab/")
               for item in page.get("Contents", []) if not item["Key"].startswith("lab/source/")]
    assert written == []  # nothing staged, nothing on the output tier: refused at planning
