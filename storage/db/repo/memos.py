"""Op memos: an op request the ledger confirmed up to date (see :mod:`storage.db.repo.quick`, which
answers from them without SQLAlchemy)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from tierflow.storage.db.models import BlockRecord, OpMemo

__all__ = ["ledger_state", "record_memo"]


def ledger_state(session: Session, array_uri: str) -> str:
    """``count:done:newest id`` of the ledger rows of ``array_uri``: any new attempt, or a done
    row marked stale, changes it (:mod:`storage.db.repo.quick` compares the same text)."""
    done = func.count().filter(BlockRecord.status == "done")
    row = session.execute(select(func.count(), done, func.coalesce(func.max(BlockRecord.id), 0))
                          .where(BlockRecord.array_uri == array_uri)).one()
    return f"{row[0]}:{row[1]}:{row[2]}"


def record_memo(session: Session, *, memo_key: str, op: str, op_key: str, output_uri: str, stat_digest: str, ledger: str,
                blocks: int, block_shape: Sequence[int]) -> None:
    """Remember (or refresh) that the request ``memo_key`` was up to date with these stats."""
    values = {"op": op, "op_key": op_key, "output_uri": output_uri, "stat_digest": stat_digest, "ledger_state": ledger,
              "blocks": blocks, "block_shape": json.dumps(list(block_shape)), "updated_at": func.now()}
    statement = insert(OpMemo).values(memo_key=memo_key, **values)
    session.execute(statement.on_conflict_do_update(index_elements=[OpMemo.memo_key], set_=values))
