"""Block-wise pyramid levels: each output block of level ``l`` reads the matching region of
level ``l-1`` (``factor`` times larger) and downsamples it, so every output chunk is written by
exactly one block (see :mod:`tasks.ops.pyramid` for the kernels and dtype policy).

A block's input region is read and downsampled piece by piece, one piece per input chunk
(the kernels are block-exact on pieces that start at multiples of the factors): each chunk is
decoded once, the temporaries stay chunk-sized, and a level with fewer blocks than workers
(the top of a pyramid is often one chunk) spreads its pieces over ``threads`` threads instead of
leaving cores idle.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.arrays import ArrayLocation
from tierflow.storage.geometry import Roi
from tierflow.tasks.blockwise import BlockJob, ledgered_blocks, open_source
from tierflow.tasks.ops.pyramid import downsample_labels, downsample_mean
from tierflow.tasks.retry import retry_transient

__all__ = ["LevelJob", "copy_chunk", "downsample_level", "input_pieces"]


@dataclass(frozen=True, kw_only=True)
class LevelJob(BlockJob):
    """One pyramid level: where it reads (``source``, of ``in_shape``), where it writes
    (``target``, of ``shape``), its factors and kernel."""

    op: str = "downsample"
    target: ArrayLocation
    in_shape: tuple[int, ...]
    factors: tuple[int, ...]
    method: str
    level: int
    copy_from: ArrayLocation | None = None
    """Level 0 only: a zarr array with the same chunks and codecs whose encoded chunks are
    copied as they are (no decode and re-encode; see :func:`copy_chunk`)."""
    threads: int = 1
    """Threads that share the pieces of each block (more than one when the level has fewer
    batches than the run has workers)."""


def _input_roi(out_roi: Roi, factors: Sequence[int], in_shape: Sequence[int]) -> Roi:
    start = tuple(o * f for o, f in zip(out_roi.offset, factors, strict=True))
    stop = tuple(min(e * f, s) for e, f, s in zip(out_roi.end, factors, in_shape, strict=True))
    return Roi(start, tuple(b - a for a, b in zip(start, stop, strict=True)))


def input_pieces(in_roi: Roi, chunks: Sequence[int], factors: Sequence[int]) -> list[Roi]:
    """``in_roi`` cut at the input's chunk borders along every axis whose chunk extent is a
    multiple of its factor (elsewhere a cut could split a window; the axis stays whole)."""
    cuts_per_axis = []
    for start, end, chunk, factor in zip(in_roi.offset, in_roi.end, chunks, factors, strict=True):
        if chunk % factor:
            cuts_per_axis.append([(start, end)])
            continue
        edges = [start, *range((start // chunk + 1) * chunk, end, chunk), end]
        cuts_per_axis.append(list(itertools.pairwise(edges)))
    return [Roi(tuple(a for a, _ in cut), tuple(b - a for a, b in cut)) for cut in itertools.product(*cuts_per_axis)]


@task(name="downsample-level", retries=2, retry_delay_seconds=[1, 2], retry_condition_fn=retry_transient, cache_policy=NONE)
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

        return ledgered_blocks(job, block_ids, copy, op="downsample:level0", key=f"{job.op_key}:level0", array_uri=job.target.uri,
                               fault_prefix="level0:")

    def downsample(data: np.ndarray) -> np.ndarray:
        if all(f == 1 for f in job.factors):
            return data
        if job.method == "mean":
            return downsample_mean(data, job.factors)
        return downsample_labels(data, job.factors, method=job.method)

    def work(block_id: str, pool: ThreadPoolExecutor | None) -> int:
        out_roi = grid.block(block_id).write_roi
        values = np.empty(out_roi.shape, dtype=volume.dtype)

        def piece(in_piece: Roi) -> None:
            start = tuple(a // f - o for a, f, o in zip(in_piece.offset, job.factors, out_roi.offset, strict=True))
            part = downsample(volume.read(in_piece))
            values[tuple(slice(a, a + n) for a, n in zip(start, part.shape, strict=True))] = part

        pieces = input_pieces(_input_roi(out_roi, job.factors, job.in_shape), volume.chunks, job.factors)
        if pool is not None and len(pieces) > 1:
            list(pool.map(piece, pieces))  # re-raises a piece's error
        else:
            for in_piece in pieces:
                piece(in_piece)
        output[out_roi.slices] = values
        return int(values.nbytes)

    pool = ThreadPoolExecutor(job.threads, thread_name_prefix="pyramid-piece") if job.threads > 1 else None
    try:
        return ledgered_blocks(job, block_ids, lambda block_id: work(block_id, pool), op=f"downsample:level{job.level}",
                               key=f"{job.op_key}:level{job.level}", array_uri=job.target.uri, fault_prefix=f"level{job.level}:")
    finally:
        if pool is not None:
            pool.shutdown()


def copy_chunk(source_store: Any, target_store: Any, chunk_key: str) -> int:
    """Copy one encoded chunk between two zarr stores of arrays with equal chunks and codecs
    (an absent chunk, i.e. all fill value, removes the target's); returns the bytes copied.
    Between two local folders the kernel copies the file (:func:`_copy_local_chunk`)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore

    if isinstance(source_store, LocalStore) and isinstance(target_store, LocalStore):
        return _copy_local_chunk(source_store.root / chunk_key, target_store.root / chunk_key)
    data = sync(source_store.get(chunk_key, prototype=default_buffer_prototype()))
    if data is None:
        sync(target_store.delete(chunk_key))
        return 0
    sync(target_store.set(chunk_key, data))
    return len(data)


def _copy_local_chunk(source: Path, target: Path) -> int:
    """The file at ``source`` copied in the kernel (``copy_file_range``/``sendfile`` through
    :func:`shutil.copyfile`: no bytes through Python, a quarter of the CPU of a store get and
    set here) to a temporary name beside ``target``, then renamed over it, as zarr's
    ``LocalStore`` writes (a reader never sees half a chunk; a link to the old file keeps its
    bytes). A missing source removes ``target``. No hard link: a writer that rewrites chunk
    files in place would then change both arrays."""
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return size
