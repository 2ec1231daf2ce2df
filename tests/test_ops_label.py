"""Label kernels: per-block labels + face equivalences + union give SciPy's whole-volume partition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from tierflow.tasks.ops.label import block_faces, face_equivalences, label_block, merge_equivalences, provisional_offsets


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
    ("shape", "block", "connectivity"), [((61, 90), (20, 32), 8), ((61, 90), (20, 32), 4), ((19, 40, 33), (8, 16, 16), 26)]
)
def test_merged_blocks_give_the_whole_volume_partition(shape, block, connectivity):
    mask = ndimage.binary_opening(np.random.default_rng(7).random(shape) > 0.55)
    grid, labels, faces, offsets, total = _blockwise(mask, block, connectivity)
    lut = merge_equivalences(total, face_equivalences(grid, faces, offsets, connectivity=connectivity))
    merged = np.zeros(shape, dtype=np.int64)
    for index, block_labels in labels.items():
        where = tuple(slice(i * b, (i + 1) * b) for i, b in zip(index, block, strict=True))
        merged[where] = lut[np.where(block_labels > 0, block_labels.astype(np.int64) + offsets[index], 0)]
    rank = {4: 1, 8: 2, 26: 3}[connectivity]
    reference, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))
    assert count > 10 and merged.max() == count
    pairs = np.unique(np.stack([reference.ravel(), merged.ravel()], axis=1), axis=0)
    assert len(pairs) == count + 1  # a bijection between the two labelings (0 <-> 0 included)


def test_equivalences_are_the_same_beyond_three_billion_ids():
    # ids past 3e9 take the row path instead of one int64 key per pair: same pairs, shifted
    mask = ndimage.binary_opening(np.random.default_rng(8).random((61, 90)) > 0.55)
    grid, _, faces, small, _ = _blockwise(mask, (20, 32), 8)
    _, _, _, large, _ = _blockwise(mask, (20, 32), 8, id_base=3_500_000_000)
    near = face_equivalences(grid, faces, small, connectivity=8)
    far = face_equivalences(grid, faces, large, connectivity=8)
    assert len(near) > 5
    np.testing.assert_array_equal(far, near + 3_500_000_000)
