"""Alembic environment of tierflow's results database.

Run through :mod:`storage.db.migrate` (``tierflow db upgrade``), which passes an open
connection in ``config.attributes["connection"]``; the URL (and its password) never goes
through Alembic's configuration or logs.
"""

from __future__ import annotations

from alembic import context

from tierflow.storage.db.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `tierflow db upgrade` (storage.db.migrate), not bare alembic")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; use `tierflow db upgrade`")
run_migrations_online()
