"""PostgreSQL advisory locks: one writer per block across every process and run.

A lock is held by a database session; if the process holding it dies, PostgreSQL drops the
session and the lock with it, so a crashed run never leaves a block locked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import text

from storage.db.database import Database

__all__ = ["advisory_locks", "lock_key", "shared_lease"]


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
            for key in keys:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock_all()"))
            connection.commit()


_HOLDERS = text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = CAST(:high AS bigint)::oid AND objid = CAST(:low AS bigint)::oid"
)


def _holders(connection: object, key: int) -> int:
    """Sessions holding the bigint advisory lock ``key`` (pg_locks shows its high and low
    32 bits as ``classid`` and ``objid``)."""
    halves = {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}
    return int(connection.execute(_HOLDERS, halves).scalar_one())  # type: ignore[attr-defined]


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
