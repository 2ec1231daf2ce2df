"""Per-object features block by block: each batch returns the merged partial statistics of
its blocks (small: one row per object piece), the flow merges all batches exactly."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NONE

from tierflow.tasks.blockwise import BlockJob, SourceRef, ledgered_blocks, open_source
from tierflow.tasks.ops.features import PartialFeatures, merge_partials, partial_features
from tierflow.tasks.retry import retry_transient

__all__ = ["FeatureJob", "feature_partials"]


@dataclass(frozen=True, kw_only=True)
class FeatureJob(BlockJob):
    """Labels (``source``), intensity channels and the table the blocks contribute to."""

    op: str = "features"
    channels: dict[str, SourceRef]
    table_uri: str
    """The feature table the blocks contribute to (their ledger rows' array)."""


@task(name="feature-partials", retries=2, retry_delay_seconds=[1, 2], retry_condition_fn=retry_transient, cache_policy=NONE)
def feature_partials(job: FeatureJob, block_ids: list[str]) -> PartialFeatures:
    """Partial statistics of the objects in a batch of blocks (global coordinates)."""
    grid = job.grid
    labels = open_source(job.source)
    channels = {name: open_source(ref) for name, ref in job.channels.items()}
    parts: list[PartialFeatures] = []

    def work(block_id: str) -> int:
        roi = grid.block(block_id).write_roi
        # one voxel of the neighbours' labels: faces between blocks are told from the volume's border
        grown = roi.grow((1,) * roi.ndim, job.shape)
        context = labels.read(grown)
        block = context[roi.relative_to(grown)]
        intensities = {name: volume.read(roi) for name, volume in channels.items()}
        parts.append(partial_features(block, intensities, offset=roi.offset, context=context, context_offset=grown.offset))
        return int(block.nbytes)

    # features are recomputed whole on a re-run (partials are not kept): the ledger records the
    # work, but the done-check uses a key unique to this run
    ledgered_blocks(job, block_ids, work, key=f"{job.op_key}:run{job.run_id}", array_uri=job.table_uri)
    return merge_partials(parts) if parts else PartialFeatures.empty(len(job.shape), list(job.channels))
