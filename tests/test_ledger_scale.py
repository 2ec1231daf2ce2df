"""What keeps the ledger's cost per block flat at 10^5-10^6 blocks (``benchmarks/scale.py``),
asserted on behaviour and on PostgreSQL's plans, not on timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event, text

from tierflow.storage.db.database import Database
from tierflow.storage.db.locks import advisory_locks
from tierflow.storage.db.repo import latest_state_counts, record_blocks, start_run
from tierflow.storage.db.repo.ledger import status_query


def _rows(run_id: int, array_uri: str, blocks: int, status: str = "done") -> list[dict[str, Any]]:
    return [{"run_id": run_id, "op": "gaussian", "op_key": "k", "array_uri": array_uri, "block_id": f"0.0.{i}", "status": status}
            for i in range(blocks)]


def _scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a table or an index."""
    if "Relation Name" in plan or "Index Name" in plan:
        yield plan
    for child in plan.get("Plans", []):
        yield from _scans(child)


def _plan(db: Database, run_ids: list[int]) -> dict[str, Any]:
    query = status_query(run_ids).compile(db.engine, compile_kwargs={"literal_binds": True})
    with db.session() as session:
        plan = session.execute(text(f"EXPLAIN (FORMAT JSON) {query}")).scalar_one()
    return (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]


def test_status_counts_come_from_the_runs_rows_only(db: Database) -> None:
    """``tierflow status RUN`` counts the latest attempt per block in the database; its query
    reads the run's rows only (it hashed every row of every run: a status of 36 blocks read a
    10^6-row ledger), and a single run's streams over ``ix_block_ledger_run_block`` (rows grouped
    by block, with their id and status) with no sort or hash of its blocks."""
    with db.session() as session:
        run, other, stage = (start_run(session, flow_name="op").id for _ in range(3))
        record_blocks(session, _rows(run, "file:///a.zarr", 5, "failed"))
        record_blocks(session, _rows(run, "file:///a.zarr", 3))  # blocks 0-2 retried and done; 3, 4 still failed
        record_blocks(session, _rows(run, "file:///big.zarr", 600))
        record_blocks(session, _rows(other, "file:///b.zarr", 3000))
        record_blocks(session, _rows(stage, "file:///a.zarr", 5, "running"))  # a later run of the family: its rows are the latest
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE block_ledger"))
    with db.session() as session:
        counts = {(c.run_id, c.failed): (c.blocks, c.block_ids) for c in latest_state_counts(session, [run])}
        assert counts == {(run, False): (603, []), (run, True): (2, ["0.0.3", "0.0.4"])}
        family = {(c.run_id, c.failed): (c.blocks, c.block_ids) for c in latest_state_counts(session, [run, stage])}
        assert family == {(run, False): (600, []), (stage, False): (5, [])}
    for run_ids in ([run], [run, stage]):
        scans = [node for node in _scans(_plan(db, run_ids)) if node.get("Relation Name", "block_ledger") == "block_ledger"]
        assert scans
        for node in scans:  # every read of the ledger is bounded by the runs' ids (an index condition or a filter)
            conditions = " ".join(str(node.get(key, "")) for key in ("Index Cond", "Filter", "Recheck Cond"))
            assert "run_id" in conditions, f"{node['Node Type']} reads the ledger without the runs' condition: {node}"
    nodes = list(_nodes(_plan(db, [run])))
    assert [n["Node Type"] for n in nodes if n.get("Index Name") == "ix_block_ledger_run_block"] == ["Index Only Scan"]
    assert not [n for n in nodes if n["Node Type"] == "Sort" and n is not nodes[0]], "the blocks are sorted: the index is not used"


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def test_a_batch_takes_its_block_locks_in_one_statement(db: Database) -> None:
    """A batch's per-block advisory locks are taken in one round trip (a statement per block was
    10^5 round trips for 10^5 blocks), all held until the batch ends, and released after."""
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    names = [f"key|file:///a.zarr|0.{i // 50}.{i % 50}" for i in range(500)]
    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with advisory_locks(db, names):
            locking = [s for s in statements if "pg_advisory_lock" in s]
            with db.session() as session:
                held = session.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"))
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(locking) == 1
    assert held == 500
    with db.session() as session:
        assert session.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")) == 0


def test_ledger_rows_are_copied_in_and_read_back_as_given(db: Database) -> None:
    """``record_blocks`` writes with COPY (no INSERT: psycopg2 rendered each parameter in Python,
    the ledger's cost per block at 10^5 blocks): text that COPY would misread (tabs, newlines,
    backslashes, ``\\N``), NULLs, timestamps and defaults come back as they were given."""
    from datetime import UTC, datetime

    from tierflow.storage.db.repo import block_attempts

    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    tricky = "ValueError: a\ttab,\na newline, a \\ backslash, \\N and \r; ünïcode"
    when = datetime(2026, 11, 27, 15, 0, 1, 250000, tzinfo=UTC)
    with db.session() as session:
        run = start_run(session, flow_name="op").id
        written = record_blocks(session, [
            *_rows(run, "file:///a b.zarr", 300),
            {"run_id": run, "op": "gaussian", "op_key": "k", "array_uri": "file:///a b.zarr", "block_id": "9.9.9", "status": "failed",
             "error": tricky, "seconds": 0.125, "bytes": 2**40, "started_at": when, "host": None, "attempt": 3},
        ])
    event.remove(db.engine, "before_cursor_execute", seen)
    assert written == 301
    assert not [s for s in statements if "INSERT INTO block_ledger" in s]
    with db.session() as session:
        attempts = block_attempts(session, run)
        row = session.execute(text("SELECT error, seconds, bytes, started_at, host, attempt, array_uri FROM block_ledger "
                                   "WHERE block_id = '9.9.9'")).one()
        defaults = session.execute(text("SELECT min(attempt), max(attempt), count(created_at) FROM block_ledger "
                                        "WHERE block_id <> '9.9.9'")).one()
    assert len(attempts) == 301 and attempts[-1].error == tricky and attempts[0].status == "done"
    assert tuple(row) == (tricky, 0.125, 2**40, when, None, 3, "file:///a b.zarr")
    assert tuple(defaults) == (1, 1, 300)


def test_the_embedded_server_holds_the_locks_of_large_batches(db: Database) -> None:
    """Two concurrent batches of 12,000 blocks each hold their per-block advisory locks (a flow of
    10^6 blocks in <= 1,000 task runs has batches of thousands): PostgreSQL's default lock table
    (~8,000) ran out of shared memory at 16,384."""
    first = [f"a|file:///a.zarr|{i}" for i in range(12_000)]
    second = [f"b|file:///a.zarr|{i}" for i in range(12_000)]
    with advisory_locks(db, first), advisory_locks(db, second):
        with db.session() as session:
            assert session.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")) == 24_000
