"""Claiming an output array for an operation, so the ledger never vouches for blocks that are
no longer on disk.

The ledger says "block B of op key K is done in array A". That stays true only while A holds K's
results: if A was deleted, or another op key wrote into it since, a re-run must compute again.
Every output is stamped with the op key that writes it (``attributes.tierflow.op_key`` of its
``zarr.json``); before a run writes, :func:`claim_output` compares the stamp with the run's key
and, when they differ (or the array is missing), marks the array's done rows ``stale`` and
creates or re-stamps the output — all under one advisory lock, so concurrent runs of the same
op agree on it and still compute each block once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

from storage.arrays import ArrayLocation
from storage.db.database import Database
from storage.db.locks import advisory_locks
from storage.db.repo.ledger import mark_stale

__all__ = ["claim_output", "stamped_op_key"]


def stamped_op_key(location: ArrayLocation) -> str | None:
    """The op key in the ``zarr.json`` of the array or group at ``location`` (None if absent)."""
    meta_key = f"{location.key}/zarr.json"
    if not location.tier.exists(meta_key):
        return None
    attributes = json.loads(location.tier.get_bytes(meta_key)).get("attributes") or {}
    stamp = attributes.get("tierflow") or {}
    return stamp.get("op_key") if isinstance(stamp, dict) else None


def claim_output(
    db: Database,
    location: ArrayLocation,
    op_key: str,
    create: Callable[[], object],
    *,
    ledger_uris: Collection[str] | None = None,
    keep_op_keys: Collection[str] = (),
) -> int:
    """Make ``location`` the output of ``op_key``: if it is missing or stamped with another key,
    mark the done ledger rows of ``ledger_uris`` (default: the location's URI) stale, except
    rows of ``keep_op_keys``; then call ``create()``, which creates or reuses the output and
    stamps ``op_key`` into it. Returns the number of rows made stale."""
    with advisory_locks(db, [f"output|{location.uri}"]):
        stale = 0
        if stamped_op_key(location) != op_key:
            with db.session() as session:
                stale = mark_stale(session, list(ledger_uris or [location.uri]), keep_op_keys=keep_op_keys)
        create()
    return stale
