"""Block-wise level 0 of a sample image: each block of the (T, C, Z, Y, X) array is one spatial
block of one channel at one time point, read from that volume (a staged channel, or the
segmentation) and written in place. Blocks are whole shards when the array is sharded, so no two
batches ever write one stored object. Higher levels are pyramid levels
(:func:`tasks.pyramid_blocks.downsample_level` with factors 1 along t and c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.arrays import ArrayLocation
from tierflow.storage.geometry import Roi
from tierflow.tasks.blockwise import BlockJob, SourceRef, ledgered_blocks, open_source
from tierflow.tasks.retry import retry_transient

__all__ = ["PlaceJob", "place_volumes"]


@dataclass(frozen=True, kw_only=True)
class PlaceJob(BlockJob):
    """Level 0 of a sample image (``target``, of ``shape`` T, C, Z, Y, X) from one volume per
    (time index, channel index): ``sources["t,c"]``, a local path or a zarr array on a tier; a
    missing one stays zero."""

    op: str = "image:place"
    target: ArrayLocation
    sources: dict[str, SourceRef]


@task(name="image-place", retries=2, retry_delay_seconds=[1, 2], retry_condition_fn=retry_transient, cache_policy=NONE)
def place_volumes(job: PlaceJob, block_ids: list[str]) -> dict[str, Any]:
    """Write a batch of level-0 blocks, each from its volume."""
    output = job.target.writer()
    grid = job.grid
    opened: dict[str, Any] = {}

    def work(block_id: str) -> int:
        roi = grid.block(block_id).write_roi
        t, c = roi.offset[0], roi.offset[1]
        index = f"{t},{c}"
        if index not in job.sources:
            return 0
        if index not in opened:
            opened[index] = open_source(job.sources[index])
        volume = opened[index]
        data = np.asarray(volume.read(Roi(roi.offset[2:], roi.shape[2:])))
        output[roi.slices] = data.reshape(roi.shape)
        return int(data.nbytes)

    return ledgered_blocks(job, block_ids, work, key=f"{job.op_key}:place", array_uri=job.target.uri, op=job.op)
