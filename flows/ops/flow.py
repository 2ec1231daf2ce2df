"""The ``op`` flow: run one block-wise operation on any zarr or TIFF input, local or on S3.

``op_key`` = sha256 of (op name, op version, resolved parameters, content id of the input): the
ledger remembers which blocks of which op_key are done in which output, so

* a re-run with the same inputs finds every block done in **one** query and submits nothing;
* a change of any parameter or of the input's content gives a new key and recomputes;
* a failed run ends with :class:`BlockFailuresError` listing the failed blocks, and
  ``tierflow resume RUN`` runs the same op again, which recomputes only those.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NONE

from tierflow.configs import TierflowConfig, load_config, load_db_config
from tierflow.flows.execution.batching import OpContext, run_batches
from tierflow.flows.runtime.database import open_database
from tierflow.flows.execution.outputs import claim_output, output_lease, stamped_op_key
from tierflow.flows.execution.placement import check_output_placement, op_reads
from tierflow.flows.execution.runners import block_task_runner
from tierflow.flows.slurm.scheduler import SlurmScheduler
from tierflow.flows.runtime.runs import recorded_run, run_to_resume
from tierflow.flows.runtime.tiers import s3_tier_of
from tierflow.storage.arrays import ArrayLocation, check_chunks_align, check_writable, create_output_array
from tierflow.storage.db.database import Database
from tierflow.storage.db.repo.ledger import done_fingerprints
from tierflow.errors import BlockFailuresError, InvalidInputError, TierflowError
from tierflow.storage.geometry import BlockGrid
from tierflow.storage.local_copy import local_copy
from tierflow.storage.tiers import PosixTier
from tierflow.tasks.blockwise import (FaultHook, MapJob, block_fingerprints, blocks_to_compute, open_source, plan_batches, run_map_batch,
                             source_fingerprint)
from tierflow.flows.ops.label import LABEL_VERSION, run_label
from tierflow.flows.ops.features import FEATURES_VERSION, run_features
from tierflow.flows.ops.pyramid import PYRAMID_VERSION, run_pyramid
from tierflow.tasks.ops.catalog import MAP_OPS, get_map_op
from tierflow.tasks.histogram_blocks import histogram_blocks, value_range_blocks
from tierflow.tasks.ops.filters import OTSU_FLOAT_BINS, otsu_from_histogram
from tierflow.tasks.retry import retry_transient

__all__ = ["BlockFailuresError", "locate_input", "op_flow", "op_key", "output_location", "resolve_location", "resume_op", "run_op"]

MULTI_STAGE = {"label": LABEL_VERSION, "downsample": PYRAMID_VERSION, "features": FEATURES_VERSION}


def resolve_location(config: TierflowConfig, where: str) -> ArrayLocation:
    """A zarr array location for a local path or an ``s3://bucket/key`` URI."""
    if where.startswith("s3://"):
        return ArrayLocation(*s3_tier_of(config, where))
    path = Path(where).expanduser().resolve()
    return ArrayLocation(PosixTier("scratch", path.parent), path.name)


def output_location(config: TierflowConfig, where: str) -> ArrayLocation:
    """Where an operation writes ``where``; refused before any work if its tier takes no writes.

    Raises
    ------
    TierError
        If the output is on a read-only or write-once tier (see :func:`check_writable`).
    """
    location = resolve_location(config, where)
    check_writable(location)
    return location


def locate_input(config: TierflowConfig, where: str) -> str | ArrayLocation:
    """An input as the block engine takes it: an absolute local path, a zarr array on S3, or,
    for a TIFF stack or slice folder on S3, the path of its verified copy in Tier 4 tmp."""
    if not where.startswith("s3://"):
        return str(Path(where).expanduser().resolve())
    location = resolve_location(config, where)
    if location.exists():
        return location
    folder = config.tmp_dir / "s3-inputs" / location.tier.uri()[len("s3://"):]
    return str(local_copy(location.tier, location.key, folder))


def _content_id(source: str | ArrayLocation) -> str:
    """The whole-input content id the multi-stage ops (label, downsample, features) key on:
    the input's identity and a fingerprint of every stored piece of it."""
    fingerprint = source_fingerprint(source)
    return f"{fingerprint.identity}@{fingerprint.whole()}"


def _inputs_identity(source: str | ArrayLocation, extras: dict[str, Any], mask_ref: str | ArrayLocation | None) -> str:
    """What a map op's key names of its inputs: each input's identity (its content id when
    known, else its location). What the inputs hold is checked per block (see
    :mod:`storage.fingerprints`): a changed chunk recomputes only the blocks that read it."""
    return "|".join([source_fingerprint(source).identity, *(f"{n}={source_fingerprint(r).identity}" for n, r in sorted(extras.items())),
                     f"mask={source_fingerprint(mask_ref).identity}" if mask_ref else ""])


def op_key(op: str, version: str, params: dict[str, Any], content_id: str) -> str:
    """The cache key of an operation on an input."""
    text = json.dumps({"op": op, "version": version, "params": params, "input": content_id}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@task(name="map-blocks", retries=2, retry_delay_seconds=[1, 2], retry_condition_fn=retry_transient, cache_policy=NONE)
def map_blocks(job: MapJob, block_ids: list[str]) -> dict[str, Any]:
    """Compute one batch of blocks (see :mod:`tasks.blockwise`)."""
    return run_map_batch(job, block_ids)


def _otsu(source: str | ArrayLocation, volume: Any, block_shape: tuple[int, ...], workers: int) -> float:
    """Otsu's threshold of the whole input from block-wise histograms: integer images count
    every value (exact); float images first gather their min and max, then count
    ``OTSU_FLOAT_BINS`` bins over that range (``skimage.filters.threshold_otsu``'s histogram)."""
    grid = BlockGrid(volume.shape, block_shape)
    batches = plan_batches(grid, [b.block_id for b in grid], max_batches=64, min_batches=workers)
    shape, dtype = tuple(volume.shape), np.dtype(volume.dtype)
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


def _where(source: str | ArrayLocation) -> str:
    return source.uri if isinstance(source, ArrayLocation) else str(source)


def _up_to_date(op: str, input: str, output: str, params: dict[str, Any] | None, block_shape: tuple[int, ...] | None,
                config_dir: str | None, inputs: dict[str, str] | None, mask: str | None) -> dict[str, Any] | None:
    """The ledger's answer for a map op whose every block is done in its output (one query),
    or None when something is left to do (or the key cannot be known up front: Otsu)."""
    if op in MULTI_STAGE or op not in MAP_OPS:
        return None
    spec = get_map_op(op)
    try:
        resolved = spec.resolve(params or {})
    except ValueError:
        return None  # the flow reports it
    if op == "threshold" and str(resolved["value"]).lower() == "otsu":
        return None
    config = load_config(config_dir)
    target = output_location(config, output)
    source = locate_input(config, input)
    if not target.exists():
        return None
    extras = {name: locate_input(config, where) for name, where in (inputs or {}).items()}
    mask_ref = locate_input(config, mask) if mask else None
    key = op_key(op, spec.version, resolved, _inputs_identity(source, extras, mask_ref))
    if stamped_op_key(target) != key:
        return None
    shape = tuple(open_source(source).shape)
    grid = BlockGrid(shape, tuple(block_shape or config.execution.block_shape)[-len(shape):], spec.halo(resolved, len(shape)))
    db = open_database(load_db_config(config_dir), migrate=True)
    with db.session() as session:
        done = done_fingerprints(session, key, target.uri)
    job = MapJob(op, resolved, key, 0, source, target, shape, grid.block_shape, grid.halo, db, extras=extras, mask=mask_ref)
    if blocks_to_compute(done, block_fingerprints(job)):
        return None
    parameters = {"op": op, "input": input, "output": output, "params": dict(params or {}), "block_shape": list(grid.block_shape),
                  "inputs": dict(inputs or {}), "mask": mask, "up_to_date": True}
    with recorded_run(db, "op", parameters) as run_id:
        run_id.result = {"run_id": int(run_id), "op_key": key, "output": target.uri, "blocks": len(grid), "computed": 0,
                         "skipped": len(grid), "batches": 0, "params": resolved, "task_seconds": 0.0, "up_to_date": True}
    return run_id.result


def run_op(
    op: str,
    input: str,
    output: str,
    params: dict[str, Any] | None = None,
    block_shape: tuple[int, ...] | None = None,
    workers: int | None = None,
    config_dir: str | None = None,
    inputs: dict[str, str] | None = None,
    mask: str | None = None,
    fault: FaultHook | None = None,
    progress: Any = None,
    parent_run: int | None = None,
    slurm_scheduler: Any = None,
) -> dict[str, Any]:
    """Run ``op`` block-wise from ``input`` to ``output`` (see :func:`op_flow`, the Prefect flow).

    When the ledger already holds every block of this op key in this output (same op,
    parameters and input content), the answer comes from one query without starting a flow run
    (recorded as an ``op`` run with ``up_to_date``); otherwise the ``op`` flow runs.
    """
    check_output_placement(load_config(config_dir), output, op_reads(input, inputs, mask))
    if fault is None and progress is None and parent_run is None:
        cached = _up_to_date(op, input, output, params, block_shape, config_dir, inputs, mask)
        if cached is not None:
            return cached
    return op_flow(op, input, output, params, block_shape=block_shape, workers=workers, config_dir=config_dir, inputs=inputs, mask=mask,
                   fault=fault, progress=progress, parent_run=parent_run, slurm_scheduler=slurm_scheduler)


@flow(name="op")
def op_flow(
    op: str,
    input: str,
    output: str,
    params: dict[str, Any] | None = None,
    block_shape: tuple[int, ...] | None = None,
    workers: int | None = None,
    config_dir: str | None = None,
    inputs: dict[str, str] | None = None,
    mask: str | None = None,
    fault: FaultHook | None = None,
    progress: Any = None,
    parent_run: int | None = None,
    slurm_scheduler: Any = None,
) -> dict[str, Any]:
    """Run ``op`` block-wise from ``input`` to ``output``.

    Parameters
    ----------
    op
        ``gaussian``, ``threshold`` or ``label`` (see ``tierflow op --help``).
    input
        A zarr array, TIFF stack or folder of TIFF slices (local), or an ``s3://`` zarr URI.
    output
        Where the zarr result goes (local path or ``s3://`` URI); chunks = block shape.
    params
        Operation parameters (``sigma=2``, ``value=otsu``, ``connectivity=26``...).
    block_shape
        Block shape; default ``[execution].block_shape`` (clipped to the volume's axes).
    workers
        Parallel batches; default ``[execution].max_workers`` (0 = one per core).
    config_dir
        A configs folder; default found upward.
    inputs
        Extra input arrays an op takes, by name (``{"markers": "seeds.zarr"}`` for watershed,
        ``{"mask": ...}`` for mask).
    mask
        Restrict the op to the non-zero voxels of this array (0 elsewhere).
    fault
        Test-only fault injection: called with each block id before it is written.
    slurm_scheduler
        Test-only: answers how a lost batch's SLURM job ended (default: SLURM's own tools).
    progress
        ``progress(n)`` is told, as batches finish, how many blocks they completed (the
        pipeline's progress artifacts); when called in-process via ``run_op.fn``.
    parent_run
        The run this op runs inside (a pipeline), recorded as its parent.

    Returns
    -------
    dict
        ``run_id``, ``op_key``, ``output`` (URI), block counts and timings.

    Raises
    ------
    BlockFailuresError
        Listing every failed block, after all other blocks are done and recorded.
    """
    logger = get_run_logger()
    config = load_config(config_dir)
    check_output_placement(config, output, op_reads(input, inputs, mask))
    db: Database = open_database(load_db_config(config_dir), migrate=True)
    def locate(where: str) -> str | ArrayLocation:
        return locate_input(config, where)

    target = output_location(config, output)
    source = locate(input)
    volume = open_source(source)
    ndim = len(volume.shape)
    shape_blocks = tuple(block_shape or config.execution.block_shape)[-ndim:]
    workers = workers or config.execution.max_workers or os.cpu_count() or 1
    version = MULTI_STAGE.get(op) or get_map_op(op).version
    extras = {name: locate(where) for name, where in (inputs or {}).items()}
    mask_ref = locate(mask) if mask else None
    parameters = {"op": op, "input": input, "output": output, "params": dict(params or {}), "block_shape": list(shape_blocks),
                  "workers": workers, "inputs": dict(inputs or {}), "mask": mask}
    with recorded_run(db, "op", parameters, parent_id=parent_run) as run_id:
        if op in MULTI_STAGE:
            content = "|".join([_content_id(source), *(f"{n}={_content_id(r)}" for n, r in sorted(extras.items()))])
            key = op_key(op, version, dict(params or {}), content)
            stages = {"label": run_label, "downsample": run_pyramid, "features": run_features}
            extra: dict[str, Any] = {"dtype": volume.dtype} if op == "downsample" else {}  # keyword-only extras
            if op == "features":
                extra = {"extras": extras, "source_uri": source.uri if isinstance(source, ArrayLocation) else Path(source).as_uri()}
            elif extras:
                raise TierflowError(f"{op} takes no extra inputs, got {sorted(extras)}")
            context = OpContext(db, int(run_id), key, source, target, tuple(volume.shape), shape_blocks, dict(params or {}),
                                workers, config.execution.max_task_runs // 8, fault, progress,
                                lambda extra_threads=0: block_task_runner(config, workers, extra_threads=extra_threads))
            with output_lease(db, target, key):
                summary = stages[op](context, **extra)
            logger.info("%s: %s", op, summary)
            run_id.result = {"run_id": int(run_id), "op_key": key, "output": target.uri, **summary}
            return run_id.result
        spec = get_map_op(op)
        resolved = spec.resolve(params or {})
        check_chunks_align(target, shape_blocks)  # before Otsu reads the input or any block runs
        if op == "threshold" and str(resolved["value"]).lower() == "otsu":
            resolved["value"] = _otsu(source, volume, shape_blocks, workers)
            logger.info("Otsu threshold from a block-wise histogram: %s", resolved["value"])
        missing = sorted(set(spec.inputs) - set(extras))
        if missing or set(extras) - set(spec.inputs):
            raise TierflowError(f"{op} takes the extra input(s) {list(spec.inputs) or 'none'}, got {sorted(extras)}",
                                hint="give them as --with NAME=PATH")
        for name, ref in extras.items():
            if tuple(open_source(ref).shape) != tuple(volume.shape):
                raise TierflowError(f"{op}: input {name} has shape {open_source(ref).shape}, the main input {volume.shape}")
        key = op_key(op, spec.version, resolved, _inputs_identity(source, extras, mask_ref))
        halo = spec.halo(resolved, ndim)
        out_dtype = spec.out_dtype(resolved, volume.dtype)
        with output_lease(db, target, key):  # one op key writes this output at a time
            stale = claim_output(db, target, key, lambda: create_output_array(
                target, shape=volume.shape, dtype=out_dtype, chunks=shape_blocks, compression=resolved.get("compression", "lz4"),
                attributes={"tierflow": {"op": op, "version": spec.version, "params": resolved, "op_key": key, "input": input}}))
            if stale:
                logger.info("%s was deleted or overwritten since %d ledger block(s) were done there: computing them again", target.uri, stale)
            grid = BlockGrid(volume.shape, shape_blocks, halo)
            job = MapJob(op, resolved, key, int(run_id), source, target, tuple(volume.shape), shape_blocks, halo, db,
                         extras=extras, mask=mask_ref, fault=fault)
            with db.session() as session:
                done = done_fingerprints(session, key, target.uri)
            remaining = blocks_to_compute(done, block_fingerprints(job))
            changed = sum(1 for block_id in remaining if block_id in done)
            logger.info("%s: %d blocks, %d already done (ledger), %d to compute (%d of them because their input changed)",
                        op, len(grid), len(grid) - len(remaining), len(remaining), changed)
            batches = plan_batches(grid, remaining, max_batches=config.execution.max_task_runs, min_batches=2 * workers)
            runner = block_task_runner(config, workers)
            with runner:
                if config.execution.backend == "slurm":
                    from tierflow.flows.execution.slurm_retries import SlurmBatchRetries, run_with_slurm_retries

                    outcome = run_with_slurm_retries(
                        runner, lambda: block_task_runner(config, workers, memory_factor=config.slurm.oom_memory_factor), map_blocks,
                        job, batches, SlurmBatchRetries(db, int(run_id), key, target.uri, scheduler=slurm_scheduler or SlurmScheduler()),
                        progress, log=logger.warning)
                else:
                    outcome = run_batches(runner, map_blocks, job, batches, progress)
            computed = sum(result["done"] for result in outcome.results)
            task_seconds = sum(result["seconds"] for result in outcome.results)
            failed, first_error = outcome.failed, outcome.first_error
            if failed:
                raise BlockFailuresError(op, run_id, failed, first_error)
            run_id.result = {"run_id": int(run_id), "op_key": key, "output": target.uri, "blocks": len(grid), "computed": computed,
                             "skipped": len(grid) - len(remaining), "batches": len(batches), "params": resolved,
                             "task_seconds": task_seconds, "workers": workers}
            return run_id.result


def resume_op(run: str, *, config_dir: str | None = None, fault: FaultHook | None = None) -> dict[str, Any]:
    """Run a failed ``op`` run again with its recorded parameters; the ledger makes it compute
    only the blocks that did not finish.

    Raises
    ------
    TierflowError
        If the run does not exist or is not an ``op`` run.
    """
    recorded = run_to_resume(open_database(load_db_config(config_dir)), run, "op")
    return run_op(
        recorded["op"], recorded["input"], recorded["output"], recorded.get("params") or {},
        block_shape=tuple(recorded["block_shape"]), workers=recorded.get("workers"), config_dir=config_dir,
        inputs=recorded.get("inputs") or None, mask=recorded.get("mask"), fault=fault,
    )
