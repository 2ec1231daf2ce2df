"""A tier on a POSIX file system: local disk or a CephFS mount.

Writes are atomic: bytes go to a hidden temporary file in the target folder, are flushed and
fsynced, then moved into place with ``rename`` (or, on a write-once tier, ``link``, which fails
if the name exists — so two writers can never both win, and a reader never sees half a file).
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tierflow.storage.errors import IntegrityError, ObjectExistsError, ObjectNotFoundError, TierError
from tierflow.storage.tiers.base import COPY_BUFFER, HashingReader, ObjectInfo, Tier
from tierflow.storage.tiers.names import check_key

__all__ = ["PosixTier"]

_TMP_MARK = ".tierflow-tmp-"


class PosixTier(Tier):
    """A tier rooted at a local or CephFS folder.

    Parameters
    ----------
    name
        The tier's role (``source``, ``output``, ``scratch``, ``ephemeral``).
    root
        The folder (created if missing).
    write_once
        Refuse to overwrite or delete existing files.

    Examples
    --------
    >>> tier = PosixTier("scratch", "/tmp/scratch")          # doctest: +SKIP
    >>> tier.put_bytes("a/b.json", b"{}").sha256[:8]         # doctest: +SKIP
    '44136fa3'
    """

    supports_conditional_put = True

    def __init__(self, name: str, root: str | Path, *, write_once: bool = False) -> None:
        super().__init__(name, write_once=write_once)
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def uri(self, key: str = "") -> str:
        return (self.root / key).as_uri() if key else self.root.as_uri()

    def key_of(self, uri: str) -> str:
        path = Path(uri.removeprefix("file://")) if uri.startswith("file://") else Path(uri)
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            raise TierError(f"{uri} is not on tier {self.name} ({self.root})") from None

    def put_stream(
        self, key: str, stream: IO[bytes], *, expected_sha256: str | None = None, size_hint: int | None = None
    ) -> ObjectInfo:
        target = self._path(key)
        if self.write_once and target.exists():
            raise ObjectExistsError(f"{self.uri(key)} exists and tier {self.name} is write-once")
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{_TMP_MARK}{uuid.uuid4().hex}-{target.name}")
        reader = HashingReader(stream)
        try:
            with temporary.open("xb") as handle:
                while chunk := reader.read(COPY_BUFFER):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            digest = reader.hexdigest()
            if expected_sha256 is not None and digest != expected_sha256:
                raise IntegrityError(
                    f"bytes for {self.uri(key)} hash to {digest[:16]}..., expected {expected_sha256[:16]}...",
                    hint="the source changed while it was being copied; nothing was written",
                )
            if self.write_once:
                try:
                    os.link(temporary, target)
                except FileExistsError:
                    raise ObjectExistsError(f"{self.uri(key)} exists and tier {self.name} is write-once") from None
                except OSError as exc:
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                        raise
                    # no hard links here: O_EXCL create + rename is the next best no-clobber move
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
                    os.close(fd)
                    os.replace(temporary, target)
            else:
                os.replace(temporary, target)
            self._fsync_dir(target.parent)
        finally:
            temporary.unlink(missing_ok=True)
        return ObjectInfo(key, reader.bytes_read, datetime.now(UTC), digest)

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.write_once and path.exists():
            raise TierError(f"refusing to delete {self.uri(key)}: tier {self.name} is write-once")
        path.unlink(missing_ok=True)
        self._prune_empty_parents(path.parent)

    def discard_unverified(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, folder: Path) -> None:
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def open_read(self, key: str) -> AbstractContextManager[IO[bytes]]:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"no object {self.uri(key)} on tier {self.name}") from None

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            result = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {self.uri(key)} on tier {self.name}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"{self.uri(key)} is a folder, not an object")
        return ObjectInfo(key, result.st_size, datetime.fromtimestamp(result.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if start.is_file():
            result = start.stat()
            yield ObjectInfo(prefix, result.st_size, datetime.fromtimestamp(result.st_mtime, UTC))
            return
        if not start.is_dir():
            return
        for folder, subfolders, files in os.walk(start):
            subfolders.sort()
            for file_name in sorted(files):
                if file_name.startswith(_TMP_MARK):
                    continue
                path = Path(folder) / file_name
                try:
                    result = path.stat()
                except FileNotFoundError:
                    continue
                key = path.relative_to(self.root).as_posix()
                yield ObjectInfo(key, result.st_size, datetime.fromtimestamp(result.st_mtime, UTC))

    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore

        # arrays reach a write-once tier only through promotion (object by object, no-clobber)
        read_only = read_only or self.write_once
        path = self._path(prefix.rstrip("/"))
        if not read_only:
            path.mkdir(parents=True, exist_ok=True)
        return LocalStore(path, read_only=read_only)
