"""Alembic: one head, the models match the migrations, and upgrade -> downgrade -> upgrade works
on a database that holds rows."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tierflow.storage.db.migrate import current_revision, downgrade, head_revision, heads, upgrade, require_current
from tierflow.storage.db.models import Base
from tierflow.storage.db.repo import add_artifact, record_blocks, start_run
from tierflow.storage.errors import SchemaOutOfDateError

import pytest


def test_migrations_have_exactly_one_head():
    assert len(heads()) == 1


def test_models_and_migrations_agree(db):
    with db.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrade_downgrade_upgrade_on_a_non_empty_database(empty_db):
    db = empty_db
    with pytest.raises(SchemaOutOfDateError, match="tierflow db upgrade"):
        require_current(db)
    upgrade(db)
    assert current_revision(db) == head_revision()
    with db.session() as session:
        run = start_run(session, flow_name="ingest", parameters={"dataset": "d1"})
        add_artifact(session, kind="zarr", name="smooth", tier="scratch", uri="file:///s/a.zarr", run_id=run.id)
        record_blocks(
            session,
            [{"run_id": run.id, "op": "gaussian", "op_key": "k", "array_uri": "a", "block_id": "0.0.0", "status": "done"}],
        )
    assert db.row_counts()["block_ledger"] == 1

    downgrade(db, "base")
    assert current_revision(db) is None
    assert db.row_counts() == {}

    upgrade(db)
    require_current(db)
    counts = db.row_counts()
    assert set(counts) == {table.name for table in Base.metadata.sorted_tables}
    assert all(count == 0 for count in counts.values())
    with db.session() as session:  # the schema is usable again after the round trip
        assert start_run(session, flow_name="again").id >= 1
