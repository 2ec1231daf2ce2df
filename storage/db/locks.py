"""PostgreSQL advisory locks: one writer per block across every process and run, and a
liveness lock per running run.

A lock is held by a database session; if the process holding it dies, PostgreSQL drops the
session and the lock with it, so a crashed run never leaves a block locked, and a run whose
row says ``running`` while nobody holds its run lock is known to have died.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session

from tierflow.storage.db.database import Database

__all__ = ["advisory_locks", "held_run_locks", "hold_run_lock", "lock_key", "run_lock_key", "shared_lease"]


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (what ``pg_advisory_lock`` takes)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def advisory_locks(db: Database, names: Iterable[str]) -> Iterator[None]:
    """Hold session advisory locks on ``names`` (taken in sorted key order, so two holders of
    overlapping sets cannot deadlock); released on exit or when the process dies."""
    keys = sorted({lock_key(name) for name in names})
    with db.engine.connect() as connection:
        try:
            # one statement for the whole batch (a statement per block cost a round trip each:
            # 10^5 blocks, 10^5 round trips); unnest yields the keys in the array's sorted order
            connection.execute(text("SELECT count(pg_advisory_lock(key)) FROM unnest(CAST(:keys AS bigint[])) AS key"), {"keys": keys})
            connection.commit()
            yield
        finally:
            # a failed lock (e.g. PostgreSQL's lock table full) aborted the transaction, and
            # session locks outlive it: without the rollback they stayed held on the pooled
            # connection, and a retry of the batch waited for them forever
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock_all()"))
            connection.commit()


def run_lock_key(run_id: int) -> int:
    """The advisory lock key a running run holds (see :func:`hold_run_lock`)."""
    return lock_key(f"tierflow-run:{int(run_id)}")


@contextmanager
def hold_run_lock(db: Database, run_id: int) -> Iterator[None]:
    """Hold run ``run_id``'s liveness lock on a connection of its own until exit; PostgreSQL
    drops it when this process dies. Take it before the row saying ``running`` is committed."""
    key = run_lock_key(run_id)
    with db.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def held_run_locks(session: Session, run_ids: Iterable[int]) -> set[int]:
    """The runs among ``run_ids`` whose liveness lock some live session of this database holds."""
    wanted = {_lock_parts(run_lock_key(run_id)): int(run_id) for run_id in run_ids}
    if not wanted:
        return set()
    held = session.execute(text(
        "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )).all()
    return {wanted[(int(high), int(low))] for high, low in held if (int(high), int(low)) in wanted}


def _lock_parts(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (``classid``, ``objid``) = its high and
    low 32 bits."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


_HOLDERS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = CAST(:high AS bigint)::oid AND objid = CAST(:low AS bigint)::oid"
)


def _holders(connection: object, key: int) -> int:
    """Sessions holding the bigint advisory lock ``key``."""
    high, low = _lock_parts(key)
    return int(connection.execute(_HOLDERS, {"high": high, "low": low}).scalar_one())  # type: ignore[attr-defined]


@contextmanager
def shared_lease(db: Database, resource: str, member: str, *, gate: str) -> Iterator[bool]:
    """Share ``resource`` with the other holders of ``member`` only.

    Every holder keeps a shared lock on ``resource`` and one on its ``member`` (e.g. an output
    and an op key) for as long as the context lasts. A new holder is let in when nobody holds
    ``resource``, or when everybody who does holds the same ``member``; the check and the
    taking happen under the exclusive ``gate`` lock. Yields whether the lease was granted; the
    locks go with the connection, so a killed holder releases them.
    """
    gate_key, resource_key, member_key = lock_key(gate), lock_key(resource), lock_key(member)
    with db.engine.connect() as connection:
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": gate_key})
            granted = _holders(connection, resource_key) == _holders(connection, member_key)
            if granted:
                connection.execute(text("SELECT pg_advisory_lock_shared(:r), pg_advisory_lock_shared(:m)"),
                                   {"r": resource_key, "m": member_key})
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": gate_key})
            connection.commit()
            yield granted
        finally:
            connection.execute(text("SELECT pg_advisory_unlock_all()"))
            connection.commit()
