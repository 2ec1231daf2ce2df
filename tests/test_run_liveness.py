"""A running run holds a liveness lock; a reader that finds ``running`` without it marks the run
(and its running children) crashed; a resume refuses a run that is still alive."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tierflow.flows.runtime.runs import recorded_run, run_to_resume
from tierflow.storage.db.locks import held_run_locks
from tierflow.storage.db.repo import finish_run, get_run, list_runs, start_run
from tierflow.storage.errors import TierflowError


def statuses(db) -> dict[int, str]:
    with db.session() as session:
        return dict(session.execute(text("SELECT id, status FROM runs")).all())


def test_a_live_run_is_left_alone_and_cannot_be_resumed_twice(db):
    with recorded_run(db, "op", {"op": "gaussian"}) as run_id:
        with db.session() as session:
            assert held_run_locks(session, [run_id]) == {run_id}
            assert get_run(session, run_id).status == "running"
            assert [r.status for r in list_runs(session)] == ["running"]
        with pytest.raises(TierflowError, match=f"run {run_id} is still running"):
            run_to_resume(db, str(run_id), "op")
    with db.session() as session:
        assert held_run_locks(session, [run_id]) == set()
    assert statuses(db) == {run_id: "completed"}
    assert run_to_resume(db, str(run_id), "op") == {"op": "gaussian"}


def test_a_running_row_without_its_lock_reads_crashed_with_its_running_children(db):
    """Rows written as a killed process leaves them: ``running``, and nobody holds their lock."""
    with db.session() as session:
        parent = start_run(session, flow_name="pipeline")
        child = start_run(session, flow_name="op", parent_id=parent.id)
        grandchild = start_run(session, flow_name="op", parent_id=child.id)
        done = start_run(session, flow_name="op", parent_id=parent.id)
        finish_run(session, done, "completed")
        ids = parent.id, child.id, grandchild.id, done.id
    with db.session() as session:
        row = get_run(session, ids[0])
        assert row.status == "crashed" and "process ended without finishing" in row.message
    assert statuses(db) == {ids[0]: "crashed", ids[1]: "crashed", ids[2]: "crashed", ids[3]: "completed"}
    assert run_to_resume(db, str(ids[0]), "pipeline") == {}


def test_listing_settles_dead_runs_but_not_live_ones(db):
    with db.session() as session:
        dead = start_run(session, flow_name="op").id
    with recorded_run(db, "op", {}) as live:
        with db.session() as session:
            assert {r.id: r.status for r in list_runs(session)} == {dead: "crashed", live: "running"}
    assert statuses(db) == {dead: "crashed", live: "completed"}


def test_a_failing_run_is_marked_failed_and_releases_its_lock(db):
    with pytest.raises(ValueError), recorded_run(db, "op", {}) as run_id:
        raise ValueError("bad block")
    with db.session() as session:
        row = get_run(session, run_id)
        assert (row.status, row.message) == ("failed", "ValueError: bad block")
        assert held_run_locks(session, [run_id]) == set()
