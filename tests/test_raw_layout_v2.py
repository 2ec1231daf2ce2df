"""The raw layout's multi-dimensional forms: one OME-TIFF / ImageJ hyperstack per sample, a
multi-series file (one position per series), one file per position; the ``#t=T&c=C`` selector;
the manifest's per-file volumes; `tierflow check-raw`; the cells pipeline on an OME-TIFF sample
against the same chain on the in-memory volume (SciPy / scikit-image)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import zarr
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table

from conftest import run_cli
from tierflow.storage.geometry import Roi
from tierflow.storage.raw_layout import check_raw_folder, classify_raw_files, discover_tasks
from tierflow.storage.raw_report import describe_raw_folder, volume_records
from tierflow.storage.snapshots import Manifest, ManifestEntry, VolumeRecord
from tierflow.storage.volumes import open_volume

NAMES = ["DAPI", "GFP"]


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], n: int = 5) -> np.ndarray:
    """Bright balls on noise (uint16)."""
    zz, yy, xx = np.indices(shape)
    image = rng.normal(200, 20, shape)
    for _ in range(n):
        z, y, x = rng.uniform((2, 8, 8), (shape[0] - 2, shape[1] - 8, shape[2] - 8))
        image += 1500 * np.exp(-(((zz - z) / 2) ** 2 + ((yy - y) / 4) ** 2 + ((xx - x) / 4) ** 2))
    return np.clip(image, 0, 65535).astype(np.uint16)


def write_ome(path: Path, seed: int, shape: tuple[int, ...] = (8, 64, 64), t: int = 3) -> np.ndarray:
    """A TCZYX OME-TIFF: 2 named channels, ``t`` time points, 0.3/0.1/0.1 µm voxels."""
    rng = np.random.default_rng(seed)
    data = np.stack([np.stack([_blobs(rng, shape) for _ in NAMES]) for _ in range(t)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, ome=True, photometric="minisblack",
                     metadata={"axes": "TCZYX", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1,
                               "PhysicalSizeZUnit": "µm", "PhysicalSizeYUnit": "µm", "PhysicalSizeXUnit": "µm",
                               "Channel": {"Name": NAMES}})
    return data


@pytest.fixture
def ome_raw(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    raw = tmp_path / "raw"
    return raw, {sample: write_ome(raw / sample / f"{sample}.ome.tif", seed) for seed, sample in enumerate(("s1", "s2"))}


def test_the_selector_reads_one_volume_of_a_hyperstack_with_its_metadata(ome_raw) -> None:
    raw, data = ome_raw
    path = raw / "s1" / "s1.ome.tif"
    for t in range(3):
        for c in range(2):
            volume = open_volume(f"{path}#t={t}&c={c}")
            assert volume.axes == "zyx" and volume.shape == (8, 64, 64)
            np.testing.assert_array_equal(volume.read(Roi((0, 0, 0), volume.shape)), data["s1"][t, c])
            np.testing.assert_array_equal(volume.read(Roi((2, 5, 7), (3, 10, 20))), data["s1"][t, c, 2:5, 5:15, 7:27])
            assert volume.metadata.channel_names == (NAMES[c],)
            assert volume.metadata.voxel_size() == (0.3, 0.1, 0.1)
    only_t = open_volume(f"{path}#t=1")
    assert only_t.axes == "czyx" and only_t.shape == (2, 8, 64, 64)
    with pytest.raises(Exception, match=r"3 time point\(s\) \(0 to 2\); #t=3 is out of range"):
        open_volume(f"{path}#t=3&c=0")


def test_an_ome_tiff_sample_is_classified_volume_by_volume(ome_raw) -> None:
    raw, _ = ome_raw
    assert check_raw_folder(raw) == ["s1", "s2"]
    found = classify_raw_files(raw)
    assert found.warnings == []
    assert [(f.sample, f.channel, f.time_point) for f in found.files] == [
        (s, c, t) for s in ("s1", "s2") for c in range(2) for t in range(3)]
    first = found.files[0]
    assert (first.kind, first.selector, first.shape, first.dtype, first.channel_name) == ("multi", "t=0&c=0", (8, 64, 64), "uint16", "DAPI")
    assert first.voxel_size == (0.3, 0.1, 0.1) and first.unit == "µm"
    assert len(discover_tasks(raw, channels=[1]).tasks) == 6
    text = describe_raw_folder(raw)
    assert "s1: 6 volume(s)" in text and "c0 'DAPI', c1 'GFP'" in text and "time points: 0-2 (3)" in text
    assert "8 x 64 x 64 (uint16)" in text and "0.3 x 0.1 x 0.1 µm" in text and "problems: none" in text


def test_a_multi_series_tiff_is_one_position_per_series_and_p_files_name_theirs(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "plate").mkdir(parents=True)
    rng = np.random.default_rng(1)
    series = [rng.integers(0, 999, (4, 16, 16), dtype=np.uint16), rng.integers(0, 999, (4, 16, 16), dtype=np.uint16)]
    with tifffile.TiffWriter(raw / "plate" / "plate.tif") as tif:
        for array in series:
            tif.write(array, photometric="minisblack")
    single = rng.integers(0, 999, (5, 16, 16), dtype=np.uint16)
    (raw / "wells").mkdir()
    tifffile.imwrite(raw / "wells" / "well_p3.tif", single)
    check_raw_folder(raw)
    found = classify_raw_files(raw)
    assert found.warnings == []
    by_label = {f.label: f for f in found.files}
    assert sorted(by_label) == ["plate p0 c0 t0", "plate p1 c0 t0", "wells p3 c0 t0"]
    assert by_label["plate p1 c0 t0"].selector == "series=1" and by_label["wells p3 c0 t0"].selector == ""
    for index, array in enumerate(series):
        item = by_label[f"plate p{index} c0 t0"]
        volume = open_volume(item.address)
        np.testing.assert_array_equal(volume.read(Roi((0, 0, 0), volume.shape)), array)
    assert "positions:   0, 1 (2; run as plate_p<N>)" in describe_raw_folder(raw)


def test_an_imagej_hyperstack_gives_its_channels_time_points_and_spacing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "e1").mkdir(parents=True)
    data = np.random.default_rng(2).integers(0, 4000, (2, 5, 3, 16, 16), dtype=np.uint16)  # TZCYX
    tifffile.imwrite(raw / "e1" / "e1_hyper.tif", data, imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "um"})
    found = classify_raw_files(raw)
    assert found.warnings == []
    assert [(f.channel, f.time_point) for f in found.files] == [(c, t) for c in range(3) for t in range(2)]
    item = next(f for f in found.files if (f.channel, f.time_point) == (2, 1))
    assert item.shape == (5, 16, 16) and item.voxel_size == pytest.approx((0.3, 0.1, 0.1)) and item.unit == "µm"
    volume = open_volume(item.address)
    np.testing.assert_array_equal(volume.read(Roi((0, 0, 0), volume.shape)), data[1, :, 2])


def test_a_mixed_or_bad_folder_is_diagnosed_naming_the_file(ome_raw) -> None:
    raw, _ = ome_raw
    tifffile.imwrite(raw / "s1" / "s1_c0_t0.tif", np.zeros((8, 64, 64), np.uint16))  # also in s1.ome.tif
    with tifffile.TiffWriter(raw / "s2" / "extra_p0.tif") as tif:  # a _p<N> file with two series
        tif.write(np.zeros((2, 8, 8), np.uint8), photometric="minisblack")
        tif.write(np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    (raw / "s2" / "broken.ome.tif").write_bytes(b"II*\x00" + bytes(60))
    found = classify_raw_files(raw)
    text = "\n".join(found.warnings)
    assert len(found.warnings) == 3, text
    clash = next(w for w in found.warnings if w.startswith("s1/s1_c0_t0.tif"))
    assert "also in s1/s1.ome.tif" in clash and "kept s1/s1.ome.tif" in clash and "_p<N>" in clash
    bad_p = next(w for w in found.warnings if w.startswith("s2/extra_p0.tif"))
    assert "named as position 0 (_p0) but holds 2 series" in bad_p and "rename it" in bad_p
    assert any(w.startswith("s2/broken.ome.tif") and "skipped" in w for w in found.warnings)
    done = run_cli("check-raw", str(raw), cwd=raw.parent, check=False)
    assert done.returncode == 1  # something cannot be used: scripts can tell
    cli = done.stdout
    assert "problems (3)" in cli and "s2/extra_p0.tif" in cli and "s1/s1_c0_t0.tif" in cli


def test_manifests_with_and_without_volumes_load() -> None:
    old = {"format": "tierflow-snapshot/1", "dataset": "d", "files": [{"relative_path": "s/a_c0_t0.tif", "bytes": 3, "sha256": "ab",
                                                                         "media_type": "image/tiff"}]}
    manifest = Manifest.from_json(json.dumps(old).encode())
    assert manifest.files[0].volumes == () and manifest.volumes() == []
    record = VolumeRecord("s", 1, 2, (8, 64, 64), "uint16", "t=2&c=1", None, (0.3, 0.1, 0.1), "µm", "GFP")
    new = Manifest("d", (ManifestEntry("s/s.ome.tif", 3, "ab", "image/tiff", (record,)),))
    again = Manifest.from_json(new.to_json())
    assert again.files == new.files and again.snapshot_id == new.snapshot_id
    assert "volumes" not in json.loads(manifest.to_json())["files"][0]


def _reference(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """cells' chain on one whole volume: gaussian, Otsu threshold, 26-connected components; areas."""
    smooth = np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float32), sigma, mode="reflect", truncate=4.0)), 0, 65535)
    smooth = smooth.astype(np.uint16)
    labels, _ = ndimage.label(smooth > threshold_otsu(smooth), structure=np.ones((3, 3, 3)))
    return np.sort(regionprops_table(labels, properties=("area",))["area"])


def test_an_ome_tiff_sample_is_ingested_volume_by_volume_and_runs_the_cells_pipeline(project, ome_raw, prefect_api) -> None:
    raw, data = ome_raw
    env = {"PREFECT_API_URL": prefect_api}
    snapshot = run_cli("ingest", str(raw), "--dataset", "ome", cwd=project, env=env).stdout.strip()
    manifest = json.loads((project / "var" / "tier1-source" / "snapshots" / "ome" / snapshot / "manifest.json").read_text())
    for sample in ("s1", "s2"):
        entry = next(f for f in manifest["files"] if f["relative_path"] == f"{sample}/{sample}.ome.tif")
        volumes = entry["volumes"]
        assert len(volumes) == 6
        assert sorted((v["time_point"], v["channel"], v["channel_name"]) for v in volumes) == [
            (t, c, NAMES[c]) for t in range(3) for c in range(2)]
        assert all(v["sample"] == sample and v["shape"] == [8, 64, 64] and v["dtype"] == "uint16" for v in volumes)
        assert all(v["voxel_size"] == [0.3, 0.1, 0.1] and v["unit"] == "µm" and v["position"] is None for v in volumes)
        assert {v["selector"] for v in volumes} == {f"t={t}&c={c}" for t in range(3) for c in range(2)}
    assert volume_records(raw)["s1/s1.ome.tif"][0].channel_name == "DAPI"

    result = json.loads(run_cli("run", "pipeline", "--dataset", "ome", "--snapshot", snapshot, "--json", cwd=project, env=env).stdout)
    assert result["volumes"] == 12
    objects = pd.read_csv(Path(result["promoted"]["tables/objects.csv"][len("file://"):]))
    assert sorted(objects.groupby(["sample", "time_point"]).size().index) == [(s, t) for s in ("s1", "s2") for t in range(3)]
    for (sample, time_point), group in objects.groupby(["sample", "time_point"]):
        expected = _reference(data[sample][time_point, 0])
        assert len(group) == len(expected), (sample, time_point)
        np.testing.assert_allclose(np.sort(group["area"].to_numpy()), expected, rtol=0.02, atol=2)

    # one OME-Zarr 0.5 image per sample: t, c, z, y, x at the file's physical scale, every
    # channel and time point of the OME-TIFF, with its labels (the done-when check)
    from ome_zarr_models.v05 import Image, ImageLabel

    assert sorted(result["images"]) == ["s1", "s2"]
    for sample, summary in result["images"].items():
        group = zarr.open_group(summary["uri"][len("file://"):], mode="r")
        multiscale = Image.from_zarr(group).ome_attributes.multiscales[0]
        assert [a.name for a in multiscale.axes] == ["t", "c", "z", "y", "x"]
        assert multiscale.datasets[0].coordinateTransformations[0].scale[2:] == [0.3, 0.1, 0.1]
        assert [a.unit for a in multiscale.axes][2:] == ["micrometer"] * 3
        assert [c["label"] for c in group.attrs["ome"]["omero"]["channels"]] == list(NAMES)
        np.testing.assert_array_equal(group["0"][:], data[sample])
        ImageLabel.from_zarr(group["labels/cells"])
        assert tuple(group["labels/cells/0"].shape) == (3, 1, 8, 64, 64)
        # and ome-zarr-py's reader (what napari-ome-zarr uses) opens it: the image and its labels
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

        nodes = list(Reader(parse_url(summary["uri"][len("file://"):]))())
        image, label = nodes[0], next(n for n in nodes if n.metadata.get("name") == "cells")
        assert [a["name"] for a in image.metadata["axes"]] == ["t", "c", "z", "y", "x"]
        assert image.metadata["channel_names"] == list(NAMES) and image.data[0].shape == (3, 2, 8, 64, 64)
        np.testing.assert_array_equal(np.asarray(image.data[0]), data[sample])
        assert label.data[0].shape == (3, 1, 8, 64, 64)
