"""Ops that split touching nuclei: distance transform, peaks (seeds with global ids), binary
opening/closing, hole filling, small-object removal. Each block-wise result equals SciPy /
scikit-image on the whole in-memory volume, on shapes no block divides; and the nuclei chain
(distance-transform watershed) scores a higher F1 than Otsu + connected components."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy import ndimage

from tierflow.tasks.ops.evaluation import iou_pairs, match_instances

SHAPE_3D, BLOCKS_3D = (37, 101, 77), (16, 32, 32)
SHAPE_2D, BLOCKS_2D = (101, 77), (32, 16)


def write(path, data, chunks):
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[:] = data
    return str(path)


def read(path):
    return zarr.open_array(str(path))[:]


def blobs(shape, seed=1, quantile=0.7, sigma=2.0):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random(shape), sigma)
    return (smooth > np.quantile(smooth, quantile)).astype(np.uint8)


@pytest.fixture
def op(project, prefect_api, tmp_path):
    from tierflow.flows.ops.flow import run_op

    def run(name, source, out, params, block_shape, **kwargs):
        run_op(name, str(source), str(tmp_path / out), params, block_shape=block_shape, workers=2,
               config_dir=str(project / "configs"), **kwargs)
        return str(tmp_path / out)

    return run


def test_matching_on_a_toy_case_counted_by_hand():
    truth = np.array([[1, 1, 1, 1, 0, 2, 2, 0, 3, 3]])
    # 1 -> a (IoU 3/4), 2 -> b (IoU 2/3, b has an extra voxel), 3 split in two halves (IoU 1/2 each:
    # one of them matches), and an object c with no true object
    predicted = np.array([[5, 5, 5, 0, 0, 7, 7, 7, 8, 9]])
    predicted = np.concatenate([predicted, [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]])
    truth = np.concatenate([truth, [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]])
    predicted[1, 0] = 4
    t, p, iou = iou_pairs(truth, predicted)
    pairs = zip(t.tolist(), p.tolist(), strict=True)
    assert dict(zip(pairs, iou.tolist(), strict=True)) == {(1, 5): 0.75, (2, 7): 2 / 3, (3, 8): 0.5, (3, 9): 0.5}
    score = match_instances(truth, predicted)
    assert (score.true_objects, score.predicted_objects, score.matched) == (3, 5, 3)
    assert score.precision == 3 / 5 and score.recall == 1.0 and score.f1 == 2 * 3 / (3 + 5)
    assert match_instances(truth, predicted, threshold=0.7).matched == 1
    assert match_instances(truth, truth).f1 == 1.0 and match_instances(truth, np.zeros_like(truth)).f1 == 0.0


@pytest.mark.parametrize(("shape", "blocks"), [(SHAPE_3D, BLOCKS_3D), (SHAPE_2D, BLOCKS_2D)])
def test_distance_and_peaks_equal_the_whole_volume(op, tmp_path, shape, blocks):
    from skimage.feature import peak_local_max

    mask = blobs(shape)
    source = write(tmp_path / "mask.zarr", mask, blocks)
    voxel_size = (2.0, 1.0, 1.0)[-len(shape):]
    dist = op("distance_transform", source, "dist.zarr", {"max_distance": 8}, blocks)
    clipped = op("distance_transform", source, "clipped.zarr", {"max_distance": 3, "voxel_size": ",".join(map(str, voxel_size))}, blocks)
    whole = ndimage.distance_transform_edt(mask)
    np.testing.assert_array_equal(read(dist), np.minimum(whole, 8).astype(np.float32))
    anisotropic = ndimage.distance_transform_edt(mask, sampling=voxel_size)
    assert whole.max() < 8 and anisotropic.max() > 3  # unclipped, and clipped
    np.testing.assert_array_equal(read(clipped), np.minimum(anisotropic, 3).astype(np.float32))

    seeds = read(op("peaks", dist, "seeds.zarr", {"min_distance": 2, "threshold_abs": 1.0, "plateau": 8}, blocks))
    assert seeds.dtype == np.uint32
    # reference: peak_local_max's peak mask on the whole volume, connected peaks numbered by their first voxel
    distance = np.minimum(whole, 8).astype(np.float32)
    peak = (distance == ndimage.maximum_filter(distance, size=5, mode="nearest")) & (distance > 1.0)
    components, count = ndimage.label(peak, np.ones((3,) * len(shape)))
    first = ndimage.minimum(np.arange(distance.size).reshape(shape), components, np.arange(1, count + 1))
    expected = np.zeros(shape, dtype=np.uint32)
    expected[peak] = (np.asarray(first)[components[peak] - 1] + 1).astype(np.uint32)
    np.testing.assert_array_equal(seeds, expected)
    assert count > 20
    # scikit-image's (thinned) peaks all lie on a seed
    coordinates = peak_local_max(distance, min_distance=2, threshold_abs=1.0, exclude_border=False)
    assert len(coordinates) and np.all(seeds[tuple(coordinates.T)] > 0)


@pytest.mark.parametrize(("shape", "blocks"), [(SHAPE_3D, BLOCKS_3D), (SHAPE_2D, BLOCKS_2D)])
@pytest.mark.filterwarnings("ignore:`binary_(opening|closing)` is deprecated:FutureWarning")
def test_morphology_equals_the_whole_volume(op, tmp_path, shape, blocks):
    from skimage.morphology import ball, binary_closing, binary_opening, disk, remove_small_objects

    mask = blobs(shape, seed=3, quantile=0.6, sigma=1.5)
    source = write(tmp_path / "mask.zarr", mask, blocks)
    footprint = ball(2) if len(shape) == 3 else disk(2)
    opened = read(op("binary_open", source, "open.zarr", {"radius": 2}, blocks))
    closed = read(op("binary_close", source, "close.zarr", {"radius": 2}, blocks))
    np.testing.assert_array_equal(opened, binary_opening(mask.astype(bool), footprint).astype(np.uint8))
    np.testing.assert_array_equal(closed, binary_closing(mask.astype(bool), footprint).astype(np.uint8))
    assert 0 < opened.sum() < mask.sum() < closed.sum()

    small = read(op("remove_small_objects", source, "small.zarr", {"min_size": 30}, blocks))
    reference = remove_small_objects(mask.astype(bool), max_size=29, connectivity=len(shape))
    np.testing.assert_array_equal(small, reference.astype(np.uint8))
    assert 0 < small.sum() < mask.sum()

    # holes: the background of a blob mask (blobs of background inside foreground), some crossing blocks
    holes_mask = (1 - blobs(shape, seed=4, quantile=0.9, sigma=1.5)).astype(np.uint8)
    holes = write(tmp_path / "holes.zarr", holes_mask, blocks)
    whole = ndimage.binary_fill_holes(holes_mask).astype(np.uint8)
    hole_labels, _ = ndimage.label(whole - holes_mask)
    extent = max(max(s.stop - s.start for s in box) for box in ndimage.find_objects(hole_labels))
    filled = read(op("fill_holes", holes, "filled.zarr", {"halo": extent}, blocks))
    np.testing.assert_array_equal(filled, whole)
    # a smaller halo only leaves some holes unfilled: it never fills background that reaches the border
    partly = read(op("fill_holes", holes, "partly.zarr", {"halo": 2}, blocks))
    assert np.all(partly >= holes_mask) and np.all(partly <= whole) and partly.sum() < whole.sum()


def test_nuclei_chain_beats_otsu_and_connected_components(op, tmp_path):
    from tierflow.tasks.synthetic_nuclei import NucleiSpec, touching_nuclei

    image, truth = touching_nuclei(NucleiSpec(shape=(32, 96, 96), clusters=8, seed=2))
    blocks = (20, 40, 40)
    raw = write(tmp_path / "raw.zarr", image, blocks)
    smooth = op("gaussian", raw, "smooth.zarr", {"sigma": 1.0}, blocks)
    mask = op("threshold", smooth, "mask.zarr", {"value": "otsu"}, blocks)
    cells = read(op("label", mask, "cells.zarr", {}, blocks))
    dist = op("distance_transform", mask, "dist.zarr", {"max_distance": 16}, blocks)
    seeds = op("peaks", dist, "seeds.zarr", {"min_distance": 3}, blocks)
    nuclei = read(op("watershed", dist, "nuclei.zarr", {"halo": 24, "mask_above": 0}, blocks, inputs={"markers": seeds}))
    baseline, split = match_instances(truth, cells), match_instances(truth, nuclei)
    print(f"F1 otsu+cc {baseline.f1:.3f}, nuclei chain {split.f1:.3f} ({split.predicted_objects} objects, {split.true_objects} true)")
    assert split.f1 > baseline.f1 and split.f1 >= 0.9


def test_bad_parameters_are_refused_before_any_block(op, tmp_path):
    from tierflow.errors import InvalidParameterError

    source = write(tmp_path / "mask.zarr", blobs((20, 30, 30)), (10, 16, 16))
    with pytest.raises(InvalidParameterError, match=r"voxel_size='1,1' has 2 values, the input 3 axes"):
        op("distance_transform", source, "dist.zarr", {"voxel_size": "1,1"}, (10, 16, 16))
    assert not (tmp_path / "dist.zarr").exists()
    with pytest.raises(InvalidParameterError, match=r"peaks: parameter min_distance=0 is out of range"):
        op("peaks", source, "seeds.zarr", {"min_distance": 0}, (10, 16, 16))
    with pytest.raises(InvalidParameterError, match=r"binary_open has no parameter\(s\) \['size'\]"):
        op("binary_open", source, "open.zarr", {"size": 2}, (10, 16, 16))
