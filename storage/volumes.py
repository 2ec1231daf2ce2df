"""Reading volumes block by block, whatever they are stored as: one loader registry.

A :class:`Volume` is a lazily read array: ``shape``, ``dtype``, native ``chunks``, ``axes`` (an
ordered subset of ``tczyx``: ``yx`` for a 2-D image, ``zyx`` for a stack, ``tczyx`` for a
hyperstack), physical ``metadata`` (:class:`~tierflow.storage.image_meta.ImageMetadata`) and
``read(roi)``, which reads only that region. Loaders are chosen by data type:

``zarr``
    a zarr v2 or v3 array, or an OME-Zarr 0.4/0.5 image (its full-resolution level), local or
    (arrays) on any tier (see :mod:`storage.zarr_volumes`);
``tiff``
    one TIFF: plain 2-D, a multi-page stack, an OME-TIFF or ImageJ hyperstack, through
    tifffile's series and axes, read page by page: a block reads only its pages
    (``file.tif#series=N`` picks one series of several; see :mod:`storage.tiff_volumes`);
    ``file.ome.tif#t=1&c=0`` (with any loader) picks one time point and channel: a volume of
    the remaining axes (see :mod:`storage.volume_select`);
``vendor``
    CZI, ND2, LIF through bioio, with the ``formats`` extra (see :mod:`storage.vendor_volumes`);
``tiff-slices``
    a folder of 2-D TIFFs sorted by name (z order), read slice by slice;
``read-function``
    any ``read(path) -> ndarray`` registered for a set of file extensions (whole file read:
    for small inputs only).

Register more with :func:`register_loader` or :func:`register_read_function`.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tierflow.storage.errors import InvalidInputError, TierflowError
from tierflow.storage.geometry import Roi
from tierflow.storage.image_meta import ImageMetadata, default_axes
from tierflow.storage.tiff_check import check_tiff, read_tiff_page
from tierflow.storage.tiff_volumes import TiffVolume, split_series
from tierflow.storage.volume_select import SelectedVolume, VolumeSelector, split_selector
from tierflow.storage.vendor_volumes import VENDOR_SUFFIXES, open_vendor
from tierflow.storage.zarr_volumes import ZarrVolume, damaged_chunks, is_zarr_path, open_zarr_path

__all__ = [
    "ImageMetadata",
    "SelectedVolume",
    "TiffVolume",
    "Volume",
    "ZarrVolume",
    "damaged_chunks",
    "fingerprint_path",
    "open_volume",
    "register_loader",
    "register_read_function",
]


class Volume(Protocol):
    """A lazily read array, its axes (an ordered subset of ``tczyx``) and physical metadata."""

    uri: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    axes: str
    metadata: ImageMetadata

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` (a copy, C-ordered)."""
        ...


@dataclass
class TiffSlicesVolume:
    """A folder of 2-D TIFF slices, sorted by file name (= z order)."""

    folder: Path
    uri: str
    axes: str = "zyx"
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        self.files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith("."))
        if not self.files:
            raise TierflowError(f"{self.folder}: no .tif slices in this folder")
        first = check_tiff(self.files[0])
        self.dtype, plane = first.dtype, first.shape[-2:]
        for file in self.files:
            header = check_tiff(file) if file != self.files[0] else first
            if header.shape[-2:] != plane or header.dtype != self.dtype or math.prod(header.shape) != math.prod(plane):
                raise InvalidInputError(
                    f"{file}: slice of shape {header.shape} {header.dtype}; every slice of {self.folder} must be one 2-D plane "
                    f"of the first's shape and dtype ({plane} {self.dtype}, from {self.files[0].name})",
                    hint="crop or pad the slices to one shape, or move the odd file out of the folder")
        self.shape = (len(self.files), *plane)
        self.chunks = (1, *plane)

    def read(self, roi: Roi) -> np.ndarray:
        import tifffile

        z, y, x = roi.slices
        out = np.empty(roi.shape, dtype=self.dtype)
        for i, index in enumerate(range(z.start, z.stop)):
            with tifffile.TiffFile(self.files[index]) as tif:
                out[i] = read_tiff_page(tif, self.files[index], 0)[y, x]
        return out


@dataclass
class InMemoryVolume:
    """A whole array from a read function (for small inputs)."""

    data: np.ndarray
    uri: str
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    @property
    def axes(self) -> str:
        return default_axes(self.data.ndim)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def read(self, roi: Roi) -> np.ndarray:
        return np.array(self.data[roi.slices])


Matcher = Callable[[str], bool]
Opener = Callable[[str], Volume]
_LOADERS: list[tuple[str, Matcher, Opener]] = []


def register_loader(name: str, matches: Matcher, opener: Opener, *, first: bool = False) -> None:
    """Add a loader: ``matches(path)`` says whether it handles a path, ``opener(path)`` opens it."""
    entry = (name, matches, opener)
    _LOADERS.insert(0, entry) if first else _LOADERS.append(entry)


def register_read_function(read: Callable[[str], np.ndarray], extensions: Sequence[str], *, name: str | None = None) -> None:
    """Register ``read(path) -> ndarray`` for files ending in one of ``extensions``."""
    suffixes = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    register_loader(
        name or f"read-function{suffixes}",
        lambda path: path.lower().endswith(suffixes) and os.path.isfile(path),
        lambda path: InMemoryVolume(np.asarray(read(path)), Path(path).resolve().as_uri()),
    )


def _is_tiff(text: str) -> bool:
    path, _ = split_series(text)
    return path.lower().endswith((".tif", ".tiff")) and os.path.isfile(path)


def _is_slices(path: str) -> bool:
    return os.path.isdir(path) and any(name.lower().endswith((".tif", ".tiff")) for name in os.listdir(path))


def _open_tiff(text: str) -> Volume:
    path, series = split_series(text)
    return TiffVolume(Path(path), Path(path).resolve().as_uri(), series)


def _is_vendor(text: str) -> bool:
    path, _ = split_series(text)
    return path.lower().endswith(VENDOR_SUFFIXES) and os.path.exists(path)


register_loader("zarr", is_zarr_path, open_zarr_path)
register_loader("tiff", _is_tiff, _open_tiff)
register_loader("vendor", _is_vendor, open_vendor)
register_loader("tiff-slices", _is_slices, lambda p: TiffSlicesVolume(Path(p), Path(p).resolve().as_uri()))
register_read_function(np.load, (".npy",), name="numpy")


def open_volume(source: str | os.PathLike[str], *, loader: str | None = None) -> Volume:
    """Open a local zarr array, TIFF stack, slice folder or registered file type.

    Parameters
    ----------
    source
        A local path, optionally with a selector: ``#series=N`` (a position), ``#t=T&c=C`` (one
        time point and channel; see :mod:`storage.volume_select`).
    loader
        Force a loader by name (see the module docstring); default: the first that matches.

    Raises
    ------
    TierflowError
        If the path does not exist or no loader handles it.
    """
    text = os.fspath(source)
    base, selector = split_selector(text)
    if not os.path.exists(base):
        raise TierflowError(f"input {text} does not exist", hint="check the path (relative paths start at the current folder)")
    path = base + VolumeSelector(series=selector.series).suffix()
    for name, matches, opener in _LOADERS:
        if (loader is None and matches(path)) or loader == name:
            volume = opener(path)
            return SelectedVolume(volume, selector, base) if selector.fixes_axes else volume
    known = ", ".join(name for name, _, _ in _LOADERS)
    raise TierflowError(
        f"no loader reads {path}",
        hint=f"give a zarr array or OME-Zarr image folder, a .tif file, a folder of .tif slices, or a .czi/.nd2/.lif file "
             f"(loaders: {known})",
    )


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """A cheap content id of a local file or folder: sha256 over (relative path, size, mtime).

    Any write changes it; identical copies made at different times differ (use an artifact's
    or snapshot's sha256 as the content id when one is known).
    """
    root = Path(path)
    digest = hashlib.sha256()
    entries = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for entry in entries:
        stat = entry.stat()
        relative = entry.name if entry == root else entry.relative_to(root).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
