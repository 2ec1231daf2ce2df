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

__all__ = ["advisory_locks", "lock_key"]


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
