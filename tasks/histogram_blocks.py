"""Whole-volume statistics block by block, for Otsu: each batch returns its blocks' value range
or their summed histogram (small: never a block's voxels), the flow adds the batches up."""

from __future__ import annotations

import numpy as np
from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.geometry import BlockGrid
from tierflow.tasks.blockwise import SourceRef, open_source
from tierflow.tasks.ops.filters import histogram_counts
from tierflow.tasks.retry import retry_transient

__all__ = ["histogram_blocks", "value_range_blocks"]


@task(name="value-range-blocks", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient, cache_policy=NONE)
def value_range_blocks(
    source: SourceRef, shape: tuple[int, ...], block_shape: tuple[int, ...], block_ids: list[str]
) -> tuple[float, float]:
    """The smallest and largest value of a batch of blocks (NaN if any block holds one)."""
    grid, volume = BlockGrid(shape, block_shape), open_source(source)
    lo, hi = np.inf, -np.inf
    for block_id in block_ids:
        data = volume.read(grid.block(block_id).write_roi)
        lo, hi = float(np.minimum(lo, data.min())), float(np.maximum(hi, data.max()))  # NumPy's keep a NaN
    return lo, hi


@task(name="histogram-blocks", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient, cache_policy=NONE)
def histogram_blocks(
    source: SourceRef,
    shape: tuple[int, ...],
    block_shape: tuple[int, ...],
    block_ids: list[str],
    bins: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> list[int]:
    """Summed histogram counts of a batch of blocks (see :func:`tasks.ops.filters.histogram_counts`:
    one bin per value for integer images, ``bins`` bins over ``value_range`` for float ones)."""
    grid, volume, total = BlockGrid(shape, block_shape), open_source(source), None
    for block_id in block_ids:
        counts = histogram_counts(volume.read(grid.block(block_id).write_roi), bins=bins, value_range=value_range)
        total = counts if total is None else total + counts
    return total.tolist() if total is not None else []
