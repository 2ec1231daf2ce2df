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


def test_status_counts_come_from_the_runs_rows_only(db: Database) -> None:
    """``tierflow status RUN`` counts the latest attempt per block in the database, and its query
    reads the run's rows, never the whole ledger (it hashed every row of every run: a status of
    36 blocks read a 10^6-row ledger)."""
    with db.session() as session:
        run = start_run(session, flow_name="op").id
        other = start_run(session, flow_name="op").id
        record_blocks(session, _rows(run, "file:///a.zarr", 5, "failed"))
        record_blocks(session, _rows(run, "file:///a.zarr", 3))  # blocks 0-2 retried and done; 3, 4 still failed
        record_blocks(session, _rows(other, "file:///b.zarr", 2000))
    with db.engine.connect() as connection:
        connection.execute(text("ANALYZE block_ledger"))
        connection.commit()
    with db.session() as session:
        counts = {(c.op, c.status): (c.blocks, sorted(c.block_ids)) for c in latest_state_counts(session, [run])}
        assert counts == {("gaussian", "done"): (3, []), ("gaussian", "failed"): (2, ["0.0.3", "0.0.4"])}
        query = status_query([run]).compile(db.engine, compile_kwargs={"literal_binds": True})
        plan = session.execute(text(f"EXPLAIN (FORMAT JSON) {query}")).scalar_one()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    scans = [node for node in _scans(plan[0]["Plan"]) if node.get("Relation Name", "block_ledger") == "block_ledger"]
    assert scans
    for node in scans:  # every read of the ledger is bounded by the run's id (an index condition or a filter)
        conditions = " ".join(str(node.get(key, "")) for key in ("Index Cond", "Filter", "Recheck Cond"))
        assert "run_id" in conditions, f"{node['Node Type']} reads the ledger without the run's condition: {node}"


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
