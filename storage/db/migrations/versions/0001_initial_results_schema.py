"""Initial results schema.

Why: the first schema of tierflow's results database: runs (keyed by Prefect flow-run id),
raw snapshots and their file manifests, artifacts with promotion/deletion state and lineage
edges (to other artifacts or to snapshots), the block ledger that makes block work resumable,
per-object features with per-channel intensities, and retention events.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-21 14:31:12.210038
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('runs',
    sa.Column('flow_run_id', sa.UUID(), nullable=True),
    sa.Column('flow_name', sa.Text(), nullable=False),
    sa.Column('parameters', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('code_version', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('host', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'crashed')", name=op.f('ck_runs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('flow_run_id', name=op.f('uq_runs_flow_run_id'))
    )
    op.create_table('block_ledger',
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('op', sa.Text(), nullable=False),
    sa.Column('op_key', sa.Text(), nullable=False),
    sa.Column('array_uri', sa.Text(), nullable=False),
    sa.Column('block_id', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), server_default='1', nullable=False),
    sa.Column('host', sa.Text(), nullable=True),
    sa.Column('slurm_job_id', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=True),
    sa.Column('bytes', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f('ck_block_ledger_status')),
    sa.CheckConstraint('attempt >= 1', name=op.f('ck_block_ledger_attempt_positive')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_block_ledger_run_id_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_block_ledger'))
    )
    op.create_index('ix_block_ledger_op_key_array_status', 'block_ledger', ['op_key', 'array_uri', 'status'], unique=False)
    op.create_index(op.f('ix_block_ledger_run_id'), 'block_ledger', ['run_id'], unique=False)
    op.create_table('snapshots',
    sa.Column('dataset', sa.Text(), nullable=False),
    sa.Column('snapshot_id', sa.Text(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('file_count', sa.Integer(), nullable=False),
    sa.Column('total_bytes', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_snapshots_run_id_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_snapshots')),
    sa.UniqueConstraint('dataset', 'snapshot_id', name=op.f('uq_snapshots_dataset_snapshot_id'))
    )
    op.create_index(op.f('ix_snapshots_snapshot_id'), 'snapshots', ['snapshot_id'], unique=False)
    op.create_table('artifacts',
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('tier', sa.String(length=16), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('bytes', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('dataset', sa.Text(), nullable=True),
    sa.Column('snapshot_pk', sa.BigInteger(), nullable=True),
    sa.Column('pinned', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('promoted_uri', sa.Text(), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('meta', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("tier IN ('source', 'output', 'scratch', 'ephemeral')", name=op.f('ck_artifacts_tier')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_artifacts_run_id_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['snapshot_pk'], ['snapshots.id'], name=op.f('fk_artifacts_snapshot_pk_snapshots'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('uri', name=op.f('uq_artifacts_uri'))
    )
    op.create_index(op.f('ix_artifacts_run_id'), 'artifacts', ['run_id'], unique=False)
    op.create_table('snapshot_files',
    sa.Column('snapshot_pk', sa.BigInteger(), nullable=False),
    sa.Column('relative_path', sa.Text(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('media_type', sa.Text(), nullable=True),
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['snapshot_pk'], ['snapshots.id'], name=op.f('fk_snapshot_files_snapshot_pk_snapshots'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_snapshot_files')),
    sa.UniqueConstraint('snapshot_pk', 'relative_path', name=op.f('uq_snapshot_files_snapshot_pk_relative_path'))
    )
    op.create_table(
        "artifact_lineage",
        sa.Column("artifact_id", sa.BigInteger(), nullable=False),
        sa.Column("input_artifact_id", sa.BigInteger(), nullable=True),
        sa.Column("input_snapshot_pk", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("num_nonnulls(input_artifact_id, input_snapshot_pk) = 1", name=op.f("ck_artifact_lineage_one_input")),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name=op.f("fk_artifact_lineage_artifact_id_artifacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["input_artifact_id"], ["artifacts.id"], name=op.f("fk_artifact_lineage_input_artifact_id_artifacts"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["input_snapshot_pk"], ["snapshots.id"], name=op.f("fk_artifact_lineage_input_snapshot_pk_snapshots"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_artifact_lineage_run_id_runs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifact_lineage")),
    )
    op.create_index(op.f("ix_artifact_lineage_artifact_id"), "artifact_lineage", ["artifact_id"], unique=False)
    op.create_index(op.f("ix_artifact_lineage_input_artifact_id"), "artifact_lineage", ["input_artifact_id"], unique=False)
    op.create_index(
        "uq_artifact_lineage_artifact_input_artifact",
        "artifact_lineage",
        ["artifact_id", "input_artifact_id"],
        unique=True,
        postgresql_where=sa.text("input_artifact_id IS NOT NULL"),
    )
    op.create_index(
        "uq_artifact_lineage_artifact_input_snapshot",
        "artifact_lineage",
        ["artifact_id", "input_snapshot_pk"],
        unique=True,
        postgresql_where=sa.text("input_snapshot_pk IS NOT NULL"),
    )
    op.create_table(
        "object_features",
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("artifact_id", sa.BigInteger(), nullable=True),
        sa.Column("dataset", sa.Text(), nullable=True),
        sa.Column("sample", sa.Text(), nullable=True),
        sa.Column("time_point", sa.Integer(), server_default="0", nullable=False),
        sa.Column("label", sa.BigInteger(), nullable=False),
        sa.Column("area", sa.BigInteger(), nullable=False),
        sa.Column("centroid_z", sa.Float(), nullable=False),
        sa.Column("centroid_y", sa.Float(), nullable=False),
        sa.Column("centroid_x", sa.Float(), nullable=False),
        sa.Column("bbox_min_z", sa.Integer(), nullable=False),
        sa.Column("bbox_min_y", sa.Integer(), nullable=False),
        sa.Column("bbox_min_x", sa.Integer(), nullable=False),
        sa.Column("bbox_max_z", sa.Integer(), nullable=False),
        sa.Column("bbox_max_y", sa.Integer(), nullable=False),
        sa.Column("bbox_max_x", sa.Integer(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name=op.f("fk_object_features_artifact_id_artifacts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_object_features_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_object_features")),
        sa.UniqueConstraint("artifact_id", "time_point", "label", name=op.f("uq_object_features_artifact_id_time_point_label")),
    )
    op.create_index(op.f("ix_object_features_run_id"), "object_features", ["run_id"], unique=False)
    op.create_table(
        "retention_events",
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("artifact_id", sa.BigInteger(), nullable=True),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("action IN ('deleted', 'rotated')", name=op.f("ck_retention_events_action")),
        sa.ForeignKeyConstraint(
            ["artifact_id"], ["artifacts.id"], name=op.f("fk_retention_events_artifact_id_artifacts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_retention_events_run_id_runs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_events")),
    )
    op.create_table(
        "object_intensities",
        sa.Column("feature_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("min", sa.Float(), nullable=False),
        sa.Column("max", sa.Float(), nullable=False),
        sa.Column("mean", sa.Float(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["object_features.id"], name=op.f("fk_object_intensities_feature_id_object_features"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_object_intensities")),
        sa.UniqueConstraint("feature_id", "channel", name=op.f("uq_object_intensities_feature_id_channel")),
    )


def downgrade() -> None:
    op.drop_table("object_intensities")
    op.drop_table("retention_events")
    op.drop_index(op.f("ix_object_features_run_id"), table_name="object_features")
    op.drop_table("object_features")
    op.drop_index(
        "uq_artifact_lineage_artifact_input_snapshot",
        table_name="artifact_lineage",
        postgresql_where=sa.text("input_snapshot_pk IS NOT NULL"),
    )
    op.drop_index(
        "uq_artifact_lineage_artifact_input_artifact",
        table_name="artifact_lineage",
        postgresql_where=sa.text("input_artifact_id IS NOT NULL"),
    )
    op.drop_index(op.f("ix_artifact_lineage_input_artifact_id"), table_name="artifact_lineage")
    op.drop_index(op.f("ix_artifact_lineage_artifact_id"), table_name="artifact_lineage")
    op.drop_table("artifact_lineage")
    op.drop_table("snapshot_files")
    op.drop_index(op.f("ix_artifacts_run_id"), table_name="artifacts")
    op.drop_table("artifacts")
    op.drop_index(op.f("ix_snapshots_snapshot_id"), table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index(op.f("ix_block_ledger_run_id"), table_name="block_ledger")
    op.drop_index("ix_block_ledger_op_key_array_status", table_name="block_ledger")
    op.drop_table("block_ledger")
    op.drop_table("runs")
