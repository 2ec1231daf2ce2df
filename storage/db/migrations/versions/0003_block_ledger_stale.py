"""Block ledger: status ``stale``.

Why: a ledger row says a block of an operation is done *in an output array*. When that array is
deleted, or overwritten by another operation (another op key), its done rows no longer describe
what is on disk; marking them ``stale`` (instead of deleting them) keeps the history of the work
while a re-run computes those blocks again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 18:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f('ck_block_ledger_status'), 'block_ledger', type_='check')
    op.create_check_constraint(op.f('ck_block_ledger_status'), 'block_ledger', "status IN ('running', 'done', 'failed', 'stale')")


def downgrade() -> None:
    op.execute("DELETE FROM block_ledger WHERE status = 'stale'")
    op.drop_constraint(op.f('ck_block_ledger_status'), 'block_ledger', type_='check')
    op.create_check_constraint(op.f('ck_block_ledger_status'), 'block_ledger', "status IN ('running', 'done', 'failed')")
