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
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from tierflow.storage.arrays import ArrayLocation
from tierflow.storage.db.database import Database
from tierflow.storage.db.locks import advisory_locks, shared_lease
from tierflow.storage.db.repo.ledger import mark_stale
from tierflow.errors import OutputBusyError

__all__ = ["OutputBusyError", "claim_output", "output_lease", "stamped_op_key"]


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


@contextmanager
def output_lease(db: Database, location: ArrayLocation, op_key: str) -> Iterator[None]:
    """Hold ``location`` as the output of ``op_key`` for the whole run.

    Runs of one op key share an output (the per-block locks make them compute each block
    once); a run of another key is refused while one is live, so an output never holds blocks
    of two keys and the ledger never vouches for blocks another key wrote. The lease is a
    PostgreSQL session lock: a killed run releases it with its connection.

    Raises
    ------
    OutputBusyError
        If a run of another op key holds the output.
    """
    with shared_lease(db, f"output-busy|{location.uri}", f"output-key|{location.uri}|{op_key}",
                      gate=f"output-gate|{location.uri}") as granted:
        if not granted:
            raise OutputBusyError(
                f"another run is writing {location.uri} with other parameters or another input "
                f"(this run's op key is {op_key[:12]})",
                hint="wait for that run to finish (`tierflow runs list`), or write to another output",
            )
        yield
