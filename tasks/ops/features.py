"""Per-object features computed block by block and merged exactly.

The engine labels a large volume block by block; for each block it calls
:func:`partial_features` on the block's final (global) labels and the matching intensity crops,
then :func:`merge_partials` folds the per-block results together and :func:`features_table`
turns the merged statistics into one row per object. The table equals
:func:`skimage.measure.regionprops_table` on the whole volume: counts, bounding boxes, minima,
maxima and integer sums are exact; centroids and means are one correctly rounded division of
exact sums (float intensities are summed in float64).

Axes are named (z, y, x) in 3-D and (y, x) in 2-D; every coordinate is *global* (the block's
local coordinate plus its ``offset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "ChannelPartial",
    "PartialFeatures",
    "features_table",
    "merge_partials",
    "partial_features",
]

_AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
# Integer sums stay int64 while they provably fit; beyond this bound they become Python ints.
_INT64_SAFE = 2**62


@dataclass(frozen=True, eq=False)
class ChannelPartial:
    """Partial intensity statistics of one channel, aligned on :attr:`PartialFeatures.labels`.

    ``min`` and ``max`` keep the input dtype. ``sum`` is float64 for float input, int64 for
    integer (and bool) input, or an object array of Python ints where int64 could overflow.
    """

    min: np.ndarray
    max: np.ndarray
    sum: np.ndarray


@dataclass(frozen=True, eq=False)
class PartialFeatures:
    """Per-label statistics of part of a labelled image, mergeable with :func:`merge_partials`.

    Attributes
    ----------
    labels : ndarray of int64, shape (n,)
        Sorted, unique, non-zero labels.
    count : ndarray of int64, shape (n,)
        Voxels per label.
    coord_sum : ndarray of int64, shape (n, ndim)
        Sum of the global coordinates of the label's voxels, per axis.
    bbox_min, bbox_max : ndarray of int64, shape (n, ndim)
        Global bounding box per axis: minimum inclusive, maximum exclusive.
    channels : mapping of str to ChannelPartial
        Intensity statistics per channel name.
    """

    labels: np.ndarray
    count: np.ndarray
    coord_sum: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    channels: Mapping[str, ChannelPartial] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.labels.shape[0] if self.labels.ndim == 1 else -1
        if n < 0:
            raise ValueError(f"`labels` must be 1-D, got shape {self.labels.shape}")
        ndim = self.coord_sum.shape[1] if self.coord_sum.ndim == 2 else -1
        if ndim not in _AXES:
            raise ValueError(
                f"`coord_sum` must have shape (n, 2) or (n, 3), got {self.coord_sum.shape}"
            )
        for name, arr, shape in (
            ("count", self.count, (n,)),
            ("coord_sum", self.coord_sum, (n, ndim)),
            ("bbox_min", self.bbox_min, (n, ndim)),
            ("bbox_max", self.bbox_max, (n, ndim)),
        ):
            if arr.shape != shape:
                raise ValueError(f"`{name}` has shape {arr.shape} but {n} labels need {shape}")
        for ch, stats in self.channels.items():
            for stat in ("min", "max", "sum"):
                shape = getattr(stats, stat).shape
                if shape != (n,):
                    raise ValueError(f"channel {ch!r} `{stat}` has shape {shape}, expected {(n,)}")

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return int(self.coord_sum.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(
        cls, ndim: int, channels: Iterable[str] | Mapping[str, npt.DTypeLike] = ()
    ) -> PartialFeatures:
        """Statistics of a region without objects.

        Parameters
        ----------
        ndim : int
            Number of spatial axes, 2 or 3.
        channels : iterable of str or mapping of str to dtype, optional
            Channel names, optionally with the intensity dtype (float64 if not given). The dtype
            of an empty part never changes the dtype of a merge with non-empty parts.

        Returns
        -------
        PartialFeatures
            A part with zero labels.

        Raises
        ------
        ValueError
            If `ndim` is not 2 or 3.

        Examples
        --------
        >>> PartialFeatures.empty(3, ["dapi"]).labels.size
        0
        """
        if ndim not in _AXES:
            raise ValueError(f"`ndim` must be 2 or 3, got {ndim!r}")
        if isinstance(channels, Mapping):
            dtypes = dict(channels)
        else:
            dtypes = dict.fromkeys(channels, np.float64)
        chans = {}
        for name, dt in dtypes.items():
            dtype = np.dtype(dt)
            chans[str(name)] = ChannelPartial(
                np.empty(0, dtype), np.empty(0, dtype), np.empty(0, _sum_dtype(dtype, 0))
            )
        z = np.empty((0, ndim), np.int64)
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), z, z.copy(), z.copy(), chans)


def _sum_dtype(dtype: np.dtype, n: int) -> np.dtype:
    """Accumulator dtype for exact sums of ``n`` values of ``dtype``."""
    if dtype.kind == "f":
        return np.dtype(np.float64)
    bound = 2 ** (8 * dtype.itemsize) if dtype.kind in "iu" else 2
    return np.dtype(np.int64) if bound * max(n, 1) < _INT64_SAFE else np.dtype(object)


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stable sort order of ``keys``, the start of each run of equal keys, and the keys."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    starts = starts[: sorted_keys.size]  # no runs in an empty array
    return order, starts, sorted_keys[starts]


def _check_intensity(name: object, image: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"intensity channel names must be non-empty strings, got {name!r}")
    if image.shape != shape:
        raise ValueError(
            f"intensity {name!r} has shape {image.shape} but `labels` has shape {shape}"
        )
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"intensity {name!r} has dtype {image.dtype}; expected bool, integer or float"
        )


def partial_features(
    labels: np.ndarray,
    intensities: Mapping[str, np.ndarray] | None = None,
    *,
    offset: Sequence[int] | None = None,
) -> PartialFeatures:
    """Per-label partial statistics of one block of a labelled image.

    Parameters
    ----------
    labels : ndarray of int, shape (z, y, x) or (y, x)
        Global labels of the block; 0 is background. Must be non-negative.
    intensities : mapping of str to ndarray, optional
        Channel name to intensity block of the same shape as `labels`.
    offset : sequence of int, optional
        Global position of the block's first voxel, one entry per axis (default: zeros).

    Returns
    -------
    PartialFeatures
        Statistics of every label present in the block, in global coordinates.

    Raises
    ------
    TypeError
        If `labels` is not an integer array or an intensity is not bool, integer or float.
    ValueError
        If `labels` is not 2-D or 3-D or holds negative values, `offset` has the wrong number of
        axes, or an intensity's shape differs from `labels`.

    Examples
    --------
    >>> lab = np.array([[0, 1, 1], [2, 2, 0]])
    >>> part = partial_features(lab, {"dna": np.arange(6).reshape(2, 3)}, offset=(10, 0))
    >>> part.labels.tolist(), part.count.tolist(), part.channels["dna"].sum.tolist()
    ([1, 2], [2, 2], [3, 7])
    """
    lab = np.asarray(labels)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"`labels` must be an integer array, got dtype {lab.dtype}")
    if lab.ndim not in _AXES:
        raise ValueError(f"`labels` must be 2-D (y, x) or 3-D (z, y, x), got {lab.ndim} axes")
    off = np.zeros(lab.ndim, np.int64) if offset is None else np.asarray(offset)
    if off.shape != (lab.ndim,) or off.dtype.kind not in "iu":
        raise ValueError(
            f"`offset` {tuple(np.ravel(off).tolist())} must be {lab.ndim} integers, "
            "one per axis of `labels`"
        )
    images = {name: np.asarray(img) for name, img in (intensities or {}).items()}
    for name, img in images.items():
        _check_intensity(name, img, lab.shape)

    flat = lab.reshape(-1)
    index = np.flatnonzero(flat)
    if index.size == 0:
        return PartialFeatures.empty(lab.ndim, {name: img.dtype for name, img in images.items()})
    keys = flat[index]
    if lab.dtype.kind == "i" and keys.min() < 0:
        raise ValueError(f"`labels` must be non-negative, found {keys.min()}")
    if lab.dtype == np.uint64 and keys.max() > np.iinfo(np.int64).max:
        raise ValueError(f"label {keys.max()} does not fit in int64")
    order, starts, uniq = _groups(keys)
    index = index[order]  # voxels grouped by label, ascending within each label
    count = np.diff(np.append(starts, index.size)).astype(np.int64)

    coords = np.unravel_index(index, lab.shape)
    coord_sum = np.empty((uniq.size, lab.ndim), np.int64)
    bbox_min = np.empty_like(coord_sum)
    bbox_max = np.empty_like(coord_sum)
    for axis, c in enumerate(coords):
        c = c.astype(np.int64, copy=False) + np.int64(off[axis])
        coord_sum[:, axis] = np.add.reduceat(c, starts)
        bbox_min[:, axis] = np.minimum.reduceat(c, starts)
        bbox_max[:, axis] = np.maximum.reduceat(c, starts) + 1

    channels = {}
    for name, img in images.items():
        values = img.reshape(-1)[index]
        acc = values.astype(_sum_dtype(img.dtype, index.size), copy=False)
        channels[name] = ChannelPartial(
            np.minimum.reduceat(values, starts),
            np.maximum.reduceat(values, starts),
            np.add.reduceat(acc, starts),
        )
    return PartialFeatures(uniq.astype(np.int64), count, coord_sum, bbox_min, bbox_max, channels)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate, letting only non-empty arrays decide the dtype."""
    nonempty = [a for a in arrays if a.shape[0]]
    return np.concatenate(nonempty) if nonempty else arrays[0]


def merge_partials(parts: Iterable[PartialFeatures]) -> PartialFeatures:
    """Merge partial statistics by label: counts and sums add, minima and maxima combine.

    The merge is associative and independent of order (float sums up to rounding); labels
    present in only some parts are kept.

    Parameters
    ----------
    parts : iterable of PartialFeatures
        Parts with the same number of axes and the same channel names.

    Returns
    -------
    PartialFeatures
        One entry per label found in any part.

    Raises
    ------
    ValueError
        If `parts` is empty, or parts differ in number of axes or channel names.

    Examples
    --------
    >>> a = partial_features(np.array([[1, 1], [0, 2]]))
    >>> b = partial_features(np.array([[2, 3]]), offset=(2, 0))
    >>> merge_partials([a, b]).count.tolist()
    [2, 2, 1]
    """
    parts = list(parts)
    if not parts:
        raise ValueError(
            "`parts` is empty; use PartialFeatures.empty(ndim, channels) for no objects"
        )
    ndim, names = parts[0].ndim, set(parts[0].channels)
    for i, p in enumerate(parts):
        if p.ndim != ndim:
            raise ValueError(f"part {i} has {p.ndim} axes but part 0 has {ndim}")
        if set(p.channels) != names:
            raise ValueError(
                f"part {i} has channels {sorted(p.channels)} but part 0 has {sorted(names)}"
            )
    order, starts, uniq = _groups(_concat([p.labels for p in parts]))

    def reduce(ufunc: np.ufunc, arrays: list[np.ndarray]) -> np.ndarray:
        if not uniq.size:
            return _concat(arrays)
        return ufunc.reduceat(_concat(arrays)[order], starts, axis=0)

    count = reduce(np.add, [p.count for p in parts])
    coord_sum = reduce(np.add, [p.coord_sum for p in parts])
    bbox_min = reduce(np.minimum, [p.bbox_min for p in parts])
    bbox_max = reduce(np.maximum, [p.bbox_max for p in parts])
    channels = {}
    for name in parts[0].channels:
        sums = [p.channels[name].sum for p in parts]
        total = reduce(np.add, sums)
        if total.dtype == np.int64 and total.size:
            # int64 partial sums may overflow when added; redo with Python ints if they could.
            bound = reduce(np.add, [np.abs(s.astype(np.float64)) for s in sums])
            if bound.max() >= _INT64_SAFE:
                total = reduce(np.add, [s.astype(object) for s in sums])
        channels[name] = ChannelPartial(
            reduce(np.minimum, [p.channels[name].min for p in parts]),
            reduce(np.maximum, [p.channels[name].max for p in parts]),
            total,
        )
    return PartialFeatures(uniq, count, coord_sum, bbox_min, bbox_max, channels)


def _exact_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` as float64, correctly rounded also for Python-int sums."""
    if numerator.dtype == object:
        return np.array([int(a) / int(b) for a, b in zip(numerator, denominator, strict=False)], dtype=np.float64)
    return numerator / denominator


def features_table(part: PartialFeatures, *, time_point: int | None = None) -> pd.DataFrame:
    """One row per object: area, centroid, bounding box and intensity statistics.

    Parameters
    ----------
    part : PartialFeatures
        Statistics of the whole image, usually from :func:`merge_partials`.
    time_point : int, optional
        If given, added as a ``time_point`` column.

    Returns
    -------
    pandas.DataFrame
        Sorted by label, with columns ``label``, ``area``, ``centroid_{ax}``, ``bbox_min_{ax}``,
        ``bbox_max_{ax}`` for ``ax`` in (z, y, x) (3-D) or (y, x) (2-D), then per channel
        ``{ch}_min``, ``{ch}_max``, ``{ch}_mean``, ``{ch}_sum``, then ``time_point`` if given.
        Minima and maxima keep the intensity dtype; means are float64; sums are float64 for
        float channels and int64 (or Python ints) for integer channels.

    Raises
    ------
    ValueError
        If `time_point` is not an integer.

    Examples
    --------
    >>> part = partial_features(np.array([[1, 1, 0], [0, 2, 2]]), {"gfp": np.ones((2, 3))})
    >>> table = features_table(part, time_point=3)
    >>> table[["label", "area", "centroid_x", "gfp_sum"]].values.tolist()
    [[1.0, 2.0, 0.5, 2.0], [2.0, 2.0, 1.5, 2.0]]
    """
    if time_point is not None and not isinstance(time_point, (int, np.integer)):
        raise ValueError(f"`time_point` must be an integer, got {time_point!r}")
    axes = _AXES[part.ndim]
    count = part.count
    columns: dict[str, np.ndarray] = {"label": part.labels, "area": count}
    for i, ax in enumerate(axes):
        columns[f"centroid_{ax}"] = part.coord_sum[:, i] / count
    for i, ax in enumerate(axes):
        columns[f"bbox_min_{ax}"] = part.bbox_min[:, i]
    for i, ax in enumerate(axes):
        columns[f"bbox_max_{ax}"] = part.bbox_max[:, i]
    for name, stats in part.channels.items():
        columns[f"{name}_min"] = stats.min
        columns[f"{name}_max"] = stats.max
        columns[f"{name}_mean"] = _exact_divide(stats.sum, count)
        columns[f"{name}_sum"] = stats.sum
    table = pd.DataFrame(columns)
    if time_point is not None:
        table["time_point"] = np.int64(time_point)
    return table
