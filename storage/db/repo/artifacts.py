"""Artifacts, their promotion and deletion state, and lineage edges."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tierflow.storage.db.models import ARTIFACT_TIERS, Artifact, ArtifactLineage
from tierflow.storage.errors import TierflowError

__all__ = [
    "TierUsage",
    "add_artifact",
    "add_lineage",
    "artifact_by_id",
    "artifacts_by_ids",
    "get_artifact",
    "lineage_inputs",
    "list_artifacts",
    "live_usage_by_tier",
    "mark_deleted",
    "mark_promoted",
    "promotable_artifacts",
]


@dataclass(frozen=True)
class TierUsage:
    """How many live (not deleted) artifacts one tier holds, and their bytes."""

    tier: str
    count: int
    bytes: int


def add_artifact(
    session: Session,
    *,
    kind: str,
    name: str,
    tier: str,
    uri: str,
    bytes: int = 0,
    sha256: str | None = None,
    run_id: int | None = None,
    dataset: str | None = None,
    snapshot_pk: int | None = None,
    meta: dict[str, Any] | None = None,
    inputs: Iterable[int] = (),
    input_snapshots: Iterable[int] = (),
) -> Artifact:
    """Record an artifact and the lineage edges to the artifacts/snapshots it was made from."""
    if tier not in ARTIFACT_TIERS:
        raise TierflowError(f"artifact tier {tier!r} is not one of {ARTIFACT_TIERS}")
    artifact = Artifact(
        kind=kind,
        name=name,
        tier=tier,
        uri=uri,
        bytes=bytes,
        sha256=sha256,
        run_id=run_id,
        dataset=dataset,
        snapshot_pk=snapshot_pk,
        meta=dict(meta or {}),
    )
    session.add(artifact)
    session.flush()
    add_lineage(session, artifact, input_artifacts=inputs, input_snapshots=input_snapshots, run_id=run_id)
    return artifact


def add_lineage(
    session: Session,
    artifact: Artifact,
    *,
    input_artifacts: Iterable[int] = (),
    input_snapshots: Iterable[int] = (),
    run_id: int | None = None,
) -> None:
    """Add edges ``artifact <- input`` (existing edges are kept, not duplicated)."""
    known = lineage_inputs(session, artifact.id)
    for input_id in input_artifacts:
        if input_id == artifact.id:
            raise TierflowError(f"artifact {artifact.uri} cannot be its own input")
        if ("artifact", input_id) not in known:
            session.add(ArtifactLineage(artifact_id=artifact.id, input_artifact_id=input_id, run_id=run_id))
    for snapshot_pk in input_snapshots:
        if ("snapshot", snapshot_pk) not in known:
            session.add(ArtifactLineage(artifact_id=artifact.id, input_snapshot_pk=snapshot_pk, run_id=run_id))
    session.flush()


def lineage_inputs(session: Session, artifact_id: int) -> set[tuple[str, int]]:
    """The direct inputs of an artifact as ``("artifact", id)`` / ``("snapshot", pk)`` pairs."""
    rows = session.execute(
        select(ArtifactLineage.input_artifact_id, ArtifactLineage.input_snapshot_pk).where(
            ArtifactLineage.artifact_id == artifact_id
        )
    )
    return {("artifact", a) if a is not None else ("snapshot", s) for a, s in rows}


def get_artifact(session: Session, uri: str) -> Artifact | None:
    """The artifact at ``uri``, or ``None``."""
    return session.scalars(select(Artifact).where(Artifact.uri == uri)).one_or_none()


def artifact_by_id(session: Session, artifact_id: int) -> Artifact | None:
    """The artifact with row id ``artifact_id``, or ``None``."""
    return session.get(Artifact, artifact_id)


def artifacts_by_ids(session: Session, artifact_ids: Collection[int]) -> list[Artifact]:
    """The artifacts among ``artifact_ids`` that exist, by id."""
    if not artifact_ids:
        return []
    return list(session.scalars(select(Artifact).where(Artifact.id.in_(list(artifact_ids))).order_by(Artifact.id)))


def promotable_artifacts(session: Session, run_id: int) -> list[Artifact]:
    """The live Tier 2 (output) artifacts of run ``run_id`` not promoted yet, oldest first."""
    return list(session.scalars(
        select(Artifact)
        .where(Artifact.run_id == run_id, Artifact.tier == "output", Artifact.promoted_at.is_(None), Artifact.deleted_at.is_(None))
        .order_by(Artifact.id)
    ))


def live_usage_by_tier(session: Session) -> list[TierUsage]:
    """Count and bytes of the live (not deleted) artifacts per tier, by tier name."""
    rows = session.execute(
        select(Artifact.tier, func.count(), func.coalesce(func.sum(Artifact.bytes), 0))
        .where(Artifact.deleted_at.is_(None)).group_by(Artifact.tier).order_by(Artifact.tier)
    )
    return [TierUsage(tier, int(count), int(size)) for tier, count, size in rows]


def list_artifacts(
    session: Session, *, tier: str | None = None, run_id: int | None = None, include_deleted: bool = False
) -> list[Artifact]:
    """Artifacts, oldest first, filtered by tier and producing run."""
    query = select(Artifact).order_by(Artifact.id)
    if tier is not None:
        query = query.where(Artifact.tier == tier)
    if run_id is not None:
        query = query.where(Artifact.run_id == run_id)
    if not include_deleted:
        query = query.where(Artifact.deleted_at.is_(None))
    return list(session.scalars(query))


def mark_promoted(session: Session, artifact: Artifact, promoted_uri: str, at: datetime | None = None) -> Artifact:
    """Record that a verified copy of ``artifact`` now lives at ``promoted_uri`` on Tier 1."""
    artifact.promoted_uri = promoted_uri
    artifact.promoted_at = at or datetime.now(UTC)
    session.flush()
    return artifact


def mark_deleted(session: Session, artifact: Artifact, at: datetime | None = None) -> Artifact:
    """Record that an artifact's bytes were deleted from its tier."""
    artifact.deleted_at = at or datetime.now(UTC)
    session.flush()
    return artifact
