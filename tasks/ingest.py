"""Tasks of the ingest flow: hash raw files, upload them to Tier 1 (batched, retried)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.snapshots import Manifest, ManifestEntry, build_manifest, upload_snapshot_file
from tierflow.storage.tiers import Tier
from tierflow.tasks.retry import retry_transient

__all__ = ["hash_raw_files", "upload_snapshot_files"]


@task(name="hash-raw-files", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NONE)
def hash_raw_files(raw_dir: str, dataset: str, relative_paths: list[str]) -> list[ManifestEntry]:
    """sha256 and size of a batch of raw files."""
    return list(build_manifest(raw_dir, dataset, relative_paths=relative_paths).files)


@task(name="upload-snapshot-files", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient, cache_policy=NONE)
def upload_snapshot_files(tier: Tier, manifest: Manifest, raw_dir: str, entries: list[ManifestEntry]) -> dict[str, int]:
    """Put a batch of snapshot files on Tier 1 (identical copies already there are kept).

    Returns
    -------
    dict[str, int]
        ``{"uploaded": n, "present": m, "bytes": b}`` for the batch.
    """
    counts = {"uploaded": 0, "present": 0, "bytes": 0}
    for entry in entries:
        outcome = upload_snapshot_file(tier, manifest, Path(raw_dir), entry)
        counts[outcome] += 1
        if outcome == "uploaded":
            counts["bytes"] += entry.bytes
    return counts
