"""Label kernels: per-block labels + face equivalences + union give SciPy's whole-volume partition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from tierflow.tasks.ops.label import (
    block_faces,
    block_table,
    face_equivalences,
    label_block,
    merge_equivalences,
    provisional_offsets,
    relabel_block,
)

RANKS = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}


def _blockwise(mask: np.ndarray, block: tuple[int, ...], connectivity: int, id_base: int = 0):
    grid = tuple(-(-n // b) for n, b in zip(mask.shape, block, strict=True))
    labels, faces, counts = {}, {}, {}
    for index in itertools.product(*(range(n) for n in grid)):
        where = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        labels[index], counts[index] = label_block(mask[where], connectivity=connectivity)
        faces[index] = block_faces(labels[index])
    offsets, total = provisional_offsets(counts, list(labels))
    offsets = {index: offset + id_base for index, offset in offsets.items()}
    return grid, labels, faces, offsets, total


@pytest.mark.parametrize(
    ("shape", "block", "connectivity"),
    [((61, 90), (20, 32), 8), ((61, 90), (20, 32), 4), ((19, 40, 33), (8, 16, 16), 26), ((19, 40, 33), (8, 16, 16), 18),
     ((19, 40, 33), (8, 16, 16), 6)],
)
def test_merged_blocks_give_the_whole_volume_partition(shape, block, connectivity):
    # blocks that do not divide the shape; each block relabelled as the relabel stage does
    mask = ndimage.binary_opening(np.random.default_rng(7).random(shape) > 0.55)
    grid, labels, faces, offsets, total = _blockwise(mask, block, connectivity)
    lut = merge_equivalences(total, face_equivalences(grid, faces, offsets, connectivity=connectivity))
    merged = np.zeros(shape, dtype=lut.dtype)
    for index, block_labels in labels.items():
        where = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        merged[where] = relabel_block(block_labels, block_table(lut, offsets[index], int(block_labels.max())))
    reference, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, RANKS[connectivity]))
    assert count > 10 and merged.max() == count
    pairs = np.unique(np.stack([reference.ravel(), merged.ravel()], axis=1), axis=0)
    assert len(pairs) == count + 1  # a bijection between the two labelings (0 <-> 0 included)


@pytest.mark.parametrize("connectivity", [4, 8, 6, 18, 26])
@pytest.mark.parametrize("dtype", ["uint8", "bool", ">u2", "float32", "float16"])
def test_block_labels_are_scipy_labels(connectivity, dtype):
    # cc3d gives SciPy's ids (numbered by first voxel in C order), reading every non-zero value
    # as foreground; 2-D goes through cc3d's 3-D path (its 2-D binary paths mislabel such masks:
    # 4-connected compared the values of the first row, 8-connected merged objects)
    ndim = 2 if connectivity in (4, 8) else 3
    rng = np.random.default_rng(connectivity)
    for trial in range(20):
        shape = tuple(int(n) for n in rng.integers(1 if trial % 4 == 0 else 5, 30, ndim))
        mask = rng.random(shape) < rng.uniform(0.2, 0.7)
        data = (mask * rng.integers(1, 250, shape)).astype(dtype)  # values other than 1: still one foreground
        if data.dtype.kind == "f":
            data[~mask] = -0.0  # background too
        labels, count = label_block(data, connectivity=connectivity)
        reference, expected = ndimage.label(mask, structure=ndimage.generate_binary_structure(ndim, RANKS[connectivity]))
        assert labels.dtype == np.uint32 and labels.shape == shape and count == expected
        np.testing.assert_array_equal(labels, reference)


def test_relabel_widens_to_a_64_bit_table():
    # past 2**32 - 1 provisional ids the table is uint64: the uint32 block labels are widened, not wrapped
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint32)
    lut = np.arange(10, dtype=np.uint64) + np.uint64(2**33)
    values = relabel_block(labels, block_table(lut, 4, 2))
    assert values.dtype == np.uint64
    np.testing.assert_array_equal(values, [[0, 2**33 + 5, 2**33 + 6], [2**33 + 6, 2**33 + 5, 0]])


def test_equivalences_are_the_same_beyond_three_billion_ids():
    # ids past 3e9 take the row path instead of one int64 key per pair: same pairs, shifted
    mask = ndimage.binary_opening(np.random.default_rng(8).random((61, 90)) > 0.55)
    grid, _, faces, small, _ = _blockwise(mask, (20, 32), 8)
    _, _, _, large, _ = _blockwise(mask, (20, 32), 8, id_base=3_500_000_000)
    near = face_equivalences(grid, faces, small, connectivity=8)
    far = face_equivalences(grid, faces, large, connectivity=8)
    assert len(near) > 5
    np.testing.assert_array_equal(far, near + 3_500_000_000)
