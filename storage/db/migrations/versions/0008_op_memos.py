"""Op memos: an op request the ledger has confirmed up to date, with cheap stats of its files.

Why: answering a finished op from the ledger needs zarr (the input's shape, the blocks'
fingerprints) and SQLAlchemy, whose imports alone cost more than half of ``import prefect``.
A memo row lets ``tierflow op`` answer the same request again from one query over a raw
connection: the request's key (op, version, resolved parameters, absolute input and output
locations, block shape) names the row, and the row holds a digest of the inputs' file stats
(relative path, size, mtime) and the output's metadata, plus the ledger's state for the output
when it was confirmed. Anything that differs falls back to the full check.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'op_memos',
        sa.Column('memo_key', sa.String(length=64), nullable=False),
        sa.Column('op', sa.Text(), nullable=False),
        sa.Column('op_key', sa.Text(), nullable=False),
        sa.Column('output_uri', sa.Text(), nullable=False),
        sa.Column('stat_digest', sa.String(length=64), nullable=False),
        sa.Column('ledger_state', sa.Text(), nullable=False),
        sa.Column('blocks', sa.Integer(), nullable=False),
        sa.Column('block_shape', sa.Text(), nullable=False),
        sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_op_memos')),
        sa.UniqueConstraint('memo_key', name=op.f('uq_op_memos_memo_key')),
    )


def downgrade() -> None:
    op.drop_table('op_memos')
