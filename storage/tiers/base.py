"""The storage-tier interface: what every backend (POSIX path, S3 bucket) offers.

A tier stores objects under relative keys (``snapshots/ds/abc/s1/c0_t000.tif``). Arrays are
key prefixes (a zarr store is a folder of chunk objects). Backends declare capabilities instead
of callers asking ``isinstance``:

``write_once``
    existing keys can never be overwritten or deleted through tierflow (Tier 1);
``read_only``
    no writes at all;
``supports_conditional_put``
    the backend refuses an overwrite atomically on its own (``O_EXCL``/``link`` on POSIX,
    ``If-None-Match: *`` on S3 single-part uploads).
"""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tierflow.storage.errors import IntegrityError, ObjectNotFoundError, TierError

__all__ = ["HashingReader", "Leftover", "ObjectInfo", "Tier", "hash_file"]

COPY_BUFFER = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What a tier knows about one object."""

    key: str
    size: int
    mtime: datetime | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Leftover:
    """Debris of an interrupted write that holds no stored object: an unfinished multipart
    upload, or a write-once claim that is no longer needed.

    Attributes
    ----------
    kind
        ``"multipart-upload"`` or ``"claim"``.
    key
        The tier key the debris belongs to.
    uri
        Where it is (an upload's URI carries its upload id).
    bytes
        Storage it holds (the parts of an upload; a claim's few bytes).
    age_seconds
        Time since the upload was started or the claim written.
    reason
        Why it may be cleared.
    upload_id
        The multipart upload's id (uploads only).
    """

    kind: str
    key: str
    uri: str
    bytes: int
    age_seconds: float
    reason: str
    upload_id: str | None = None


class HashingReader(io.RawIOBase):
    """Wrap a readable stream, computing sha256 and counting bytes as they are read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if data:
            self._hash.update(data)
            self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def hexdigest(self) -> str:
        """sha256 of everything read so far."""
        return self._hash.hexdigest()


def hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of a local file (streamed)."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as handle:
        while chunk := handle.read(COPY_BUFFER):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Tier(ABC):
    """One storage tier (abstract). See the module docstring for the capabilities.

    Parameters
    ----------
    name
        The tier's role: ``source``, ``output``, ``scratch`` or ``ephemeral``.
    write_once
        Refuse to overwrite or delete existing keys.
    """

    read_only: bool = False
    supports_conditional_put: bool = False

    def __init__(self, name: str, *, write_once: bool = False) -> None:
        self.name = name
        self.write_once = write_once

    # -- addressing ------------------------------------------------------------------------

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """The URI of a key (``file:///...`` or ``s3://bucket/prefix/key``)."""

    @abstractmethod
    def key_of(self, uri: str) -> str:
        """The key of a URI on this tier (inverse of :meth:`uri`).

        Raises
        ------
        TierError
            If the URI is not on this tier.
        """

    # -- writing ---------------------------------------------------------------------------

    @abstractmethod
    def put_stream(
        self, key: str, stream: IO[bytes], *, expected_sha256: str | None = None, size_hint: int | None = None
    ) -> ObjectInfo:
        """Store a stream at ``key``, computing sha256 on the way.

        Parameters
        ----------
        key
            Relative key.
        stream
            Readable binary stream; read once, front to back.
        expected_sha256
            If given, the write fails (and leaves nothing) unless the bytes hash to it.
        size_hint
            Total size if known (chooses single-part vs multipart upload on S3).

        Returns
        -------
        ObjectInfo
            With ``sha256`` of the bytes written.

        Raises
        ------
        ObjectExistsError
            On a write-once tier when ``key`` exists.
        IntegrityError
            When ``expected_sha256`` does not match.
        """

    def put_file(self, key: str, path: str | Path, *, expected_sha256: str | None = None) -> ObjectInfo:
        """Store a local file at ``key`` (streamed, never read whole into memory)."""
        path = Path(path)
        with path.open("rb") as handle:
            return self.put_stream(key, handle, expected_sha256=expected_sha256, size_hint=path.stat().st_size)

    def put_bytes(self, key: str, data: bytes, *, expected_sha256: str | None = None) -> ObjectInfo:
        """Store ``data`` at ``key``."""
        return self.put_stream(key, io.BytesIO(data), expected_sha256=expected_sha256, size_hint=len(data))

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object (refused on write-once tiers). Missing keys are not an error."""

    @abstractmethod
    def discard_unverified(self, key: str) -> None:
        """Remove an object this process just wrote and failed to verify (allowed on write-once
        tiers: it was never recorded, so nothing that was promised is lost)."""

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        """Delete every object under ``prefix``; returns (objects, bytes)."""
        count = size = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            count += 1
            size += info.size
        return count, size

    # -- reading ---------------------------------------------------------------------------

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[IO[bytes]]:
        """Open ``key`` for streaming reads (a context manager).

        Raises
        ------
        ObjectNotFoundError
            If there is no object at ``key``.
        """

    def get_bytes(self, key: str) -> bytes:
        """The whole object (for small objects such as manifests)."""
        with self.open_read(key) as handle:
            return handle.read()

    def download(self, key: str, path: str | Path) -> ObjectInfo:
        """Copy an object to a local file, returning its size and sha256."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.open_read(key) as source, path.open("wb") as target:
            reader = HashingReader(source)
            while chunk := reader.read(COPY_BUFFER):
                target.write(chunk)
        return ObjectInfo(key, reader.bytes_read, sha256=reader.hexdigest())

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, modification time and (if stored) sha256 of one object.

        Raises
        ------
        ObjectNotFoundError
            If there is no object at ``key``.
        """

    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder prefix: ``a/b`` lists ``a/b/...``)."""

    def sha256(self, key: str) -> str:
        """Read the object back and hash it."""
        with self.open_read(key) as handle:
            reader = HashingReader(handle)
            while reader.read(COPY_BUFFER):
                pass
        return reader.hexdigest()

    def verify(self, key: str, expected_sha256: str) -> None:
        """Re-read ``key`` and raise :class:`IntegrityError` unless it hashes to ``expected_sha256``."""
        actual = self.sha256(key)
        if actual != expected_sha256:
            raise IntegrityError(
                f"{self.uri(key)} hashes to {actual[:16]}..., expected {expected_sha256[:16]}...",
                hint="the copy is corrupt; it was not recorded",
            )

    def leftovers(self, now: datetime) -> list[Leftover]:
        """Debris of interrupted writes old enough to clear (none on backends that leave none)."""
        return []

    def clear_leftover(self, leftover: Leftover) -> None:
        """Clear one item of :meth:`leftovers` (abort the upload, delete the claim)."""
        raise TierError(f"tier {self.name} ({self.uri()}) leaves no debris to clear: {leftover.uri}")

    def usage(self, prefix: str = "") -> int:
        """Bytes stored under ``prefix``."""
        return sum(info.size for info in self.list(prefix))

    # -- copying ---------------------------------------------------------------------------

    def copy_to(self, key: str, target: Tier, target_key: str, *, expected_sha256: str | None = None) -> ObjectInfo:
        """Stream ``key`` from this tier to ``target_key`` on ``target`` (any backend pair)."""
        if target.read_only:
            raise TierError(f"tier {target.name} ({target.uri()}) is read-only")
        info = self.stat(key)
        with self.open_read(key) as source:
            return target.put_stream(target_key, source, expected_sha256=expected_sha256, size_hint=info.size)

    def copy(self, key: str, target_key: str) -> ObjectInfo:
        """Copy an object within this tier."""
        return self.copy_to(key, self, target_key)

    # -- arrays ----------------------------------------------------------------------------

    @abstractmethod
    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        """A zarr v3 store rooted at ``prefix`` (``zarr.open_array(store=...)`` works on it)."""

    def __repr__(self) -> str:
        flags = "write-once" if self.write_once else "read-write"
        return f"{type(self).__name__}({self.name!r}, {self.uri()!r}, {flags})"
