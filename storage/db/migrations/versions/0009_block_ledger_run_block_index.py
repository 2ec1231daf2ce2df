"""Block ledger: one index on (run_id, op, array_uri, block_id) holding each row's id and status,
in place of the index on run_id alone.

Why: ``tierflow status RUN`` counts the latest attempt at every block of a run. On the run_id
index PostgreSQL read the run's rows from the table and sorted or hashed them by block (10^5
blocks: ~180 ms, spilling to disk); this index hands them over already grouped by block, with
what the count needs, so the query streams over the index alone (~80 ms under load;
``benchmarks/scale.py``). Its leading column serves every lookup by run id the old index served
(the runs' ON DELETE CASCADE too), so that one is dropped rather than kept beside it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 15:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_block_ledger_run_block', 'block_ledger', ['run_id', 'op', 'array_uri', 'block_id'], unique=False,
                    postgresql_include=['id', 'status'])
    op.drop_index('ix_block_ledger_run_id', table_name='block_ledger')


def downgrade() -> None:
    op.create_index('ix_block_ledger_run_id', 'block_ledger', ['run_id'], unique=False)
    op.drop_index('ix_block_ledger_run_block', table_name='block_ledger')
