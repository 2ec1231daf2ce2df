"""The ``promote`` flow: copy a run's artifacts to Tier 1, verify them, then record them.

By default every live Tier 2 (output) artifact of the run that is not promoted yet; or the
artifacts named. Each lands at ``promoted/<dataset>/<snapshot_id>/run-<id>/<name>`` on Tier 1,
is re-read and its sha256 checked, and only then is the promotion recorded: the original gets
``promoted_at``/``promoted_uri`` and a Tier 1 artifact row is added with lineage to it. A copy
that does not verify is discarded, reported, and not recorded; the flow then fails listing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.progress import StageProgress
from tierflow.flows.runtime.run_names import promote_run_name
from tierflow.flows.runtime.runs import recorded_run
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.db.repo import (
    add_artifact,
    artifact_by_id,
    get_artifact,
    get_run,
    mark_promoted,
    promotable_artifacts,
    snapshot_by_pk,
)
from tierflow.storage.errors import IntegrityError, TierflowError
from tierflow.storage.promotion import AfterCopyHook, promoted_prefix
from tierflow.tasks.promote import promote_artifact

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from tierflow.storage.db.models import Artifact

__all__ = ["promote"]


def _select(session: Session, run: int | str | None, artifacts: list[str] | None) -> list[Artifact]:
    if artifacts:
        chosen = []
        for ref in artifacts:
            found = artifact_by_id(session, int(ref)) if str(ref).isdigit() else get_artifact(session, str(ref))
            if found is None:
                raise TierflowError(f"no artifact {ref!r}", hint="see `tierflow artifacts list`")
            chosen.append(found)
        return chosen
    if run is None:
        raise TierflowError("name a run or artifacts to promote", hint="tierflow promote --run RUN")
    row = get_run(session, run)
    if row is None:
        raise TierflowError(f"no run {run!r}", hint="see `tierflow runs list`")
    return promotable_artifacts(session, row.id)


def _publish_promotions(promoted: list[dict[str, Any]], failed: list[dict[str, str]]) -> None:
    """A table artifact (key ``promotion``) of what was promoted, and what failed, for the Prefect UI."""
    from prefect.artifacts import create_table_artifact

    rows = [{"artifact": p["artifact"], "state": "promoted (verified)", "tier1_uri": p["uri"], "bytes": p["bytes"], "sha256": p["sha256"]}
            for p in promoted]
    rows += [{"artifact": f["artifact"], "state": f"NOT promoted: {f['error']}", "tier1_uri": "", "bytes": 0, "sha256": ""} for f in failed]
    create_table_artifact(rows, key="promotion", description=f"promotion: {len(promoted)} artifact(s) promoted to Tier 1 "
                          f"({sum(p['bytes'] for p in promoted):,} bytes)" + (f", {len(failed)} failed" if failed else ""))


@flow(name="promote", flow_run_name=promote_run_name)
def promote(
    run: str | None = None,
    artifacts: list[str] | None = None,
    config_dir: str | None = None,
    after_copy: AfterCopyHook | None = None,
    parent_run: int | None = None,
    stage: str = "promote",
) -> dict[str, Any]:
    """Promote artifacts to Tier 1 with read-back verification.

    Parameters
    ----------
    run
        Run id or Prefect flow-run id (prefix) whose Tier 2 artifacts to promote.
    artifacts
        Artifact ids or URIs (any tier) instead.
    config_dir
        A configs folder; default: found upward.
    after_copy
        Test-only fault injection (see :data:`storage.promotion.AfterCopyHook`).
    parent_run
        The run this promotion is part of (a pipeline's).
    stage
        The name its progress is shown under (a pipeline promotes its results, then its report).

    Returns
    -------
    dict
        ``promoted`` (list of {artifact, uri, sha256, bytes}), ``failed`` (list of {artifact, error}).
    """
    logger = get_run_logger()
    tiers = open_tiers(load_config(config_dir)).by_name()
    db = open_database(load_db_config(config_dir), migrate=True)
    promoted: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    with recorded_run(db, "promote", {"run": run, "artifacts": artifacts}, parent_id=parent_run) as run_id:
        with db.session() as session:
            chosen = _select(session, run, artifacts)
            plans = []
            for artifact in chosen:
                if artifact.tier == "source" or artifact.deleted_at is not None:
                    raise TierflowError(f"artifact {artifact.id} ({artifact.uri}) is on Tier 1 or deleted: nothing to promote")
                if artifact.promoted_at is not None:
                    raise TierflowError(
                        f"artifact {artifact.id} ({artifact.name}) is already promoted, to {artifact.promoted_uri} "
                        f"on {artifact.promoted_at:%Y-%m-%d %H:%M:%S %Z}; nothing was changed",
                        hint="its Tier 1 copy is final (see `tierflow artifacts list --all`); promote only artifacts not promoted yet",
                    )
                snapshot = snapshot_by_pk(session, artifact.snapshot_pk) if artifact.snapshot_pk else None
                if snapshot is None:
                    raise TierflowError(
                        f"artifact {artifact.id} ({artifact.uri}) has no snapshot: promotion files it under its snapshot"
                    )
                source = tiers[artifact.tier]
                target_key = promoted_prefix(snapshot.dataset, snapshot.snapshot_id, f"run-{artifact.run_id}", artifact.name)
                plans.append((artifact.id, artifact.uri, source, source.key_of(artifact.uri), target_key, artifact.sha256))
        futures = [
            (plan, promote_artifact.submit(plan[2], plan[3], tiers["source"], plan[4], plan[5], after_copy)) for plan in plans
        ]
        progress = StageProgress(stage, len(plans), run=int(run_id), unit="artifacts")
        for (artifact_id, uri, _, _, _, _), future in futures:
            try:
                result = future.result()
            except (IntegrityError, TierflowError) as exc:
                logger.error("artifact %s (%s) NOT promoted: %s", artifact_id, uri, exc.message)
                failed.append({"artifact": str(artifact_id), "uri": uri, "error": exc.message})
                continue
            with db.session() as session:
                original = artifact_by_id(session, artifact_id)
                assert original is not None
                mark_promoted(session, original, result.uri)
                add_artifact(
                    session, kind=original.kind, name=original.name, tier="source", uri=result.uri,
                    bytes=result.bytes, sha256=result.sha256, run_id=run_id, dataset=original.dataset,
                    snapshot_pk=original.snapshot_pk, meta={"promoted_from": original.uri}, inputs=[original.id],
                )
            promoted.append({"artifact": str(artifact_id), "uri": result.uri, "sha256": result.sha256, "bytes": result.bytes})
            logger.info("promoted artifact %s (%s) -> %s (%d bytes, verified)", artifact_id, uri, result.uri, result.bytes)
            progress.advance(1)
        progress.finish()
        _publish_promotions(promoted, failed)
        if failed:
            raise IntegrityError(
                f"{len(failed)} artifact(s) not promoted: " + "; ".join(f"{f['artifact']} ({f['uri']}): {f['error']}" for f in failed),
                hint="nothing was recorded for them; fix the cause and promote again",
            )
    return {"promoted": promoted, "failed": failed, "run_id": run_id}
