"""Preflight: will a planned block-wise run fit in RAM and on the scratch disk?

The estimate comes from array headers only (zarr ``zarr.json``, TIFF tags), never from pixels,
so it costs milliseconds even for terabyte volumes. :func:`preflight_check` compares it with what
is available and answers at three levels:

* estimate <= 80 % of what is available: silent (``"ok"``);
* 80-100 %: a :class:`PreflightWarning` with the figures (``"warn"``);
* over 100 %: :class:`~storage.errors.InsufficientMemoryError` (a ``MemoryError``) for RAM or
  :class:`~storage.errors.InsufficientDiskError` (an ``OSError``) for disk, saying what to
  change (``"over"``); with ``force=True`` a warning instead.

The model is deliberately simple and errs on the generous side; see :func:`estimate_resources`.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import zarr
from numpy.typing import DTypeLike

from tierflow.storage.errors import InsufficientDiskError, InsufficientMemoryError, TierflowError
from tierflow.storage.raw_layout import read_stack_header

__all__ = [
    "WARN_FRACTION", "ArrayHeader", "PreflightReport", "PreflightWarning", "ResourceEstimate",
    "estimate_resources", "format_bytes", "preflight_check", "read_header",
]

WARN_FRACTION = 0.8
"""Above this fraction of what is available, preflight warns; above 1.0 it refuses."""

Level = Literal["ok", "warn", "over"]


class PreflightWarning(ResourceWarning):
    """A planned run is close to (or, forced, over) the RAM or disk available."""


@dataclass(frozen=True)
class ArrayHeader:
    """What preflight needs to know about one input array, read from its header.

    ``chunks`` is the shape stored as one object (the shard shape for a sharded zarr array),
    ``None`` for TIFF. ``source`` names where the header came from, for messages.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.chunks is not None:
            object.__setattr__(self, "chunks", tuple(int(n) for n in self.chunks))

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the whole array in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize


def _zarr_header(array: zarr.Array, source: str) -> ArrayHeader:
    return ArrayHeader(array.shape, np.dtype(array.dtype), array.shards or array.chunks, source)


def read_header(source: str | os.PathLike[str] | zarr.Array) -> ArrayHeader:
    """Read shape, dtype and chunking from an array's metadata, never its pixels.

    Parameters
    ----------
    source
        An opened zarr array, or a local path to a zarr array folder (``zarr.json``), a TIFF
        stack (``.tif``/``.tiff``/``.ome.tif``) or a folder of 2-D TIFF slices.

    Returns
    -------
    ArrayHeader
        TIFF volumes as (z, y, x) (see :func:`storage.raw_layout.read_stack_header`).

    Raises
    ------
    TierflowError
        If the path does not exist, is a zarr group, or is neither zarr nor TIFF; the message
        names the path. (:class:`~storage.errors.RawLayoutError` for an unreadable TIFF.)

    Examples
    --------
    >>> read_header("/scratch/run42/denoised.zarr")  # doctest: +SKIP
    ArrayHeader(shape=(120, 2048, 2048), dtype=dtype('float32'), chunks=(64, 256, 256), ...)
    """
    if isinstance(source, zarr.Array):
        return _zarr_header(source, str(source.store_path))
    path = Path(source)
    if not path.exists():
        raise TierflowError(f"array source {path} does not exist")
    if path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zarray").is_file()):
        try:
            array = zarr.open_array(path, mode="r")  # reads the metadata document only
        except Exception as exc:
            raise TierflowError(
                f"{path} is not a zarr array ({type(exc).__name__}: {exc})"
            ) from exc
        return _zarr_header(array, str(path))
    if path.is_dir() or path.name.lower().endswith((".tif", ".tiff")):
        shape, dtype = read_stack_header(path)
        return ArrayHeader(shape, dtype, None, str(path))
    raise TierflowError(
        f"{path} is neither a zarr array (no zarr.json), a TIFF stack nor a folder of TIFF slices"
    )


@dataclass(frozen=True)
class ResourceEstimate:
    """Estimated peak RAM and disk of a planned run, with the figures that make them up."""

    peak_ram_bytes: int
    disk_bytes: int
    breakdown: dict[str, int]


def _per_axis(
    value: int | Sequence[int], ndim: int, what: str, source: str, minimum: int
) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != ndim:
        raise TierflowError(
            f"`{what}` {values} has {len(values)} axes but the array {source} has {ndim}"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise TierflowError(f"`{what}` {values} must hold integers >= {minimum}")
    return tuple(int(v) for v in values)


def _at_least(value: int, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise TierflowError(f"`{what}` is {value!r}; it must be an integer >= {minimum}")
    return int(value)


def estimate_resources(
    headers: Iterable[ArrayHeader],
    *,
    block_shape: Sequence[int],
    halo: int | Sequence[int] = 0,
    workers: int = 1,
    bytes_per_voxel_working: int = 4,
    output_dtype: DTypeLike | None = None,
    n_outputs: int = 1,
    copies_in_flight: int = 3,
) -> ResourceEstimate:
    """Estimate peak RAM and output disk of a block-wise run over ``headers``.

    The model, per input array of shape ``S`` and input dtype size ``i``::

        block  = min(block_shape, S)                    per axis
        read   = min(block + 2 * halo, S)               per axis: the block with its halo
        input  = prod(read) * i                         the block as read
        work   = prod(read) * bytes_per_voxel_working   the working copy (float32: 4)
        output = prod(block) * o * n_outputs            o: output dtype size (default i)
        per_worker = (input + work + output) * copies_in_flight

    ``peak_ram_bytes = workers * max(per_worker over arrays)``: a worker holds blocks of one
    array at a time, and ``copies_in_flight`` is the slack for blocks being read, computed
    and written at once (plus temporaries). ``disk_bytes = sum(prod(S) * o * n_outputs)``: the
    outputs uncompressed, an upper bound (compression usually makes them smaller). The model
    ignores the Python/Dask base footprint and the inputs' own cache.

    Parameters
    ----------
    headers
        One :class:`ArrayHeader` per input array.
    block_shape
        The write block, one entry per array axis.
    halo
        Overlap read on each side of a block: one int for all axes, or one per axis.
    workers
        Blocks processed at once.
    bytes_per_voxel_working
        Bytes per voxel of the working copy (4 for float32, 8 for float64).
    output_dtype
        dtype of the outputs; ``None`` for each input's own dtype.
    n_outputs
        Output arrays written per input array.
    copies_in_flight
        Slack factor on a worker's block memory.

    Returns
    -------
    ResourceEstimate
        With ``breakdown`` keys ``input_block_bytes``, ``working_block_bytes``,
        ``output_block_bytes``, ``per_worker_bytes`` (all for the largest array),
        ``workers``, ``copies_in_flight``, ``peak_ram_bytes`` and ``disk_bytes``.

    Raises
    ------
    TierflowError
        If no headers are given, or ``block_shape`` / ``halo`` do not match an array's axes,
        or a count is out of bounds; the message names the argument and array.

    Examples
    --------
    >>> h = ArrayHeader((100, 1000, 1000), "uint16", None, "a.tif")
    >>> est = estimate_resources([h], block_shape=(50, 500, 500), workers=2)
    >>> est.peak_ram_bytes == 2 * 3 * 50 * 500 * 500 * (2 + 4 + 2)
    True
    """
    headers = list(headers)
    if not headers:
        raise TierflowError("preflight needs at least one array header; none were given")
    workers = _at_least(workers, 1, "workers")
    copies = _at_least(copies_in_flight, 1, "copies_in_flight")
    n_outputs = _at_least(n_outputs, 1, "n_outputs")
    working = _at_least(bytes_per_voxel_working, 0, "bytes_per_voxel_working")
    largest: dict[str, int] = {"per_worker_bytes": -1}
    disk = 0
    for header in headers:
        ndim = len(header.shape)
        block = _per_axis(block_shape, ndim, "block_shape", header.source, 1)
        halos = _per_axis(halo, ndim, "halo", header.source, 0)
        block = tuple(min(b, s) for b, s in zip(block, header.shape, strict=False))
        read = tuple(min(b + 2 * h, s) for b, h, s in zip(block, halos, header.shape, strict=False))
        out_size = np.dtype(output_dtype if output_dtype is not None else header.dtype).itemsize
        parts = {
            "input_block_bytes": math.prod(read) * header.dtype.itemsize,
            "working_block_bytes": math.prod(read) * working,
            "output_block_bytes": math.prod(block) * out_size * n_outputs,
        }
        parts["per_worker_bytes"] = sum(parts.values()) * copies
        if parts["per_worker_bytes"] > largest["per_worker_bytes"]:
            largest = parts
        disk += math.prod(header.shape) * out_size * n_outputs
    peak = workers * largest["per_worker_bytes"]
    breakdown = {**largest, "workers": workers, "copies_in_flight": copies}
    breakdown |= {"peak_ram_bytes": peak, "disk_bytes": disk}
    return ResourceEstimate(peak_ram_bytes=peak, disk_bytes=disk, breakdown=breakdown)


def format_bytes(n: float) -> str:
    """Bytes as GiB (from 1 GiB up) or MiB, with two decimals.

    Examples
    --------
    >>> format_bytes(3 * 2**29), format_bytes(5 * 2**19)
    ('1.50 GiB', '2.50 MiB')
    """
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.2f} MiB"


def _ratio(needed: int, available: int) -> float:
    if available <= 0:
        return math.inf if needed > 0 else 0.0
    return needed / available


def _level(ratio: float) -> Level:
    return "ok" if ratio <= WARN_FRACTION else ("warn" if ratio <= 1.0 else "over")


@dataclass(frozen=True)
class PreflightReport:
    """The outcome of :func:`preflight_check`; ``str()`` gives a short readable report.

    ``scratch_dir`` is the existing folder whose free space was measured; ``forced`` is true
    when the run is over budget and goes ahead because of ``force=True``.
    """

    estimate: ResourceEstimate
    available_ram: int
    available_disk: int
    ram_ratio: float
    disk_ratio: float
    ram_level: Level
    disk_level: Level
    scratch_dir: Path
    forced: bool = False

    @property
    def ok(self) -> bool:
        """Both RAM and disk at most 80 % of what is available."""
        return self.ram_level == "ok" and self.disk_level == "ok"

    def ram_text(self) -> str:
        """One line on RAM: estimate, available, ratio and how the estimate is made up."""
        b = self.estimate.breakdown
        return (
            f"peak RAM {format_bytes(self.estimate.peak_ram_bytes)} estimated of "
            f"{format_bytes(self.available_ram)} available "
            f"({self.ram_ratio:.0%}, {self.ram_level}): "
            f"{b['workers']} worker(s) x {format_bytes(b['per_worker_bytes'])} "
            f"({b['copies_in_flight']} block copies in flight)"
        )

    def disk_text(self) -> str:
        """One line on disk: output size (uncompressed upper bound), free space, ratio."""
        return (
            f"output {format_bytes(self.estimate.disk_bytes)} estimated (uncompressed upper bound) "
            f"of {format_bytes(self.available_disk)} free under {self.scratch_dir} "
            f"({self.disk_ratio:.0%}, {self.disk_level})"
        )

    def __str__(self) -> str:
        lines = [f"preflight: {self.ram_text()}", f"preflight: {self.disk_text()}"]
        if self.forced:
            lines.append("preflight: over budget, running anyway because force=True")
        return "\n".join(lines)


_RAM_HINT = "use a smaller block_shape, a smaller halo or fewer workers, or more free memory"
_DISK_HINT = "choose another scratch root with more free space, free space there, or fewer outputs"


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _as_headers(items: Any) -> list[ArrayHeader]:
    if isinstance(items, (str, os.PathLike, ArrayHeader, zarr.Array)):
        items = [items]
    return [item if isinstance(item, ArrayHeader) else read_header(item) for item in items]


def preflight_check(
    headers_or_sources: Any,
    *,
    block_shape: Sequence[int],
    halo: int | Sequence[int] = 0,
    workers: int = 1,
    scratch_dir: str | os.PathLike[str],
    force: bool = False,
    available_ram: int | None = None,
    available_disk: int | None = None,
    **estimate_kwargs: Any,
) -> PreflightReport:
    """Refuse (or warn about) a run whose estimated RAM or disk exceeds what is available.

    Parameters
    ----------
    headers_or_sources
        One or several :class:`ArrayHeader`, zarr arrays or paths (see :func:`read_header`).
    block_shape, halo, workers
        As for :func:`estimate_resources`.
    scratch_dir
        Where the outputs will be written; it may not exist yet (its nearest existing parent
        is measured).
    force
        Warn instead of raising when over budget.
    available_ram, available_disk
        Bytes available; default ``psutil.virtual_memory().available`` and
        ``shutil.disk_usage(scratch_dir).free``.
    **estimate_kwargs
        ``bytes_per_voxel_working``, ``output_dtype``, ``n_outputs``, ``copies_in_flight``.

    Returns
    -------
    PreflightReport
        Estimate, available figures, ratios and a level (``"ok"``, ``"warn"``, ``"over"``)
        for each of RAM and disk.

    Raises
    ------
    InsufficientMemoryError
        (a ``MemoryError``) if peak RAM exceeds the available RAM and ``force`` is false.
    InsufficientDiskError
        (an ``OSError``) if the outputs exceed the free disk and ``force`` is false.

    Warns
    -----
    PreflightWarning
        At 80-100 % of what is available, or over 100 % with ``force=True``.

    Examples
    --------
    >>> report = preflight_check("raw/embryo1/embryo1_c0_t000.tif", block_shape=(64, 512, 512),
    ...                          halo=8, workers=4, scratch_dir="/scratch/run42")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    headers = _as_headers(headers_or_sources)
    estimate = estimate_resources(
        headers, block_shape=block_shape, halo=halo, workers=workers, **estimate_kwargs
    )
    measured_at = _nearest_existing(Path(scratch_dir))
    if available_ram is None:
        available_ram = int(psutil.virtual_memory().available)
    if available_disk is None:
        available_disk = int(shutil.disk_usage(measured_at).free)
    ram_ratio = _ratio(estimate.peak_ram_bytes, available_ram)
    disk_ratio = _ratio(estimate.disk_bytes, available_disk)
    levels = (_level(ram_ratio), _level(disk_ratio))
    over = [level == "over" for level in levels]
    report = PreflightReport(
        estimate, int(available_ram), int(available_disk), ram_ratio, disk_ratio, *levels,
        scratch_dir=measured_at, forced=bool(force) and any(over),
    )
    if any(over) and not force:
        lines = [text for text, bad in zip((report.ram_text(), report.disk_text()), over, strict=False) if bad]
        message = "preflight refused the run: " + "\npreflight refused the run: ".join(lines)
        if over[0]:
            hint = _RAM_HINT + ("; " + _DISK_HINT if over[1] else "") + "; or pass force=True"
            raise InsufficientMemoryError(message, hint=hint)
        raise InsufficientDiskError(message, hint=_DISK_HINT + "; or pass force=True")
    for level, text, hint in (
        (report.ram_level, report.ram_text(), _RAM_HINT),
        (report.disk_level, report.disk_text(), _DISK_HINT),
    ):
        if level == "warn":
            advice = f"above {WARN_FRACTION:.0%}: {hint}"
        elif level == "over":
            advice = "running anyway because force=True"
        else:
            continue
        warnings.warn(PreflightWarning(f"preflight: {text}; {advice}"), stacklevel=2)
    return report
