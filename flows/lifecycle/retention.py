"""The ``retention`` flow: apply the per-tier rules of ``[retention]`` (Tier 1 is never touched).

``dry_run=True`` computes and returns the plan without deleting; a real run computes the same
plan, deletes exactly it, and records a retention event per deletion. Both report storage
accounting per tier (bytes used, promoted, reclaimable). Debris of interrupted S3 writes
(unfinished multipart uploads, stale write-once claims) is listed and cleared on every tier.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.progress import StageProgress
from tierflow.flows.runtime.run_names import retention_run_name
from tierflow.flows.runtime.runs import recorded_run
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.retention import RetentionRules, apply_retention, plan_leftovers, plan_retention, tier_accounting

__all__ = ["retention", "rules_from_config"]


def rules_from_config(config: Any) -> RetentionRules:
    """``[retention]`` as :class:`RetentionRules` (0 days disables an age rule)."""
    settings = config.retention
    return RetentionRules(
        scratch_max_age_days=settings.scratch_max_age_days or None,
        output_grace_days=settings.output_grace_days,
        ephemeral_max_age_days=settings.ephemeral_max_age_days or None,
    )


def _publish_plan(plan: list[Any], dry_run: bool) -> None:
    """A table artifact of what was deleted (key ``retention``) or, in a dry run, would be
    (``retention-dry-run``), for the Prefect UI."""
    from prefect.artifacts import create_table_artifact

    rows = [{"action": f"would be {item.action}" if dry_run else item.action, "tier": item.tier, "uri": item.uri, "bytes": item.bytes,
             "reason": item.reason} for item in plan]
    total = sum(item.bytes for item in plan)
    summary = f"would delete {len(rows)} item(s), {total:,} bytes (dry run)" if dry_run else f"deleted {len(rows)} item(s), {total:,} bytes"
    create_table_artifact(rows, key="retention-dry-run" if dry_run else "retention", description=f"retention: {summary}")


@flow(name="retention", flow_run_name=retention_run_name)
def retention(
    dry_run: bool = False,
    config_dir: str | None = None,
    artifact_ids: list[int] | None = None,
    parent_run: int | None = None,
) -> dict[str, Any]:
    """Delete what the retention rules allow (or, with ``dry_run``, only list it).

    Returns
    -------
    dict
        ``plan`` (each item: tier, uri, bytes, reason, action), ``deleted_bytes``, ``dry_run``
        and ``accounting`` per tier.
    """
    logger = get_run_logger()
    config = load_config(config_dir)
    tiers = open_tiers(config).by_name()
    managed = {name: tier for name, tier in tiers.items() if name != "source"}
    db = open_database(load_db_config(config_dir), migrate=True)
    now = datetime.now(UTC)
    rules = rules_from_config(config)
    with db.session() as session:
        plan = plan_retention(session, managed, rules, now) + plan_leftovers(tiers, now)
    if artifact_ids is not None:  # only these artifacts (a pipeline reclaiming its own scratch)
        chosen = set(artifact_ids)
        plan = [item for item in plan if item.artifact_id in chosen]
    if not dry_run:
        with (
            recorded_run(db, "retention", {"dry_run": False, "artifact_ids": artifact_ids}, parent_id=parent_run) as run_id,
            db.session() as session,
        ):
            progress = StageProgress("retention", len(plan), run=int(run_id), unit="items deleted")
            apply_retention(session, tiers, plan, run_id=run_id, now=now)
            progress.finish()
    with db.session() as session:  # what is reclaimable now (after a real run: what is left)
        later = datetime.now(UTC)
        remaining = plan if dry_run else plan_retention(session, managed, rules, later) + plan_leftovers(tiers, later)
        accounting = tier_accounting(session, tiers, remaining)
    for item in plan:
        logger.info("%s %s (%d bytes): %s", "would delete" if dry_run else "deleted", item.uri, item.bytes, item.reason)
    _publish_plan(plan, dry_run)
    return {
        "dry_run": dry_run,
        "plan": [asdict(item) for item in plan],
        "deleted_bytes": sum(item.bytes for item in plan),
        "accounting": accounting,
    }
