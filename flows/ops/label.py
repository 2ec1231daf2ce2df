"""Orchestration of block-wise connected components: local -> merge -> relabel."""

from __future__ import annotations

from typing import Any


from tierflow.storage.arrays import check_output_layout, create_output_array
from tierflow.storage.db.repo.ledger import done_blocks, done_count, mark_blocks_stale
from tierflow.errors import BlockFailuresError, TierflowError
from tierflow.storage.geometry import BlockGrid
from tierflow.flows.execution.batching import run_batches
from tierflow.flows.ops.request import OpContext
from tierflow.flows.execution.outputs import claim_output
from tierflow.tasks.blockwise import plan_batches
from tierflow.tasks.label_blocks import LabelJob, label_local, label_merge, label_relabel
from tierflow.tasks.ops.label import CONNECTIVITIES

__all__ = ["run_label"]


def run_label(ctx: OpContext) -> dict[str, Any]:
    """Run the three label stages, skipping whatever the ledger says is done.

    Raises
    ------
    BlockFailuresError
        (from :mod:`tierflow.errors`) listing the failed blocks of the first stage that failed.
    """
    db, run_id, op_key, source, target = ctx.db, ctx.run_id, ctx.op_key, ctx.source, ctx.target
    shape, block_shape, params, workers, max_batches, fault = (
        ctx.shape, ctx.block_shape, ctx.params, ctx.workers, ctx.max_batches, ctx.fault)

    ndim = len(shape)
    connectivity = int(params.get("connectivity") or (26 if ndim == 3 else 8))
    if connectivity not in CONNECTIVITIES.get(ndim, {}):
        raise TierflowError(f"label: connectivity {connectivity} is not one of {sorted(CONNECTIVITIES.get(ndim, {}))} for {ndim}-D input")
    job = LabelJob(op_key=op_key, run_id=run_id, source=source, target=target, shape=tuple(shape), block_shape=tuple(block_shape),
                   connectivity=connectivity, db=db, fault=fault, force=ctx.force)
    check_output_layout(target, shape=shape, chunks=ctx.output_layout[0], shards=ctx.output_layout[1])  # before the local pass
    grid = BlockGrid(shape, block_shape)
    all_ids = [b.block_id for b in grid]
    summary: dict[str, Any] = {"blocks": len(grid), "connectivity": connectivity}
    with ctx.runner() as runner:
        for stage, task in (("local", label_local), ("merge", label_merge), ("relabel", label_relabel)):
            with db.session() as session:
                done = done_blocks(session, job.stage_key(stage), target.uri)
                lost = done - job.stored_state(stage)  # e.g. a cleaned scratch folder: redo those blocks
                mark_blocks_stale(session, job.stage_key(stage), target.uri, lost)
            done = set() if ctx.force else done - lost  # forced: every block again
            if stage == "merge":
                summary.update(runner.submit(label_merge, parameters={"job": job}).result())
                claim_output(db, target, op_key, lambda: create_output_array(
                    target, shape=shape, dtype=summary["dtype"], chunks=ctx.output_layout[0], shards=ctx.output_layout[1],
                    attributes={"tierflow": {"op": "label", "version": ctx.spec.version, "connectivity": connectivity, "op_key": op_key,
                                             **({"metadata": ctx.metadata} if ctx.metadata else {})}},
                ), keep_op_keys=[job.stage_key("local"), job.stage_key("merge")])
                continue
            remaining = [b for b in all_ids if b not in done]
            batches = plan_batches(grid, remaining, max_batches=max_batches, min_batches=2 * workers)
            outcome = run_batches(runner, task, job, batches, ctx.progress)  # local and relabel: the spec counts both
            summary[f"{stage}_computed"] = sum(result["done"] for result in outcome.results)
            if outcome.failed:
                raise BlockFailuresError(f"label:{stage}", run_id, outcome.failed, outcome.first_error)
    with db.session() as session:  # from the ledger: a retried batch still counts its blocks
        summary["computed"] = done_count(session, run_id, [job.stage_key("relabel")])
    return summary
