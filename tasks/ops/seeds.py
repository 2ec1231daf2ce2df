"""Seed detection: local maxima of an image (e.g. a distance transform), each seed labelled with
a global id, so block-wise seeds need no relabelling pass.

A voxel is a peak when it equals the maximum of the ``(2 * min_distance + 1)``-voxel cube around
it (``mode="nearest"`` at the volume's border) and is above ``threshold_abs``: the peak mask of
``skimage.feature.peak_local_max`` before its greedy thinning, which is order-dependent and
unbounded in reach. Connected peaks (26-/8-connected: a plateau, or equal maxima a voxel apart)
form one seed, whose id is 1 + the smallest linear index (C order, in the whole volume) of its
voxels: the same id in every block that sees the whole seed.

Block-wise, a block reads ``min_distance + plateau`` voxels of context; the peak mask is exact
up to ``plateau`` voxels beyond the block, so the seeds equal the whole volume's except a seed
that reaches more than ``plateau`` voxels beyond a block's border: it is split there, each part
taking its own id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["peak_mask", "peaks"]


def peak_mask(image: np.ndarray, *, min_distance: int, threshold_abs: float) -> np.ndarray:
    """Voxels equal to the maximum of their ``(2 * min_distance + 1)`` cube and above ``threshold_abs``."""
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    local_max = ndimage.maximum_filter(image, size=2 * min_distance + 1, mode="nearest")
    return (image == local_max) & (image > threshold_abs)


def peaks(image: np.ndarray, *, min_distance: int, threshold_abs: float, origin: Sequence[int] | None = None,
          volume_shape: Sequence[int] | None = None) -> np.ndarray:
    """Seeds of ``image`` (a block read at ``origin`` of a volume of ``volume_shape``; default: the
    whole volume), uint32: 0, or 1 + the smallest linear index of the seed's voxels."""
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    origin = tuple(origin) if origin is not None else (0,) * image.ndim
    volume_shape = tuple(volume_shape) if volume_shape is not None else image.shape
    if int(np.prod(volume_shape, dtype=np.int64)) >= 2**32:
        raise ValueError(f"peaks numbers seeds by voxel index as uint32: a volume of {volume_shape} has too many voxels")
    mask = peak_mask(image, min_distance=min_distance, threshold_abs=threshold_abs)
    # the cube maximum is unknown within min_distance of an inner face (not the volume's border)
    trusted = tuple(slice(min_distance if o > 0 else 0, n - (min_distance if o + n < total else 0))
                    for o, n, total in zip(origin, image.shape, volume_shape, strict=True))
    inside = np.zeros_like(mask)
    inside[trusted] = True
    mask &= inside
    labels, count = ndimage.label(mask, np.ones((3,) * image.ndim, dtype=bool))
    out = np.zeros(image.shape, dtype=np.uint32)
    if count == 0:
        return out
    where = np.nonzero(mask)
    linear = np.ravel_multi_index(tuple(w + o for w, o in zip(where, origin, strict=True)), volume_shape).astype(np.int64)
    which = labels[where]
    first = np.full(count + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, which, linear)
    out[where] = (first[which] + 1).astype(np.uint32)
    return out
