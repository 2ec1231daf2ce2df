"""Block-wise object features, merged across blocks, equal regionprops on the whole image."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from tierflow.tasks.ops.features import (
    PartialFeatures,
    features_table,
    merge_partials,
    partial_features,
)

PROPS = ("label", "area", "centroid", "bbox", "intensity_min", "intensity_max", "intensity_mean")


def make_labels(shape: tuple[int, ...], n_objects: int, seed: int) -> np.ndarray:
    """Blobs (radius up to 6) with sparse, large label ids, crossing block borders.

    A slab of the image is left empty, so some blocks have no objects; one label is split into
    two far-apart pieces (regionprops does not require labels to be connected); one small cube
    straddles a block corner.
    """
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    points = tuple(rng.integers(0, s, n_objects) for s in shape)
    seeds[points] = rng.permutation(n_objects) * 1000 + 7
    labels = expand_labels(seeds, distance=6)
    labels[(slice(None),) * (len(shape) - 2) + (slice(64, None), slice(None))] = 0
    labels[(slice(-3, None),) * len(shape)] = 123_456  # piece of a label that is also ...
    labels[(slice(0, 2),) * len(shape)] = 123_456  # ... in the opposite corner
    corner = tuple(slice(c - 1, c + 1) for c in (16, 32, 32)[-len(shape) :])
    labels[corner] = 99_999
    return labels.astype(np.uint32)


def make_intensity(shape: tuple[int, ...], dtype: type, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def block_partials(
    labels: np.ndarray, intensities: dict[str, np.ndarray], block: tuple[int, ...]
) -> list[PartialFeatures]:
    """Partials of every block of a grid over `labels` (edge blocks are smaller)."""
    parts = []
    for start in itertools.product(*(range(0, s, b) for s, b in zip(labels.shape, block, strict=False))):
        sl = tuple(slice(a, a + b) for a, b in zip(start, block, strict=False))
        crops = {name: img[sl] for name, img in intensities.items()}
        parts.append(partial_features(labels[sl], crops, offset=start))
    return parts


def exact_sums(labels: np.ndarray, image: np.ndarray, ids: np.ndarray) -> list[int] | np.ndarray:
    if image.dtype.kind == "f":
        return np.array([image[labels == i].astype(np.float64).sum() for i in ids])
    return [sum(int(v) for v in image[labels == i].tolist()) for i in ids]


def check_against_regionprops(
    table: pd.DataFrame, labels: np.ndarray, intensities: dict[str, np.ndarray]
) -> None:
    axes = ("z", "y", "x")[-labels.ndim :]
    names = list(intensities)
    stacked = np.stack([intensities[n] for n in names], axis=-1)
    # float32 means in skimage accumulate in float32; the exact reference is the float64 mean.
    exact = stacked.astype(np.float64) if stacked.dtype.kind == "f" else stacked
    ref = pd.DataFrame(regionprops_table(labels, intensity_image=exact, properties=PROPS))
    assert list(table["label"]) == list(ref["label"])
    np.testing.assert_array_equal(table["area"].to_numpy(), ref["area"].to_numpy())
    for i, ax in enumerate(axes):
        np.testing.assert_allclose(table[f"centroid_{ax}"], ref[f"centroid-{i}"], rtol=1e-12)
        np.testing.assert_array_equal(table[f"bbox_min_{ax}"], ref[f"bbox-{i}"])
        np.testing.assert_array_equal(table[f"bbox_max_{ax}"], ref[f"bbox-{i + labels.ndim}"])
    for c, name in enumerate(names):
        for stat in ("min", "max"):
            np.testing.assert_array_equal(table[f"{name}_{stat}"], ref[f"intensity_{stat}-{c}"])
            assert table[f"{name}_{stat}"].dtype == intensities[name].dtype
        np.testing.assert_allclose(table[f"{name}_mean"], ref[f"intensity_mean-{c}"], rtol=1e-12)
        sums = exact_sums(labels, intensities[name], table["label"].to_numpy())
        if intensities[name].dtype.kind == "f":
            np.testing.assert_allclose(table[f"{name}_sum"], sums, rtol=1e-12)
        else:
            assert [int(v) for v in table[f"{name}_sum"]] == sums


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_3d_blocks_merge_to_regionprops(dtype: type) -> None:
    labels = make_labels((37, 101, 77), 60, seed=1)
    intensities = {"signal": make_intensity(labels.shape, dtype, seed=2)}
    parts = block_partials(labels, intensities, (16, 32, 32))
    assert any(len(p) == 0 for p in parts), "the grid should include blocks without objects"
    merged = merge_partials(parts)
    table = features_table(merged)
    check_against_regionprops(table, labels, intensities)
    if np.dtype(dtype).kind in "iu":
        assert merged.channels["signal"].sum.dtype == np.int64

    # Order-independent and associative: shuffled, and merged in two halves first.
    rng = np.random.default_rng(3)
    shuffled = [parts[i] for i in rng.permutation(len(parts))]
    half = len(shuffled) // 2
    two_step = merge_partials([merge_partials(shuffled[:half]), merge_partials(shuffled[half:])])
    for other in (merge_partials(shuffled), two_step):
        other_table = features_table(other)
        exact_cols = [c for c in table.columns if not c.endswith(("_mean", "_sum"))]
        pd.testing.assert_frame_equal(other_table[exact_cols], table[exact_cols])
        np.testing.assert_allclose(other_table["signal_mean"], table["signal_mean"], rtol=1e-12)


def test_3d_multichannel_and_other_block_shape() -> None:
    labels = make_labels((37, 101, 77), 40, seed=4)
    image = make_intensity(labels.shape + (2,), np.uint16, seed=5)
    intensities = {"dapi": image[..., 0], "gfp": image[..., 1]}
    table = features_table(merge_partials(block_partials(labels, intensities, (10, 45, 23))))
    check_against_regionprops(table, labels, intensities)
    assert list(table.columns[-4:]) == ["gfp_min", "gfp_max", "gfp_mean", "gfp_sum"]


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_2d_blocks_merge_to_regionprops(dtype: type) -> None:
    labels = make_labels((101, 77), 25, seed=6)
    intensities = {"signal": make_intensity(labels.shape, dtype, seed=7)}
    parts = block_partials(labels, intensities, (32, 32))
    table = features_table(merge_partials(parts[::-1]), time_point=4)
    check_against_regionprops(table, labels, intensities)
    assert list(table.columns) == [
        "label", "area", "centroid_y", "centroid_x", "bbox_min_y", "bbox_min_x", "bbox_max_y",
        "bbox_max_x", "axis_major_length", "axis_minor_length", "eccentricity", "elongation",
        "exposed_faces", "signal_min", "signal_max", "signal_mean", "signal_sum", "time_point",
    ]  # fmt: skip
    assert (table["time_point"] == 4).all()


def test_block_without_objects() -> None:
    block = np.zeros((4, 5, 6), np.uint16)
    intensity = np.ones(block.shape, np.uint8)
    part = partial_features(block, {"a": intensity}, offset=(8, 0, 12))
    assert len(part) == 0 and part.ndim == 3
    assert part.channels["a"].min.dtype == np.uint8
    assert part.channels["a"].sum.dtype == np.int64
    table = features_table(part)
    assert table.empty and "a_mean" in table.columns and "centroid_z" in table.columns

    labels = np.zeros((6, 6), np.int64)
    labels[1:3, 2:5] = 5
    full = partial_features(labels, {"a": np.full((6, 6), 7, np.uint8)})
    empty = PartialFeatures.empty(2, ["a"])  # float64 by default: must not change the dtype
    merged = merge_partials([empty, full, empty])
    assert merged.channels["a"].min.dtype == np.uint8
    assert merged.channels["a"].sum.dtype == np.int64
    assert merged.count.tolist() == [6] and merged.channels["a"].sum.tolist() == [42]
    assert len(merge_partials([empty, empty])) == 0


def test_offsets_are_global() -> None:
    labels = np.zeros((3, 4), np.uint8)
    labels[1, 1:3] = 2
    part = partial_features(labels, offset=(100, 200))
    assert part.bbox_min.tolist() == [[101, 201]] and part.bbox_max.tolist() == [[102, 203]]
    assert part.coord_sum.tolist() == [[202, 403]]
    assert features_table(part)["centroid_x"].tolist() == [201.5]


def test_integer_sums_stay_exact_beyond_float64() -> None:
    big = np.uint64(2**63 + 1)
    labels = np.ones((2, 3), np.int32)
    part = partial_features(labels, {"x": np.full((2, 3), big, np.uint64)})
    assert part.channels["x"].sum.tolist() == [6 * (2**63 + 1)]
    # int64 partial sums whose total would overflow int64 are merged as Python ints.
    one = partial_features(np.ones((1, 1), np.int32), {"x": np.full((1, 1), 9, np.uint8)})
    huge = PartialFeatures(
        one.labels, one.count, one.coord_sum, one.bbox_min, one.bbox_max,
        {"x": type(one.channels["x"])(one.channels["x"].min, one.channels["x"].max,
                                      np.array([2**62 + 3], np.int64))},
    )  # fmt: skip
    merged = merge_partials([huge, huge, one])
    assert merged.channels["x"].sum.tolist() == [2**63 + 6 + 9]
    assert features_table(merged)["x_mean"].tolist() == [(2**63 + 15) / 3]


def test_invalid_input_is_named() -> None:
    labels = np.ones((4, 4), np.int32)
    with pytest.raises(TypeError, match="integer"):
        partial_features(labels.astype(float))
    with pytest.raises(ValueError, match="2-D"):
        partial_features(np.ones(4, np.int32))
    with pytest.raises(ValueError, match="`offset`"):
        partial_features(labels, offset=(0, 0, 0))
    with pytest.raises(ValueError, match="shape"):
        partial_features(labels, {"a": np.ones((4, 5))})
    with pytest.raises(ValueError, match="non-negative"):
        partial_features(-labels)
    with pytest.raises(ValueError, match="empty"):
        merge_partials([])
    with pytest.raises(ValueError, match="axes"):
        merge_partials([PartialFeatures.empty(2), PartialFeatures.empty(3)])
    with pytest.raises(ValueError, match="channels"):
        merge_partials([PartialFeatures.empty(2, ["a"]), PartialFeatures.empty(2, ["b"])])
