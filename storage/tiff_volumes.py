"""TIFF files as volumes: tifffile's series and axes, read page by page.

A TIFF is read as tifffile sees it: its series (one per OME-TIFF image or position; choose one
with ``file.tif#series=N``) and that series' axes, reordered into ``tczyx`` order (ImageJ's
``TZCYX``, an RGB page's samples as ``c``). A plain 2-D TIFF stays ``yx``; a stack of pages is
``zyx``; an OME-TIFF or ImageJ hyperstack keeps its ``t``, ``c``, ``z``. A read of a region
decodes only the pages of its time points, channels and z-slices.

Physical metadata comes from the OME-XML (``PhysicalSizeX/Y/Z`` and units, ``TimeIncrement``,
channel names) or the ImageJ description (``spacing``, ``unit``, ``finterval``, the X/Y
resolution tags).
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.storage.errors import InvalidInputError
from tierflow.storage.geometry import Roi
from tierflow.storage.image_meta import AXIS_ORDER, ImageMetadata
from tierflow.storage.tiff_check import check_tiff, read_tiff_page
from tierflow.storage.volume_select import split_selector

__all__ = ["TiffVolume", "split_series", "tiff_axes"]

_AXIS_NAMES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Q": "z", "I": "z", "Y": "y", "X": "x"}
"""tifffile's axis codes as tierflow names them: samples (RGB) are channels; a stack of pages
with no named axis (``Q``, ``I``) is z."""


def split_series(text: str) -> tuple[str, int | None]:
    """``("a.ome.tif", 2)`` from ``"a.ome.tif#series=2"`` (or ``"a.ome.tif#series=2&t=1&c=0"``: the
    time point and channel are :func:`storage.volumes.open_volume`'s); ``(text, None)`` without
    a selector."""
    path, selector = split_selector(text)
    return path, selector.series


def tiff_axes(path: Path, codes: str, shape: tuple[int, ...]) -> list[str | None]:
    """tierflow's axis name for each of tifffile's axis ``codes`` (None: a length-1 axis dropped).

    Raises
    ------
    InvalidInputError
        For an axis tierflow has no name for (of length > 1), or two axes of one name.
    """
    names: list[str | None] = []
    for code, size in zip(codes.upper(), shape, strict=True):
        name = _AXIS_NAMES.get(code)
        if name is None and size > 1:
            raise InvalidInputError(f"{path}: axis {code!r} of the series' axes {codes!r} (shape {shape}) is not one of T, C, Z, Y, X",
                                    hint="export the image with time, channel and z as T, C, Z (e.g. as OME-TIFF)")
        names.append(name)
    for name in set(names) - {None}:
        axes = [i for i, n in enumerate(names) if n == name]
        long = [i for i in axes if shape[i] > 1]
        if len(long) > 1:
            clash = " and ".join(codes[i] for i in long)
            raise InvalidInputError(f"{path}: the series' axes {codes!r} (shape {shape}) have {clash}, both read as {name!r}",
                                    hint="export the image with one axis per T, C, Z (e.g. as OME-TIFF)")
        keep = long[0] if long else axes[-1]
        for i in axes:
            if i != keep:
                names[i] = None
    return names


@dataclass
class TiffVolume:
    """One series of a TIFF, read page by page (never the whole file)."""

    path: Path
    uri: str
    series: int | None = None
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        import tifffile

        header = check_tiff(self.path, self.series)
        self.dtype = header.dtype
        index = self.series or 0
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[index]
            codes, shape = series.axes, tuple(int(n) for n in series.shape)
            page_codes = series.keyframe.axes
            self.metadata = _metadata(tif, index, series)
        if not codes.endswith(page_codes) or len(page_codes) > len(codes):
            raise InvalidInputError(f"{self.path}: the series' axes {codes!r} do not end with its pages' axes {page_codes!r}",
                                    hint="export the image as OME-TIFF or as an ImageJ hyperstack")
        names = tiff_axes(self.path, codes, shape)
        self._names, self._stored_shape = names, shape
        self._page_from = len(codes) - len(page_codes)  # series axes before this one select a page
        kept = [n for n in names if n is not None]
        self.axes = "".join(a for a in AXIS_ORDER if a in kept)
        size = {n: s for n, s in zip(names, shape, strict=True) if n is not None}
        self.shape = tuple(size[a] for a in self.axes)
        page_axes = {n for n in names[self._page_from:] if n is not None}
        self.chunks = tuple(size[a] if a in page_axes else 1 for a in self.axes)
        if not self.axes or self.axes[-1] != "x":
            raise InvalidInputError(f"{self.path}: the series' axes {codes!r} hold no x axis", hint="export the image as OME-TIFF")

    @property
    def uri_series(self) -> str:
        return self.uri if self.series is None else f"{self.uri}#series={self.series}"

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` (axes ``self.axes``), decoding only the pages it covers."""
        import tifffile

        out = np.empty(roi.shape, dtype=self.dtype)
        where = dict(zip(self.axes, zip(roi.offset, roi.shape, strict=True), strict=True))
        leading = list(zip(self._names[: self._page_from], self._stored_shape[: self._page_from], strict=True))
        page_names = [n for n in self._names[self._page_from:] if n is not None]
        order = sorted(range(len(page_names)), key=lambda i: AXIS_ORDER.index(page_names[i]))
        page_axes = [page_names[i] for i in order]
        ranges = [range(where[n][0], where[n][0] + where[n][1]) if n is not None else range(1) for n, _ in leading]
        with tifffile.TiffFile(self.path) as tif:
            for position in itertools.product(*ranges):
                page_index = int(np.ravel_multi_index(position, [s for _, s in leading])) if leading else 0
                page = read_tiff_page(tif, self.path, page_index, self.series or 0)
                page = page.reshape([s for n, s in zip(self._names[self._page_from:], self._stored_shape[self._page_from:], strict=True)
                                     if n is not None]).transpose(order)
                page = page[tuple(slice(where[a][0], where[a][0] + where[a][1]) for a in page_axes)]
                at = {n: p - where[n][0] for (n, _), p in zip(leading, position, strict=True) if n is not None}
                out[tuple(at[a] if a in at else slice(None) for a in self.axes)] = page
        return out


def _metadata(tif: Any, index: int, series: Any) -> ImageMetadata:
    """Physical metadata of series ``index`` from the OME-XML or the ImageJ description."""
    try:
        if tif.is_ome and tif.ome_metadata:
            return _ome_metadata(tif.ome_metadata, index)
        if tif.is_imagej and tif.imagej_metadata:
            return _imagej_metadata(tif.imagej_metadata, series.keyframe)
    except (ET.ParseError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return ImageMetadata()  # metadata is a help, never a reason to refuse the pixels
    return ImageMetadata()


def _ome_metadata(xml: str, index: int) -> ImageMetadata:
    """Voxel sizes, units, time increment and channel names of OME-XML image ``index``."""
    root = ET.fromstring(xml)
    images = [e for e in root if e.tag.endswith("}Image") or e.tag == "Image"]
    if index >= len(images):
        return ImageMetadata()
    pixels = next((e for e in images[index] if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return ImageMetadata()
    scale, units = {}, {}
    for axis in "xyz":
        value = pixels.get(f"PhysicalSize{axis.upper()}")
        if value is not None:
            scale[axis] = float(value)
            units[axis] = pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")
    if pixels.get("TimeIncrement") is not None:
        scale["t"] = float(pixels.get("TimeIncrement"))
        units["t"] = pixels.get("TimeIncrementUnit", "s")
    channels = tuple(e.get("Name", "") for e in pixels if e.tag.endswith("Channel"))
    return ImageMetadata(scale, units, channels if any(channels) else ())


def _imagej_metadata(meta: dict[str, Any], page: Any) -> ImageMetadata:
    """Voxel sizes (``spacing`` for z, the resolution tags for x and y), unit and frame interval."""
    scale, units = {}, {}
    unit = str(meta.get("unit") or "")
    unit = {"micron": "µm", "um": "µm", "\\u00B5m": "µm"}.get(unit, unit)
    for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
        if tag in page.tags:
            numerator, denominator = page.tags[tag].value
            if numerator and denominator and (numerator, denominator) != (1, 1):
                scale[axis] = denominator / numerator
                units[axis] = unit or "pixel"
    if meta.get("spacing"):
        scale["z"], units["z"] = float(meta["spacing"]), unit or "pixel"
    if meta.get("finterval"):
        scale["t"], units["t"] = float(meta["finterval"]), "s"
    names = meta.get("Labels") if isinstance(meta.get("Labels"), list) and meta.get("channels") == len(meta.get("Labels")) else ()
    return ImageMetadata(scale, units, tuple(map(str, names or ())))

