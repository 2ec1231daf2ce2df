"""Verified downloads: a local copy of an object is used only if its size and sha256 match.

The bytes go to a temporary name beside the target, are hashed on the way, and are renamed into
place only when they match; a local copy already there is reused only if it matches too. A
transfer cut short or a mismatch is fetched again (bounded); what still does not match is an
:class:`~storage.errors.IntegrityError` naming the object. So a broken download is never kept,
and never reused by a later run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Literal

from tierflow.storage.errors import IntegrityError, ObjectNotFoundError, TierError
from tierflow.storage.tiers.base import Tier, hash_file

__all__ = ["download_verified", "local_copy_matches"]

DOWNLOAD_ATTEMPTS = 3


def local_copy_matches(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` is a file of exactly ``size`` bytes hashing to ``sha256`` (size first: cheap)."""
    return path.is_file() and path.stat().st_size == size and hash_file(path) == (size, sha256)


def download_verified(
    tier: Tier, key: str, path: str | Path, *, size: int, sha256: str, what: str = "", attempts: int = DOWNLOAD_ATTEMPTS
) -> Literal["reused", "downloaded"]:
    """Make ``path`` a verified local copy of ``key`` on ``tier``.

    Parameters
    ----------
    tier, key
        The object.
    path
        The local file to make (its folder is created).
    size, sha256
        What the object must be (from a manifest).
    what
        Where ``size`` and ``sha256`` come from, for messages (e.g. ``snapshot embryo/4f2a...``).
    attempts
        Downloads tried before giving up (transfers cut short and mismatches both count).

    Returns
    -------
    str
        ``"reused"`` (a matching local copy was there) or ``"downloaded"``.

    Raises
    ------
    IntegrityError
        If every attempt gave bytes other than the recorded ones, or failed.
    ObjectNotFoundError
        If there is no object at ``key``.
    """
    path = Path(path)
    if local_copy_matches(path, size, sha256):
        return "reused"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    problems = []
    try:
        for _ in range(max(1, attempts)):
            try:
                got = tier.download(key, partial)
            except ObjectNotFoundError:
                raise
            except (TierError, OSError) as exc:
                problems.append(str(exc).splitlines()[0])
                continue
            if got.size == size and got.sha256 == sha256:
                os.replace(partial, path)
                return "downloaded"
            problems.append(f"got {got.size} bytes hashing to {(got.sha256 or '')[:16]}...")
    finally:
        partial.unlink(missing_ok=True)
    source = f" of {what}" if what else ""
    raise IntegrityError(
        f"{tier.uri(key)}{source} does not download as recorded ({size} bytes, sha256 {sha256[:16]}...) "
        f"after {len(problems)} attempt(s): {'; '.join(problems)}",
        hint="if the network is flaky, re-run; if it always differs, the stored object no longer matches the "
        "manifest: inspect it on the tier (nothing was kept locally)",
    )
