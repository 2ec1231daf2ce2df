"""The results tables (a catalogue: every ORM model of tierflow in one place).

Relationships are ``lazy="raise"``: a query says what it loads, so no request hides an N+1.
Enumerated values are text with CHECK constraints (cheaper to migrate than PostgreSQL enums).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from tierflow.storage.db.base import Base

__all__ = [
    "ARTIFACT_TIERS",
    "RETENTION_ACTIONS",
    "BLOCK_STATUSES",
    "RUN_STATUSES",
    "Artifact",
    "ArtifactLineage",
    "Base",
    "BlockRecord",
    "ObjectFeature",
    "ObjectIntensity",
    "OpMemo",
    "RetentionEvent",
    "Run",
    "Snapshot",
    "SnapshotFile",
    "TrackKinematics",
    "TrackMsd",
    "TrackPoint",
]

RUN_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "crashed")
ARTIFACT_TIERS = ("source", "output", "scratch", "ephemeral")
BLOCK_STATUSES = ("running", "done", "failed", "stale")
RETENTION_ACTIONS = ("deleted", "rotated")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Run(Base):
    """One execution of a flow (or a CLI operation), keyed by its Prefect flow-run id."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),)

    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), unique=True)
    flow_name: Mapped[str] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    code_version: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    host: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    message: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    """The run this one ran inside (an op run of a pipeline stage), or None."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """What the run returned (summary counts and locations), once completed."""

    @property
    def seconds(self) -> float | None:
        """Wall time of the run, if it has ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class Snapshot(Base):
    """An immutable raw snapshot on Tier 1; ``snapshot_id`` is derived from its content."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("dataset", "snapshot_id"),)

    dataset: Mapped[str] = mapped_column(Text)
    snapshot_id: Mapped[str] = mapped_column(Text, index=True)
    uri: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))

    files: Mapped[list[SnapshotFile]] = relationship(
        back_populates="snapshot", lazy="raise", cascade="all, delete-orphan", order_by="SnapshotFile.relative_path"
    )


class SnapshotFile(Base):
    """One file of a snapshot's manifest."""

    __tablename__ = "snapshot_files"
    __table_args__ = (UniqueConstraint("snapshot_pk", "relative_path"),)

    snapshot_pk: Mapped[int] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    relative_path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str | None] = mapped_column(Text)

    snapshot: Mapped[Snapshot] = relationship(back_populates="files", lazy="raise")


class Artifact(Base):
    """A file or array a run produced, on some tier, with its promotion and deletion state."""

    __tablename__ = "artifacts"
    __table_args__ = (CheckConstraint(_one_of("tier", ARTIFACT_TIERS), name="tier"),)

    kind: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    tier: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(Text, unique=True)
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    dataset: Mapped[str | None] = mapped_column(Text)
    snapshot_pk: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id", ondelete="RESTRICT"))
    pinned: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    promoted_uri: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    meta: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ArtifactLineage(Base):
    """An edge ``artifact <- input``: the input is another artifact or a snapshot, never both."""

    __tablename__ = "artifact_lineage"
    __table_args__ = (
        CheckConstraint("num_nonnulls(input_artifact_id, input_snapshot_pk) = 1", name="one_input"),
        Index(
            "uq_artifact_lineage_artifact_input_artifact",
            "artifact_id",
            "input_artifact_id",
            unique=True,
            postgresql_where=text("input_artifact_id IS NOT NULL"),
        ),
        Index(
            "uq_artifact_lineage_artifact_input_snapshot",
            "artifact_id",
            "input_snapshot_pk",
            unique=True,
            postgresql_where=text("input_snapshot_pk IS NOT NULL"),
        ),
    )

    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), index=True)
    input_artifact_id: Mapped[int | None] = mapped_column(
        ForeignKey("artifacts.id", ondelete="RESTRICT"), index=True
    )
    input_snapshot_pk: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id", ondelete="RESTRICT"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))


class BlockRecord(Base):
    """The block ledger: one row per attempt at one block of one operation."""

    __tablename__ = "block_ledger"
    __table_args__ = (
        CheckConstraint(_one_of("status", BLOCK_STATUSES), name="status"),
        CheckConstraint("attempt >= 1", name="attempt_positive"),
        Index("ix_block_ledger_op_key_array_status", "op_key", "array_uri", "status"),
        # a run's rows grouped by block, with what `tierflow status` counts (an index-only scan;
        # migration 0009); serves lookups by run id too
        Index("ix_block_ledger_run_block", "run_id", "op", "array_uri", "block_id", postgresql_include=["id", "status"]),
    )

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    op: Mapped[str] = mapped_column(Text)
    op_key: Mapped[str] = mapped_column(Text)
    array_uri: Mapped[str] = mapped_column(Text)
    block_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    host: Mapped[str | None] = mapped_column(Text)
    slurm_job_id: Mapped[str | None] = mapped_column(Text)
    seconds: Mapped[float | None] = mapped_column(Float)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    input_fingerprint: Mapped[str | None] = mapped_column(Text)
    """What the block read (see :mod:`storage.fingerprints`); a changed input recomputes it."""


class ObjectFeature(Base):
    """One segmented object at one time point: geometry, with intensities per channel."""

    __tablename__ = "object_features"
    __table_args__ = (UniqueConstraint("artifact_id", "time_point", "label"),)

    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"))
    dataset: Mapped[str | None] = mapped_column(Text)
    sample: Mapped[str | None] = mapped_column(Text)
    time_point: Mapped[int] = mapped_column(Integer, server_default="0")
    label: Mapped[int] = mapped_column(BigInteger)
    area: Mapped[int] = mapped_column(BigInteger)
    centroid_z: Mapped[float] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    centroid_x: Mapped[float] = mapped_column(Float)
    bbox_min_z: Mapped[int] = mapped_column(Integer)
    bbox_min_y: Mapped[int] = mapped_column(Integer)
    bbox_min_x: Mapped[int] = mapped_column(Integer)
    bbox_max_z: Mapped[int] = mapped_column(Integer)
    bbox_max_y: Mapped[int] = mapped_column(Integer)
    bbox_max_x: Mapped[int] = mapped_column(Integer)
    # shape (voxel units) and, with a known voxel size, physical columns (units in the names);
    # NULL where they do not apply (2-D: volume_um3, centroid_z_um, flatness, surface_area_um2)
    volume_um3: Mapped[float | None] = mapped_column(Float)
    area_um2: Mapped[float | None] = mapped_column(Float)
    centroid_z_um: Mapped[float | None] = mapped_column(Float)
    centroid_y_um: Mapped[float | None] = mapped_column(Float)
    centroid_x_um: Mapped[float | None] = mapped_column(Float)
    axis_major_length: Mapped[float | None] = mapped_column(Float)
    axis_minor_length: Mapped[float | None] = mapped_column(Float)
    axis_major_length_um: Mapped[float | None] = mapped_column(Float)
    axis_minor_length_um: Mapped[float | None] = mapped_column(Float)
    eccentricity: Mapped[float | None] = mapped_column(Float)
    elongation: Mapped[float | None] = mapped_column(Float)
    flatness: Mapped[float | None] = mapped_column(Float)
    exposed_faces: Mapped[int | None] = mapped_column(BigInteger)
    surface_area_um2: Mapped[float | None] = mapped_column(Float)
    perimeter_um: Mapped[float | None] = mapped_column(Float)

    intensities: Mapped[list[ObjectIntensity]] = relationship(
        back_populates="feature", lazy="raise", cascade="all, delete-orphan"
    )


class ObjectIntensity(Base):
    """Intensity statistics of one object in one channel."""

    __tablename__ = "object_intensities"
    __table_args__ = (UniqueConstraint("feature_id", "channel"),)

    feature_id: Mapped[int] = mapped_column(ForeignKey("object_features.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(Text)
    min: Mapped[float] = mapped_column(Float)
    max: Mapped[float] = mapped_column(Float)
    mean: Mapped[float] = mapped_column(Float)
    sum: Mapped[float] = mapped_column(Float)

    feature: Mapped[ObjectFeature] = relationship(back_populates="intensities", lazy="raise")


class RetentionEvent(Base):
    """One deletion or rotation made by the retention flow (dry runs record nothing)."""

    __tablename__ = "retention_events"
    __table_args__ = (CheckConstraint(_one_of("action", RETENTION_ACTIONS), name="action"),)

    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id", ondelete="SET NULL"))
    tier: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrackPoint(Base):
    """One object of a track at one time point."""

    __tablename__ = "track_points"
    __table_args__ = (UniqueConstraint("run_id", "sample", "time_point", "label"),
                      Index("ix_track_points_run_id_track_id", "run_id", "track_id"))

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    dataset: Mapped[str | None] = mapped_column(Text)
    sample: Mapped[str] = mapped_column(Text, server_default="")
    track_id: Mapped[int] = mapped_column(BigInteger)
    parent_track_id: Mapped[int | None] = mapped_column(BigInteger)
    time_point: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(BigInteger)
    centroid_z: Mapped[float] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    centroid_x: Mapped[float] = mapped_column(Float)
    displacement: Mapped[float | None] = mapped_column(Float)
    """Distance from the track's previous time point (µm with a voxel size, else voxels); NULL at its first."""
    speed: Mapped[float | None] = mapped_column(Float)
    """``displacement`` over the time since the previous time point (per s with a time interval, else per frame)."""


class TrackKinematics(Base):
    """Per-track displacement and speed."""

    __tablename__ = "track_kinematics"
    __table_args__ = (UniqueConstraint("run_id", "sample", "track_id"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    dataset: Mapped[str | None] = mapped_column(Text)
    sample: Mapped[str] = mapped_column(Text, server_default="")
    track_id: Mapped[int] = mapped_column(BigInteger)
    n_points: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    path_length: Mapped[float] = mapped_column(Float)
    net_displacement: Mapped[float] = mapped_column(Float)
    mean_speed: Mapped[float | None] = mapped_column(Float)
    max_speed: Mapped[float | None] = mapped_column(Float)


class TrackMsd(Base):
    """Mean squared displacement of one track at one time lag."""

    __tablename__ = "track_msd"
    __table_args__ = (UniqueConstraint("run_id", "sample", "track_id", "lag"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    sample: Mapped[str] = mapped_column(Text, server_default="")
    track_id: Mapped[int] = mapped_column(BigInteger)
    lag: Mapped[int] = mapped_column(Integer)
    lag_time: Mapped[float] = mapped_column(Float)
    msd: Mapped[float] = mapped_column(Float)
    n_pairs: Mapped[int] = mapped_column(Integer)


class OpMemo(Base):
    """An op request the ledger confirmed up to date, so ``tierflow op`` can answer it again
    from one query without importing zarr or SQLAlchemy (:mod:`tierflow.storage.db.repo.quick`).

    ``memo_key`` names the request (op, version, resolved parameters, absolute locations, block
    shape); ``stat_digest`` the inputs' file stats and the output's metadata when it was
    confirmed; ``ledger_state`` the output's ledger rows then (count, done, newest id)."""

    __tablename__ = "op_memos"

    memo_key: Mapped[str] = mapped_column(String(64), unique=True)
    op: Mapped[str] = mapped_column(Text)
    op_key: Mapped[str] = mapped_column(Text)
    output_uri: Mapped[str] = mapped_column(Text)
    stat_digest: Mapped[str] = mapped_column(String(64))
    ledger_state: Mapped[str] = mapped_column(Text)
    blocks: Mapped[int] = mapped_column(Integer)
    block_shape: Mapped[str] = mapped_column(Text)
    """The block shape fitted to the input (JSON list), as the run rows record it."""
