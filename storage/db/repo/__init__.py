"""Query functions of the results database, one module per concept.

Every function takes a :class:`sqlalchemy.orm.Session` and leaves the transaction to the
caller (``with db.session() as session: ...``).

The package imports its modules on first use of a name (PEP 562), so that
:mod:`storage.db.repo.quick` (raw psycopg2, no SQLAlchemy) can be imported without the ORM.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.storage.db.repo.artifacts import (  # noqa: F401
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
    from tierflow.storage.db.repo.features import (  # noqa: F401
        ObjectCentroid,
        SHAPE_COLUMNS,
        add_object_features,
        count_objects,
        object_centroids,
    )
    from tierflow.storage.db.repo.memos import ledger_state, record_memo  # noqa: F401
    from tierflow.storage.db.repo.ledger import (  # noqa: F401
        BlockAttempt,
        block_attempts,
        block_counts,
        block_progress,
        count_done_since,
        done_blocks,
        done_count,
        done_in_run,
        failed_blocks,
        latest_block_states,
        latest_state_counts,
        record_blocks,
    )
    from tierflow.storage.db.repo.retention import record_retention_event  # noqa: F401
    from tierflow.storage.db.repo.runs import (  # noqa: F401
        adopt_run,
        child_runs,
        completed_runs_with_key,
        finish_run,
        get_run,
        count_runs,
        list_runs,
        lock_run,
        run_id_of_flow_run,
        start_run,
    )
    from tierflow.storage.db.repo.results import OBJECTS_VIEW, ResultScope, ViewRows, count_view_rows, result_scope, view_rows  # noqa: F401
    from tierflow.storage.db.repo.tracks import TrackRows, add_track_rows, track_rows  # noqa: F401
    from tierflow.storage.db.repo.snapshots import (  # noqa: F401
        ManifestEntry,
        get_snapshot,
        list_snapshots,
        match_snapshots,
        record_snapshot,
        snapshot_by_pk,
        snapshot_files,
        snapshot_paths,
    )

_WHERE: dict[str, str] = {
    "adopt_run": "tierflow.storage.db.repo.runs",
    "BlockAttempt": "tierflow.storage.db.repo.ledger",
    "ManifestEntry": "tierflow.storage.db.repo.snapshots",
    "OBJECTS_VIEW": "tierflow.storage.db.repo.results",
    "ObjectCentroid": "tierflow.storage.db.repo.features",
    "ResultScope": "tierflow.storage.db.repo.results",
    "SHAPE_COLUMNS": "tierflow.storage.db.repo.features",
    "TierUsage": "tierflow.storage.db.repo.artifacts",
    "TrackRows": "tierflow.storage.db.repo.tracks",
    "ViewRows": "tierflow.storage.db.repo.results",
    "add_artifact": "tierflow.storage.db.repo.artifacts",
    "add_lineage": "tierflow.storage.db.repo.artifacts",
    "add_object_features": "tierflow.storage.db.repo.features",
    "add_track_rows": "tierflow.storage.db.repo.tracks",
    "artifact_by_id": "tierflow.storage.db.repo.artifacts",
    "artifacts_by_ids": "tierflow.storage.db.repo.artifacts",
    "block_attempts": "tierflow.storage.db.repo.ledger",
    "block_counts": "tierflow.storage.db.repo.ledger",
    "block_progress": "tierflow.storage.db.repo.ledger",
    "child_runs": "tierflow.storage.db.repo.runs",
    "completed_runs_with_key": "tierflow.storage.db.repo.runs",
    "count_done_since": "tierflow.storage.db.repo.ledger",
    "count_objects": "tierflow.storage.db.repo.features",
    "count_runs": "tierflow.storage.db.repo.runs",
    "count_view_rows": "tierflow.storage.db.repo.results",
    "done_blocks": "tierflow.storage.db.repo.ledger",
    "done_count": "tierflow.storage.db.repo.ledger",
    "done_in_run": "tierflow.storage.db.repo.ledger",
    "failed_blocks": "tierflow.storage.db.repo.ledger",
    "finish_run": "tierflow.storage.db.repo.runs",
    "get_artifact": "tierflow.storage.db.repo.artifacts",
    "get_run": "tierflow.storage.db.repo.runs",
    "get_snapshot": "tierflow.storage.db.repo.snapshots",
    "latest_block_states": "tierflow.storage.db.repo.ledger",
    "latest_state_counts": "tierflow.storage.db.repo.ledger",
    "ledger_state": "tierflow.storage.db.repo.memos",
    "lineage_inputs": "tierflow.storage.db.repo.artifacts",
    "list_artifacts": "tierflow.storage.db.repo.artifacts",
    "list_runs": "tierflow.storage.db.repo.runs",
    "list_snapshots": "tierflow.storage.db.repo.snapshots",
    "live_usage_by_tier": "tierflow.storage.db.repo.artifacts",
    "lock_run": "tierflow.storage.db.repo.runs",
    "mark_deleted": "tierflow.storage.db.repo.artifacts",
    "mark_promoted": "tierflow.storage.db.repo.artifacts",
    "match_snapshots": "tierflow.storage.db.repo.snapshots",
    "object_centroids": "tierflow.storage.db.repo.features",
    "promotable_artifacts": "tierflow.storage.db.repo.artifacts",
    "record_blocks": "tierflow.storage.db.repo.ledger",
    "record_memo": "tierflow.storage.db.repo.memos",
    "record_retention_event": "tierflow.storage.db.repo.retention",
    "record_snapshot": "tierflow.storage.db.repo.snapshots",
    "result_scope": "tierflow.storage.db.repo.results",
    "run_id_of_flow_run": "tierflow.storage.db.repo.runs",
    "snapshot_by_pk": "tierflow.storage.db.repo.snapshots",
    "snapshot_files": "tierflow.storage.db.repo.snapshots",
    "snapshot_paths": "tierflow.storage.db.repo.snapshots",
    "start_run": "tierflow.storage.db.repo.runs",
    "track_rows": "tierflow.storage.db.repo.tracks",
    "view_rows": "tierflow.storage.db.repo.results",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
