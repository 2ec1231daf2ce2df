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
from collections.abc import Callable, Mapping, Sequence
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

__all__ = ["BatchFailed", "BlockJob", "MapJob", "block_fingerprints", "blocks_to_compute", "describe_failure", "ledgered_blocks",
           "open_source", "plan_batches", "run_map_batch", "source_fingerprint", "spatial_kernel"]

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


@dataclass(frozen=True, kw_only=True)
class BlockJob:
    """What every block task needs (no arrays: locations, ids and parameters). Each kind of op
    adds its own fields (:class:`MapJob`, ``LabelJob``, ``LevelJob``, ``FeatureJob``); the batch
    engine (:func:`ledgered_blocks`) takes any of them."""

    op: str
    """The op's name as the ledger records it (a stage adds its suffix, e.g. ``label:local``)."""
    op_key: str
    run_id: int
    source: SourceRef
    shape: tuple[int, ...]
    """Shape of the grid of blocks (the output's)."""
    block_shape: tuple[int, ...]
    db: Database
    fault: FaultHook | None = field(default=None, compare=False)
    """Test-only fault injection: called with each block id before its work."""
    attempt_offset: int = 0
    """Attempts made before this submission (a batch re-submitted after its SLURM job ran out
    of memory or time records attempt 2, 3, ... in the ledger)."""
    force: bool = False
    """Compute the batch's blocks even if earlier runs have them done (``--force``): only this
    run's own done rows count (a retried batch still skips what it did)."""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape)


@dataclass(frozen=True, kw_only=True)
class MapJob(BlockJob):
    """A map op's batch: its parameters, output, halo and extra inputs."""

    params: dict[str, Any]
    target: ArrayLocation
    halo: tuple[int, ...]
    extras: dict[str, SourceRef] = field(default_factory=dict)
    mask: SourceRef | None = None
    leading: int = 0
    """Leading axes that are not spatial (time, channel): the kernel runs once per index of
    them, on the spatial block."""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape, self.halo)

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


def plan_batches(grid: BlockGrid, block_ids: Sequence[str], *, max_batches: int, min_batches: int = 1,
                 target_voxels: int = 64 * 2**20) -> list[list[str]]:
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


def ledgered_blocks(
    job: BlockJob,
    block_ids: Sequence[str],
    work: Callable[[str], int],
    *,
    array_uri: str,
    key: str | None = None,
    op: str | None = None,
    fault_prefix: str = "",
    fingerprints: Mapping[str, str] | None = None,
    prepare: Callable[[list[str]], None] | None = None,
    track_running: bool = False,
) -> dict[str, Any]:
    """The batch engine every block task runs on: ``work(block_id) -> bytes`` for each block of
    the batch the ledger does not have done under ``key`` (default ``job.op_key``) in
    ``array_uri``, holding a PostgreSQL advisory lock per block, recording every block (done or
    failed, attempt, host, SLURM job id, seconds, bytes) in one insert, and raising
    :class:`BatchFailed` listing the blocks that failed (the others stay done; ``transient``
    when one of them failed transiently, see :mod:`tasks.retry`).

    ``fingerprints`` (block id -> what its read ROI reads now) makes a block done only if it was
    done from the same input, and is recorded with it; ``prepare(todo)`` runs once before the
    blocks (a batch's shared read), its time shared among them; ``track_running`` records
    ``running`` rows first, so a flow whose SLURM worker died with the batch learns where it ran.
    """
    key, op = key or job.op_key, op or job.op
    attempt, host, slurm_job = _attempt() + job.attempt_offset, socket.gethostname(), os.environ.get("SLURM_JOB_ID")
    base = {"run_id": job.run_id, "op": op, "op_key": key, "array_uri": array_uri, "attempt": attempt, "host": host,
            "slurm_job_id": slurm_job}
    started = time.perf_counter()
    with advisory_locks(job.db, [f"{key}|{array_uri}|{b}" for b in block_ids]):
        with job.db.session() as session:
            only = job.run_id if job.force else None
            if fingerprints is None:
                done = done_blocks(session, key, array_uri, run_id=only)
                todo = [b for b in block_ids if b not in done]
            else:
                todo = blocks_to_compute(done_fingerprints(session, key, array_uri, run_id=only), {b: fingerprints[b] for b in block_ids})
        if not todo:
            return {"done": 0, "skipped": len(block_ids), "failed": 0, "seconds": 0.0, "bytes": 0}
        running = track_running and slurm_job is not None
        if running:
            with job.db.session() as session:
                record_blocks(session, [base | {"block_id": b, "status": "running", "started_at": datetime.now(UTC)} for b in todo])
        prepare_seconds = 0.0
        if prepare is not None:
            prepare_started = time.perf_counter()
            prepare(todo)
            prepare_seconds = (time.perf_counter() - prepare_started) / len(todo)
        rows, failed, first, transient = [], [], "", False
        for block_id in todo:
            block_started = time.perf_counter()
            row: dict[str, Any] = base | {"block_id": block_id, "started_at": datetime.now(UTC)}
            if fingerprints is not None:
                row["input_fingerprint"] = fingerprints[block_id]
            try:
                if job.fault is not None:
                    job.fault(f"{fault_prefix}{block_id}")
                row.update(status="done", bytes=int(work(block_id)))
            except Exception as exc:  # noqa: BLE001 - a block's failure is recorded, not fatal to the batch
                row.update(status="failed", error=describe_failure(exc))
                failed.append(block_id)
                first, transient = first or row["error"], transient or is_transient(exc)
            row.update(seconds=prepare_seconds + time.perf_counter() - block_started, finished_at=datetime.now(UTC))
            rows.append(row)
        with job.db.session() as session:
            if running:
                settle_running(session, job.run_id, key, array_uri, todo)
            record_blocks(session, rows)
    if failed:
        raise BatchFailed(op, failed, first, transient)
    return {"done": len(todo), "skipped": len(block_ids) - len(todo), "failed": 0, "seconds": time.perf_counter() - started,
            "bytes": sum(r.get("bytes") or 0 for r in rows)}


def run_map_batch(job: MapJob, block_ids: Sequence[str]) -> dict[str, Any]:
    """Compute one batch of a map op (see the module docstring) on the batch engine. Returns
    counts and timings.

    Raises
    ------
    BatchFailed
        If any block failed; the others are written and recorded as done.
    """
    op, grid = get_op(job.op), job.grid
    batch = _MapBatch(job, grid)
    result = ledgered_blocks(job, block_ids, lambda block_id: batch.compute(op, grid.block(block_id)), array_uri=job.target.uri,
                             fingerprints=block_fingerprints(job, block_ids), prepare=batch.read, track_running=True)
    return result | {"read_seconds": batch.read_seconds, "compute_seconds": batch.compute_seconds}


def spatial_kernel(kernel: Callable[..., np.ndarray], data: np.ndarray, params: dict[str, Any], extras: dict[str, np.ndarray],
                   leading: int = 0, keywords: Mapping[str, Any] | None = None) -> np.ndarray:
    """``kernel`` on ``data``, once per index of its ``leading`` (time, channel) axes: a map op
    sees only spatial blocks, so it never smooths or thresholds across time points or channels.
    ``keywords`` (e.g. the block's spatial origin) go to every call as they are."""
    keywords = dict(keywords or {})
    if not leading:
        return kernel(data, params, **keywords, **extras)
    out: np.ndarray | None = None
    for index in np.ndindex(*data.shape[:leading]):
        part = kernel(data[index], params, **keywords, **{name: array[index] for name, array in extras.items()})
        if out is None:
            out = np.empty(data.shape[:leading] + part.shape, dtype=part.dtype)
        out[index] = part
    assert out is not None
    return out


class _MapBatch:
    """A map batch's shared read and per-block compute (see the module docstring)."""

    def __init__(self, job: MapJob, grid: BlockGrid) -> None:
        self.job, self.grid = job, grid
        self.read_seconds = self.compute_seconds = 0.0

    def read(self, todo: list[str]) -> None:
        """Read the union of the blocks' read ROIs once (with a halo on zarr: per block, from
        the decoded-chunk cache instead: each chunk decoded about once, no batch-sized array)."""
        job, started = self.job, time.perf_counter()
        blocks = [self.grid.block(b) for b in todo]
        region = blocks[0].read_roi
        for block in blocks[1:]:
            region = region.union(block.read_roi)
        self.region, self.volume = region, open_source(job.source)
        self.per_block = any(job.halo) and isinstance(self.volume, ZarrVolume)
        self.data = None if self.per_block else self.volume.read(region)
        self.extras = {name: open_source(ref).read(region) for name, ref in job.extras.items()}
        self.mask = open_source(job.mask).read(region) if job.mask is not None else None
        self.target = job.target.writer()
        self.read_seconds = time.perf_counter() - started

    def compute(self, op: Any, block: Block) -> int:
        """Run the kernel on one block's read ROI and write its inner part; returns the bytes."""
        job, started = self.job, time.perf_counter()
        # the kernel runs per block (read ROI = block + halo, cut from the batch's region): its
        # working arrays stay small enough for the allocator to reuse them, where one
        # region-sized float array per batch cost fresh, kernel-zeroed pages every time (a third
        # of the CPU time on 512 MiB, measured with perf)
        inside = block.read_roi.relative_to(self.region)
        # decoded chunks are shared by the batches of one run (a later run may read a repaired input)
        data = (self.volume.read(block.read_roi, cache=_HALO_CACHE, cache_key=(job.op_key, job.run_id)) if self.per_block
                else self.data[inside])
        where = {"origin": block.read_roi.offset[job.leading:], "volume_shape": job.shape[job.leading:]} if op.wants_offset else {}
        extras = {name: array[inside] for name, array in self.extras.items()}
        result = op.check_block(spatial_kernel(op.kernel, data, job.params, extras, job.leading, where), data.shape, block.block_id)
        if self.mask is not None:
            result = np.where(self.mask[inside] != 0, result, np.zeros((), dtype=result.dtype))
        values = result[block.write_roi.relative_to(block.read_roi)]
        self.compute_seconds += time.perf_counter() - started
        self.target[block.write_roi.slices] = values
        return int(values.nbytes)
