"""The map op's block task: compute a batch of blocks (Otsu's histograms: :mod:`tasks.histogram_blocks`)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tierflow.tasks.blockwise import MapJob, run_map_batch
from tierflow.tasks.retry import retry_transient

__all__ = ["map_blocks"]


@task(name="map-blocks", retries=2, retry_delay_seconds=[1, 2], retry_condition_fn=retry_transient, cache_policy=NONE)
def map_blocks(job: MapJob, block_ids: list[str]) -> dict[str, Any]:
    """Compute one batch of blocks (see :mod:`tasks.blockwise`)."""
    return run_map_batch(job, block_ids)
