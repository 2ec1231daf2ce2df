"""Block-wise execution of a map operation: a task takes a *batch* of blocks.

A batch is a contiguous group of blocks. Its task

1. takes a PostgreSQL advisory lock per block (so two runs never compute the same block),
2. asks the ledger which of its blocks are done already (one query) and skips them,
3. reads the union of the remaining blocks' read ROIs **once** (each chunk decoded once per
   batch, instead of once per block that needs it as halo),
4. runs the kernel on each block's read ROI cut from that region and writes the block's inner
   part (whole chunks),
5. records every block in the ledger (done or failed, attempt, host, SLURM job id, seconds,
   bytes) in one insert, and raises listing the failed blocks, so Prefect retries only those,
   and only when one of them failed transiently (``BatchFailed.transient``, see :mod:`tasks.retry`).

Task arguments are paths, block ids and content ids, never arrays (Prefect hashes arguments;
a zarr array hashes by reference).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from tierflow.storage.arrays import ArrayLocation
from tierflow.storage.chunk_cache import ChunkCache
from tierflow.storage.db.database import Database
from tierflow.storage.db.locks import advisory_locks
from tierflow.storage.db.repo.ledger import done_blocks, done_fingerprints, record_blocks, settle_running
from tierflow.errors import BatchFailed, TierflowError
from tierflow.storage.fingerprints import InputFingerprint, combined_block_fingerprint, input_fingerprint
from tierflow.storage.geometry import Block, BlockGrid
from tierflow.storage.volumes import Volume, ZarrVolume, open_volume
from tierflow.tasks.ops.registry import get_op
from tierflow.tasks.retry import is_transient

__all__ = ["BatchFailed", "MapJob", "block_fingerprints", "blocks_to_compute", "describe_failure", "ledgered_blocks", "open_source",
           "plan_batches", "run_map_batch", "source_fingerprint"]

SourceRef = str | ArrayLocation
FaultHook = Callable[[str], None]

HALO_CACHE_BYTES = 512 * 2**20
_HALO_CACHE = ChunkCache(HALO_CACHE_BYTES)
"""Decoded chunks shared by the batches of this process: a batch's halo chunks are mostly its
neighbours' own chunks, decoded moments before (bounded memory, see storage.chunk_cache)."""


def open_source(ref: SourceRef) -> Volume:
    """Open an input: a local path (any registered loader) or a zarr array on a tier."""
    if isinstance(ref, ArrayLocation):
        return ZarrVolume(ref.open(read_only=True), ref.uri)
    return open_volume(ref)


def source_fingerprint(ref: SourceRef) -> InputFingerprint:
    """The fingerprint of an input (see :mod:`storage.fingerprints`)."""
    return input_fingerprint(open_source(ref), location=ref if isinstance(ref, ArrayLocation) else None)


def describe_failure(exc: BaseException) -> str:
    """A block's error as the ledger records it: type and message on one line (at most 2000 characters)."""
    message = exc.message if isinstance(exc, TierflowError) else str(exc)
    return f"{type(exc).__name__}: {message}"[:2000]


@dataclass(frozen=True)
class MapJob:
    """Everything a batch task needs (no arrays: locations, ids and parameters)."""

    op: str
    params: dict[str, Any]
    op_key: str
    run_id: int
    source: SourceRef
    target: ArrayLocation
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    halo: tuple[int, ...]
    db: Database
    extras: dict[str, SourceRef] = field(default_factory=dict)
    mask: SourceRef | None = None
    fault: FaultHook | None = field(default=None, compare=False)
    attempt_offset: int = 0
    """Attempts made before this submission (a batch re-submitted after its SLURM job ran out
    of memory or time records attempt 2, 3, ... in the ledger)."""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape, self.halo)

    def lock_name(self, block_id: str) -> str:
        return f"{self.op_key}|{self.target.uri}|{block_id}"

    def inputs(self) -> dict[str, SourceRef]:
        """Every input a block reads, by name: ``-i``, the extra inputs, ``--mask``."""
        return {"-i": self.source, **self.extras, **({"--mask": self.mask} if self.mask is not None else {})}


def block_fingerprints(job: MapJob, block_ids: Sequence[str] | None = None) -> dict[str, str]:
    """The input fingerprint of each block (all of the grid by default): what its read ROI
    reads now, over every input."""
    fingerprints = {name: source_fingerprint(ref) for name, ref in job.inputs().items()}
    grid = job.grid
    blocks = grid if block_ids is None else (grid.block(b) for b in block_ids)
    return {block.block_id: combined_block_fingerprint(fingerprints, block.read_roi) for block in blocks}


def blocks_to_compute(done: dict[str, str | None], current: dict[str, str]) -> list[str]:
    """The blocks not done, or done from an input that has changed since (in grid order)."""
    return [block_id for block_id, fingerprint in current.items() if done.get(block_id, "\0") != fingerprint]


def plan_batches(grid: BlockGrid, block_ids: Sequence[str], *, max_batches: int, min_batches: int = 1, target_voxels: int = 64 * 2**20) -> list[list[str]]:
    """Group blocks into contiguous batches: few enough task runs, large enough to amortise the
    per-task overhead, and at least ``min_batches`` (to keep every worker busy)."""
    wanted = set(block_ids)
    if not wanted:
        return []
    block_voxels = int(np.prod(grid.block_shape))
    per_batch = max(1, min(target_voxels // block_voxels, -(-len(wanted) // max(1, min_batches))))
    per_batch = max(per_batch, -(-len(wanted) // max_batches))
    # grow a super-block along the last axes first (they are contiguous in memory and on disk)
    factors = [1] * len(grid.grid_shape)
    for axis in reversed(range(len(factors))):
        while factors[axis] < grid.grid_shape[axis] and int(np.prod(factors)) * 2 <= per_batch:
            factors[axis] *= 2
    batches: dict[tuple[int, ...], list[str]] = {}
    for block in grid:
        if block.block_id in wanted:
            key = tuple(i // f for i, f in zip(block.index, factors, strict=True))
            batches.setdefault(key, []).append(block.block_id)
    return [batches[key] for key in sorted(batches)]


def _attempt() -> int:
    try:
        from prefect.runtime import task_run

        return int(task_run.run_count or 1)
    except Exception:  # noqa: BLE001 - outside Prefect
        return 1


def run_map_batch(job: MapJob, block_ids: Sequence[str]) -> dict[str, Any]:
    """Process one batch (see the module docstring). Returns counts and timings.

    Raises
    ------
    BatchFailed
        If any block failed; the others are written and recorded as done.
    """
    op = get_op(job.op)
    grid = job.grid
    attempt = _attempt() + job.attempt_offset
    host = socket.gethostname()
    slurm_job = os.environ.get("SLURM_JOB_ID")
    started = time.perf_counter()
    with advisory_locks(job.db, [job.lock_name(b) for b in block_ids]):
        with job.db.session() as session:
            done = done_fingerprints(session, job.op_key, job.target.uri)
        fingerprints = block_fingerprints(job, block_ids)
        todo: list[Block] = [grid.block(b) for b in blocks_to_compute(done, fingerprints)]
        if not todo:
            return {"done": 0, "skipped": len(block_ids), "failed": 0, "seconds": 0.0, "bytes": 0}
        if slurm_job:  # in a SLURM job: if the job dies with the batch, the flow learns where it ran
            with job.db.session() as session:
                record_blocks(session, [{"run_id": job.run_id, "op": job.op, "op_key": job.op_key, "array_uri": job.target.uri,
                                         "block_id": block.block_id, "status": "running", "attempt": attempt, "host": host,
                                         "slurm_job_id": slurm_job, "started_at": datetime.now(UTC)} for block in todo])
        region = todo[0].read_roi
        for block in todo[1:]:
            region = region.union(block.read_roi)
        read_started = time.perf_counter()
        volume = open_source(job.source)
        # with a halo, each block's read ROI comes from the decoded-chunk cache (each chunk decoded
        # about once; no batch-sized array); without one, the batch's region is read in one go
        per_block = any(job.halo) and isinstance(volume, ZarrVolume)
        data = None if per_block else volume.read(region)
        extras = {name: open_source(ref).read(region) for name, ref in job.extras.items()}
        if job.mask is not None:
            mask = open_source(job.mask).read(region)
        read_seconds = time.perf_counter() - read_started
        target = job.target.writer()
        rows, failed, first_error, transient = [], [], "", False
        compute_seconds, read_share = 0.0, read_seconds / len(todo)
        for block in todo:
            block_started = time.perf_counter()
            row: dict[str, Any] = {
                "run_id": job.run_id, "op": job.op, "op_key": job.op_key, "array_uri": job.target.uri,
                "block_id": block.block_id, "attempt": attempt, "host": host, "slurm_job_id": slurm_job,
                "started_at": datetime.now(UTC), "input_fingerprint": fingerprints[block.block_id],
            }
            try:
                if job.fault is not None:
                    job.fault(block.block_id)
                # the kernel runs per block (read ROI = block + halo, cut from the batch's region):
                # its working arrays stay small enough for the allocator to reuse them, where one
                # region-sized float array per batch cost fresh, kernel-zeroed pages every time
                # (a third of the CPU time on 512 MiB, measured with perf)
                inside = block.read_roi.relative_to(region)
                # decoded chunks are shared by the batches of one run (a later run may read a repaired input)
                block_data = volume.read(block.read_roi, cache=_HALO_CACHE, cache_key=(job.op_key, job.run_id)) if per_block else data[inside]
                where = {"origin": block.read_roi.offset, "volume_shape": job.shape} if op.wants_offset else {}
                result = op.kernel(block_data, job.params, **where, **{name: array[inside] for name, array in extras.items()})
                if job.mask is not None:
                    result = np.where(mask[inside] != 0, result, np.zeros((), dtype=result.dtype))
                values = result[block.write_roi.relative_to(block.read_roi)]
                compute_seconds += time.perf_counter() - block_started
                target[block.write_roi.slices] = values
                row.update(status="done", bytes=int(values.nbytes))
            except Exception as exc:  # noqa: BLE001 - a block's failure is recorded, not fatal to the batch
                row.update(status="failed", error=describe_failure(exc))
                failed.append(block.block_id)
                first_error, transient = first_error or row["error"], transient or is_transient(exc)
            row.update(seconds=read_share + time.perf_counter() - block_started, finished_at=datetime.now(UTC))
            rows.append(row)
        with job.db.session() as session:
            if slurm_job:
                settle_running(session, job.run_id, job.op_key, job.target.uri, [block.block_id for block in todo])
            record_blocks(session, rows)
    if failed:
        raise BatchFailed(job.op, failed, first_error, transient)
    return {
        "done": len(todo), "skipped": len(block_ids) - len(todo), "failed": 0,
        "seconds": time.perf_counter() - started, "read_seconds": read_seconds, "compute_seconds": compute_seconds,
        "bytes": sum(r.get("bytes") or 0 for r in rows),
    }


def ledgered_blocks(
    *,
    db: Database,
    run_id: int,
    op: str,
    key: str,
    array_uri: str,
    block_ids: Sequence[str],
    work: Callable[[str], int],
    fault: FaultHook | None = None,
    fault_prefix: str = "",
) -> dict[str, Any]:
    """Run ``work(block_id) -> bytes`` for each block not yet done under ``key``, holding a lock
    per block, recording every block in the ledger, and raising :class:`BatchFailed` listing the
    blocks that failed (the others stay done)."""
    attempt, host, slurm_job = _attempt(), socket.gethostname(), os.environ.get("SLURM_JOB_ID")
    with advisory_locks(db, [f"{key}|{array_uri}|{b}" for b in block_ids]):
        with db.session() as session:
            done = done_blocks(session, key, array_uri)
        rows, failed, first, transient = [], [], "", False
        for block_id in block_ids:
            if block_id in done:
                continue
            started = time.perf_counter()
            row: dict[str, Any] = {"run_id": run_id, "op": op, "op_key": key, "array_uri": array_uri, "block_id": block_id,
                                   "attempt": attempt, "host": host, "slurm_job_id": slurm_job, "started_at": datetime.now(UTC)}
            try:
                if fault is not None:
                    fault(f"{fault_prefix}{block_id}")
                row.update(status="done", bytes=int(work(block_id)))
            except Exception as exc:  # noqa: BLE001 - recorded per block
                row.update(status="failed", error=describe_failure(exc))
                failed.append(block_id)
                first, transient = first or row["error"], transient or is_transient(exc)
            row.update(seconds=time.perf_counter() - started, finished_at=datetime.now(UTC))
            rows.append(row)
        with db.session() as session:
            record_blocks(session, rows)
    if failed:
        raise BatchFailed(op, failed, first, transient)
    return {"done": len(rows), "skipped": len(block_ids) - len(rows)}
