"""Pyramid kernels: block-wise equals whole-array, means and modes match independent references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.transform import downscale_local_mean

from tierflow.tasks.ops.pyramid import (
    downsample_labels,
    downsample_mean,
    downsampled_shape,
    pyramid_factors,
)

RNG_SEED = 20240611


def blockwise(kernel, image: np.ndarray, block_shape, factors, **kwargs) -> np.ndarray:
    """Run ``kernel`` block by block (offsets are multiples of ``factors``) and stitch."""
    for b, f in zip(block_shape, factors, strict=True):
        if b % f:
            raise ValueError(f"test setup: block {block_shape} not a multiple of {factors}")
    pieces = {}
    for offset in itertools.product(
        *(range(0, n, b) for n, b in zip(image.shape, block_shape, strict=True))
    ):
        block = image[tuple(slice(o, o + b) for o, b in zip(offset, block_shape, strict=True))]
        pieces[offset] = kernel(block, factors, **kwargs)
    out_shape = downsampled_shape(image.shape, factors)
    first = next(iter(pieces.values()))
    out = np.full(out_shape, 123, dtype=first.dtype)
    written = np.zeros(out_shape, dtype=np.int32)
    for offset, piece in pieces.items():
        where = tuple(
            slice(o // f, o // f + s) for o, f, s in zip(offset, factors, piece.shape, strict=True)
        )
        out[where] = piece
        written[where] += 1
    np.testing.assert_array_equal(written, 1)  # the tiling covers the output exactly once
    return out


def random_image(shape, dtype, rng) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    return (rng.random(shape) * 1000 - 200).astype(dtype)


def random_labels(shape, rng, *, n_labels=6, dtype=np.uint32) -> np.ndarray:
    """Blobby labels with plenty of background and ties, values far apart."""
    values = np.array([0, 0, 0, 3, 17, 40000, 9, 1, 250][: n_labels + 3], dtype=dtype)
    coarse = rng.integers(0, len(values), size=tuple(-(-s // 3) for s in shape))
    up = coarse
    for axis in range(len(shape)):
        up = np.repeat(up, 3, axis=axis)
    noisy = np.where(rng.random(shape) < 0.3, rng.integers(0, len(values), size=shape),
                     up[tuple(slice(0, s) for s in shape)])
    return values[noisy]


def slow_window_reference(image: np.ndarray, factors, reduce) -> np.ndarray:
    """Apply ``reduce`` to every window (cut-off windows hold only the voxels present)."""
    out_shape = tuple(-(-n // f) for n, f in zip(image.shape, factors, strict=True))
    out = np.empty(out_shape, dtype=object)
    for index in np.ndindex(*out_shape):
        where = tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors, strict=True))
        out[index] = reduce(image[where])
    return out


def mode_reference(window: np.ndarray):
    values, counts = np.unique(window, return_counts=True)
    keep = values != 0
    if not keep.any():
        return 0
    values, counts = values[keep], counts[keep]
    return values[counts == counts.max()].min()  # np.unique sorts: smallest of the tied


CASES = [
    # (shape, block_shape, factors)
    ((37, 101, 77), (16, 32, 32), (2, 2, 2)),
    ((37, 101, 77), (16, 32, 32), (1, 2, 2)),
    ((37, 101, 77), (15, 30, 32), (3, 3, 4)),
    ((101, 77), (32, 16), (2, 2)),
    ((45, 31), (9, 12), (3, 4)),
]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(("shape", "block_shape", "factors"), CASES)
def test_mean_blockwise_equals_whole(shape, block_shape, factors, dtype):
    image = random_image(shape, dtype, np.random.default_rng(RNG_SEED))
    whole = downsample_mean(image, factors)
    assert whole.shape == tuple(-(-n // f) for n, f in zip(shape, factors, strict=True))
    assert whole.dtype == dtype
    np.testing.assert_array_equal(blockwise(downsample_mean, image, block_shape, factors), whole)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize(("shape", "factors"), [((37, 101, 77), (2, 2, 2)), ((45, 31), (3, 4))])
def test_mean_interior_matches_skimage(shape, factors, dtype):
    image = random_image(shape, dtype, np.random.default_rng(RNG_SEED + 1))
    full = tuple(n // f for n, f in zip(shape, factors, strict=True))  # windows that are whole
    interior = tuple(slice(0, n) for n in full)
    reference = downscale_local_mean(image.astype(np.float64), factors)[interior]

    as_float = downsample_mean(image, factors, out_dtype=np.float64)[interior]
    np.testing.assert_allclose(as_float, reference, rtol=1e-12)
    default = downsample_mean(image, factors)[interior]
    if np.issubdtype(dtype, np.integer):
        np.testing.assert_array_equal(default, np.rint(reference).astype(dtype))
    else:
        np.testing.assert_allclose(default, reference.astype(dtype), rtol=1e-6)


@pytest.mark.parametrize(("shape", "factors"), [((7, 10, 9), (2, 3, 4)), ((5, 7), (2, 3))])
def test_mean_cut_off_edges_average_the_voxels_present(shape, factors):
    image = random_image(shape, np.uint16, np.random.default_rng(RNG_SEED + 2))
    reference = slow_window_reference(
        image.astype(np.float64), factors, lambda w: w.sum() / w.size
    ).astype(np.float64)
    result = downsample_mean(image, factors, out_dtype=np.float64)
    np.testing.assert_allclose(result, reference, rtol=1e-12)
    # zero padding would have pulled the edge means down; these windows are cut off:
    last = tuple(-1 for _ in shape)
    edge = image[tuple(slice((n - 1) // f * f, n) for n, f in zip(shape, factors, strict=True))]
    assert edge.size < np.prod(factors)
    assert result[last] == pytest.approx(edge.mean())


def test_mean_by_hand_rounds_half_to_even():
    image = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.uint8)
    # windows: [1 2 4 5] -> 3, [3 6] -> 4.5, [7 8] -> 7.5, [9] -> 9
    np.testing.assert_array_equal(
        downsample_mean(image, (2, 2), out_dtype=np.float32), [[3, 4.5], [7.5, 9]]
    )
    np.testing.assert_array_equal(downsample_mean(image, (2, 2)), [[3, 4], [8, 9]])
    np.testing.assert_array_equal(downsample_mean(image, 2), [[3, 4], [8, 9]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 4), (4, 4, 4), (1, 1, 1), (2, 3, 2)])
def test_integer_means_round_half_to_even_like_rint_of_the_float_mean(dtype, factors):
    # 8/16-bit data in whole power-of-two windows takes an integer shift path; every other
    # window (here 2x3x2) takes the float path: both must equal rint of the exact mean
    info = np.iinfo(dtype)
    image = np.random.default_rng(RNG_SEED + 3).integers(info.min, info.max, (16, 24, 64), endpoint=True).astype(dtype)
    exact = downscale_local_mean(image.astype(np.float64), factors)
    window = int(np.prod(factors))
    if window > 1:  # the data holds ties (means ending in .5), so rounding is really tested
        assert np.any(np.abs(exact - np.floor(exact) - 0.5) < 1e-9)
    result = downsample_mean(image, factors)
    assert result.dtype == dtype
    np.testing.assert_array_equal(result, np.rint(exact).astype(dtype))
    np.testing.assert_array_equal(downsample_mean(image, factors, out_dtype=np.int32), np.rint(exact))


def test_mean_never_rescales_and_refuses_a_narrow_out_dtype():
    image = np.full((4, 4), 40000, dtype=np.uint16)
    np.testing.assert_array_equal(downsample_mean(image, (2, 2)), 40000)
    np.testing.assert_array_equal(downsample_mean(image, (2, 2), out_dtype=np.uint32), 40000)
    with pytest.raises(ValueError, match=r"outside the range \[0, 255\].*uint8"):
        downsample_mean(image, (2, 2), out_dtype=np.uint8)


def test_mean_rejects_bad_input():
    with pytest.raises(ValueError, match=r"`factors` \(2, 2\) has 2 axes but the array has 3"):
        downsample_mean(np.zeros((4, 4, 4)), (2, 2))
    with pytest.raises(ValueError, match="positive integers"):
        downsample_mean(np.zeros((4, 4)), (0, 2))
    with pytest.raises(TypeError, match="bool"):
        downsample_mean(np.zeros((4, 4), dtype=bool), (2, 2))
    with pytest.raises(ValueError, match="NaN"):
        downsample_mean(np.full((2, 2), np.nan, dtype=np.float32), (2, 2), out_dtype=np.uint8)


@pytest.mark.parametrize("method", ["mode", "nearest"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize(("shape", "block_shape", "factors"), CASES)
def test_labels_blockwise_equals_whole(shape, block_shape, factors, dtype, method):
    labels = random_labels(shape, np.random.default_rng(RNG_SEED + 3)).astype(dtype)
    whole = downsample_labels(labels, factors, method=method)
    assert whole.dtype == dtype
    assert whole.shape == downsampled_shape(shape, factors)
    assert set(np.unique(whole)) <= set(np.unique(labels))  # never invents a label
    blocks = blockwise(downsample_labels, labels, block_shape, factors, method=method)
    np.testing.assert_array_equal(blocks, whole)


@pytest.mark.parametrize(
    ("shape", "factors"),
    [((9, 11, 10), (2, 2, 2)), ((7, 13, 8), (3, 2, 4)), ((13, 17), (2, 3)), ((6, 6), (1, 3))],
)
@pytest.mark.parametrize("seed", range(4))
def test_labels_mode_matches_slow_reference(shape, factors, seed):
    labels = random_labels(shape, np.random.default_rng(seed))
    reference = slow_window_reference(labels, factors, mode_reference).astype(labels.dtype)
    np.testing.assert_array_equal(downsample_labels(labels, factors), reference)


def test_labels_mode_rules_by_hand():
    labels = np.array(
        [
            [0, 0, 9, 9, 4, 4, 0],
            [0, 7, 4, 4, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    # windows (2 x 2): [0 0 0 7] -> 7 (background outnumbers but never wins);
    # [9 9 4 4] -> 4 (tie, smaller); [4 4 0 0] -> 4; cut-off [0 0] -> 0
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2)), [[7, 4, 4, 0]])
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2), method="nearest"),
                                  [[0, 9, 4, 0]])
    mask = labels > 5
    np.testing.assert_array_equal(downsample_labels(mask, (2, 2)), [[True, True, False, False]])


def test_labels_reject_floats_and_unknown_methods():
    with pytest.raises(TypeError, match="float64"):
        downsample_labels(np.zeros((4, 4)), (2, 2))
    with pytest.raises(ValueError, match="'median' is not one of"):
        downsample_labels(np.zeros((4, 4), dtype=np.uint8), (2, 2), method="median")


def test_three_level_pyramid_shapes():
    shape = (37, 101, 77)
    factors = pyramid_factors(shape, 3)
    assert factors == [(1, 1, 1), (2, 2, 2), (2, 2, 2)]
    image = random_image(shape, np.uint16, np.random.default_rng(RNG_SEED + 4))
    labels = random_labels(shape, np.random.default_rng(RNG_SEED + 5))
    levels, label_levels = [image], [labels]
    for f in factors[1:]:
        levels.append(downsample_mean(levels[-1], f))
        label_levels.append(downsample_labels(label_levels[-1], f))
    expected = [(37, 101, 77), (19, 51, 39), (10, 26, 20)]
    assert [a.shape for a in levels] == expected
    assert [a.shape for a in label_levels] == expected


def test_pyramid_factors_stop_small_and_skipped_axes():
    # z stops once another halving would leave fewer than min_size complete windows
    assert pyramid_factors((20, 512, 512), 4, min_size=(8, 1, 1)) == [
        (1, 1, 1), (2, 2, 2), (1, 2, 2), (1, 2, 2)
    ]
    # an axis of extent 1 is never downsampled; extents never drop below 1
    assert pyramid_factors((3, 64), 4) == [(1, 1), (2, 2), (2, 2), (1, 2)]  # 3 -> 2 -> 1
    assert pyramid_factors((16, 64, 64), 3, axes_to_skip=(0,)) == [
        (1, 1, 1), (1, 2, 2), (1, 2, 2)
    ]
    assert pyramid_factors((64, 64), 3, factor=(2, 4), axes_to_skip=(-2,)) == [
        (1, 1), (1, 4), (1, 4)
    ]
    assert pyramid_factors((8, 8), 1) == [(1, 1)]
    with pytest.raises(ValueError, match="`levels`"):
        pyramid_factors((8, 8), 0)
    with pytest.raises(ValueError, match="axis 2, out of range for 2 axes"):
        pyramid_factors((8, 8), 2, axes_to_skip=(2,))
    with pytest.raises(ValueError, match="`min_size`"):
        pyramid_factors((8, 8), 2, min_size=(1, 1, 1))


@pytest.mark.parametrize(
    ("offset", "shape", "chunks", "factors"),
    [((0, 0, 0), (38, 64, 64), (16, 32, 32), (2, 2, 2)),   # cut at 16, 32 along z; 32 along y, x
     ((32, 64, 0), (5, 64, 77), (16, 32, 30), (2, 2, 4)),  # x: 30 % 4 != 0, so x is never cut
     ((0, 0), (45, 31), (9, 12), (3, 4))],                 # 2-D; both axes cut
)
def test_input_pieces_tile_the_region_and_cut_only_where_windows_allow(offset, shape, chunks, factors):
    from tierflow.storage.geometry import Roi
    from tierflow.tasks.pyramid_blocks import input_pieces

    region = Roi(offset, shape)
    pieces = input_pieces(region, chunks, factors)
    covered = np.zeros(shape, dtype=np.int32)
    for piece in pieces:
        covered[piece.relative_to(region)] += 1
        for axis, (start, chunk, factor) in enumerate(zip(piece.offset, chunks, factors, strict=True)):
            assert start % factor == 0, f"piece {piece} starts inside a window along axis {axis}"
            if chunk % factor == 0:  # never spans two input chunks
                assert start // chunk == (start + piece.shape[axis] - 1) // chunk
    np.testing.assert_array_equal(covered, 1)  # every voxel read exactly once


def test_level0_chunk_copy_between_local_arrays(tmp_path):
    """Level 0 takes the source's encoded chunks as they are (a file copy between local
    folders): the copy reads back as the source, a chunk absent from the source (all fill
    value) removes the target's stale one, and no temporary file is left behind."""
    import zarr
    from zarr.storage import LocalStore

    from tierflow.tasks.pyramid_blocks import copy_chunk

    data = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    source = zarr.create_array(str(tmp_path / "src.zarr"), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint16")
    source[:2] = data  # chunk c/1/0/0 stays absent (fill value)
    target = zarr.create_array(str(tmp_path / "dst.zarr"), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint16")
    target[:] = 9  # stale chunks from an earlier run
    copied = [copy_chunk(LocalStore(tmp_path / "src.zarr"), LocalStore(tmp_path / "dst.zarr"), key) for key in ("c/0/0/0", "c/1/0/0")]
    assert copied[0] == (tmp_path / "src.zarr" / "c/0/0/0").stat().st_size and copied[1] == 0
    result = zarr.open_array(str(tmp_path / "dst.zarr"), mode="r")[:]
    assert np.array_equal(result[:2], data) and not result[2:].any()
    assert not (tmp_path / "dst.zarr" / "c/1/0/0").exists()
    assert not [p for p in (tmp_path / "dst.zarr").rglob("*") if p.name.endswith(".partial")]
