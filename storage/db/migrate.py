"""Schema migrations of the results database (Alembic, driven from code).

Examples
--------
>>> upgrade(db)                       # doctest: +SKIP
>>> current_revision(db) == head_revision()   # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from tierflow.storage.db.database import Database
from tierflow.storage.errors import SchemaOutOfDateError

__all__ = ["MIGRATIONS_DIR", "current_revision", "downgrade", "head_revision", "heads", "require_current", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def heads() -> list[str]:
    """Every head revision of the migration scripts (there must be exactly one)."""
    return list(ScriptDirectory.from_config(_config()).get_heads())


def head_revision() -> str:
    """The single head revision.

    Raises
    ------
    RuntimeError
        If the migration history has branched (two heads): merge them with ``alembic merge``.
    """
    found = heads()
    if len(found) != 1:
        raise RuntimeError(f"the migrations in {MIGRATIONS_DIR} have {len(found)} heads {found}; merge them")
    return found[0]


def _run(db: Database, action: str, revision: str) -> None:
    config = _config()
    try:
        with db.engine.begin() as connection:
            # one migrator at a time: concurrent flow starts may all ask for an upgrade
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7312700419)")
            config.attributes["connection"] = connection
            getattr(command, action)(config, revision)
    except DBAPIError as exc:
        if exc.connection_invalidated or "connect" in str(exc.orig).lower():
            raise db.unavailable(exc) from None
        raise


def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate the schema up to ``revision`` (default: the newest)."""
    _run(db, "upgrade", revision)


def downgrade(db: Database, revision: str) -> None:
    """Migrate the schema down to ``revision`` (``"base"`` drops every results table)."""
    _run(db, "downgrade", revision)


def current_revision(db: Database) -> str | None:
    """The revision the database is at, or ``None`` before the first upgrade."""
    try:
        with db.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DBAPIError as exc:
        raise db.unavailable(exc) from None


def require_current(db: Database) -> None:
    """Raise :class:`SchemaOutOfDateError` unless the schema is at the head revision."""
    current, head = current_revision(db), head_revision()
    if current != head:
        raise SchemaOutOfDateError(
            f"the results database at {db.masked_url} is at schema revision {current or 'none'}, "
            f"the code expects {head}",
            hint="run `tierflow db upgrade`",
        )
