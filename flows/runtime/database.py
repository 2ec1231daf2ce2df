"""Open the results database the configuration describes (embedded or external).

This is where configuration meets storage: :mod:`storage.db` takes explicit values, and this
module turns a :class:`configs.DatabaseConfig` into them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tierflow.configs import DatabaseConfig, load_db_config
from tierflow.storage.db.database import Database, normalise_url, postgres_url
from tierflow.storage.db.embedded import EmbeddedPostgres
from tierflow.storage.db.migrate import require_current, schema_is_current, upgrade

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["embedded_server", "open_database"]


def embedded_server(config: DatabaseConfig) -> EmbeddedPostgres:
    """The embedded server a configuration describes (not started)."""
    return EmbeddedPostgres(
        config.data_path,
        host=config.host,
        port=config.port,
        user=config.user,
        dbname=config.dbname,
        start_timeout=max(30.0, float(config.connect_timeout_seconds)),
    )


def _external_url(config: DatabaseConfig) -> URL:
    if config.url is not None:
        url = normalise_url(config.url.get_secret_value())
        if url.password is None and config.password is not None:
            url = url.set(password=config.password.get_secret_value())
        return url
    assert config.password is not None  # load_db_config refuses an external server without one
    return postgres_url(
        user=config.user,
        password=config.password.get_secret_value(),
        host=config.host,
        port=config.port,
        dbname=config.dbname,
    )


_MIGRATED: set[str] = set()
_OPEN: dict[tuple[int, URL, float], Database] = {}


def open_database(
    config: DatabaseConfig | None = None, *, migrate: bool = False, check_schema: bool = False
) -> Database:
    """Connect to the results database, starting the embedded server on first use.

    Parameters
    ----------
    config
        Database settings; ``None`` loads them with :func:`configs.load_db_config`.
    migrate
        Upgrade the schema to the newest revision first.
    check_schema
        Raise :class:`~storage.errors.SchemaOutOfDateError` unless the schema is current.

    Returns
    -------
    Database
        A connection whose ``masked_url`` is safe to print.
    """
    config = config or load_db_config()
    if config.mode == "embedded":
        url = embedded_server(config).start()
    else:
        url = _external_url(config)
    # one engine (and connection pool) per server and process: a pipeline or a notebook opens
    # the database for every operation, and an engine each left their connections to the
    # garbage collector (PostgreSQL ran out of connection slots in a long test session)
    cache_key = (os.getpid(), url, float(config.connect_timeout_seconds))
    db = _OPEN.get(cache_key)
    if db is None:
        db = _OPEN[cache_key] = Database(url, connect_timeout=config.connect_timeout_seconds)
    if migrate and url not in _MIGRATED:
        # one query when the schema is current (a cached re-run's whole budget is ~0.2 s); the
        # locked Alembic upgrade only when it is behind
        if not schema_is_current(db):
            upgrade(db)
        _MIGRATED.add(url)  # once per process and server: a pipeline opens it for every operation
    elif check_schema:
        require_current(db)
    return db
