"""Tracks and kinematics.

Why: the block engine links segmented objects across time points (track_points, with the
parent track of a division) and computes per-track kinematics (track_kinematics) and the mean
squared displacement per time lag (track_msd); they are results like object_features, so they
live in PostgreSQL next to them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 15:25:04.546765
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('track_kinematics',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('dataset', sa.Text(), nullable=True),
    sa.Column('sample', sa.Text(), server_default='', nullable=False),
    sa.Column('track_id', sa.BigInteger(), nullable=False),
    sa.Column('n_points', sa.Integer(), nullable=False),
    sa.Column('start', sa.Integer(), nullable=False),
    sa.Column('end', sa.Integer(), nullable=False),
    sa.Column('path_length', sa.Float(), nullable=False),
    sa.Column('net_displacement', sa.Float(), nullable=False),
    sa.Column('mean_speed', sa.Float(), nullable=True),
    sa.Column('max_speed', sa.Float(), nullable=True),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_track_kinematics_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_track_kinematics')),
    sa.UniqueConstraint('run_id', 'sample', 'track_id', name=op.f('uq_track_kinematics_run_id_sample_track_id'))
    )
    op.create_index(op.f('ix_track_kinematics_run_id'), 'track_kinematics', ['run_id'], unique=False)
    op.create_table('track_msd',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('sample', sa.Text(), server_default='', nullable=False),
    sa.Column('track_id', sa.BigInteger(), nullable=False),
    sa.Column('lag', sa.Integer(), nullable=False),
    sa.Column('lag_time', sa.Float(), nullable=False),
    sa.Column('msd', sa.Float(), nullable=False),
    sa.Column('n_pairs', sa.Integer(), nullable=False),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_track_msd_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_track_msd')),
    sa.UniqueConstraint('run_id', 'sample', 'track_id', 'lag', name=op.f('uq_track_msd_run_id_sample_track_id_lag'))
    )
    op.create_index(op.f('ix_track_msd_run_id'), 'track_msd', ['run_id'], unique=False)
    op.create_table('track_points',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('dataset', sa.Text(), nullable=True),
    sa.Column('sample', sa.Text(), server_default='', nullable=False),
    sa.Column('track_id', sa.BigInteger(), nullable=False),
    sa.Column('parent_track_id', sa.BigInteger(), nullable=True),
    sa.Column('time_point', sa.Integer(), nullable=False),
    sa.Column('label', sa.BigInteger(), nullable=False),
    sa.Column('centroid_z', sa.Float(), nullable=False),
    sa.Column('centroid_y', sa.Float(), nullable=False),
    sa.Column('centroid_x', sa.Float(), nullable=False),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_track_points_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_track_points')),
    sa.UniqueConstraint('run_id', 'sample', 'time_point', 'label', name=op.f('uq_track_points_run_id_sample_time_point_label'))
    )
    op.create_index('ix_track_points_run_id_track_id', 'track_points', ['run_id', 'track_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_track_points_run_id_track_id', table_name='track_points')
    op.drop_table('track_points')
    op.drop_index(op.f('ix_track_msd_run_id'), table_name='track_msd')
    op.drop_table('track_msd')
    op.drop_index(op.f('ix_track_kinematics_run_id'), table_name='track_kinematics')
    op.drop_table('track_kinematics')
