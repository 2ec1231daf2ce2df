"""The ledger's fast path of an op: a map op whose every block is already done in its output is
answered from one query, without starting a flow run.

Kept apart from :mod:`tierflow.flows.ops.flow` (which imports Prefect and every stage runner) so
that ``tierflow op`` answers a cached op without importing Prefect, the op kernels or dask: a
re-run of a finished op costs a fraction of ``import prefect`` (``benchmarks/cli.py``).
Nothing imported here may import Prefect (``tests/test_cheap_commands.py`` checks it).
"""

from __future__ import annotations

from typing import Any

from tierflow.configs import TierflowConfig, load_config, load_db_config
from tierflow.flows.execution.outputs import stamped_op_key
from tierflow.flows.ops.quick import MemoRequest, stat_digest
from tierflow.flows.ops.request import inputs_identity, layout_identity, locate_input, op_key, output_location
from tierflow.flows.ops.result import OpResult
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.runs import recorded_run
from tierflow.storage.db.repo.ledger import done_fingerprints
from tierflow.storage.db.repo.memos import ledger_state, record_memo
from tierflow.storage.geometry import BlockGrid, fit_block_shape
from tierflow.storage.image_meta import leading_axes
from tierflow.tasks.blockwise import MapJob, block_fingerprints, blocks_to_compute, open_source
from tierflow.tasks.ops.registry import get_op

__all__ = ["up_to_date"]


def up_to_date(op: str, input: str, output: str, params: dict[str, Any] | None, block_shape: tuple[int, ...] | None,
               config_dir: str | None, inputs: dict[str, str] | None, mask: str | None,
               config: TierflowConfig | None = None, memo: MemoRequest | None = None) -> OpResult | None:
    """The ledger's answer for a map op whose every block is done in its output (one query),
    recorded as an ``op`` run with ``up_to_date``; None when something is left to do (or the key
    cannot be known up front: Otsu). ``config``: the configuration of ``config_dir`` when the
    caller has loaded it already. ``memo``: the request as the op memo names it; when given and
    the request is up to date, a memo is written so the next identical request is answered
    from it (:mod:`flows.ops.quick`)."""
    spec = get_op(op)
    if spec.kind != "map":
        return None
    try:
        resolved = spec.resolve(params or {})
    except ValueError:
        return None  # the flow reports it
    if op == "threshold" and str(resolved["value"]).lower() == "otsu":
        return None
    config = config if config is not None else load_config(config_dir)
    target = output_location(config, output)
    source = locate_input(config, input)
    if not target.exists():
        return None
    extras = {name: locate_input(config, where) for name, where in (inputs or {}).items()}
    mask_ref = locate_input(config, mask) if mask else None
    key = op_key(op, spec.version, resolved, inputs_identity(source, extras, mask_ref) + layout_identity(config, spec))
    digest = stat_digest(memo, settled=True) if memo is not None else None  # before the check: a change during it shows later
    if stamped_op_key(target) != key:
        return None
    volume = open_source(source)
    shape = tuple(volume.shape)
    grid = BlockGrid(shape, fit_block_shape(block_shape or config.execution.block_shape, shape, leading=leading_axes(volume.axes)),
                     spec.halo_over(resolved, len(shape), volume.axes))
    db = open_database(load_db_config(config_dir), migrate=True)
    with db.session() as session:
        ledger = ledger_state(session, target.uri) if digest is not None else ""
        done = done_fingerprints(session, key, target.uri)
    job = MapJob(op=op, params=resolved, op_key=key, run_id=0, source=source, target=target, shape=shape, block_shape=grid.block_shape,
                 halo=grid.halo, db=db, extras=extras, mask=mask_ref, leading=leading_axes(volume.axes))
    if blocks_to_compute(done, block_fingerprints(job)):
        return None
    parameters = {"op": op, "input": input, "output": output, "params": dict(params or {}), "block_shape": list(grid.block_shape),
                  "inputs": dict(inputs or {}), "mask": mask, "up_to_date": True}
    if digest is not None:
        with db.session() as session:
            record_memo(session, memo_key=memo.key, op=op, op_key=key, output_uri=target.uri, stat_digest=digest, ledger=ledger,
                        blocks=len(grid), block_shape=grid.block_shape)
    with recorded_run(db, "op", parameters) as run_id:
        result = OpResult(int(run_id), op, key, target.uri, len(grid), 0, resolved, up_to_date=True)
        run_id.result = result.to_dict()
    return result
