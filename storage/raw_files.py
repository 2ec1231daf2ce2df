"""Multi-dimensional raw files: the volumes inside an OME-TIFF, ImageJ hyperstack, multi-series
TIFF or vendor file (CZI, LIF, ND2), one per position, time point and channel.

The naming rule (see :mod:`storage.raw_layout`): in a sample folder, a file whose name carries
no ``_c<N>_t<N>`` is a *multi-dimensional file* when it is an OME-TIFF (``.ome.tif``), a vendor
file, is named ``<name>_p<N>`` (position ``N``), or holds a T or C axis or several series. It
holds every channel and time point of its sample (its C and T axes; a file without them is
channel 0, time point 0); several series (scenes) are positions 0, 1, ...; a ``_p<N>`` file holds
one position. Each volume is addressed as ``file#series=S&t=T&c=C`` (only the keys the file
needs; see :mod:`storage.volume_select`). Only headers are read, never pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tierflow.storage.errors import InvalidInputError, TierflowError
from tierflow.storage.image_meta import leading_axes
from tierflow.storage.tiff_check import check_tiff
from tierflow.storage.vendor_volumes import VENDOR_SUFFIXES
from tierflow.storage.volume_select import VolumeSelector
from tierflow.storage.volumes import open_volume

__all__ = ["FileVolume", "file_volumes", "is_multi_dim_name", "position_of"]

_TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
_POSITION = re.compile(r"^.*?[_-]p(?P<position>\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class FileVolume:
    """One volume of a multi-dimensional file: its selector, position, channel, time point,
    shape (``zyx`` or ``yx``), dtype and physical metadata."""

    selector: VolumeSelector
    position: int | None
    channel: int
    time_point: int
    shape: tuple[int, ...]
    dtype: str
    voxel_size: tuple[float | None, ...]
    unit: str | None
    channel_name: str | None
    leading: str
    """The file's own non-spatial axes (``"tc"``, ``"c"``, ``""``)."""


def _stem(name: str) -> str:
    lower = name.lower()
    for suffix in (*_TIFF_SUFFIXES, *VENDOR_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def position_of(name: str) -> int | None:
    """``3`` for ``"well_p3.ome.tif"`` (``_p<N>`` or ``-p<N>`` before the suffix); else None."""
    match = _POSITION.match(_stem(name))
    return int(match["position"]) if match else None


def is_multi_dim_name(name: str) -> bool:
    """Whether the name alone makes a file multi-dimensional (OME-TIFF, vendor file, ``_p<N>``)."""
    lower = name.lower()
    return lower.endswith((".ome.tif", ".ome.tiff", *VENDOR_SUFFIXES)) or position_of(name) is not None


def _series_count(path: Path) -> int:
    if path.name.lower().endswith(VENDOR_SUFFIXES):
        from tierflow.storage.vendor_volumes import _bioio

        try:
            return max(1, len(_bioio().BioImage(path).scenes))
        except TierflowError:
            raise
        except Exception as exc:  # noqa: BLE001 - bioio's readers raise many types
            raise InvalidInputError(f"{path} cannot be read by bioio ({type(exc).__name__}: {exc})",
                                    hint="check the file, and that the reader for it is installed") from None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.series)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InvalidInputError(f"{path} cannot be opened as TIFF ({type(exc).__name__}: {exc})",
                                hint="copy or export it again from the instrument") from None


def file_volumes(path: str | Path) -> list[FileVolume]:
    """Every volume inside a raw file, by position, time point and channel (headers only).

    Raises
    ------
    InvalidInputError
        If the file cannot be read (damaged, truncated), a ``_p<N>`` file holds several series,
        or it has an axis other than T, C, Z, Y, X; the message names the file.
    TierflowError
        A vendor file without the ``formats`` extra installed.
    """
    path = Path(path)
    count = _series_count(path)
    named = position_of(path.name)
    if named is not None and count > 1:
        raise InvalidInputError(f"{path} is named as position {named} (_p{named}) but holds {count} series",
                                hint="a _p<N> file holds one position: rename it without _p<N> to read its series as positions "
                                     "0, 1, ..., or save one position per file")
    vendor = path.name.lower().endswith(VENDOR_SUFFIXES)
    found: list[FileVolume] = []
    for index in range(count):
        series = index if count > 1 else None
        if not vendor:
            check_tiff(path, series)
        volume = open_volume(str(path) + VolumeSelector(series=series).suffix())
        axes = volume.axes
        lead = axes[: leading_axes(axes)]
        spatial = axes[len(lead):]
        if set(lead) - {"t", "c"} or len(spatial) < 2:
            raise InvalidInputError(f"{path}: axes {axes!r} (shape {tuple(volume.shape)}); tierflow reads time, channel and 2-D or "
                                    "3-D space", hint="export the image as OME-TIFF with axes TCZYX")
        size = dict(zip(axes, volume.shape, strict=True))
        meta = volume.metadata
        voxel = meta.voxel_size(spatial)
        units = {meta.units.get(a) for a in spatial} - {None}
        unit = next(iter(units)) if len(units) == 1 else None
        names = meta.channel_names
        position = named if named is not None else series
        for t in range(size.get("t", 1)):
            for c in range(size.get("c", 1)):
                found.append(FileVolume(
                    selector=VolumeSelector(series, t if "t" in size else None, c if "c" in size else None),
                    position=position, channel=c, time_point=t, shape=tuple(int(size[a]) for a in spatial),
                    dtype=str(np.dtype(volume.dtype)), voxel_size=voxel, unit=unit,
                    channel_name=(names[c] or None) if c < len(names) else None, leading=lead))
    if not found:
        raise TierflowError(f"{path} holds no image")
    return found
