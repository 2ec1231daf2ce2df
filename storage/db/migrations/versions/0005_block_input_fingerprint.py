"""Block ledger: the fingerprint of what each block read.

Why: an op's cache key named the whole input's content, so repairing one chunk of an input
recomputed every block. The key now names the input (its location, or its content when known)
and each ledger row keeps a fingerprint of the stored pieces its block read (the chunks under
its read ROI); a done block whose fingerprint changed is computed again, and only it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('block_ledger', sa.Column('input_fingerprint', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('block_ledger', 'input_fingerprint')
