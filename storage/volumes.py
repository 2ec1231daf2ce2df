"""Reading volumes block by block, whatever they are stored as: one loader registry.

A :class:`Volume` is a lazily read array: ``shape``, ``dtype``, native ``chunks`` and
``read(roi)``, which reads only that region. Loaders are chosen by data type:

``zarr``
    a zarr v3 array on any tier (local path, or a store from ``Tier.zarr_store``);
``tiff-stack``
    one multi-page TIFF (z-slices as pages), read page by page: a block reads only its pages;
``tiff-slices``
    a folder of 2-D TIFFs sorted by name (z order), read slice by slice;
``read-function``
    any ``read(path) -> ndarray`` registered for a set of file extensions (whole file read:
    for small inputs only).

Register more with :func:`register_loader` or :func:`register_read_function`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tierflow.storage.errors import InvalidInputError, TierflowError
from tierflow.storage.geometry import Roi
from tierflow.storage.tiff_check import check_tiff, read_tiff_page

__all__ = [
    "Volume",
    "ZarrVolume",
    "damaged_chunks",
    "fingerprint_path",
    "open_volume",
    "register_loader",
    "register_read_function",
]


class Volume(Protocol):
    """A lazily read array."""

    uri: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi`` (a copy, C-ordered)."""
        ...


@dataclass
class ZarrVolume:
    """A zarr v3 array."""

    array: Any
    uri: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        shards = getattr(self.array, "shards", None)
        return tuple(shards or self.array.chunks)

    def read(self, roi: Roi, *, cache: Any = None, cache_key: Any = None) -> np.ndarray:
        """The voxels of ``roi``; with a :class:`storage.chunk_cache.ChunkCache`, chunk by chunk
        through it (for halo reads shared between neighbouring batches)."""
        try:
            if cache is not None:
                from tierflow.storage.chunk_cache import read_through_cache

                return read_through_cache(self.array, roi, cache, (cache_key, self.uri))
            return np.asarray(self.array[roi.slices])
        except _DECODE_ERRORS as exc:
            bad = damaged_chunks(self.array, roi)
            if not bad:
                raise
            raise InvalidInputError(
                f"input {self.uri}: chunk(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} cannot be decoded "
                f"({type(exc).__name__}: {exc}): the input is damaged, repair or re-create it",
                hint=f"the input array is damaged: repair or re-create {self.uri} (chunk {bad[0]}), then run again",
            ) from None


_DECODE_ERRORS = (RuntimeError, ValueError, EOFError, zlib.error)
"""What codecs raise for damaged bytes (not ``OSError``: an unreachable store is not a damaged chunk)."""


def damaged_chunks(array: Any, roi: Roi) -> list[str]:
    """The store keys of the chunks (shards) of a zarr ``array`` under ``roi`` that cannot be decoded."""
    grid = tuple(getattr(array, "shards", None) or array.chunks)
    encoding = getattr(array.metadata, "chunk_key_encoding", None)
    bad = []
    for index in itertools.product(*(range(o // c, (e - 1) // c + 1) for o, e, c in zip(roi.offset, roi.end, grid, strict=True))):
        try:
            array[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, grid, strict=True))]
        except _DECODE_ERRORS:
            bad.append(encoding.encode_chunk_key(index) if encoding is not None else ".".join(map(str, index)))
    return bad


@dataclass
class TiffStackVolume:
    """A multi-page TIFF read page by page (never the whole file)."""

    path: Path
    uri: str

    def __post_init__(self) -> None:
        header = check_tiff(self.path)
        shape, self.dtype = header.shape, header.dtype
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise TierflowError(f"{self.path}: TIFF series has shape {shape} (axes {header.axes!r}); tierflow reads (z, y, x) stacks",
                                hint="save one channel and time point per file, z-slices as pages")
        self.shape = shape
        self.chunks = (1, *shape[1:])

    def read(self, roi: Roi) -> np.ndarray:
        import tifffile

        z, y, x = roi.slices
        out = np.empty(roi.shape, dtype=self.dtype)
        with tifffile.TiffFile(self.path) as tif:
            for i, page in enumerate(range(z.start, z.stop)):
                out[i] = read_tiff_page(tif, self.path, page)[y, x]
        return out


@dataclass
class TiffSlicesVolume:
    """A folder of 2-D TIFF slices, sorted by file name (= z order)."""

    folder: Path
    uri: str

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


def _is_zarr(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "zarr.json"))


def _open_zarr(path: str) -> Volume:
    import zarr

    return ZarrVolume(zarr.open_array(path, mode="r"), Path(path).resolve().as_uri())


def _is_tiff(path: str) -> bool:
    return path.lower().endswith((".tif", ".tiff")) and os.path.isfile(path)


def _is_slices(path: str) -> bool:
    return os.path.isdir(path) and any(name.lower().endswith((".tif", ".tiff")) for name in os.listdir(path))


register_loader("zarr", _is_zarr, _open_zarr)
register_loader("tiff-stack", _is_tiff, lambda p: TiffStackVolume(Path(p), Path(p).resolve().as_uri()))
register_loader("tiff-slices", _is_slices, lambda p: TiffSlicesVolume(Path(p), Path(p).resolve().as_uri()))
register_read_function(np.load, (".npy",), name="numpy")


def open_volume(source: str | os.PathLike[str], *, loader: str | None = None) -> Volume:
    """Open a local zarr array, TIFF stack, slice folder or registered file type.

    Parameters
    ----------
    source
        A local path.
    loader
        Force a loader by name (see the module docstring); default: the first that matches.

    Raises
    ------
    TierflowError
        If the path does not exist or no loader handles it.
    """
    path = os.fspath(source)
    if not os.path.exists(path):
        raise TierflowError(f"input {path} does not exist", hint="check the path (relative paths start at the current folder)")
    for name, matches, opener in _LOADERS:
        if (loader is None and matches(path)) or loader == name:
            return opener(path)
    known = ", ".join(name for name, _, _ in _LOADERS)
    raise TierflowError(
        f"no loader reads {path}",
        hint=f"give a zarr array folder, a .tif stack or a folder of .tif slices (loaders: {known})",
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
