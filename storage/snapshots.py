"""Immutable raw snapshots on Tier 1.

A snapshot of dataset ``D`` is ``snapshots/D/<snapshot_id>/<relative path>...`` plus a
``manifest.json`` (relative path, bytes, sha256, media type of every file and, for a raw
image file, the volumes inside it: :class:`VolumeRecord`) written **last**: a
snapshot without its manifest is incomplete, one with it is committed. ``snapshot_id`` is derived
from the content (paths, sizes, hashes), so ingesting the same files again finds the committed
snapshot and writes nothing, while different bytes under an existing id are refused.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tierflow.storage.errors import ObjectExistsError, SnapshotConflictError, TierflowError
from tierflow.storage.tiers.base import Tier, hash_file
from tierflow.storage.tiers.download import download_verified
from tierflow.storage.tiers.names import check_key, check_name

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "ManifestEntry",
    "VolumeRecord",
    "build_manifest",
    "commit_manifest",
    "fetch_snapshot_path",
    "hash_file",
    "list_raw_files",
    "read_manifest",
    "snapshot_prefix",
    "upload_snapshot_file",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tierflow-snapshot/1"
_IGNORED = {"Thumbs.db", "desktop.ini"}
mimetypes.add_type("image/tiff", ".tif")
mimetypes.add_type("image/tiff", ".tiff")


@dataclass(frozen=True)
class VolumeRecord:
    """One 3-D (or 2-D) volume inside a raw file, as ingest found it.

    ``selector`` picks it out of the file (``"t=1&c=0"``, ``"series=2"``; ``""``: the whole
    file is this one volume; see :mod:`storage.volume_select`); ``position`` is None for a
    sample of one position; ``shape`` is ``(z, y, x)`` or ``(y, x)``; ``voxel_size`` matches it
    (None where the file does not say), in ``unit``.
    """

    sample: str
    channel: int
    time_point: int
    shape: tuple[int, ...]
    dtype: str
    selector: str = ""
    position: int | None = None
    voxel_size: tuple[float | None, ...] = ()
    unit: str | None = None
    channel_name: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeRecord:
        values = dict(data)
        values["shape"] = tuple(values.get("shape", ()))
        values["voxel_size"] = tuple(values.get("voxel_size") or ())
        return cls(**values)


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a snapshot; ``volumes``: the volumes inside a raw image file (empty for other
    files, slice files and manifests written before ingest recorded them)."""

    relative_path: str
    bytes: int
    sha256: str
    media_type: str | None = None
    volumes: tuple[VolumeRecord, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The entry as ``manifest.json`` holds it (``volumes`` only when there are any)."""
        data = asdict(self)
        if not self.volumes:
            del data["volumes"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        values = dict(data)
        values["volumes"] = tuple(VolumeRecord.from_dict(v) for v in values.get("volumes") or ())
        return cls(**values)


@dataclass(frozen=True)
class Manifest:
    """The content of a snapshot; its id is a hash of the file list."""

    dataset: str
    files: tuple[ManifestEntry, ...]

    @property
    def snapshot_id(self) -> str:
        """16 hex digits of sha256 over the sorted ``path, bytes, sha256`` of every file."""
        digest = hashlib.sha256()
        for entry in sorted(self.files, key=lambda e: e.relative_path):
            digest.update(f"{entry.relative_path}\0{entry.bytes}\0{entry.sha256}\n".encode())
        return digest.hexdigest()[:16]

    def volumes(self) -> list[tuple[str, VolumeRecord]]:
        """Every recorded volume with its file's relative path, in file order."""
        return [(entry.relative_path, volume) for entry in sorted(self.files, key=lambda e: e.relative_path)
                for volume in entry.volumes]

    @property
    def total_bytes(self) -> int:
        """Bytes of all files."""
        return sum(entry.bytes for entry in self.files)

    @property
    def prefix(self) -> str:
        """Where the snapshot lives on Tier 1."""
        return snapshot_prefix(self.dataset, self.snapshot_id)

    def to_json(self) -> bytes:
        """The ``manifest.json`` document."""
        document: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "dataset": self.dataset,
            "snapshot_id": self.snapshot_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "files": [entry.to_dict() for entry in sorted(self.files, key=lambda e: e.relative_path)],
        }
        return (json.dumps(document, indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "manifest.json") -> Manifest:
        """Parse a ``manifest.json`` document.

        Raises
        ------
        TierflowError
            If the document is not a tierflow snapshot manifest.
        """
        try:
            document = json.loads(data)
            if document.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format is {document.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            files = tuple(ManifestEntry.from_dict(entry) for entry in document["files"])
            return cls(document["dataset"], files)
        except (ValueError, KeyError, TypeError) as exc:
            raise TierflowError(f"{source} is not a tierflow snapshot manifest: {exc}") from None

    def same_content(self, other: Manifest) -> bool:
        """Whether two manifests list the same files with the same sizes and hashes."""
        key = lambda m: sorted((e.relative_path, e.bytes, e.sha256) for e in m.files)  # noqa: E731
        return key(self) == key(other)


def snapshot_prefix(dataset: str, snapshot_id: str) -> str:
    """``snapshots/<dataset>/<snapshot_id>``, after checking both names are safe."""
    return f"snapshots/{check_name(dataset, 'dataset')}/{check_name(snapshot_id, 'snapshot id')}"


def list_raw_files(raw_dir: Path) -> list[str]:
    """Relative paths of every file under ``raw_dir`` (hidden files and OS junk left out).

    Raises
    ------
    TierflowError
        If ``raw_dir`` is not a folder, or a symlink points outside it.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise TierflowError(f"raw folder {raw_dir} does not exist or is not a folder")
    found = []
    for folder, subfolders, files in os.walk(raw_dir, followlinks=False):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name in _IGNORED:
                continue
            path = Path(folder) / name
            if path.is_symlink() and raw_dir.resolve() not in path.resolve().parents:
                raise TierflowError(f"{path} is a symlink to {path.resolve()}, outside the raw folder")
            found.append(check_key(path.relative_to(raw_dir).as_posix()))
    return found


def build_manifest(
    raw_dir: str | Path, dataset: str, *, relative_paths: Iterable[str] | None = None, workers: int = 4
) -> Manifest:
    """Hash the files of a raw folder into a manifest (sha256 releases the GIL: threads scale).

    Parameters
    ----------
    raw_dir
        The raw folder.
    dataset
        Dataset name (one safe path segment).
    relative_paths
        Files to include; default every file (see :func:`list_raw_files`).
    workers
        Files hashed at once.
    """
    raw_dir = Path(raw_dir)
    check_name(dataset, "dataset")
    paths = list(relative_paths) if relative_paths is not None else list_raw_files(raw_dir)
    if not paths:
        raise TierflowError(f"raw folder {raw_dir} has no files to snapshot")

    def entry(relative: str) -> ManifestEntry:
        size, sha = hash_file(raw_dir / relative)
        return ManifestEntry(relative, size, sha, mimetypes.guess_type(relative)[0])

    with ThreadPoolExecutor(max(1, workers)) as pool:
        entries = tuple(pool.map(entry, paths))
    return Manifest(dataset, entries)


def read_manifest(tier: Tier, dataset: str, snapshot_id: str) -> Manifest | None:
    """The committed manifest of a snapshot, or ``None`` if it is not committed."""
    key = f"{snapshot_prefix(dataset, snapshot_id)}/{MANIFEST_NAME}"
    if not tier.exists(key):
        return None
    return Manifest.from_json(tier.get_bytes(key), source=tier.uri(key))


def upload_snapshot_file(tier: Tier, manifest: Manifest, raw_dir: Path, entry: ManifestEntry) -> Literal["uploaded", "present"]:
    """Put one file of a snapshot on Tier 1 unless an identical copy is there.

    Raises
    ------
    SnapshotConflictError
        If a different object already sits at that key.
    IntegrityError
        If the local file changed since it was hashed.
    """
    key = f"{manifest.prefix}/{entry.relative_path}"
    try:
        tier.put_file(key, Path(raw_dir) / entry.relative_path, expected_sha256=entry.sha256)
        return "uploaded"
    except ObjectExistsError:
        pass
    info = tier.stat(key)
    stored_sha = info.sha256 if info.sha256 else tier.sha256(key)
    if info.size != entry.bytes or stored_sha != entry.sha256:
        raise SnapshotConflictError(
            f"{tier.uri(key)} exists with different content (sha256 {stored_sha[:12]}..., "
            f"new file {entry.sha256[:12]}...)",
            hint="snapshots are immutable: ingest the changed files as a new snapshot",
        )
    return "present"


def commit_manifest(tier: Tier, manifest: Manifest) -> tuple[str, bool]:
    """Write ``manifest.json`` last, making the snapshot complete.

    Returns
    -------
    tuple[str, bool]
        sha256 of the stored manifest and whether this call wrote it (``False``: it was there).

    Raises
    ------
    SnapshotConflictError
        If a manifest with different content is committed under the same id.
    """
    key = f"{manifest.prefix}/{MANIFEST_NAME}"
    existing = read_manifest(tier, manifest.dataset, manifest.snapshot_id)
    if existing is None:
        try:
            document = manifest.to_json()
            tier.put_bytes(key, document)
            return hashlib.sha256(document).hexdigest(), True
        except ObjectExistsError:
            existing = read_manifest(tier, manifest.dataset, manifest.snapshot_id)
    if existing is None or not existing.same_content(manifest):
        raise SnapshotConflictError(
            f"snapshot {manifest.dataset}/{manifest.snapshot_id} is committed with different content",
            hint="snapshots are immutable; this points at tampering on Tier 1 — inspect "
            f"{tier.uri(key)}",
        )
    return hashlib.sha256(tier.get_bytes(key)).hexdigest(), False


def fetch_snapshot_path(tier: Tier, manifest: Manifest, relative: str, local_root: Path) -> Path:
    """A verified local copy of one file, or one folder of files, of a snapshot.

    Every file is downloaded to ``local_root/<relative path>`` unless a copy matching the
    manifest's size and sha256 is there already (see :func:`~storage.tiers.download.download_verified`).

    Returns
    -------
    Path
        ``local_root / relative``.

    Raises
    ------
    TierflowError
        If the manifest lists nothing at ``relative``.
    IntegrityError
        If a file does not download as the manifest records it (the message names the object
        and the snapshot).
    """
    entries = [e for e in manifest.files if e.relative_path == relative or e.relative_path.startswith(relative.rstrip("/") + "/")]
    if not entries:
        raise TierflowError(f"snapshot {manifest.dataset}/{manifest.snapshot_id} lists no file at {relative!r}")
    for entry in entries:
        download_verified(tier, f"{manifest.prefix}/{entry.relative_path}", Path(local_root) / entry.relative_path,
                          size=entry.bytes, sha256=entry.sha256, what=f"snapshot {manifest.dataset}/{manifest.snapshot_id}")
    return Path(local_root) / relative
