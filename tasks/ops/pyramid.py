"""Downsampling kernels for multiscale pyramids: intensities by box mean, labels by mode.

Every kernel here is *block-exact*: applied to a block whose offset along each axis is a
multiple of that axis's factor (and whose shape is a multiple of the factor, except for the
last block along an axis, which may be cut off by the array end), it yields exactly the
corresponding part of the kernel applied to the whole array. So the engine may place the
output of the block at ``offset // factor`` and the concatenation equals the whole-array
result, bit for bit. Windows never straddle two such blocks, so no halo is needed.

Windows start at index 0 of every axis. The last window along an axis whose extent does not
divide by the factor is *cut off*: it holds only the voxels present, and each kernel is
defined on those voxels alone (never on zero padding). The output shape is therefore
``ceil(shape / factors)`` (see :func:`downsampled_shape`).

Dtype policy (:func:`downsample_mean`): window sums are exact (integer accumulators for integer
data). The result is returned in the input dtype unless ``out_dtype`` says otherwise; an integer
result is the mean rounded half to even (as ``np.rint`` of the float64 mean; for 8/16-bit data
in full power-of-two windows it is computed with integer shifts, 2x faster, same values).
Intensities are never rescaled: a uint16 mean of 40000 stays 40000, and an ``out_dtype`` that
cannot hold the rounded means raises instead of clipping.
Label kernels (:func:`downsample_labels`) always return the input dtype and only values that
occur in the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

__all__ = [
    "downsample_labels",
    "downsample_mean",
    "downsampled_shape",
    "pyramid_factors",
]

LabelMethod = Literal["mode", "nearest"]


def _normalise_factors(factors: int | Sequence[int], ndim: int, *, name: str = "factors") -> tuple[int, ...]:
    """``factors`` as one positive int per axis (an int applies to every axis)."""
    if isinstance(factors, (int, np.integer)) and not isinstance(factors, bool):
        out = (int(factors),) * ndim
    else:
        out = tuple(factors)  # type: ignore[arg-type]
        if len(out) != ndim:
            raise ValueError(f"`{name}` {out} has {len(out)} axes but the array has {ndim}")
    for f in out:
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ValueError(f"`{name}` {out} must be positive integers, one per axis")
    return tuple(int(f) for f in out)


def downsampled_shape(shape: Sequence[int], factors: int | Sequence[int]) -> tuple[int, ...]:
    """Shape of an array of ``shape`` downsampled by ``factors``: ``ceil(shape / factors)``.

    Parameters
    ----------
    shape : sequence of int
        Shape of the input, e.g. (z, y, x).
    factors : int or sequence of int
        Downsampling factor per axis (an int applies to every axis).

    Returns
    -------
    tuple of int
        The output shape; a cut-off last window counts as one output voxel.

    Raises
    ------
    ValueError
        If ``factors`` does not have one positive integer per axis, or ``shape`` has a
        negative extent.

    Examples
    --------
    >>> downsampled_shape((37, 101, 77), (2, 2, 2))
    (19, 51, 39)
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"`shape` {shape} has a negative extent")
    f = _normalise_factors(factors, len(shape))
    return tuple(-(-s // k) for s, k in zip(shape, f, strict=True))


def _check_array(image: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim < 1:
        raise ValueError(f"`{name}` must have at least one axis; got a 0-d array")
    return array


def _mean_dtype(in_dtype: np.dtype, out_dtype: DTypeLike | None) -> np.dtype:
    target = in_dtype if out_dtype is None else np.dtype(out_dtype)
    if not (np.issubdtype(target, np.floating) or np.issubdtype(target, np.integer)):
        raise TypeError(f"`out_dtype` {target} is not an integer or floating dtype")
    return target


def _cast_mean(mean: np.ndarray, in_dtype: np.dtype, out_dtype: DTypeLike | None) -> np.ndarray:
    """The one place the dtype policy of :func:`downsample_mean` lives (see module docstring)."""
    target = _mean_dtype(in_dtype, out_dtype)
    if np.issubdtype(target, np.floating):
        return mean.astype(target, copy=False)
    return _cast_rounded(np.rint(mean), in_dtype, target)


def _cast_rounded(rounded: np.ndarray, in_dtype: np.dtype, target: np.dtype) -> np.ndarray:
    """Rounded means as ``target``, refusing values it cannot hold (never clipping)."""
    if rounded.size and not np.can_cast(in_dtype, target, casting="safe"):
        if np.isnan(rounded).any():
            raise ValueError(f"the image holds NaN, which `out_dtype` {target} cannot represent")
        info = np.iinfo(target)
        low, high = rounded.min(), rounded.max()
        if low < info.min or high > info.max:
            raise ValueError(
                f"means span [{low}, {high}], outside the range [{info.min}, {info.max}] of "
                f"`out_dtype` {target}; pick a wider dtype (intensities are never rescaled)"
            )
    return rounded.astype(target)


def downsample_mean(
    image: ArrayLike,
    factors: int | Sequence[int],
    *,
    out_dtype: DTypeLike | None = None,
) -> np.ndarray:
    """Downsample intensities by the mean over each ``factors`` window (a box filter).

    The box mean is the anti-aliasing filter matching the window; windows cut off by the end
    of the array average the voxels present. The kernel is block-exact (module docstring).

    Parameters
    ----------
    image : (Z, Y, X) or (Y, X) array_like of int or float
        Intensities. Any number of axes >= 1 is accepted.
    factors : int or sequence of int
        Window size per axis, e.g. (1, 2, 2) to leave z alone (an int applies to every axis).
    out_dtype : dtype, optional
        Dtype of the result; default the input dtype. Means are computed in float64; an
        integer result is rounded half to even (``np.rint``), a float result is not rounded.
        Values are never rescaled. Pass ``np.float32`` to keep the fractional part of the
        means of integer data.

    Returns
    -------
    ndarray
        Shape ``ceil(image.shape / factors)``, dtype ``out_dtype`` (or the input's).

    Raises
    ------
    TypeError
        If ``image`` is not of an integer or floating dtype, or ``out_dtype`` is neither.
    ValueError
        If ``factors`` does not have one positive integer per axis, or an integer
        ``out_dtype`` cannot hold the means (or NaN).

    Notes
    -----
    int64/uint64 values above 2**53 lose precision in the float64 mean. NaN propagates into
    every window that holds one.

    Examples
    --------
    >>> image = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.uint8)
    >>> downsample_mean(image, (2, 2), out_dtype=np.float32)
    array([[3. , 4.5],
           [7.5, 9. ]], dtype=float32)
    >>> downsample_mean(image, (2, 2))  # 4.5 -> 4 and 7.5 -> 8: half to even
    array([[3, 4],
           [8, 9]], dtype=uint8)
    """
    array = _check_array(image, "image")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(
            f"`image` has dtype {array.dtype}; downsample_mean needs integer or floating "
            "intensities (use downsample_labels for masks and labels)"
        )
    f = _normalise_factors(factors, array.ndim)
    out_shape = downsampled_shape(array.shape, f)
    if array.size == 0:
        return _cast_mean(np.zeros(out_shape, dtype=np.float64), array.dtype, out_dtype)

    window = int(np.prod(f))
    accumulator = _sum_dtype(array.dtype, window)
    target = _mean_dtype(array.dtype, out_dtype)
    whole_windows = all(extent % k == 0 for extent, k in zip(array.shape, f, strict=True))
    if whole_windows and accumulator.itemsize == 4 and np.issubdtype(target, np.integer) and window & (window - 1) == 0:
        sums = array
        for axis, k in enumerate(f):
            if k > 1:
                sums = _window_sums(sums, axis, k, accumulator)
        return _cast_rounded(_rounded_shift_mean(sums, window), array.dtype, target)
    sums = array
    counts = np.ones((1,) * array.ndim, dtype=np.float64)
    for axis, (extent, k) in enumerate(zip(array.shape, f, strict=True)):
        if k == 1:
            continue
        sums = _window_sums(sums, axis, k, accumulator)
        starts = np.arange(0, extent, k)
        per_axis = np.minimum(k, extent - starts).astype(np.float64)
        counts = counts * per_axis.reshape([-1 if a == axis else 1 for a in range(array.ndim)])
    mean = sums.astype(np.float64, copy=False) / counts
    return _cast_mean(mean, array.dtype, out_dtype)


def _sum_dtype(dtype: np.dtype, window: int) -> np.dtype:
    """An exact accumulator: 32-bit integers when the window's sum of 8/16-bit values fits
    (SIMD-friendly, 15x faster than float64 ``reduceat`` on uint16 here), else int64/uint64
    for integers and float64 for floats."""
    if dtype.kind in "iu" and dtype.itemsize <= 2 and window <= 2**15:
        return np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
    if dtype.kind in "iu":
        return np.dtype(np.int64 if dtype.kind == "i" else np.uint64)
    return np.dtype(np.float64)


def _rounded_shift_mean(sums: np.ndarray, window: int) -> np.ndarray:
    """``rint(sums / window)`` (half to even) for a power-of-two ``window``, in place on the
    integer ``sums``: with ``s = q*window + r``, adding ``window/2 - 1`` and then the parity of
    the resulting quotient carries exactly the remainders above one half, and one half when
    ``q`` is odd (floor shifts keep this true for negative sums)."""
    if window == 1:
        return sums
    shift = window.bit_length() - 1
    sums += window // 2 - 1
    sums += (sums >> shift) & 1
    sums >>= shift
    return sums


def _window_sums(array: np.ndarray, axis: int, k: int, accumulator: np.dtype) -> np.ndarray:
    """Sums of consecutive windows of ``k`` along ``axis`` (the last one may be shorter), as
    ``k`` strided additions."""

    def strided(start: int) -> tuple[slice, ...]:
        return tuple(slice(start, None, k) if a == axis else slice(None) for a in range(array.ndim))

    if k > 1 and array.shape[axis] % k == 0:  # whole windows: the first addition makes the sums
        sums = np.add(array[strided(0)], array[strided(1)], dtype=accumulator)
        first = 2
    else:
        sums = array[strided(0)].astype(accumulator)
        first = 1
    for start in range(first, min(k, array.shape[axis])):
        part = array[strided(start)]
        head = tuple(slice(0, part.shape[axis]) if a == axis else slice(None) for a in range(array.ndim))
        sums[head] += part
    return sums


def _mode_nonzero(windows: np.ndarray) -> np.ndarray:
    """Most frequent non-zero value of each row of ``windows`` (N, K); ties -> smaller; else 0.

    Sorting each row puts equal labels in runs; the running length of a run reaches its
    maximum at the run's last element, and ``argmax`` returns the first position with the
    largest count, which belongs to the smallest of the tied labels (rows are ascending).
    """
    n, k = windows.shape
    ordered = np.sort(windows, axis=1)
    position = np.arange(k, dtype=np.min_scalar_type(k))
    is_start = np.empty(ordered.shape, dtype=bool)
    is_start[:, 0] = True
    np.not_equal(ordered[:, 1:], ordered[:, :-1], out=is_start[:, 1:])
    run_start = np.maximum.accumulate(np.where(is_start, position, 0), axis=1)
    run_length = position - run_start + 1
    run_length[ordered == 0] = 0  # background never wins; an all-zero row falls back to 0
    best = np.argmax(run_length, axis=1)
    return ordered[np.arange(n), best]


def downsample_labels(
    labels: ArrayLike,
    factors: int | Sequence[int],
    *,
    method: LabelMethod = "mode",
) -> np.ndarray:
    """Downsample a label image without creating label values (no averaging).

    Parameters
    ----------
    labels : (Z, Y, X) or (Y, X) array_like of int or bool
        Label image; 0 is background. Any number of axes >= 1 is accepted.
    factors : int or sequence of int
        Window size per axis (an int applies to every axis).
    method : {"mode", "nearest"}, optional
        ``"mode"`` (default): the most frequent *non-zero* label of each window, ties broken
        by the smaller label; 0 only if the window is all background. ``"nearest"``: the
        first voxel of each window, ``labels[::fz, ::fy, ::fx]`` (cheaper, may drop objects
        smaller than a window).

    Returns
    -------
    ndarray
        Shape ``ceil(labels.shape / factors)``, the input dtype; every value occurs in
        ``labels``. The kernel is block-exact (module docstring).

    Raises
    ------
    TypeError
        If ``labels`` is not of an integer or bool dtype.
    ValueError
        If ``factors`` does not have one positive integer per axis, or ``method`` is unknown.

    Notes
    -----
    ``"mode"`` is vectorised: each window becomes a row that is sorted and run-length counted.
    It holds about ``prod(factors)`` times the output in rows plus sort and count buffers,
    roughly ``2 * itemsize + 2`` bytes per input voxel for small windows. Cut-off windows are
    padded with background, which the mode ignores, so they count only the voxels present.

    Examples
    --------
    >>> labels = np.array([[0, 5, 7, 7], [5, 0, 7, 3], [0, 0, 0, 4]], dtype=np.uint16)
    >>> downsample_labels(labels, (2, 2))
    array([[5, 7],
           [0, 4]], dtype=uint16)
    >>> downsample_labels(labels, (2, 2), method="nearest")
    array([[0, 7],
           [0, 0]], dtype=uint16)
    """
    array = _check_array(labels, "labels")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"`labels` has dtype {array.dtype}; labels must be integer or bool")
    f = _normalise_factors(factors, array.ndim)
    if method == "nearest":
        return array[tuple(slice(None, None, k) for k in f)].copy()
    if method != "mode":
        raise ValueError(f"`method` {method!r} is not one of 'mode', 'nearest'")

    out_shape = downsampled_shape(array.shape, f)
    if array.size == 0 or all(k == 1 for k in f):
        return array.copy()
    padded_shape = tuple(n * k for n, k in zip(out_shape, f, strict=True))
    if padded_shape != array.shape:
        padded = np.zeros(padded_shape, dtype=array.dtype)
        padded[tuple(slice(0, s) for s in array.shape)] = array
    else:
        padded = array
    # (n0, k0, n1, k1, ...) -> (n0, n1, ..., k0, k1, ...) -> (N, K)
    split = padded.reshape([d for pair in zip(out_shape, f, strict=True) for d in pair])
    ndim = array.ndim
    order = [2 * a for a in range(ndim)] + [2 * a + 1 for a in range(ndim)]
    windows = split.transpose(order).reshape(int(np.prod(out_shape)), int(np.prod(f)))
    return _mode_nonzero(windows).reshape(out_shape)


def pyramid_factors(
    shape: Sequence[int],
    levels: int,
    *,
    factor: int | Sequence[int] = 2,
    min_size: int | Sequence[int] = 1,
    axes_to_skip: Sequence[int] = (),
) -> list[tuple[int, ...]]:
    """Per-level downsampling factors of a pyramid, each relative to the previous level.

    Rule: at each level an axis is downsampled by ``factor`` only while it still holds at
    least ``min_size`` complete windows (``extent // factor >= min_size``), so its extent
    never drops below ``min_size``; otherwise its factor is 1 from then on (its extent no
    longer changes). An axis of extent 1 is never downsampled. Axes in ``axes_to_skip``
    always get 1 (e.g. a thin z stack: ``axes_to_skip=(0,)``, or ``min_size=(16, 1, 1)``).

    Parameters
    ----------
    shape : sequence of int
        Shape of level 0, e.g. (z, y, x).
    levels : int
        Number of levels *including* level 0 (full resolution).
    factor : int or sequence of int, optional
        Factor per axis per level (an int applies to every axis); default 2.
    min_size : int or sequence of int, optional
        Smallest extent per axis a downsampled level may have; default 1.
    axes_to_skip : sequence of int, optional
        Axes (negative indices allowed) that are never downsampled.

    Returns
    -------
    list of tuple of int
        ``levels`` entries; entry 0 is all ones (level 0 is the input), entry ``i`` is the
        factor taking level ``i - 1`` to level ``i``. The cumulative factor of level ``i`` is
        the element-wise product of entries ``0..i``.

    Raises
    ------
    ValueError
        If ``levels`` < 1, ``shape`` has a non-positive extent, ``factor`` or ``min_size``
        has the wrong number of axes or non-positive values, or an axis to skip is out of
        range.

    Examples
    --------
    >>> pyramid_factors((20, 512, 512), 4, min_size=(8, 1, 1))
    [(1, 1, 1), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim < 1 or any(s < 1 for s in shape):
        raise ValueError(f"`shape` {shape} must have at least one axis, all extents >= 1")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise ValueError(f"`levels` must be an integer >= 1 (level 0 included); got {levels!r}")
    step = _normalise_factors(factor, ndim, name="factor")
    smallest = _normalise_factors(min_size, ndim, name="min_size")
    skip = set()
    for axis in axes_to_skip:
        if not -ndim <= int(axis) < ndim:
            raise ValueError(f"`axes_to_skip` holds axis {axis}, out of range for {ndim} axes")
        skip.add(int(axis) % ndim)

    result = [(1,) * ndim]
    current = shape
    for _ in range(1, levels):
        level = tuple(
            k if a not in skip and k > 1 and n // k >= m else 1 for a, (n, k, m) in enumerate(zip(current, step, smallest, strict=True))
        )
        result.append(level)
        current = downsampled_shape(current, level)
    return result
