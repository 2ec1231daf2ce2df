"""Verified local copies of objects on a remote tier (TIFF inputs on S3 read from Tier 4 tmp).

TIFF stacks and slice folders are read page by page from a local file, so an input on an S3
tier is first copied to a local folder: each object is downloaded to a temporary name, its
bytes hashed on the way and checked against the size and sha256 recorded with the object, then
renamed into place with the object's modification time. A file already in place with the
object's size and modification time is a verified copy of that object and is reused, and
copies made at different times of the same object fingerprint alike (same size, same mtime).
"""

from __future__ import annotations

import os
from pathlib import Path

from tierflow.storage.errors import IntegrityError, ObjectNotFoundError, TierflowError
from tierflow.storage.tiers.base import ObjectInfo, Tier
from tierflow.storage.tiers.download import download_verified

__all__ = ["local_copy"]


def _copy_object(tier: Tier, key: str, path: Path) -> None:
    """Download one object to ``path`` unless a verified copy is there already."""
    info = tier.stat(key)
    mtime_ns = round(info.mtime.timestamp() * 1e6) * 1000 if info.mtime is not None else None
    if path.is_file() and mtime_ns is not None and (path.stat().st_size, path.stat().st_mtime_ns) == (info.size, mtime_ns):
        return
    if info.sha256 is not None:  # recorded with the object: a verified, retried download
        download_verified(tier, key, path, size=info.size, sha256=info.sha256)
        if mtime_ns is not None:
            os.utime(path, ns=(mtime_ns, mtime_ns))
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        got = tier.download(key, partial)
        _check(tier, key, info, got)
        if mtime_ns is not None:
            os.utime(partial, ns=(mtime_ns, mtime_ns))
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _check(tier: Tier, key: str, recorded: ObjectInfo, got: ObjectInfo) -> None:
    if got.size != recorded.size or (recorded.sha256 is not None and got.sha256 != recorded.sha256):
        raise IntegrityError(
            f"download of {tier.uri(key)} gave {got.size} bytes hashing to {(got.sha256 or '')[:16]}..., "
            f"the object holds {recorded.size} bytes hashing to {(recorded.sha256 or 'unrecorded')[:16]}...",
            hint="nothing was kept; run again (a transfer fault), or check the object on the tier",
        )


def local_copy(tier: Tier, key: str, folder: str | os.PathLike[str]) -> Path:
    """A verified local copy of the object, or folder of objects, at ``key`` on ``tier``.

    Parameters
    ----------
    tier, key
        What to copy: one object (a TIFF stack) or every object under a folder prefix (a folder
        of TIFF slices).
    folder
        A local folder (Tier 4 tmp); the copy goes to ``folder/key``.

    Returns
    -------
    Path
        The local file or folder.

    Raises
    ------
    TierflowError
        If there is nothing at ``key``.
    IntegrityError
        If a download does not match the object's recorded size or sha256 (nothing is kept).
    """
    target = Path(folder) / key
    try:
        tier.stat(key)
    except ObjectNotFoundError:
        base = key.rstrip("/") + "/"
        infos = list(tier.list(key))
        if not infos:
            raise TierflowError(f"no object or folder of objects at {tier.uri(key)}",
                                hint="check the URI (`tierflow snapshots list`, or list the bucket)") from None
        for info in infos:
            path = target / info.key[len(base):]
            path.parent.mkdir(parents=True, exist_ok=True)
            _copy_object(tier, info.key, path)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _copy_object(tier, key, target)
    return target
