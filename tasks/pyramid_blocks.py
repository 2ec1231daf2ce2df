"""Block-wise pyramid levels: each output block of level ``l`` reads the matching region of
level ``l-1`` (``factor`` times larger) and downsamples it, so every output chunk is written by
exactly one block (see :mod:`tasks.ops.pyramid` for the kernels and dtype policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from storage.arrays import ArrayLocation
from storage.db.database import Database
from storage.geometry import BlockGrid, Roi
from tasks.blockwise import FaultHook, SourceRef, ledgered_blocks, open_source
from tasks.ops.pyramid import downsample_labels, downsample_mean

__all__ = ["LevelJob", "copy_chunk", "downsample_level"]


@dataclass(frozen=True)
class LevelJob:
    """One pyramid level: where it reads, where it writes, its factors and kernel."""

    op_key: str
    run_id: int
    source: SourceRef
    target: ArrayLocation
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    factors: tuple[int, ...]
    method: str
    level: int
    db: Database
    fault: FaultHook | None = field(default=None, compare=False)
    copy_from: ArrayLocation | None = None
    """Level 0 only: a zarr array with the same chunks and codecs whose encoded chunks are
    copied as they are (no decode and re-encode; see :func:`copy_chunk`)."""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.out_shape, self.block_shape)


def _input_roi(out_roi: Roi, factors: Sequence[int], in_shape: Sequence[int]) -> Roi:
    start = tuple(o * f for o, f in zip(out_roi.offset, factors, strict=True))
    stop = tuple(min(e * f, s) for e, f, s in zip(out_roi.end, factors, in_shape, strict=True))
    return Roi(start, tuple(b - a for a, b in zip(start, stop, strict=True)))


@task(name="downsample-level", retries=2, retry_delay_seconds=[1, 2], cache_policy=NONE)
def downsample_level(job: LevelJob, block_ids: list[str]) -> dict[str, Any]:
    """Compute a batch of output blocks of one level."""
    volume = open_source(job.source)
    output = job.target.writer()
    grid = job.grid

    if job.copy_from is not None:
        source_store = job.copy_from.tier.zarr_store(job.copy_from.key, read_only=True)
        target_store = job.target.tier.zarr_store(job.target.key)
        encode_key = job.copy_from.open().metadata.encode_chunk_key

        def copy(block_id: str) -> int:
            return copy_chunk(source_store, target_store, encode_key(grid.block(block_id).index))

        return ledgered_blocks(
            db=job.db, run_id=job.run_id, op="downsample:level0", key=f"{job.op_key}:level0", array_uri=job.target.uri,
            block_ids=block_ids, work=copy, fault=job.fault, fault_prefix="level0:",
        )

    def work(block_id: str) -> int:
        out_roi = grid.block(block_id).write_roi
        data = volume.read(_input_roi(out_roi, job.factors, job.in_shape))
        if all(f == 1 for f in job.factors):
            values = data
        elif job.method == "mean":
            values = downsample_mean(data, job.factors)
        else:
            values = downsample_labels(data, job.factors, method=job.method)
        output[out_roi.slices] = values
        return int(values.nbytes)

    return ledgered_blocks(
        db=job.db, run_id=job.run_id, op=f"downsample:level{job.level}", key=f"{job.op_key}:level{job.level}",
        array_uri=job.target.uri, block_ids=block_ids, work=work, fault=job.fault, fault_prefix=f"level{job.level}:",
    )


def copy_chunk(source_store: Any, target_store: Any, chunk_key: str) -> int:
    """Copy one encoded chunk between two zarr stores of arrays with equal chunks and codecs
    (an absent chunk, i.e. all fill value, removes the target's); returns the bytes copied."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    data = sync(source_store.get(chunk_key, prototype=default_buffer_prototype()))
    if data is None:
        sync(target_store.delete(chunk_key))
        return 0
    sync(target_store.set(chunk_key, data))
    return len(data)
