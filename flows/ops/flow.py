"""The ``op`` flow: run one block-wise operation on any zarr or TIFF input, local or on S3.

What the op is comes from the registry (:mod:`tierflow.tasks.ops.registry`); the flow resolves
its parameters, locates its inputs and output, keys it (:mod:`tierflow.flows.ops.request`) and
hands it to the stage runner of its kind (map, label, pyramid, features). The ledger remembers
which blocks of which op key are done in which output, so

* a re-run with the same inputs finds every block done in **one** query and submits nothing;
* a change of any parameter or of the input's content gives a new key and recomputes;
* a failed run ends with :class:`BlockFailuresError` listing the failed blocks, and
  ``tierflow resume RUN`` runs the same op again, which recomputes only those.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger

from tierflow.configs import load_config, load_db_config
from tierflow.flows.execution.outputs import output_lease
from tierflow.flows.execution.placement import check_output_placement, op_reads
from tierflow.flows.execution.runners import block_task_runner, op_workers
from tierflow.flows.ops.cached import up_to_date
from tierflow.flows.ops.map import check_extra_inputs, resolve_otsu
from tierflow.flows.ops.request import (OpContext, content_id, inputs_identity, layout_identity, locate_input, op_key, output_location,
                                        resolve_location, sharded_output, with_shard_outputs)
from tierflow.flows.ops.result import OpResult, summary_sentence
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.run_names import describe_op, op_run_name
from tierflow.flows.runtime.runs import recorded_run, run_to_resume
from tierflow.storage.db.database import Database
from tierflow.storage.arrays import check_chunks_align, check_output_layout
from tierflow.errors import BlockFailuresError, TierflowError
from tierflow.storage.geometry import fit_block_shape
from tierflow.storage.image_meta import leading_axes
from tierflow.tasks.blockwise import FaultHook, open_source
from tierflow.tasks.ops.registry import get_op

__all__ = ["BlockFailuresError", "locate_input", "op_flow", "op_key", "output_location", "resolve_location", "resume_op", "run_op"]

def stage_runner(kind: str) -> Callable[[OpContext], dict[str, Any]]:
    """The stage runner of ops of ``kind`` (:attr:`OpSpec.kind`), imported when an op of that
    kind runs: features imports pandas, label its merge, pyramid OME-Zarr, and a gaussian needs
    none of them (``benchmarks/cli.py``)."""
    if kind == "label":
        from tierflow.flows.ops.label import run_label

        return run_label
    if kind == "pyramid":
        from tierflow.flows.ops.pyramid import run_pyramid

        return run_pyramid
    if kind == "features":
        from tierflow.flows.ops.features import run_features

        return run_features
    from tierflow.flows.ops.map import run_map

    return run_map


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
    force: bool = False,
    shard_outputs: bool | None = None,
) -> OpResult:
    """Run ``op`` block-wise from ``input`` to ``output`` (see :func:`op_flow`, the Prefect flow).

    When the ledger already holds every block of this op key in this output (same op,
    parameters and input content), the answer comes from one query without starting a flow run
    (recorded as an ``op`` run with ``up_to_date``); otherwise the ``op`` flow runs.
    ``force=True`` computes every block again (see :func:`op_flow`).
    """
    config = with_shard_outputs(load_config(config_dir), shard_outputs)
    check_output_placement(config, output, op_reads(input, inputs, mask))
    if fault is None and progress is None and parent_run is None and not force:
        cached = up_to_date(op, input, output, params, block_shape, config_dir, inputs, mask, config=config)
        if cached is not None:
            return cached
    return op_flow(op, input, output, params, block_shape=block_shape, workers=workers, config_dir=config_dir, inputs=inputs, mask=mask,
                   fault=fault, progress=progress, parent_run=parent_run, slurm_scheduler=slurm_scheduler, force=force,
                   shard_outputs=shard_outputs)


@flow(name="op", flow_run_name=op_run_name)
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
    force: bool = False,
    stage: str | None = None,
    shard_outputs: bool | None = None,
) -> OpResult:
    """Run ``op`` block-wise from ``input`` to ``output``.

    Parameters
    ----------
    op
        A registered op (``tierflow ops list``).
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
    force
        Compute every block, even those the ledger has done (new ledger rows for this run; the
        old rows stay as history). An output on Tier 1 is refused either way (write-once).
    stage
        The pipeline stage this op runs in (recorded with the run: ``tierflow status`` of the
        pipeline names it).
    shard_outputs
        Write a map op's or label's output as one zarr v3 shard of small chunks per block (None:
        ``[execution].shard_outputs``); a sharded run records it, and ``resume`` writes the same.

    Returns
    -------
    OpResult
        The run, op key, output (URI), block counts and timings.

    Raises
    ------
    BlockFailuresError
        Listing every failed block, after all other blocks are done and recorded.
    """
    config = with_shard_outputs(load_config(config_dir), shard_outputs)
    from tierflow.storage.zarr_codecs import use_codec_pipeline  # imports zarr: only when an op runs

    use_codec_pipeline(config.execution.codec_pipeline)
    check_output_placement(config, output, op_reads(input, inputs, mask))
    spec = get_op(op)
    resolved = spec.resolve(params or {})
    db: Database = open_database(load_db_config(config_dir), migrate=True)
    target = output_location(config, output)
    source = locate_input(config, input)
    volume = open_source(source)
    _check_axes(spec, input, volume)
    shape_blocks = fit_block_shape(block_shape or config.execution.block_shape, volume.shape, leading=leading_axes(volume.axes),
                                   axes=volume.axes)
    workers = op_workers(config, spec.resources, workers or config.execution.max_workers or os.cpu_count() or 1)
    extras = {name: locate_input(config, where) for name, where in (inputs or {}).items()}
    parameters = {"op": op, "input": input, "output": output, "params": dict(params or {}), "block_shape": list(shape_blocks),
                  "workers": workers, "inputs": dict(inputs or {}), "mask": mask, **({"force": True} if force else {}),
                  **({"stage": stage} if stage else {}), **({"shard_outputs": True} if sharded_output(config, spec) else {})}
    with recorded_run(db, "op", parameters, parent_id=parent_run) as run_id:
        ctx = OpContext(spec, db, int(run_id), "", source, target, tuple(volume.shape), volume.dtype, shape_blocks, resolved, workers,
                        config.execution.max_task_runs if spec.kind == "map" else config.execution.max_task_runs // 8,
                        config=config, input=input, extras=extras, mask=locate_input(config, mask) if mask else None, fault=fault,
                        progress=progress, slurm_scheduler=slurm_scheduler, force=force,
                        new_runner=lambda extra_threads=0, memory_factor=1.0: block_task_runner(
                            config, workers, extra_threads=extra_threads, memory_factor=memory_factor, resources=spec.resources),
                        axes=volume.axes, metadata=volume.metadata.physical)
        ctx = _keyed(ctx)
        with output_lease(db, target, ctx.op_key):  # one op key writes this output at a time
            summary = stage_runner(spec.kind)(ctx)
        get_run_logger().info("%s", summary_sentence(describe_op(op, input, output), summary))
        result = _result(ctx, summary)
        run_id.result = result.to_dict()
        return result


def _check_axes(spec: Any, input: str, volume: Any) -> None:
    """Staged ops (label, downsample, features) take spatial images only.

    Raises
    ------
    TierflowError
        Naming the input, its axes and what to do.
    """
    if spec.kind != "map" and leading_axes(volume.axes):
        raise TierflowError(f"{spec.name} takes a 2-D (y, x) or 3-D (z, y, x) image; {input} has axes {volume.axes!r} "
                            f"(shape {tuple(volume.shape)})",
                            hint="run it on one time point and channel (an array of that one's spatial axes); map ops "
                                 "(gaussian, threshold...) run on every time point and channel")


def _keyed(ctx: OpContext) -> OpContext:
    """``ctx`` with its op key (and a threshold's Otsu value resolved: the key names the value).

    Raises
    ------
    TierflowError
        If the extra inputs are not the ones the op takes, or not of the input's shape.
    """
    from dataclasses import replace

    spec = ctx.spec
    check_extra_inputs(ctx)
    if spec.kind == "map":
        check_chunks_align(ctx.target, ctx.block_shape)  # before Otsu reads the input or any block runs
        # and its layout: refused here, not by claim_output after it made the output's ledger rows stale
        check_output_layout(ctx.target, shape=ctx.shape, chunks=ctx.output_layout[0], shards=ctx.output_layout[1])
        params = resolve_otsu(spec.name, ctx.params, ctx.source, ctx.shape, ctx.dtype, ctx.block_shape, ctx.workers)
        key = op_key(spec.name, spec.version, params, inputs_identity(ctx.source, ctx.extras, ctx.mask) + layout_identity(ctx.config, spec))
        return replace(ctx, params=params, op_key=key)
    if ctx.mask is not None:
        raise TierflowError(f"{spec.name} takes no --mask", hint="mask its input first: tierflow op mask ... --with mask=...")
    content = "|".join([content_id(ctx.source), *(f"{n}={content_id(r)}" for n, r in sorted(ctx.extras.items()))])
    return replace(ctx, op_key=op_key(spec.name, spec.version, ctx.params, content + layout_identity(ctx.config, spec)))


def _result(ctx: OpContext, summary: dict[str, Any]) -> OpResult:
    details = {k: v for k, v in summary.items() if k not in ("blocks", "computed", "batches", "task_seconds", "params", "skipped")}
    return OpResult(ctx.run_id, ctx.spec.name, ctx.op_key, ctx.target.uri, int(summary["blocks"]), int(summary["computed"]),
                    summary.get("params", ctx.params), batches=int(summary.get("batches", 0)),
                    task_seconds=float(summary.get("task_seconds", 0.0)), workers=ctx.workers, details=details)


def resume_op(run: str, *, config_dir: str | None = None, fault: FaultHook | None = None) -> OpResult:
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
        shard_outputs=bool(recorded.get("shard_outputs", False)),  # the layout the run started writing
    )
