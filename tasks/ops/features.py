"""Per-object features computed block by block and merged exactly.

The engine labels a large volume block by block; for each block it calls
:func:`partial_features` on the block's final (global) labels and the matching intensity crops,
then :func:`merge_partials` folds the per-block results together and :func:`features_table`
turns the merged statistics into one row per object. The table equals
:func:`skimage.measure.regionprops_table` on the whole volume: counts, bounding boxes, minima,
maxima and integer sums are exact; centroids and means are one correctly rounded division of
exact sums (float intensities are summed in float64).

Shape descriptors are exact across blocks too: each part keeps the sums of the products of the
global coordinates (second raw moments, integers), so the merged central moments
``n * sum(c_i c_j) - sum(c_i) sum(c_j)`` are exact integers; axis lengths, eccentricity and
elongation come from their eigenvalues as :func:`skimage.measure.regionprops` defines them. A
part also counts each object's exposed voxel faces (a face between a voxel of the object and a
voxel of another label, the background or the outside of the volume): with a one-voxel margin of
the neighbouring blocks (``context``) every face is counted by the block of its object's voxel,
so the counts add up exactly. Given a voxel size, :func:`features_table` adds the physical
columns (``volume_um3``, ``centroid_z_um``, ``surface_area_um2``...).

Axes are named (z, y, x) in 3-D and (y, x) in 2-D; every coordinate is *global* (the block's
local coordinate plus its ``offset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "ChannelPartial",
    "PartialFeatures",
    "covariance",
    "features_table",
    "inertia_eigvals",
    "merge_partials",
    "parse_voxel_size",
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
    coord_products : ndarray, shape (n, ndim, ndim), optional
        Sum of ``c_i * c_j`` over the label's voxels (global coordinates): int64, or Python ints
        where int64 could overflow. None if unknown (then the merge has no shape descriptors).
    faces : ndarray of int64, shape (n, ndim), optional
        Exposed voxel faces of the label perpendicular to each axis. None if unknown.
    """

    labels: np.ndarray
    count: np.ndarray
    coord_sum: np.ndarray
    bbox_min: np.ndarray
    bbox_max: np.ndarray
    channels: Mapping[str, ChannelPartial] = field(default_factory=dict)
    coord_products: np.ndarray | None = None
    faces: np.ndarray | None = None

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
        for name, opt, shape in (("coord_products", self.coord_products, (n, ndim, ndim)), ("faces", self.faces, (n, ndim))):
            if opt is not None and opt.shape != shape:
                raise ValueError(f"`{name}` has shape {opt.shape} but {n} labels need {shape}")
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
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), z, z.copy(), z.copy(), chans,
                   np.empty((0, ndim, ndim), np.int64), z.copy())


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
    context: np.ndarray | None = None,
    context_offset: Sequence[int] | None = None,
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
    context : ndarray of int, optional
        Labels of the block grown by one voxel on every side, clipped to the volume (what
        ``Roi.grow((1,) * ndim, volume_shape)`` reads), so that faces shared with the
        neighbouring blocks are told apart from faces on the volume's border. Without it the
        block is taken as the whole image: every face on its border is exposed.
    context_offset : sequence of int, optional
        Global position of `context`'s first voxel (required with `context`).

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
        axes, an intensity's shape differs from `labels`, or `context` does not hold `labels`
        with at most one voxel of margin per side.

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

    padded = _padded(lab, off, context, context_offset)
    coords = [c.astype(np.int64, copy=False) + np.int64(off[axis])
              for axis, c in enumerate(np.unravel_index(index, lab.shape))]
    coord_sum = np.empty((uniq.size, lab.ndim), np.int64)
    bbox_min = np.empty_like(coord_sum)
    bbox_max = np.empty_like(coord_sum)
    for axis, c in enumerate(coords):
        coord_sum[:, axis] = np.add.reduceat(c, starts)
        bbox_min[:, axis] = np.minimum.reduceat(c, starts)
        bbox_max[:, axis] = np.maximum.reduceat(c, starts) + 1
    products = _coordinate_products(coords, starts)
    faces = _exposed_faces(padded, lab.shape, index, starts)

    channels = {}
    for name, img in images.items():
        values = img.reshape(-1)[index]
        acc = values.astype(_sum_dtype(img.dtype, index.size), copy=False)
        channels[name] = ChannelPartial(
            np.minimum.reduceat(values, starts),
            np.maximum.reduceat(values, starts),
            np.add.reduceat(acc, starts),
        )
    return PartialFeatures(uniq.astype(np.int64), count, coord_sum, bbox_min, bbox_max, channels, products, faces)


def _coordinate_products(coords: list[np.ndarray], starts: np.ndarray) -> np.ndarray:
    """Per-label sums of ``c_i * c_j`` (shape (n, ndim, ndim)): int64 while the largest possible
    total fits, else Python ints."""
    ndim = len(coords)
    largest = max(int(np.abs(c).max()) for c in coords)
    exact = np.int64 if coords[0].size * largest * largest < _INT64_SAFE else object
    products = np.empty((starts.size, ndim, ndim), exact)
    for i in range(ndim):
        for j in range(i, ndim):
            ci, cj = coords[i].astype(exact), coords[j].astype(exact)
            products[:, i, j] = products[:, j, i] = np.add.reduceat(ci * cj, starts)
    return products


def _exposed_faces(padded: np.ndarray, shape: tuple[int, ...], index: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-label faces (shape (n, ndim)) between the voxels ``index`` and a differing neighbour."""
    ndim = len(shape)
    faces = np.empty((starts.size, ndim), np.int64)
    core = padded[(slice(1, -1),) * ndim].reshape(-1)[index]
    for axis in range(ndim):
        exposed = np.zeros(index.size, np.int64)
        for shift in (0, 2):
            sl = tuple(slice(shift, shift + shape[axis]) if a == axis else slice(1, -1) for a in range(ndim))
            exposed += padded[sl].reshape(-1)[index] != core
        faces[:, axis] = np.add.reduceat(exposed, starts)
    return faces


def _padded(lab: np.ndarray, off: np.ndarray, context: np.ndarray | None, context_offset: Sequence[int] | None) -> np.ndarray:
    """``lab`` with one voxel of margin per side: the neighbours' labels from `context` where it
    has them, -1 (no label) outside the volume."""
    padded = np.full(tuple(s + 2 for s in lab.shape), -1, np.int64)
    if context is None:
        padded[(slice(1, -1),) * lab.ndim] = lab
        return padded
    ctx = np.asarray(context)
    coff = np.asarray(context_offset if context_offset is not None else (), dtype=np.int64)
    if ctx.ndim != lab.ndim or coff.shape != (lab.ndim,):
        raise ValueError(f"`context` ({ctx.ndim} axes) and `context_offset` {tuple(coff.tolist())} must match "
                         f"the {lab.ndim} axes of `labels`")
    before = off - coff
    after = coff + np.asarray(ctx.shape) - (off + np.asarray(lab.shape))
    if not (((before == 0) | (before == 1)).all() and ((after == 0) | (after == 1)).all()):
        raise ValueError(f"`context` at {tuple(coff.tolist())} of shape {ctx.shape} must hold the block at "
                         f"{tuple(off.tolist())} of shape {lab.shape} with at most one voxel of margin per side")
    inner = tuple(slice(int(b), int(b) + s) for b, s in zip(before, lab.shape, strict=True))
    if not np.array_equal(ctx[inner], lab):
        raise ValueError("`context` does not hold `labels` at `offset`")
    padded[tuple(slice(1 - int(b), 1 - int(b) + s) for b, s in zip(before, ctx.shape, strict=True))] = ctx
    return padded


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
        total = _exact_total(reduce, [p.channels[name].sum for p in parts])
        channels[name] = ChannelPartial(
            reduce(np.minimum, [p.channels[name].min for p in parts]),
            reduce(np.maximum, [p.channels[name].max for p in parts]),
            total,
        )
    products = _exact_total(reduce, [p.coord_products for p in parts])
    faces = _exact_total(reduce, [p.faces for p in parts])
    return PartialFeatures(uniq, count, coord_sum, bbox_min, bbox_max, channels, products, faces)


def _exact_total(reduce: Any, sums: list[np.ndarray | None]) -> Any:
    """Sum of partial sums by label (None if a part lacks them); int64 partial sums that could
    overflow when added are added again as Python ints."""
    if any(s is None for s in sums):
        return None
    arrays = [s for s in sums if s is not None]
    total = reduce(np.add, arrays)
    if total.dtype == np.int64 and total.size:
        bound = reduce(np.add, [np.abs(s.astype(np.float64)) for s in arrays])
        if bound.max() >= _INT64_SAFE:
            total = reduce(np.add, [s.astype(object) for s in arrays])
    return total


def _exact_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` as float64, correctly rounded also for Python-int sums."""
    if numerator.dtype == object:
        return np.array([int(a) / int(b) for a, b in zip(numerator, denominator, strict=False)], dtype=np.float64)
    return numerator / denominator


def parse_voxel_size(value: str | Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """A voxel size per axis from ``"z,y,x"`` (or ``"y,x"`` in 2-D) or a sequence; None stays None.

    Raises
    ------
    ValueError
        If it does not hold `ndim` positive finite numbers.
    """
    if value is None:
        return None
    items = str(value).split(",") if isinstance(value, str) else list(value)
    try:
        sizes = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        sizes = ()
    if len(sizes) != ndim or not all(np.isfinite(v) and v > 0 for v in sizes):
        axes = ",".join(_AXES.get(ndim, ("?",) * ndim))
        raise ValueError(f"voxel size {value!r} must be {ndim} positive numbers ({axes}) for a {ndim}-D image")
    return sizes


def covariance(part: PartialFeatures, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Per-object covariance of the voxel coordinates, shape (n, ndim, ndim), from the exact
    integer central moments ``n * sum(c_i c_j) - sum(c_i) sum(c_j)`` (one rounding each), scaled
    by ``voxel_size[i] * voxel_size[j]`` if given.

    Raises
    ------
    ValueError
        If the part has no coordinate products (built without them).
    """
    if part.coord_products is None:
        raise ValueError("this part has no coordinate products; build it with partial_features")
    n = part.count
    cov: np.ndarray | None = None
    if part.coord_products.dtype == np.int64 and n.size:
        # fast path: every term fits in 2**52, so float64 holds the integers exactly
        big = float(np.max(np.abs(part.coord_products).astype(np.float64) * n[:, None, None]))
        if big < 2.0**52 and float(np.max(np.abs(part.coord_sum).astype(np.float64))) ** 2 < 2.0**52:
            s1 = part.coord_sum
            moments = (n[:, None, None] * part.coord_products - s1[:, :, None] * s1[:, None, :]).astype(np.float64)
            cov = moments / (n.astype(np.float64) ** 2)[:, None, None]
    if cov is None:
        no, s1 = n.astype(object), part.coord_sum.astype(object)
        exact = no[:, None, None] * part.coord_products.astype(object) - s1[:, :, None] * s1[:, None, :]
        cov = (exact / (no * no)[:, None, None]).astype(np.float64) if n.size else np.zeros((0,) + exact.shape[1:])
    if voxel_size is not None:
        sp = np.asarray(voxel_size, np.float64)
        cov = cov * sp[:, None] * sp[None, :]
    return cov


def inertia_eigvals(part: PartialFeatures, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Eigenvalues of each object's inertia tensor (``trace(C) I - C`` of the covariance C), in
    decreasing order and clipped at 0, shape (n, ndim): ``inertia_tensor_eigvals`` of regionprops."""
    cov = covariance(part, voxel_size)
    ndim = part.ndim
    tensor = np.trace(cov, axis1=1, axis2=2)[:, None, None] * np.eye(ndim) - cov
    return np.clip(np.linalg.eigvalsh(tensor)[:, ::-1], 0, None) if len(part) else np.zeros((0, ndim))


def _shape_columns(part: PartialFeatures, voxel_size: Sequence[float] | None) -> dict[str, np.ndarray]:
    """Axis lengths (voxels, and µm with a voxel size) and the dimensionless descriptors (from the
    physical moments when the voxel size is known)."""
    columns: dict[str, np.ndarray] = {}
    ndim = part.ndim

    def lengths(ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if ndim == 2:
            return 4 * np.sqrt(ev[:, 0]), 4 * np.sqrt(ev[:, -1])
        major = np.sqrt(10 * np.clip(ev[:, 0] + ev[:, 1] - ev[:, 2], 0, None))
        return major, np.sqrt(10 * np.clip(-ev[:, 0] + ev[:, 1] + ev[:, 2], 0, None))

    columns["axis_major_length"], columns["axis_minor_length"] = lengths(inertia_eigvals(part))
    if voxel_size is not None:
        columns["axis_major_length_um"], columns["axis_minor_length_um"] = lengths(inertia_eigvals(part, voxel_size))
    ev = inertia_eigvals(part, voxel_size)
    lam = np.clip(np.linalg.eigvalsh(covariance(part, voxel_size))[:, ::-1], 0, None) if len(part) else np.zeros((0, ndim))
    with np.errstate(divide="ignore", invalid="ignore"):
        if ndim == 2:
            ratio = ev[:, 1] / np.where(ev[:, 0] > 0, ev[:, 0], 1)
            columns["eccentricity"] = np.where(ev[:, 0] > 0, np.sqrt(np.clip(1 - ratio, 0, None)), 0.0)
        columns["elongation"] = np.where(lam[:, 1] > 0, np.sqrt(lam[:, 0] / lam[:, 1]), np.nan)
        if ndim == 3:
            columns["flatness"] = np.where(lam[:, 2] > 0, np.sqrt(lam[:, 1] / lam[:, 2]), np.nan)
    return columns


def _face_columns(faces: np.ndarray, sizes: Sequence[float] | None) -> dict[str, np.ndarray]:
    """Exposed faces, and with a voxel size the surface area (3-D) or perimeter (2-D) they make."""
    ndim = faces.shape[1]
    columns = {"exposed_faces": faces.sum(axis=1)}
    if sizes is not None:
        face_area = np.array([np.prod([s for j, s in enumerate(sizes) if j != k]) for k in range(ndim)])
        columns["surface_area_um2" if ndim == 3 else "perimeter_um"] = faces @ face_area
    return columns


def features_table(
    part: PartialFeatures, *, time_point: int | None = None, voxel_size: Sequence[float] | None = None
) -> pd.DataFrame:
    """One row per object: area, centroid, bounding box, shape and intensity statistics.

    Parameters
    ----------
    part : PartialFeatures
        Statistics of the whole image, usually from :func:`merge_partials`.
    time_point : int, optional
        If given, added as a ``time_point`` column.
    voxel_size : sequence of float, optional
        Physical size of a voxel per axis, (z, y, x) or (y, x), in µm: adds the physical columns.

    Returns
    -------
    pandas.DataFrame
        Sorted by label, with columns ``label``, ``area`` (voxels), with a voxel size
        ``volume_um3`` (3-D) or ``area_um2`` (2-D), ``centroid_{ax}`` (voxels), with a voxel size
        ``centroid_{ax}_um``, then ``bbox_min_{ax}``, ``bbox_max_{ax}`` for ``ax`` in (z, y, x)
        (3-D) or (y, x) (2-D); if the part has moments, ``axis_major_length``,
        ``axis_minor_length`` (voxels, as regionprops), with a voxel size their ``_um`` twins,
        ``eccentricity`` (2-D), ``elongation`` (sqrt of the largest over the second largest
        covariance eigenvalue), ``flatness`` (3-D, second largest over smallest); these three
        are computed in physical space when the voxel size is known; if the part has face
        counts, ``exposed_faces`` and with a voxel size ``surface_area_um2`` (3-D) or
        ``perimeter_um`` (2-D); then per channel ``{ch}_min``, ``{ch}_max``, ``{ch}_mean``,
        ``{ch}_sum``, then ``time_point`` if given. Minima and maxima keep the intensity dtype;
        means are float64; sums are float64 for float channels and int64 (or Python ints) for
        integer channels.

    Raises
    ------
    ValueError
        If `time_point` is not an integer or `voxel_size` is not one positive number per axis.

    Examples
    --------
    >>> part = partial_features(np.array([[1, 1, 0], [0, 2, 2]]), {"gfp": np.ones((2, 3))})
    >>> table = features_table(part, time_point=3)
    >>> table[["label", "area", "centroid_x", "gfp_sum"]].values.tolist()
    [[1.0, 2.0, 0.5, 2.0], [2.0, 2.0, 1.5, 2.0]]
    >>> features_table(part, voxel_size=(0.5, 0.25))[["area_um2", "perimeter_um"]].values.tolist()
    [[0.25, 2.0], [0.25, 2.0]]
    """
    if time_point is not None and not isinstance(time_point, (int, np.integer)):
        raise ValueError(f"`time_point` must be an integer, got {time_point!r}")
    sizes = parse_voxel_size(voxel_size, part.ndim)
    axes = _AXES[part.ndim]
    count = part.count
    columns: dict[str, np.ndarray] = {"label": part.labels, "area": count}
    if sizes is not None:
        columns["volume_um3" if part.ndim == 3 else "area_um2"] = count * float(np.prod(sizes))
    for i, ax in enumerate(axes):
        columns[f"centroid_{ax}"] = part.coord_sum[:, i] / count
    if sizes is not None:
        for i, ax in enumerate(axes):
            columns[f"centroid_{ax}_um"] = part.coord_sum[:, i] / count * sizes[i]
    for i, ax in enumerate(axes):
        columns[f"bbox_min_{ax}"] = part.bbox_min[:, i]
    for i, ax in enumerate(axes):
        columns[f"bbox_max_{ax}"] = part.bbox_max[:, i]
    if part.coord_products is not None:
        columns.update(_shape_columns(part, sizes))
    if part.faces is not None:
        columns.update(_face_columns(part.faces, sizes))
    for name, stats in part.channels.items():
        columns[f"{name}_min"] = stats.min
        columns[f"{name}_max"] = stats.max
        columns[f"{name}_mean"] = _exact_divide(stats.sum, count)
        columns[f"{name}_sum"] = stats.sum
    table = pd.DataFrame(columns)
    if time_point is not None:
        table["time_point"] = np.int64(time_point)
    return table
