"""The block ledger: which blocks of which operation are done, failed or running."""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, delete, func, literal, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tierflow.storage.errors import DatabaseError
from tierflow.storage.db.models import BLOCK_STATUSES, BlockRecord

__all__ = ["BlockAttempt", "BlockState", "StateCount", "block_attempts", "block_counts", "block_progress", "count_done_since",
           "done_blocks", "done_fingerprints", "failed_blocks", "latest_block_states", "latest_state_counts", "mark_blocks_stale",
           "mark_stale", "record_blocks", "running_rows", "settle_running", "status_query"]


class BlockAttempt(NamedTuple):
    """One ledger row of a run, as :func:`block_attempts` reads it."""

    op: str
    block_id: str
    status: str
    error: str | None


_ORDER = tuple(column.name for column in BlockRecord.__table__.columns if column.name not in ("id", "created_at", "updated_at"))
_COLUMNS = set(_ORDER)


def record_blocks(session: Session, rows: Iterable[Mapping[str, Any]]) -> int:
    """Insert ledger rows with PostgreSQL's COPY (one per set of keys the rows carry); returns how many.

    Each row needs ``run_id, op, op_key, array_uri, block_id, status`` and may carry
    ``attempt, host, slurm_job_id, seconds, bytes, error, started_at, finished_at, input_fingerprint``.
    COPY, not an INSERT with bound parameters: psycopg2 renders every parameter in Python, 40 µs
    a row, the ledger's cost per block at 10^5 blocks (``benchmarks/scale.py``); COPY is a few.
    """
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        unknown = set(row) - _COLUMNS
        if unknown:
            raise ValueError(f"block ledger row for block {row.get('block_id')!r} has unknown keys {sorted(unknown)}")
        if row.get("status") not in BLOCK_STATUSES:
            raise ValueError(f"block {row.get('block_id')!r}: status {row.get('status')!r} not in {BLOCK_STATUSES}")
        groups.setdefault(tuple(column for column in _ORDER if column in row), []).append(row)
    session.flush()  # rows the session holds (a run just added) first: COPY bypasses the ORM
    cursor = session.connection().connection.cursor()  # the session's transaction: committed or rolled back with it
    try:
        for columns, group in groups.items():
            text = io.StringIO("".join("\t".join(_copy_text(row[c]) for c in columns) + "\n" for row in group))
            cursor.copy_expert(f"COPY block_ledger ({', '.join(columns)}) FROM STDIN", text)
    finally:
        cursor.close()
    return sum(len(group) for group in groups.values())


def _copy_text(value: Any) -> str:
    """One value in COPY's text format (NULL as \\N; backslash, tab, newline and return escaped)."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return str(value)


def done_blocks(session: Session, op_key: str, array_uri: str, *, run_id: int | None = None) -> set[str]:
    """Ids of the blocks of one operation on one array that some run (``run_id``: that run)
    finished (one query)."""
    query = select(BlockRecord.block_id).where(BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri,
                                               BlockRecord.status == "done")
    if run_id is not None:
        query = query.where(BlockRecord.run_id == run_id)
    return set(session.scalars(query.distinct()))


def done_fingerprints(session: Session, op_key: str, array_uri: str, *, run_id: int | None = None) -> dict[str, str | None]:
    """The input fingerprint of every done block of one operation on one array (the newest
    done row per block; one query); ``run_id``: done by that run only."""
    query = select(BlockRecord.block_id, BlockRecord.input_fingerprint).where(
        BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri, BlockRecord.status == "done")
    if run_id is not None:
        query = query.where(BlockRecord.run_id == run_id)
    return {block_id: fingerprint for block_id, fingerprint in session.execute(query.order_by(BlockRecord.id))}


def mark_stale(session: Session, array_uris: Collection[str], *, keep_op_keys: Collection[str] = ()) -> int:
    """Mark the done rows of ``array_uris`` stale (their content was deleted or overwritten),
    except those of ``keep_op_keys``; returns how many rows changed (history is kept)."""
    query = update(BlockRecord).where(BlockRecord.array_uri.in_(list(array_uris)), BlockRecord.status == "done")
    if keep_op_keys:
        query = query.where(BlockRecord.op_key.not_in(list(keep_op_keys)))
    return int(session.execute(query.values(status="stale")).rowcount or 0)


def mark_blocks_stale(session: Session, op_key: str, array_uri: str, block_ids: Collection[str]) -> int:
    """Mark the done rows of some blocks of one operation stale (what they stored is gone);
    returns how many rows changed."""
    if not block_ids:
        return 0
    query = update(BlockRecord).where(BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri,
                                      BlockRecord.block_id.in_(list(block_ids)), BlockRecord.status == "done")
    return int(session.execute(query.values(status="stale")).rowcount or 0)


def running_rows(session: Session, run_id: int, op_key: str, array_uri: str, block_ids: Collection[str]) -> list[BlockRecord]:
    """The ``running`` rows of some blocks of one run (a batch in a SLURM job records them when
    it starts, so the flow can tell which job a lost batch was in)."""
    return list(session.scalars(select(BlockRecord).where(
        BlockRecord.run_id == run_id, BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri,
        BlockRecord.block_id.in_(list(block_ids)), BlockRecord.status == "running").order_by(BlockRecord.id)))


def done_in_run(session: Session, run_id: int, op_key: str, array_uri: str, block_ids: Collection[str]) -> set[str]:
    """Which of some blocks one run finished (a batch whose worker died after it wrote its blocks
    has them here, though its result was lost with the worker)."""
    return set(session.scalars(select(BlockRecord.block_id).where(
        BlockRecord.run_id == run_id, BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri,
        BlockRecord.block_id.in_(list(block_ids)), BlockRecord.status == "done")))


def settle_running(session: Session, run_id: int, op_key: str, array_uri: str, block_ids: Collection[str], *,
                   error: str | None = None) -> int:
    """End the ``running`` rows of some blocks: deleted (the batch records its own outcome), or
    with ``error`` turned into ``failed`` rows that keep their SLURM job id and attempt."""
    where = (BlockRecord.run_id == run_id, BlockRecord.op_key == op_key, BlockRecord.array_uri == array_uri,
             BlockRecord.block_id.in_(list(block_ids)), BlockRecord.status == "running")
    if error is None:
        return int(session.execute(delete(BlockRecord).where(*where)).rowcount or 0)
    return int(session.execute(update(BlockRecord).where(*where).values(status="failed", error=error[:2000],
                                                                        finished_at=func.now())).rowcount or 0)


def failed_blocks(session: Session, run_id: int) -> list[str]:
    """Ids of the blocks a run attempted whose latest attempt failed."""
    latest = (
        select(BlockRecord.op_key, BlockRecord.block_id, func.max(BlockRecord.id).label("last"))
        .where(BlockRecord.run_id == run_id)
        .group_by(BlockRecord.op_key, BlockRecord.block_id)
        .subquery()
    )
    rows = session.scalars(
        select(BlockRecord.block_id)
        .join(latest, BlockRecord.id == latest.c.last)
        .where(BlockRecord.status == "failed")
        .order_by(BlockRecord.block_id)
    )
    return list(rows)


def block_progress(session: Session, run_id: int) -> dict[str, int]:
    """Count of ledger rows per status for one run."""
    return block_counts(session, [run_id])


def block_counts(session: Session, run_ids: Collection[int]) -> dict[str, int]:
    """Count of ledger rows per status over several runs (a run and its child runs)."""
    rows = session.execute(
        select(BlockRecord.status, func.count()).where(BlockRecord.run_id.in_(list(run_ids))).group_by(BlockRecord.status)
    )
    return {status: int(count) for status, count in rows}


def done_count(session: Session, run_id: int, op_keys: Collection[str]) -> int:
    """How many blocks one run finished under some op keys (each block once, however many
    attempts it took): what the run computed, even when a batch's answer was lost (a Prefect
    retry of a batch, a SLURM worker gone after it wrote)."""
    blocks = (select(BlockRecord.op_key, BlockRecord.array_uri, BlockRecord.block_id)
              .where(BlockRecord.run_id == run_id, BlockRecord.op_key.in_(list(op_keys)), BlockRecord.status == "done")
              .distinct().subquery())
    return int(session.scalar(select(func.count()).select_from(blocks)) or 0)


def block_attempts(session: Session, run_id: int) -> list[BlockAttempt]:
    """Every ledger row of one run in the order they were written (the last row of a block is
    its latest attempt)."""
    rows = session.execute(
        select(BlockRecord.op, BlockRecord.block_id, BlockRecord.status, BlockRecord.error)
        .where(BlockRecord.run_id == run_id).order_by(BlockRecord.id)
    )
    return [BlockAttempt(*row) for row in rows]


class BlockState(NamedTuple):
    """The latest attempt at one block of one array in some runs (:func:`latest_block_states`)."""

    run_id: int
    op: str
    array_uri: str
    block_id: str
    status: str


def latest_block_states(session: Session, run_ids: Collection[int]) -> list[BlockState]:
    """The latest ledger row of every (op, array, block) the runs ``run_ids`` attempted (a run
    and the runs inside it: a pipeline's stages), in the order the blocks were first attempted."""
    latest = (select(func.max(BlockRecord.id).label("last"), func.min(BlockRecord.id).label("first"))
              .where(BlockRecord.run_id.in_(list(run_ids)))
              .group_by(BlockRecord.op, BlockRecord.array_uri, BlockRecord.block_id).subquery())
    rows = session.execute(
        select(BlockRecord.run_id, BlockRecord.op, BlockRecord.array_uri, BlockRecord.block_id, BlockRecord.status)
        .join(latest, BlockRecord.id == latest.c.last).where(BlockRecord.run_id.in_(list(run_ids))).order_by(latest.c.first))
    return [BlockState(*row) for row in rows]


class StateCount(NamedTuple):
    """How many blocks of one op in one run have their latest attempt failed, or not
    (:func:`latest_state_counts`)."""

    run_id: int
    op: str
    failed: bool
    blocks: int
    block_ids: list[str]
    """The blocks, when ``failed`` (empty otherwise)."""


def latest_state_counts(session: Session, run_ids: Collection[int]) -> list[StateCount]:
    """:func:`latest_block_states` counted per run, op and failed-or-not in the database (what
    ``tierflow status`` shows: a run of 10^5 blocks sends a few rows, not 10^5), ordered by the
    first attempt of their blocks; failed blocks are named."""
    rows = session.execute(status_query(run_ids))
    return [StateCount(int(run_id), op, bool(failed), int(count), sorted(ids or [])) for run_id, op, failed, count, ids, _ in rows]


def status_query(run_ids: Collection[int]) -> Select[Any]:
    """The query of :func:`latest_state_counts`. One run's (the usual case) streams over the index
    ``ix_block_ledger_run_block`` alone: its rows come grouped by block, with their id and status,
    so the latest attempt of each is found without a sort or a hash of 10^5 blocks (``benchmarks/scale.py``).
    Several runs (a pipeline's stages) may share a block: the latest row across them counts."""
    ids = sorted({int(run_id) for run_id in run_ids})
    if len(ids) == 1:
        last, first = func.max(BlockRecord.id), func.min(BlockRecord.id)
        blocks = (select(BlockRecord.op, BlockRecord.block_id, last.label("last"), first.label("first"),
                         func.coalesce(last.filter(BlockRecord.status == "failed"), 0).label("last_failed"))
                  .where(BlockRecord.run_id == ids[0])
                  .group_by(BlockRecord.run_id, BlockRecord.op, BlockRecord.array_uri, BlockRecord.block_id).subquery())
        failed = (blocks.c.last == blocks.c.last_failed).label("failed")
        return (select(literal(ids[0]).label("run_id"), blocks.c.op, failed, func.count(),
                       func.array_agg(blocks.c.block_id).filter(failed), func.min(blocks.c.first))
                .group_by(blocks.c.op, failed).order_by(func.min(blocks.c.first)))
    latest = (select(func.max(BlockRecord.id).label("last"), func.min(BlockRecord.id).label("first"))
              .where(BlockRecord.run_id.in_(ids))
              .group_by(BlockRecord.op, BlockRecord.array_uri, BlockRecord.block_id).subquery())
    failed = (BlockRecord.status == "failed").label("failed")
    # the join repeats the runs' condition (the last row is one of theirs anyway): without it
    # PostgreSQL hashed the whole ledger to find those rows
    return (select(BlockRecord.run_id, BlockRecord.op, failed, func.count(), func.array_agg(BlockRecord.block_id).filter(failed),
                   func.min(latest.c.first))
            .join(latest, BlockRecord.id == latest.c.last).where(BlockRecord.run_id.in_(ids))
            .group_by(BlockRecord.run_id, BlockRecord.op, failed).order_by(func.min(latest.c.first)))


def count_done_since(session: Session, array_uri_prefix: str, since: datetime) -> int:
    """How many ``done`` rows were recorded since ``since`` for arrays whose URI starts with
    ``array_uri_prefix`` (what a progress bar of a running operation counts).

    Raises
    ------
    DatabaseError
        If the database does not answer (a progress poller skips that poll).
    """
    query = select(func.count()).select_from(BlockRecord).where(
        BlockRecord.array_uri.startswith(array_uri_prefix), BlockRecord.status == "done", BlockRecord.created_at >= since
    )
    try:
        return int(session.scalar(query) or 0)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"cannot count the done blocks of {array_uri_prefix}: {type(exc).__name__}") from exc
