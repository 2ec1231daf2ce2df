"""The map stage runner: every block of the output from its block (and halo) of the inputs, in
batches, skipping the blocks the ledger has done from unchanged inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, unmapped

from tierflow.errors import BlockFailuresError, InvalidInputError, TierflowError
from tierflow.flows.execution.batching import run_batches
from tierflow.flows.execution.outputs import claim_output
from tierflow.flows.ops.request import OpContext
from tierflow.flows.runtime.run_names import describe_op
from tierflow.storage.arrays import ArrayLocation, create_output_array
from tierflow.storage.db.repo.ledger import done_count, done_fingerprints
from tierflow.storage.geometry import BlockGrid
from tierflow.storage.image_meta import default_axes
from tierflow.tasks.blockwise import MapJob, SourceRef, block_fingerprints, blocks_to_compute, open_source, plan_batches
from tierflow.tasks.histogram_blocks import histogram_blocks, value_range_blocks
from tierflow.tasks.map_blocks import map_blocks
from tierflow.tasks.ops.filters import OTSU_FLOAT_BINS, otsu_from_histogram

__all__ = ["check_extra_inputs", "resolve_otsu", "run_map"]


def _otsu(source: SourceRef, shape: tuple[int, ...], dtype: Any, block_shape: tuple[int, ...], workers: int) -> float:
    """Otsu's threshold of the whole input from block-wise histograms: integer images count
    every value (exact); float images first gather their min and max, then count
    ``OTSU_FLOAT_BINS`` bins over that range (``skimage.filters.threshold_otsu``'s histogram)."""
    grid = BlockGrid(shape, block_shape)
    batches = plan_batches(grid, [b.block_id for b in grid], max_batches=64, min_batches=workers)
    shape, dtype = tuple(shape), np.dtype(dtype)
    if dtype.kind in "iu":
        futures = histogram_blocks.map(unmapped(source), unmapped(shape), unmapped(block_shape), batches)
        return otsu_from_histogram(sum(np.asarray(f.result(), dtype=np.int64) for f in futures), dtype=dtype)
    if dtype.kind != "f":
        raise InvalidInputError(f"{_where(source)}: Otsu needs an integer or float image, this one is {dtype}",
                                hint="give a fixed threshold (-p value=NUMBER)")
    ranges = [f.result() for f in value_range_blocks.map(unmapped(source), unmapped(shape), unmapped(block_shape), batches)]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidInputError(f"{_where(source)}: Otsu needs finite values, this {dtype} image holds NaN or infinity",
                                hint="replace them first, or give a fixed threshold (-p value=NUMBER)")
    if lo == hi:
        return lo  # one value everywhere: nothing lies above it (as scikit-image answers)
    futures = histogram_blocks.map(unmapped(source), unmapped(shape), unmapped(block_shape), batches,
                                   bins=unmapped(OTSU_FLOAT_BINS), value_range=unmapped((lo, hi)))
    counts = sum(np.asarray(f.result(), dtype=np.int64) for f in futures)
    return otsu_from_histogram(counts, dtype=dtype, value_range=(lo, hi))


def _where(source: SourceRef) -> str:
    return source.uri if isinstance(source, ArrayLocation) else str(source)


def resolve_otsu(op: str, params: dict[str, Any], source: SourceRef, shape: tuple[int, ...], dtype: Any,
                 block_shape: tuple[int, ...], workers: int) -> dict[str, Any]:
    """``params`` with a threshold's ``value=otsu`` replaced by Otsu's threshold of the input
    (from a histogram gathered block-wise); other params unchanged."""
    if op != "threshold" or str(params.get("value")).lower() != "otsu":
        return params
    value = _otsu(source, shape, dtype, block_shape, workers)
    get_run_logger().info("Otsu threshold from a block-wise histogram: %s", value)
    return {**params, "value": value}


def check_extra_inputs(ctx: OpContext) -> None:
    """The extra inputs are the ones the op takes, each of the main input's shape (and the input
    not larger than the op takes).

    Raises
    ------
    TierflowError
        Naming the inputs expected and given, or the input of the wrong shape.
    """
    spec, extras = ctx.spec, ctx.extras
    if spec.max_voxels is not None and int(np.prod(ctx.shape, dtype=np.int64)) > spec.max_voxels:
        raise TierflowError(f"{spec.name} takes at most {spec.max_voxels} voxels; "
                            f"input {ctx.input or ctx.source_uri} has shape {ctx.shape}",
                            hint="split the volume (e.g. per time point or region) and run the op on each part")
    if spec.inputs != ("*",) and sorted(spec.inputs) != sorted(extras):
        raise TierflowError(f"{spec.name} takes the extra input(s) {list(spec.inputs) or 'none'}, got {sorted(extras)}",
                            hint="give them as --with NAME=PATH")
    for name, ref in extras.items():
        if tuple(open_source(ref).shape) != tuple(ctx.shape):
            raise TierflowError(f"{spec.name}: input {name} has shape {open_source(ref).shape}, the main input {ctx.shape}")


def run_map(ctx: OpContext) -> dict[str, Any]:
    """Compute the output block-wise (see the module docstring); returns the block counts."""
    logger = get_run_logger()
    spec, db, target, key = ctx.spec, ctx.db, ctx.target, ctx.op_key
    halo = spec.halo_over(ctx.params, len(ctx.shape), ctx.axes)
    out_dtype = spec.out_dtype(ctx.params, ctx.dtype)
    made = {"op": spec.name, "version": spec.version, "params": ctx.params, "op_key": key, "input": ctx.input}
    if ctx.axes and ctx.axes != default_axes(len(ctx.shape)):
        made["axes"] = ctx.axes  # what the next op reads the output's axes from
    if ctx.metadata:
        made["metadata"] = ctx.metadata  # voxel size, units, channel names: an output keeps its input's
    chunks, shards = ctx.output_layout
    stale = claim_output(db, target, key, lambda: create_output_array(
        target, shape=ctx.shape, dtype=out_dtype, chunks=chunks, shards=shards, compression=ctx.params.get("compression", "lz4"),
        attributes={"tierflow": made}))
    if stale:
        logger.info("%s was deleted or overwritten since %d ledger block(s) were done there: computing them again", target.uri, stale)
    grid = BlockGrid(ctx.shape, ctx.block_shape, halo)
    job = MapJob(op=spec.name, params=ctx.params, op_key=key, run_id=ctx.run_id, source=ctx.source, target=target, shape=ctx.shape,
                 block_shape=ctx.block_shape, halo=halo, db=db, extras=ctx.extras, mask=ctx.mask, fault=ctx.fault,
                 leading=ctx.leading, force=ctx.force)
    with db.session() as session:
        done = {} if ctx.force else done_fingerprints(session, key, target.uri)  # forced: every block again
    remaining = blocks_to_compute(done, block_fingerprints(job))
    changed = sum(1 for block_id in remaining if block_id in done)
    logger.info("%s: %d blocks, %d already done (ledger), %d to compute (%d of them because their input changed)%s",
                describe_op(spec.name, ctx.input or ctx.source_uri, target.uri), len(grid), len(grid) - len(remaining), len(remaining),
                changed, "; forced: every block again" if ctx.force else "")
    batches = plan_batches(grid, remaining, max_batches=ctx.max_batches, min_batches=2 * ctx.workers)
    with ctx.runner() as runner:
        if ctx.config is not None and ctx.config.execution.backend == "slurm":
            from tierflow.flows.execution.slurm_retries import SlurmBatchRetries, run_with_slurm_retries
            from tierflow.flows.slurm.scheduler import SlurmScheduler

            retries = SlurmBatchRetries(db, ctx.run_id, key, target.uri, scheduler=ctx.slurm_scheduler or SlurmScheduler())
            outcome = run_with_slurm_retries(runner, lambda: ctx.runner(memory_factor=ctx.config.slurm.oom_memory_factor),
                                             map_blocks, job, batches, retries, ctx.progress, log=logger.warning)
        else:
            outcome = run_batches(runner, map_blocks, job, batches, ctx.progress)
    if outcome.failed:
        raise BlockFailuresError(spec.name, ctx.run_id, outcome.failed, outcome.first_error)
    with db.session() as session:  # from the ledger: a batch retried, or whose answer was lost, still counts its blocks
        computed = done_count(session, ctx.run_id, [key])
    return {"blocks": len(grid), "computed": computed, "batches": len(batches),
            "task_seconds": sum(r["seconds"] for r in outcome.results), "params": ctx.params}
