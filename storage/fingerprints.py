"""What an input looked like when a block read it: per-block fingerprints.

An op's cache key names *which* input it reads (its location, or its content when that is known:
a snapshot file's sha256 from the snapshot manifest, so a byte-identical copy of a snapshot is
recognised); the ledger records, for every block, a fingerprint of the stored pieces that block
read (the zarr chunks or shards under its read ROI, the TIFF slices of its z range). A block is
done only while its fingerprint is unchanged, so repairing one chunk of an input recomputes just
the blocks that read that chunk, and nothing else.

Fingerprints come from metadata only — size and modification time of local files; size, mtime
and (where the tier knows it) sha256 of S3 objects from one listing — never from the pixels, so
they cost a ``stat`` per chunk (see ``benchmarks/run.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tierflow.storage.geometry import Roi
from tierflow.storage.volume_select import SelectedVolume
from tierflow.storage.volumes import TiffSlicesVolume, TiffVolume, Volume, ZarrVolume, fingerprint_path

__all__ = ["InputFingerprint", "combined_block_fingerprint", "input_fingerprint", "snapshot_content_id"]


class InputFingerprint(Protocol):
    """The identity of one input and the fingerprint of any region of it."""

    identity: str
    """Part of the op key: the input's content id when known, else its location."""

    def block(self, roi: Roi) -> str:
        """A fingerprint of what a read of ``roi`` reads ('' when fixed by ``identity``)."""
        ...

    def whole(self) -> str:
        """A fingerprint of the whole input."""
        ...


def _digest(parts: Iterable[str]) -> str:
    hasher = hashlib.blake2b(digest_size=12)
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\n")
    return hasher.hexdigest()


@dataclass
class ContentFingerprint:
    """An input whose content is known (a snapshot file's sha256): nothing to look at."""

    identity: str

    def block(self, roi: Roi) -> str:
        return ""

    def whole(self) -> str:
        return self.identity


@dataclass
class ZarrFingerprint:
    """A zarr array: the stored objects (chunks, or shards when sharded) under a region, plus
    the array's metadata document."""

    identity: str
    array: Any
    stat: Any
    """``stat(object_key) -> str`` ('' when the object is absent: an empty chunk)."""
    _stats: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._grid = tuple(getattr(self.array, "shards", None) or self.array.chunks)
        self._meta = _digest([json.dumps(self.array.metadata.to_dict(), sort_keys=True, default=str)])

    def _object(self, coords: tuple[int, ...]) -> str:
        key = self.array.metadata.encode_chunk_key(coords)
        if key not in self._stats:
            self._stats[key] = self.stat(key)
        return f"{key}={self._stats[key]}"

    def block(self, roi: Roi) -> str:
        ranges = [range(o // g, -(-(o + s) // g)) for o, s, g in zip(roi.offset, roi.shape, self._grid, strict=True)]
        return _digest([self._meta, *(self._object(coords) for coords in itertools.product(*ranges))])

    def whole(self) -> str:
        return self.block(Roi((0,) * len(self.array.shape), tuple(self.array.shape)))


@dataclass
class FilesFingerprint:
    """TIFF slices (one file per z) or a TIFF stack (one file for every z)."""

    identity: str
    files: list[Path]
    per_z: bool

    def block(self, roi: Roi) -> str:
        chosen = self.files[roi.offset[0]: roi.offset[0] + roi.shape[0]] if self.per_z else self.files
        return _digest(_file_stat(path) for path in chosen)

    def whole(self) -> str:
        return _digest(_file_stat(path) for path in self.files)


@dataclass
class PathFingerprint:
    """Any other local input: one fingerprint of the whole path for every block."""

    identity: str
    path: str

    def block(self, roi: Roi) -> str:
        return self.whole()

    def whole(self) -> str:
        return fingerprint_path(self.path)


@dataclass
class SelectedFingerprint:
    """One time point and channel of a file (``file#t=1&c=0``): the file's fingerprint, and the
    selector in the identity (so two volumes of one file never share a cache key)."""

    inner: Any
    volume: SelectedVolume

    @property
    def identity(self) -> str:
        return f"{self.inner.identity}{self.volume.selector.suffix()}"

    def block(self, roi: Roi) -> str:
        return self.inner.block(self.volume.full_roi(roi))

    def whole(self) -> str:
        return f"{self.inner.whole()}{self.volume.selector.suffix()}"


def _stat_text(path: str | os.PathLike[str]) -> str:
    """``size:mtime`` of a local file, '' when it is absent (an empty chunk)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return ""
    return f"{info.st_size}:{info.st_mtime_ns}"


def _file_stat(path: str | os.PathLike[str]) -> str:
    return f"{os.fspath(path)}={_stat_text(path)}"


def snapshot_content_id(path: str | os.PathLike[str]) -> str | None:
    """The content id of a file or slice folder inside a snapshot (``manifest.json`` at the
    snapshot's root lists every file's sha256), or None when ``path`` is not in one or its
    sizes disagree with the manifest (a changed copy is not vouched for)."""
    path = Path(path).resolve()
    for root in list(path.parents)[:4]:
        manifest = root / "manifest.json"
        if not manifest.is_file():
            continue
        try:
            entries = {e["relative_path"]: e for e in json.loads(manifest.read_text()).get("files", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        relative = path.relative_to(root).as_posix()
        chosen = [(r, e) for r, e in entries.items() if r == relative or r.startswith(relative + "/")]
        if not chosen:
            return None
        for relative_path, entry in chosen:
            target = root / relative_path
            if not target.is_file() or target.stat().st_size != int(entry.get("bytes", -1)):
                return None
        return "sha256:" + _digest(f"{r[len(relative):]}={e['sha256']}" for r, e in sorted(chosen))
    return None


def input_fingerprint(volume: Volume, *, location: Any = None) -> InputFingerprint:
    """The fingerprint of an opened input.

    Parameters
    ----------
    volume
        The input as the block engine reads it.
    location
        Its :class:`storage.arrays.ArrayLocation` when it lives on a tier (S3): its stored
        objects are then read from one listing of the tier.
    """
    if isinstance(volume, SelectedVolume):
        return SelectedFingerprint(input_fingerprint(volume.inner, location=location), volume)
    if location is not None and isinstance(volume, ZarrVolume):
        listing = {info.key[len(location.key) + 1:]: f"{info.size}:{info.sha256 or info.mtime}"
                   for info in location.tier.list(location.key)}
        return ZarrFingerprint(location.uri, volume.array, lambda key: listing.get(key, ""))
    if isinstance(volume, ZarrVolume):
        root = Path(volume.uri.removeprefix("file://"))
        return ZarrFingerprint(volume.uri, volume.array, lambda key: _stat_text(root / key))
    if isinstance(volume, TiffSlicesVolume | TiffVolume):
        path = volume.folder if isinstance(volume, TiffSlicesVolume) else volume.path
        content = snapshot_content_id(path)
        series = "" if isinstance(volume, TiffSlicesVolume) or volume.series is None else f"#series={volume.series}"
        if content is not None:
            return ContentFingerprint(content + series)  # one position of a file is not another
        files = list(volume.files) if isinstance(volume, TiffSlicesVolume) else [volume.path]
        return FilesFingerprint(volume.uri + series, files, per_z=isinstance(volume, TiffSlicesVolume))
    return PathFingerprint(volume.uri, volume.uri.removeprefix("file://"))


def combined_block_fingerprint(fingerprints: Mapping[str, InputFingerprint], roi: Roi) -> str:
    """One fingerprint of a block's read ROI over every input it reads (main, extras, mask)."""
    return _digest(f"{name}:{fp.block(roi)}" for name, fp in sorted(fingerprints.items()))
