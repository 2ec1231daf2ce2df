"""Retention events: what the retention flow deleted or rotated, and why."""

from __future__ import annotations

from sqlalchemy.orm import Session

from tierflow.storage.db.models import RETENTION_ACTIONS, RetentionEvent

__all__ = ["record_retention_event"]


def record_retention_event(
    session: Session,
    *,
    tier: str,
    uri: str,
    action: str,
    bytes: int,
    reason: str,
    run_id: int | None = None,
    artifact_id: int | None = None,
) -> RetentionEvent:
    """Record one deletion or rotation (never called by a dry run)."""
    if action not in RETENTION_ACTIONS:
        raise ValueError(f"retention action {action!r} is not one of {RETENTION_ACTIONS}")
    event = RetentionEvent(
        tier=tier, uri=uri, action=action, bytes=bytes, reason=reason, run_id=run_id, artifact_id=artifact_id
    )
    session.add(event)
    session.flush()
    return event
