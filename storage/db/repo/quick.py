"""The op memo's answer over a raw psycopg2 connection: one query finds the memo of an op
request, checks the output's ledger is as it was when the memo was written, and records the
``up_to_date`` run row.

Why raw psycopg2 here, unlike every other module of :mod:`storage.db.repo`: importing
SQLAlchemy (with the ORM models) costs ~0.25-0.35 s of a process, measured with
``benchmarks/cli.py`` and cProfile, which alone is more than half of the budget of a cached
``tierflow op`` (issue 15: at most half of ``import prefect``). So this one path writes its SQL
itself with psycopg2 (~0.03 s); every other query goes through SQLAlchemy. (The package imports
its modules lazily, so importing this one loads no SQLAlchemy.) The memo rows
are written by :func:`storage.db.repo.memos.record_memo`, whose ledger state this module's
query must compare equal (same ``count:done:newest id`` text).

Anything unusual (no server running, no password file, a schema without ``op_memos``) answers
None, and the caller falls back to the full check.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["MemoHit", "answer_from_memo", "embedded_connection"]

MemoHit = tuple[int, dict[str, Any]]
"""The new run's id and the memo's row (``op_key``, ``output_uri``, ``blocks``, ``block_shape``)."""

_FIND = """
SELECT m.op_key, m.output_uri, m.blocks, m.block_shape FROM op_memos m
WHERE m.memo_key = %s AND m.stat_digest = %s
  AND m.ledger_state = (SELECT concat_ws(':', count(*), count(*) FILTER (WHERE l.status = 'done'), coalesce(max(l.id), 0))
                        FROM block_ledger l WHERE l.array_uri = m.output_uri)
"""

_RECORD = """
WITH new AS (SELECT nextval(pg_get_serial_sequence('runs', 'id')) AS id)
INSERT INTO runs (id, flow_name, parameters, code_version, host, status, started_at, ended_at, result)
SELECT id, 'op', %s::jsonb, %s, %s, 'completed', now(), now(), jsonb_set(%s::jsonb, '{run_id}', to_jsonb(id)) FROM new
RETURNING id
"""


def embedded_connection(root: Path, host: str, user: str, dbname: str, timeout: float = 3.0) -> Any | None:
    """A psycopg2 connection to the running embedded server of ``root`` (where and with which
    password, as :class:`storage.db.embedded.EmbeddedPostgres` reads them), or None if it does not run."""
    from tierflow.storage.db.embedded import EmbeddedPostgres
    from tierflow.storage.errors import EmbeddedServerError

    server = EmbeddedPostgres(root, host=host, user=user, dbname=dbname)
    status = server.status()
    if not status.running or status.port is None:
        return None
    try:
        password = server.password()
    except (EmbeddedServerError, OSError):
        return None
    import psycopg2

    try:
        return psycopg2.connect(host=host, port=status.port, user=user, password=password, dbname=dbname,
                                connect_timeout=max(1, int(timeout)))
    except psycopg2.Error:
        return None


def answer_from_memo(connection: Any, memo_key: str, stat_digest: str, parameters: dict[str, Any],
                     result: dict[str, Any], code_version: str) -> MemoHit | None:
    """If a memo of ``memo_key`` has ``stat_digest`` and its output's ledger is unchanged,
    record a completed ``op`` run (``parameters``; ``result`` with its ``run_id`` set, and
    ``block_shape`` / ``op_key`` / ``blocks`` / ``output`` filled from the memo) and return it.
    None (nothing written) otherwise, or on any database error."""
    import psycopg2

    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(_FIND, (memo_key, stat_digest))
            row = cursor.fetchone()
            if row is None:
                return None
            memo = {"op_key": row[0], "output_uri": row[1], "blocks": int(row[2]), "block_shape": json.loads(row[3])}
            parameters = {**parameters, "block_shape": memo["block_shape"]}
            result = {**result, "op_key": memo["op_key"], "output": memo["output_uri"], "blocks": memo["blocks"],
                      "skipped": memo["blocks"]}
            cursor.execute(_RECORD, (json.dumps(parameters, default=str), code_version, socket.gethostname(),
                                     json.dumps(result, default=str)))
            return int(cursor.fetchone()[0]), memo
    except psycopg2.Error:
        return None
    finally:
        connection.close()
