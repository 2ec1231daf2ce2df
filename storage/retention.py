"""Retention: decide what may be deleted from Tiers 2-4, and delete exactly that.

Rules (per tier, from configuration):

* **Tier 3 scratch** — an artifact is deleted once it is *consumed*: promoted itself, or every
  artifact derived from it (lineage) is consumed, recursively, and it has at least one; or once
  it is older than ``scratch_max_age_days`` (if set).
* **Tier 2 output** — deleted ``output_grace_days`` after it was promoted.
* **Tier 4 ephemeral** — files under ``logs/`` and ``tmp/`` older than ``ephemeral_max_age_days``
  are rotated out (``state/``, which holds the embedded database, is never touched).
* **Tier 1** is never touched, and a pinned artifact is never deleted.
* **Debris of interrupted writes** on any tier, Tier 1 included (no stored object is touched):
  multipart uploads never completed and write-once claims, once older than the tier's stale
  window (see :mod:`storage.tiers.s3_claims`) — :func:`plan_leftovers`.

:func:`plan_retention` computes the plan without side effects (``--dry-run`` prints it);
:func:`apply_retention` carries out a plan and records each deletion, so a dry run lists exactly
what the real run then deletes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tierflow.storage.arrays import array_sidecars
from tierflow.storage.db.models import Artifact, ArtifactLineage
from tierflow.storage.db.repo.artifacts import mark_deleted
from tierflow.storage.db.repo.retention import record_retention_event
from tierflow.storage.errors import TierError
from tierflow.storage.tiers.base import Leftover, Tier

__all__ = [
    "PlannedDeletion",
    "RetentionRules",
    "apply_retention",
    "consumed_artifacts",
    "plan_leftovers",
    "plan_retention",
    "tier_accounting",
]

EPHEMERAL_ROTATED = ("logs", "tmp")


@dataclass(frozen=True)
class RetentionRules:
    """Retention settings (days; ``None`` disables an age rule)."""

    scratch_max_age_days: float | None = 30.0
    output_grace_days: float = 7.0
    ephemeral_max_age_days: float | None = 14.0


@dataclass(frozen=True)
class PlannedDeletion:
    """One thing retention will delete."""

    tier: str
    key: str
    uri: str
    bytes: int
    reason: str
    action: str = "deleted"
    artifact_id: int | None = None
    leftover: Leftover | None = None


def consumed_artifacts(session: Session) -> set[int]:
    """Ids of live artifacts that are consumed: promoted, or all their derivatives consumed."""
    artifacts = {a.id: a for a in session.scalars(select(Artifact))}
    children: dict[int, list[int]] = defaultdict(list)
    for parent, child in session.execute(
        select(ArtifactLineage.input_artifact_id, ArtifactLineage.artifact_id).where(
            ArtifactLineage.input_artifact_id.is_not(None)
        )
    ):
        children[parent].append(child)
    memo: dict[int, bool] = {}

    def consumed(artifact_id: int, seen: frozenset[int]) -> bool:
        if artifact_id in memo:
            return memo[artifact_id]
        artifact = artifacts[artifact_id]
        if artifact.promoted_at is not None:
            result = True
        elif artifact_id in seen or not children[artifact_id]:
            result = False
        else:
            result = all(consumed(child, seen | {artifact_id}) for child in children[artifact_id])
        memo[artifact_id] = result
        return result

    return {artifact_id for artifact_id in artifacts if consumed(artifact_id, frozenset())}


def _artifact_bytes(tier: Tier, key: str) -> int:
    """Bytes of an artifact with the folders kept beside it (label's merge state)."""
    return sum(info.size for prefix in (key, *array_sidecars(key)) for info in tier.list(prefix))


def plan_retention(session: Session, tiers: Mapping[str, Tier], rules: RetentionRules, now: datetime) -> list[PlannedDeletion]:
    """What retention would delete now (no side effects).

    Parameters
    ----------
    session
        Results database session.
    tiers
        Tier name (``output``, ``scratch``, ``ephemeral``) to tier; ``source`` is ignored.
    rules
        Retention settings.
    now
        The time the rules are evaluated at (timezone-aware).
    """
    plan: list[PlannedDeletion] = []
    consumed = consumed_artifacts(session)
    live = session.scalars(
        select(Artifact).where(Artifact.deleted_at.is_(None), Artifact.tier.in_(("scratch", "output"))).order_by(Artifact.id)
    )
    for artifact in live:
        tier = tiers.get(artifact.tier)
        reason = None if tier is None or artifact.pinned else _reason(artifact, artifact.id in consumed, rules, now)
        if reason is None:
            continue
        key = tier.key_of(artifact.uri)
        plan.append(PlannedDeletion(artifact.tier, key, artifact.uri, _artifact_bytes(tier, key), reason, artifact_id=artifact.id))
    return plan + _rotated(tiers.get("ephemeral"), rules, now)


def _reason(artifact: Artifact, consumed: bool, rules: RetentionRules, now: datetime) -> str | None:
    """Why a live Tier 2/3 artifact goes now, or ``None`` if it stays."""
    if artifact.tier != "scratch":
        if artifact.promoted_at is not None and now - artifact.promoted_at > timedelta(days=rules.output_grace_days):
            return f"promoted more than {rules.output_grace_days:g} days ago"
        return None
    if artifact.promoted_at is not None:
        return "promoted"
    if consumed:
        return "every derived artifact is promoted"
    if rules.scratch_max_age_days is not None and now - artifact.created_at > timedelta(days=rules.scratch_max_age_days):
        return f"older than {rules.scratch_max_age_days:g} days"
    return None


def _rotated(ephemeral: Tier | None, rules: RetentionRules, now: datetime) -> list[PlannedDeletion]:
    """Tier 4's logs and temporary files older than ``[retention].ephemeral_max_age_days``."""
    if ephemeral is None or rules.ephemeral_max_age_days is None:
        return []
    cutoff = now - timedelta(days=rules.ephemeral_max_age_days)
    return [PlannedDeletion("ephemeral", info.key, ephemeral.uri(info.key), info.size,
                            f"older than {rules.ephemeral_max_age_days:g} days", action="rotated")
            for folder in EPHEMERAL_ROTATED for info in ephemeral.list(folder) if info.mtime is not None and info.mtime < cutoff]


def plan_leftovers(tiers: Mapping[str, Tier], now: datetime) -> list[PlannedDeletion]:
    """Debris of interrupted writes (unfinished uploads, claims) older than each tier's stale
    window, on every tier given (Tier 1 included: debris is never a stored object)."""
    return [
        PlannedDeletion(name, item.key, item.uri, item.bytes, item.reason, leftover=item)
        for name, tier in tiers.items()
        for item in tier.leftovers(now)
    ]


def apply_retention(
    session: Session, tiers: Mapping[str, Tier], plan: list[PlannedDeletion], *, run_id: int | None, now: datetime
) -> list[PlannedDeletion]:
    """Delete what ``plan`` lists and record each deletion; returns what was deleted.

    Raises
    ------
    TierError
        If the plan names an object on Tier 1 or a write-once tier (retention never deletes
        them; it only clears their debris).
    """
    done = []
    for item in plan:
        tier = tiers[item.tier]
        if item.leftover is not None:
            tier.clear_leftover(item.leftover)
        elif item.tier == "source" or tier.write_once:
            raise TierError(f"retention refuses to delete {item.uri}: tier {item.tier} is write-once")
        elif item.artifact_id is not None:
            for prefix in (item.key, *array_sidecars(item.key)):
                tier.delete_prefix(prefix)
            tier.delete(item.key)
            artifact = session.get(Artifact, item.artifact_id)
            if artifact is not None:
                mark_deleted(session, artifact, at=now)
        else:
            tier.delete(item.key)
        record_retention_event(
            session, tier=item.tier, uri=item.uri, action=item.action, bytes=item.bytes,
            reason=item.reason, run_id=run_id, artifact_id=item.artifact_id,
        )
        done.append(item)
    return done


def tier_accounting(session: Session, tiers: Mapping[str, Tier], plan: list[PlannedDeletion]) -> dict[str, dict[str, int]]:
    """Per tier: bytes used (listed), promoted (live artifacts with a verified Tier 1 copy) and
    reclaimable (what ``plan`` would delete)."""
    report: dict[str, dict[str, int]] = {}
    promoted: dict[str, int] = defaultdict(int)
    for artifact in session.scalars(select(Artifact).where(Artifact.deleted_at.is_(None), Artifact.promoted_at.is_not(None))):
        promoted[artifact.tier] += artifact.bytes
    reclaimable: dict[str, int] = defaultdict(int)
    for item in plan:
        reclaimable[item.tier] += item.bytes
    for name, tier in tiers.items():
        report[name] = {"used": tier.usage(""), "promoted": promoted[name], "reclaimable": reclaimable[name]}
    return report
