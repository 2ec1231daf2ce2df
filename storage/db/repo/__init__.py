"""Query functions of the results database, one module per concept.

Every function takes a :class:`sqlalchemy.orm.Session` and leaves the transaction to the
caller (``with db.session() as session: ...``).
"""

from tierflow.storage.db.repo.artifacts import (
    TierUsage,
    add_artifact,
    add_lineage,
    artifact_by_id,
    artifacts_by_ids,
    get_artifact,
    lineage_inputs,
    list_artifacts,
    live_usage_by_tier,
    mark_deleted,
    mark_promoted,
    promotable_artifacts,
)
from tierflow.storage.db.repo.features import ObjectCentroid, add_object_features, count_objects, object_centroids
from tierflow.storage.db.repo.ledger import (
    BlockAttempt,
    block_attempts,
    block_counts,
    block_progress,
    count_done_since,
    done_blocks,
    done_count,
    done_in_run,
    failed_blocks,
    record_blocks,
)
from tierflow.storage.db.repo.retention import record_retention_event
from tierflow.storage.db.repo.runs import (
    child_runs,
    completed_runs_with_key,
    finish_run,
    get_run,
    list_runs,
    lock_run,
    run_id_of_flow_run,
    start_run,
)
from tierflow.storage.db.repo.tracks import TrackRows, add_track_rows, track_rows
from tierflow.storage.db.repo.snapshots import (
    ManifestEntry,
    get_snapshot,
    list_snapshots,
    match_snapshots,
    record_snapshot,
    snapshot_by_pk,
    snapshot_files,
    snapshot_paths,
)

__all__ = [
    "BlockAttempt",
    "ManifestEntry",
    "ObjectCentroid",
    "TierUsage",
    "TrackRows",
    "add_artifact",
    "add_lineage",
    "add_object_features",
    "add_track_rows",
    "artifact_by_id",
    "artifacts_by_ids",
    "block_attempts",
    "block_counts",
    "done_count",
    "done_in_run",
    "block_progress",
    "child_runs",
    "completed_runs_with_key",
    "count_done_since",
    "count_objects",
    "done_blocks",
    "failed_blocks",
    "finish_run",
    "get_artifact",
    "get_run",
    "get_snapshot",
    "lineage_inputs",
    "list_artifacts",
    "list_runs",
    "list_snapshots",
    "live_usage_by_tier",
    "lock_run",
    "mark_deleted",
    "mark_promoted",
    "match_snapshots",
    "object_centroids",
    "promotable_artifacts",
    "record_blocks",
    "record_retention_event",
    "record_snapshot",
    "run_id_of_flow_run",
    "snapshot_by_pk",
    "snapshot_files",
    "snapshot_paths",
    "start_run",
    "track_rows",
]
