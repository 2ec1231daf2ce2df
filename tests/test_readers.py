"""Microscope files in (issue 14): TIFF through tifffile's series and axes (2-D, stacks, OME-TIFF
and ImageJ hyperstacks with their metadata), zarr v2/v3 and OME-Zarr 0.4 images, vendor files
through bioio; 2-D and 5-D inputs through the block-wise ops, equal to SciPy / scikit-image on
the whole image; label-safe downsampling of a label array tierflow did not write."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage
from skimage.measure import regionprops_table

from conftest import run_cli
from tierflow.errors import InvalidInputError, TierflowError
from tierflow.storage.geometry import Roi
from tierflow.storage.volumes import open_volume

TCZYX = (3, 2, 5, 24, 30)
OME_META = {"axes": "TCZYX", "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.1, "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": 0.3, "PhysicalSizeZUnit": "µm", "Channel": {"Name": ["DAPI", "GFP"]}, "TimeIncrement": 2.0,
            "TimeIncrementUnit": "s"}


def hyperstack(seed=0):
    return np.random.default_rng(seed).integers(0, 4000, TCZYX, dtype=np.uint16)


def roi_of(slices):
    return Roi(tuple(s.start for s in slices), tuple(s.stop - s.start for s in slices))


def same_partition(a, b):
    fa, fb = a.ravel(), b.ravel()
    if not np.array_equal(fa == 0, fb == 0):
        return False
    pairs = np.unique(np.stack([fa[fa > 0], fb[fb > 0]], axis=1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


# ---------------------------------------------------------------- readers (no services needed)

def test_a_2d_tiff_stays_2d_and_a_stack_is_zyx(tmp_path):
    plane = np.arange(12 * 17, dtype=np.uint16).reshape(12, 17)
    tifffile.imwrite(tmp_path / "plane.tif", plane)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane, plane + 1]), photometric="minisblack")
    flat = open_volume(tmp_path / "plane.tif")
    assert (flat.axes, flat.shape) == ("yx", (12, 17))
    np.testing.assert_array_equal(flat.read(Roi((3, 4), (5, 6))), plane[3:8, 4:10])
    stack = open_volume(tmp_path / "stack.tif")
    assert (stack.axes, stack.shape, stack.chunks) == ("zyx", (2, 12, 17), (1, 12, 17))


def test_ome_tiff_tczyx_opens_with_axes_metadata_and_page_wise_reads(tmp_path):
    data = hyperstack()
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata=OME_META, compression="zlib")
    volume = open_volume(path)
    assert (volume.axes, volume.shape, volume.dtype) == ("tczyx", TCZYX, np.uint16)
    assert volume.chunks == (1, 1, 1, 24, 30)
    assert volume.metadata.voxel_size() == (0.3, 0.1, 0.1)
    assert volume.metadata.units["z"] == "µm" and volume.metadata.time_interval == 2.0
    assert volume.metadata.channel_names == ("DAPI", "GFP")
    region = (slice(1, 3), slice(1, 2), slice(2, 5), slice(3, 20), slice(7, 29))
    np.testing.assert_array_equal(volume.read(roi_of(region)), data[region])
    # page-wise: damage the page of (t=0, c=0, z=0); a read of other pages never decodes it
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\xff" * count)
    np.testing.assert_array_equal(volume.read(roi_of(region)), data[region])
    with pytest.raises(InvalidInputError, match="page 0"):
        volume.read(Roi((0, 0, 0, 0, 0), (1, 1, 1, 4, 4)))


def test_imagej_hyperstack_opens_as_tczyx(tmp_path):
    data = hyperstack(1)
    path = tmp_path / "stack_ij.tif"
    tifffile.imwrite(path, data.transpose(0, 2, 1, 3, 4), imagej=True, resolution=(10.0, 10.0),
                     metadata={"axes": "TZCYX", "spacing": 0.3, "unit": "um", "finterval": 2.0})
    volume = open_volume(path)
    assert (volume.axes, volume.shape) == ("tczyx", TCZYX)
    assert volume.metadata.voxel_size() == pytest.approx((0.3, 0.1, 0.1))
    assert volume.metadata.units["x"] == "µm" and volume.metadata.time_interval == 2.0
    region = (slice(0, 2), slice(1, 2), slice(1, 4), slice(5, 17), slice(0, 30))
    np.testing.assert_array_equal(volume.read(roi_of(region)), data[region])


def test_several_series_are_chosen_with_a_selector(tmp_path):
    first, second = hyperstack(2)[0, 0], hyperstack(3)[1, 1, :3]
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(first, metadata={"axes": "ZYX"})
        tif.write(second, metadata={"axes": "ZYX"})
    with pytest.raises(InvalidInputError, match=r"2 series.*") as refused:
        open_volume(path)
    assert "#series=N" in refused.value.hint
    volume = open_volume(f"{path}#series=1")
    assert (volume.axes, volume.shape) == ("zyx", second.shape)
    np.testing.assert_array_equal(volume.read(Roi((0, 0, 0), second.shape)), second)
    with pytest.raises(InvalidInputError, match="no series 2"):
        open_volume(f"{path}#series=2")


def write_ome_zarr_04(path, data, scale, axes="zyx", labels=False):
    """An OME-Zarr 0.4 image written by hand per the 0.4 spec (zarr v2, ``multiscales`` in .zattrs)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    level = group.create_array("0", shape=data.shape, chunks=(8,) * data.ndim, dtype=data.dtype)
    level[:] = data
    kinds = {"t": "time", "c": "channel"}
    attrs = {"multiscales": [{
        "version": "0.4", "name": "img",
        "axes": [{"name": a, "type": kinds.get(a, "space"), **({"unit": "micrometer"} if a in "zyx" else {})} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}]}]}
    if labels:
        attrs["image-label"] = {"version": "0.4"}
    group.attrs.update(attrs)
    return str(path)


def test_zarr_v2_and_ome_zarr_04_open_with_their_axes(tmp_path):
    data = hyperstack(4)[0, 0]
    array = zarr.create_array(str(tmp_path / "v2.zarr"), shape=data.shape, chunks=(2, 8, 8), dtype=data.dtype, zarr_format=2)
    array[:] = data
    plain = open_volume(tmp_path / "v2.zarr")
    assert (plain.axes, plain.shape, plain.chunks) == ("zyx", data.shape, (2, 8, 8))
    image = open_volume(write_ome_zarr_04(tmp_path / "img.ome.zarr", data, (0.3, 0.1, 0.1)))
    assert (image.axes, image.shape) == ("zyx", data.shape)
    assert image.metadata.voxel_size() == (0.3, 0.1, 0.1) and image.metadata.units["x"] == "micrometer"
    np.testing.assert_array_equal(image.read(Roi((1, 2, 3), (3, 10, 11))), data[1:4, 2:12, 3:14])
    group = zarr.open_group(str(tmp_path / "plain_group.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="uint8")
    with pytest.raises(TierflowError, match="not an array nor an OME-Zarr image"):
        open_volume(tmp_path / "plain_group.zarr")


def test_vendor_formats_without_the_extra_say_how_to_install_it(tmp_path, monkeypatch):
    path = tmp_path / "scan.czi"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "bioio", None)  # as if the formats extra were not installed
    with pytest.raises(TierflowError) as refused:
        open_volume(path)
    assert "formats extra" in refused.value.message and "pip install 'tierflow[formats]'" in refused.value.hint


def test_czi_through_bioio_reads_lazily_by_region(tmp_path):
    import importlib.util

    from conftest import require_service

    # make venv installs the formats extra: under CI its absence fails instead of skipping
    require_service(importlib.util.find_spec("bioio_czi") is not None, "the formats extra (bioio-czi)",
                    "pip install -e '.[formats]'")
    import pylibCZIrw.czi as czi
    data = hyperstack(5)[0, :, :3]  # c, z, y, x
    path = tmp_path / "scan.czi"
    with czi.create_czi(str(path), exist_ok=True) as file:  # a real CZI, written by Zeiss' libCZI
        for c in range(data.shape[0]):
            for z in range(data.shape[1]):
                file.write(data=data[c, z], plane={"C": c, "Z": z, "T": 0})
    volume = open_volume(path)
    assert (volume.axes, volume.shape, volume.dtype) == ("czyx", data.shape, np.uint16)
    region = (slice(1, 2), slice(1, 3), slice(2, 20), slice(5, 29))
    np.testing.assert_array_equal(volume.read(roi_of(region)), data[region])


# ---------------------------------------------------------------- through the ops

@pytest.fixture
def op(project, prefect_api):
    from tierflow.flows.ops.flow import run_op

    def run(name, source, out, params, block_shape=None, **kwargs):
        return run_op(name, str(source), str(out), params, block_shape=block_shape, workers=2, config_dir=str(project / "configs"),
                      **kwargs)

    return run


def test_zarr_v2_and_ome_zarr_04_are_op_inputs_equal_to_scipy(op, tmp_path):
    data = (np.random.default_rng(6).random((19, 37, 41)) * 1000).astype(np.float32)
    array = zarr.create_array(str(tmp_path / "v2.zarr"), shape=data.shape, chunks=(5, 16, 16), dtype=data.dtype, zarr_format=2)
    array[:] = data
    image = write_ome_zarr_04(tmp_path / "img.ome.zarr", data, (0.3, 0.1, 0.1))
    whole = ndimage.gaussian_filter(data, 1.5, mode="reflect", truncate=4.0)
    for name, source in (("v2", tmp_path / "v2.zarr"), ("ome", image)):
        op("gaussian", source, tmp_path / f"{name}_out.zarr", {"sigma": 1.5, "backend": "scipy"}, (8, 16, 16))
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{name}_out.zarr"))[:], whole)


def test_a_tczyx_hyperstack_is_smoothed_per_time_point_and_channel(op, tmp_path):
    data = hyperstack(7).astype(np.float32)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata=OME_META)
    result = op("gaussian", path, tmp_path / "smooth.zarr", {"sigma": 1.0, "backend": "scipy"}, (4, 16, 16))
    assert result["blocks"] == 3 * 2 * 2 * 2 * 2  # block side 1 on t and c
    out = zarr.open_array(str(tmp_path / "smooth.zarr"))
    assert out.chunks == (1, 1, 4, 16, 16)
    for t, c in np.ndindex(*TCZYX[:2]):  # never across time points or channels
        np.testing.assert_array_equal(out[t, c], ndimage.gaussian_filter(data[t, c], 1.0, mode="reflect", truncate=4.0))
    smoothed = open_volume(tmp_path / "smooth.zarr")
    assert smoothed.axes == "tczyx"  # and the output keeps the source's physical metadata, for the next op and the viewer
    assert smoothed.metadata.voxel_size() == (0.3, 0.1, 0.1) and smoothed.metadata.channel_names == ("DAPI", "GFP")
    assert smoothed.metadata.time_interval == 2.0
    with pytest.raises(TierflowError, match="axes 'tczyx'"):
        op("label", path, tmp_path / "labels.zarr", {})


def test_downsample_auto_keeps_a_foreign_label_array_to_its_ids(op, tmp_path):
    rng = np.random.default_rng(8)
    labels, _ = ndimage.label(ndimage.gaussian_filter(rng.random((24, 40, 44)), 1.5) > 0.52)
    labels = (labels * 1009 % 65521).astype(np.uint32)  # ids whose mean is almost never an id
    array = zarr.create_array(str(tmp_path / "seg.zarr"), shape=labels.shape, chunks=(8, 16, 16), dtype=np.uint32)
    array[:] = labels  # written by plain zarr: no tierflow attributes
    op("downsample", tmp_path / "seg.zarr", tmp_path / "seg_pyr.zarr", {"levels": 2}, (8, 16, 16))
    level0, level1 = (zarr.open_array(str(tmp_path / "seg_pyr.zarr" / str(i)))[:] for i in (0, 1))
    np.testing.assert_array_equal(level0, labels)
    assert set(np.unique(level1)) <= set(np.unique(level0))
    pyramid = open_volume(tmp_path / "seg_pyr.zarr")  # tierflow's OME-Zarr 0.5 output is an input too: level 0
    assert (pyramid.axes, pyramid.shape) == ("zyx", labels.shape)
    # a 16-bit array with nothing saying what it holds: auto refuses before any block and asks
    image = rng.integers(0, 4000, (8, 16, 16), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "img.zarr"), data=image, chunks=(8, 16, 16))
    with pytest.raises(TierflowError, match="uint16 array with nothing saying") as refused:
        op("downsample", tmp_path / "img.zarr", tmp_path / "img_pyr.zarr", {"levels": 2}, (8, 16, 16))
    assert "method=mean" in refused.value.hint and "method=mode" in refused.value.hint
    assert not (tmp_path / "img_pyr.zarr" / "0" / "c").exists()
    op("downsample", tmp_path / "img.zarr", tmp_path / "img_pyr.zarr", {"levels": 2, "method": "mean"}, (8, 16, 16))
    half = zarr.open_array(str(tmp_path / "img_pyr.zarr" / "1"))[:]
    assert half[0, 0, 0] == np.round(image[:2, :2, :2].astype(np.float64).mean())
    # a 16-bit image whose metadata marks an acquisition (an OME-TIFF's channels and voxel size) is averaged
    tifffile.imwrite(tmp_path / "img.ome.tif", image, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1,
                                                                         "PhysicalSizeX": 0.1, "Channel": {"Name": ["DAPI"]}})
    op("downsample", tmp_path / "img.ome.tif", tmp_path / "tif_pyr.zarr", {"levels": 2}, (8, 16, 16))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "tif_pyr.zarr" / "1"))[:], half)


def test_a_2d_tiff_runs_through_the_cli_as_2d(project, prefect_api, tmp_path):
    rng = np.random.default_rng(9)
    image = (ndimage.gaussian_filter(rng.random((203, 187)), 2.0) * 60000).astype(np.float32)
    tifffile.imwrite(tmp_path / "nuclei2d.tif", image)
    env, blocks = {"PREFECT_API_URL": prefect_api}, ("--block-shape", "97,101")  # does not divide 203 x 187

    def cli(*args):
        return run_cli("op", *args, *blocks, cwd=project, env=env)

    cli("convert", "-i", str(tmp_path / "nuclei2d.tif"), "-o", str(tmp_path / "raw.zarr"))
    raw = zarr.open_array(str(tmp_path / "raw.zarr"))
    assert raw.shape == image.shape and raw.chunks == (97, 101)
    np.testing.assert_array_equal(raw[:], image)
    cli("gaussian", "-i", str(tmp_path / "raw.zarr"), "-o", str(tmp_path / "smooth.zarr"), "-p", "sigma=2", "-p", "backend=scipy")
    smooth = zarr.open_array(str(tmp_path / "smooth.zarr"))[:]
    np.testing.assert_array_equal(smooth, ndimage.gaussian_filter(image, 2.0, mode="reflect", truncate=4.0))
    cut = float(np.quantile(smooth, 0.8))
    cli("threshold", "-i", str(tmp_path / "smooth.zarr"), "-o", str(tmp_path / "mask.zarr"), "-p", f"value={cut!r}")
    mask = zarr.open_array(str(tmp_path / "mask.zarr"))[:]
    np.testing.assert_array_equal(mask, (smooth > cut).astype(np.uint8))
    cli("label", "-i", str(tmp_path / "mask.zarr"), "-o", str(tmp_path / "labels.zarr"), "-p", "connectivity=8")
    labels = zarr.open_array(str(tmp_path / "labels.zarr"))[:]
    reference, count = ndimage.label(mask, structure=np.ones((3, 3)))
    assert labels.shape == image.shape and count > 5 and labels.max() == count
    assert same_partition(labels, reference)
    cli("features", "-i", str(tmp_path / "labels.zarr"), "-o", str(tmp_path / "features.csv"))
    table = pd.read_csv(tmp_path / "features.csv").sort_values("label")
    expected = pd.DataFrame(regionprops_table(labels, properties=("label", "area", "centroid")))
    np.testing.assert_array_equal(table["label"], expected["label"])
    np.testing.assert_array_equal(table["area"], expected["area"])
    np.testing.assert_allclose(table["centroid_y"], expected["centroid-0"], rtol=1e-12)
    np.testing.assert_allclose(table["centroid_x"], expected["centroid-1"], rtol=1e-12)
    assert "centroid_z" not in table or table["centroid_z"].isna().all() or (table["centroid_z"] == 0).all()
    json.dumps(table.columns.tolist())
