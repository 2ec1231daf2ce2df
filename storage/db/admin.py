"""Databases beside the results database on the same PostgreSQL server.

The managed Prefect server keeps its own tables in a database of its own (``prefect`` by
default) on the server that holds tierflow's results, so one PostgreSQL serves both and
tierflow's migrations never meet Prefect's. Creating it is SQL, so it lives here; the flows
layer only gets the URL to hand to Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tierflow.storage.db.database import Database, scrub
from tierflow.storage.errors import DatabaseError

__all__ = ["SiblingDatabase", "ensure_sibling_database"]


@dataclass(frozen=True)
class SiblingDatabase:
    """Where another program's database on the results server is (asyncpg driver)."""

    url: str
    """With the password: for the environment of the process that uses it, never for output."""
    masked_url: str
    """The same URL with ``***`` for the password: safe to print."""


def ensure_sibling_database(db: Database, name: str) -> SiblingDatabase:
    """Create the database ``name`` on ``db``'s server unless it exists; return its URL.

    Raises
    ------
    DatabaseError
        If it is missing and the configured user may not create it (the message names the
        server without its password).
    """
    engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE runs outside a transaction
    try:
        with engine.connect() as connection:
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}).first()
            if exists is None:
                quoted = connection.dialect.identifier_preparer.quote(name)
                connection.execute(text(f"CREATE DATABASE {quoted}"))
    except DBAPIError as exc:
        detail = str(exc.orig or exc).strip().splitlines()
        already = "already exists" in (detail[0] if detail else "")  # created by another process meanwhile
        if not already:
            raise DatabaseError(
                scrub(f"cannot create the database {name!r} on {db.masked_url}: {detail[0] if detail else exc}", db.url.password),
                hint=f"create it (CREATE DATABASE {name}) as a user who may, or set [prefect].database = \"sqlite\"",
            ) from None
    url = db.url.set(drivername="postgresql+asyncpg", database=name)
    return SiblingDatabase(url.render_as_string(hide_password=False), url.render_as_string(hide_password=True))
