"""Query functions of the results database, one module per concept.

Every function takes a :class:`sqlalchemy.orm.Session` and leaves the transaction to the
caller (``with db.session() as session: ...``).
"""

from tierflow.storage.db.repo.artifacts import (
    add_artifact,
    add_lineage,
    get_artifact,
    lineage_inputs,
    list_artifacts,
    mark_deleted,
    mark_promoted,
)
from tierflow.storage.db.repo.features import add_object_features, count_objects
from tierflow.storage.db.repo.ledger import block_progress, done_blocks, failed_blocks, record_blocks
from tierflow.storage.db.repo.retention import record_retention_event
from tierflow.storage.db.repo.runs import finish_run, get_run, list_runs, start_run
from tierflow.storage.db.repo.tracks import add_track_rows
from tierflow.storage.db.repo.snapshots import ManifestEntry, get_snapshot, list_snapshots, record_snapshot, snapshot_files

__all__ = [
    "ManifestEntry",
    "add_artifact",
    "add_lineage",
    "add_object_features",
    "add_track_rows",
    "block_progress",
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
    "mark_deleted",
    "mark_promoted",
    "record_blocks",
    "record_retention_event",
    "record_snapshot",
    "snapshot_files",
    "start_run",
]
