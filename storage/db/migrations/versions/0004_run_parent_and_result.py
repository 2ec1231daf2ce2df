"""Runs: parent run and result.

Why: the pipeline runs each operation of a stage as its own recorded run inside one Prefect
flow run; ``parent_id`` ties those op runs to the pipeline run (``tierflow runs show``), and
``result`` keeps what a completed run returned, so an identical re-run is served from it and
``runs show`` can print it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21 19:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('runs', sa.Column('parent_id', sa.BigInteger(), nullable=True))
    op.add_column('runs', sa.Column('result', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.create_index(op.f('ix_runs_parent_id'), 'runs', ['parent_id'], unique=False)
    op.create_foreign_key(op.f('fk_runs_parent_id_runs'), 'runs', 'runs', ['parent_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    op.drop_constraint(op.f('fk_runs_parent_id_runs'), 'runs', type_='foreignkey')
    op.drop_index(op.f('ix_runs_parent_id'), table_name='runs')
    op.drop_column('runs', 'result')
    op.drop_column('runs', 'parent_id')
