"""Schema migrations of the results database (Alembic, driven from code).

Examples
--------
>>> upgrade(db)                       # doctest: +SKIP
>>> current_revision(db) == head_revision()   # doctest: +SKIP
True
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tierflow.storage.db.database import Database
from tierflow.storage.errors import SchemaOutOfDateError

if TYPE_CHECKING:  # Alembic (0.2 s to import) is imported where a migration runs or its scripts are read
    from alembic.config import Config

__all__ = ["MIGRATIONS_DIR", "current_revision", "downgrade", "head_revision", "heads", "require_current", "schema_is_current",
           "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def heads() -> list[str]:
    """Every head revision of the migration scripts (there must be exactly one)."""
    from alembic.script import ScriptDirectory

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
    from alembic import command

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
    from alembic.runtime.migration import MigrationContext

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


_DECLARED = re.compile(r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(None|'[^'\n]*'|\"[^\"\n]*\")\s*$", re.MULTILINE)


@functools.cache
def _declared_head() -> str | None:
    """The head revision as the scripts declare it (``revision = '0006'``, ``down_revision =
    '0005'``, read as text: importing Alembic, or even parsing the scripts, costs a cached op
    more than its whole answer), or None when that is not plain (a merge, a computed value):
    then Alembic decides."""
    revisions: dict[str, str | None] = {}
    for script in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        declared = _DECLARED.findall(script.read_text())
        values = {name: None if value == "None" else value[1:-1] for name, value in declared}
        if len(declared) != 2 or not values.get("revision") or "down_revision" not in values:
            return None
        revisions[values["revision"]] = values["down_revision"]
    found = set(revisions) - set(revisions.values())
    return found.pop() if len(found) == 1 else None


def schema_is_current(db: Database) -> bool:
    """Whether the schema is at the head revision: one query, without importing Alembic (a
    cached ``tierflow op`` answers in a fraction of a second; see ``benchmarks/cli.py``)."""
    head = _declared_head()
    if head is None:
        return current_revision(db) == head_revision()
    try:
        with db.engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except ProgrammingError:
        return False  # no version table yet: a fresh database
    except DBAPIError as exc:
        raise db.unavailable(exc) from None
    return rows == [head]
