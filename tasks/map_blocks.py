"""The map op's block tasks: compute a batch of blocks (:func:`map_blocks`), or sum the value
counts of a batch (:func:`histogram_blocks`, for Otsu's threshold)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.geometry import BlockGrid
from tierflow.tasks.blockwise import MapJob, SourceRef, open_source, run_map_batch
from tierflow.tasks.ops.filters import histogram_counts

__all__ = ["histogram_blocks", "map_blocks"]


@task(name="map-blocks", retries=2, retry_delay_seconds=[1, 2], cache_policy=NONE)
def map_blocks(job: MapJob, block_ids: list[str]) -> dict[str, Any]:
    """Compute one batch of blocks (see :mod:`tasks.blockwise`)."""
    return run_map_batch(job, block_ids)


@task(name="histogram-blocks", retries=2, retry_delay_seconds=1, cache_policy=NONE)
def histogram_blocks(source: SourceRef, shape: tuple[int, ...], block_shape: tuple[int, ...], block_ids: list[str]) -> list[int]:
    """Summed value counts of a batch of blocks (for Otsu on integer images)."""
    grid, volume, total = BlockGrid(shape, block_shape), open_source(source), None
    for block_id in block_ids:
        counts = histogram_counts(volume.read(grid.block(block_id).write_roi))
        total = counts if total is None else total + counts
    return total.tolist() if total is not None else []
