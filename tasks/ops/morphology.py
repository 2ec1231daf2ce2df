"""Binary morphology kernels: distance transform, opening, closing, hole filling, small-object removal.

Each is a NumPy-in, NumPy-out function of one block read with a halo (``origin`` and
``volume_shape`` say where that block lies in the volume, for the kernels whose answer depends
on which of its faces are the volume's border). With the halo each op declares in
:mod:`tierflow.tasks.ops.catalog`, the block-wise result equals the whole-volume one:

* ``distance_transform``: exactly, once clipped to ``max_distance`` (a voxel whose nearest
  background voxel is within ``max_distance`` finds it within the halo; farther ones read
  ``max_distance`` both ways).
* ``binary_open`` / ``binary_close``: exactly (halo = 2 x radius: an erosion then a dilation).
* ``remove_small_objects``: exactly with the default halo (``min_size - 1``: an object of fewer
  than ``min_size`` voxels spans at most ``min_size - 2`` voxels along any axis). A smaller
  halo can only *keep* a small object that reaches beyond a block's context; an object cut by a
  block's inner face is always kept there.
* ``fill_holes``: a hole (background not connected to the volume's border) is filled exactly
  when it fits in a box of ``halo`` voxels per axis; a larger hole may stay unfilled, in whole
  or in part. Background connected to the volume's border is never filled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["binary_close", "binary_open", "distance_transform", "distance_halo", "fill_holes", "footprint",
           "remove_small_objects", "rank_connectivity"]

_RANK = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}


def rank_connectivity(connectivity: int | None, ndim: int) -> int:
    """SciPy's connectivity rank (1 = faces ... ndim = corners) of ``4|8|6|18|26`` (None: full)."""
    return ndim if connectivity is None else min(_RANK[int(connectivity)], ndim)


def footprint(radius: int, ndim: int) -> np.ndarray:
    """A ball (3-D) or disk (2-D) of ``radius`` voxels: scikit-image's ``ball`` / ``disk``."""
    from skimage.morphology import ball, disk

    return (ball(radius) if ndim == 3 else disk(radius)).astype(bool)


def distance_halo(max_distance: float, voxel_size: Sequence[float] | None, ndim: int) -> tuple[int, ...]:
    """Voxels of context per axis for distances exact up to ``max_distance`` (in voxel-size units)."""
    sizes = tuple(voxel_size) if voxel_size else (1.0,) * ndim
    return tuple(int(math.ceil(max_distance / s)) for s in sizes)


def distance_transform(mask: np.ndarray, *, max_distance: float, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Euclidean distance of every non-zero voxel to the nearest zero voxel
    (``scipy.ndimage.distance_transform_edt``), clipped to ``max_distance``; float32.

    Outside the array is not background (as SciPy); a block without any zero voxel reads
    ``max_distance`` everywhere (on the whole volume too).
    """
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    foreground = mask != 0
    if foreground.all():
        return np.full(mask.shape, max_distance, dtype=np.float32)
    distance = ndimage.distance_transform_edt(foreground, sampling=tuple(voxel_size) if voxel_size else None)
    return np.minimum(distance, max_distance).astype(np.float32)


def binary_open(mask: np.ndarray, *, radius: int) -> np.ndarray:
    """Opening by a ball/disk (``skimage.morphology.binary_opening``): erosion (outside counts
    as foreground), then dilation (outside counts as background); uint8."""
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    shape = footprint(radius, mask.ndim)
    eroded = ndimage.binary_erosion(mask != 0, shape, border_value=1)
    return ndimage.binary_dilation(eroded, shape, border_value=0).astype(np.uint8)


def binary_close(mask: np.ndarray, *, radius: int) -> np.ndarray:
    """Closing by a ball/disk (``skimage.morphology.binary_closing``): dilation (outside counts
    as background), then erosion (outside counts as foreground); uint8."""
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    shape = footprint(radius, mask.ndim)
    dilated = ndimage.binary_dilation(mask != 0, shape, border_value=0)
    return ndimage.binary_erosion(dilated, shape, border_value=1).astype(np.uint8)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions not connected (by faces) to the array's border become foreground
    (``scipy.ndimage.binary_fill_holes``); uint8."""
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    return ndimage.binary_fill_holes(mask != 0).astype(np.uint8)


def _inner_faces(shape: tuple[int, ...], origin: Sequence[int], volume_shape: Sequence[int]) -> np.ndarray:
    """True on the voxels of the block's faces that are not the volume's border."""
    edge = np.zeros(shape, dtype=bool)
    for axis, (o, n, total) in enumerate(zip(origin, shape, volume_shape, strict=True)):
        index: list[slice | int] = [slice(None)] * len(shape)
        if o > 0:
            index[axis] = 0
            edge[tuple(index)] = True
        if o + n < total:
            index[axis] = n - 1
            edge[tuple(index)] = True
    return edge


def remove_small_objects(mask: np.ndarray, *, min_size: int, connectivity: int | None = None,
                         origin: Sequence[int] | None = None, volume_shape: Sequence[int] | None = None) -> np.ndarray:
    """Objects of fewer than ``min_size`` voxels become background
    (``skimage.morphology.remove_small_objects``); uint8.

    In a block (``origin``, ``volume_shape`` given), an object touching one of the block's inner
    faces may continue beyond it: it is kept.
    """
    from scipy import ndimage  # imported when a kernel runs: declaring the ops stays cheap

    foreground = mask != 0
    structure = ndimage.generate_binary_structure(mask.ndim, rank_connectivity(connectivity, mask.ndim))
    labels, count = ndimage.label(foreground, structure)
    if count == 0:
        return foreground.astype(np.uint8)
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_size
    if origin is not None and volume_shape is not None:
        keep[np.unique(labels[_inner_faces(mask.shape, origin, volume_shape)])] = True
    keep[0] = False
    return keep[labels].astype(np.uint8)
