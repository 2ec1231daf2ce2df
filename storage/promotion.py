"""Promotion: copy an artifact from Tier 2/3 to Tier 1 and prove the copy before recording it.

An artifact is one object (a table, a report) or a folder of objects (a zarr array). Each object
is streamed to ``promoted/<dataset>/<snapshot_id>/<run>/<name>/...`` on Tier 1, hashed on the
way (the write is refused if the source no longer matches its recorded sha256), then **read
back from Tier 1 and hashed again**. Only a copy whose every object verifies may be recorded as
promoted; a copy that fails is discarded and reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from tierflow.storage.errors import IntegrityError, ObjectExistsError, TierflowError
from tierflow.storage.tiers.base import ObjectInfo, Tier
from tierflow.storage.tiers.names import check_key, check_name

__all__ = ["PromotionResult", "promote_tree", "promoted_prefix", "tree_digest"]

AfterCopyHook = Callable[[Tier, str], None]
"""Called with (target tier, key) after each object is written and before it is verified.
Exists only so tests can inject a fault that cannot otherwise be produced (silent corruption)."""


@dataclass(frozen=True)
class PromotionResult:
    """What a verified promotion put on Tier 1."""

    uri: str
    sha256: str
    bytes: int
    objects: int
    already_present: int


def promoted_prefix(dataset: str, snapshot_id: str, run_label: str, name: str) -> str:
    """``promoted/<dataset>/<snapshot_id>/<run>/<name>`` with every part checked."""
    return "/".join(
        (
            "promoted",
            check_name(dataset, "dataset"),
            check_name(snapshot_id, "snapshot id"),
            check_name(run_label, "run label"),
            check_key(name),
        )
    )


def tree_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 of a folder from its ``(relative key, sha256)`` pairs; a single object's digest
    is its own sha256 (so a file artifact's recorded sha256 is the plain file hash)."""
    if len(entries) == 1 and entries[0][0] == "":
        return entries[0][1]
    lines = "".join(f"{relative}\0{sha}\n" for relative, sha in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


def _objects(source: Tier, key: str) -> list[tuple[str, ObjectInfo]]:
    """(relative key, info) of the object at ``key``, or of every object below it."""
    try:
        return [("", source.stat(key))]
    except TierflowError:
        pass
    base = key.rstrip("/") + "/"
    found = [(info.key[len(base) :], info) for info in source.list(key)]
    if not found:
        raise TierflowError(f"nothing to promote at {source.uri(key)}", hint="the artifact's bytes are gone")
    return found


def promote_tree(
    source: Tier,
    key: str,
    target: Tier,
    target_key: str,
    *,
    expected_sha256: str | None = None,
    after_copy: AfterCopyHook | None = None,
) -> PromotionResult:
    """Copy an object or folder to ``target`` and verify every object by reading it back.

    Parameters
    ----------
    source, key
        Where the artifact is (a single object or a folder prefix).
    target, target_key
        Where it goes (Tier 1).
    expected_sha256
        The artifact's recorded digest (see :func:`tree_digest`); checked against the bytes read.
    after_copy
        Test-only fault injection, see :data:`AfterCopyHook`.

    Returns
    -------
    PromotionResult
        The verified copy.

    Raises
    ------
    IntegrityError
        If the source no longer matches ``expected_sha256`` or a copy does not read back
        identical; every object this call wrote is discarded first.
    """
    written: list[str] = []
    entries: list[tuple[str, str]] = []
    total = present = 0
    try:
        for relative, info in _objects(source, key):
            source_key = f"{key.rstrip('/')}/{relative}" if relative else key
            destination = f"{target_key}/{relative}" if relative else target_key
            try:
                copied = source.copy_to(source_key, target, destination)
                written.append(destination)
                sha = copied.sha256 or ""
                if after_copy is not None:
                    after_copy(target, destination)
                target.verify(destination, sha)
            except ObjectExistsError:
                # promoted before (a retried promotion): accept it only if it is the same bytes
                sha = source.sha256(source_key)
                target.verify(destination, sha)
                present += 1
            entries.append((relative, sha))
            total += info.size
        digest = tree_digest(entries)
        if expected_sha256 is not None and digest != expected_sha256:
            raise IntegrityError(
                f"{source.uri(key)} hashes to {digest[:16]}... but was recorded as {expected_sha256[:16]}...",
                hint="the artifact changed after it was recorded; re-run the step that produced it",
            )
    except BaseException:
        for destination in written:
            target.discard_unverified(destination)
        raise
    return PromotionResult(target.uri(target_key), digest, total, len(entries), present)
