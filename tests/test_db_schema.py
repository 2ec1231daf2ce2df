"""Alembic: one head, the models match the migrations, and upgrade -> downgrade -> upgrade works
on a database that holds rows."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tierflow.storage.db.migrate import current_revision, downgrade, head_revision, heads, upgrade, require_current
from tierflow.storage.db.models import Base
from tierflow.storage.db.repo import add_artifact, ledger_state, record_blocks, record_memo, start_run
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


def test_op_memos_migration_0008_down_and_up(empty_db):
    """0008 adds ``op_memos`` (the cached op's memo) and its downgrade drops only that table; a
    memo written before the round trip is gone after it, and the table takes rows again."""
    db = empty_db
    upgrade(db)
    with db.session() as session:
        run = start_run(session, flow_name="op")
        record_blocks(session, [{"run_id": run.id, "op": "gaussian", "op_key": "k", "array_uri": "file:///o.zarr", "block_id": "0.0.0",
                                 "status": "done"}])
        state = ledger_state(session, "file:///o.zarr")
        record_memo(session, memo_key="m" * 64, op="gaussian", op_key="k", output_uri="file:///o.zarr", stat_digest="d" * 64,
                    ledger=state, blocks=1, block_shape=(8, 32, 32))
        record_memo(session, memo_key="m" * 64, op="gaussian", op_key="k", output_uri="file:///o.zarr", stat_digest="e" * 64,
                    ledger=state, blocks=1, block_shape=(8, 32, 32))  # the same request again: the memo is refreshed, not doubled
    assert state.startswith("1:1:")
    assert db.row_counts()["op_memos"] == 1

    downgrade(db, "0007")
    assert current_revision(db) == "0007"
    counts = db.row_counts()
    assert "op_memos" not in counts and counts["block_ledger"] == 1 and counts["runs"] == 1

    upgrade(db)
    assert current_revision(db) == head_revision()
    assert db.row_counts()["op_memos"] == 0
