"""Block-wise operation commands: ``tierflow op``, ``tierflow status RUN``, ``tierflow resume RUN``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tierflow.flows.cli._app import console, err_console, print_json, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
STAGES = {"label": 2}  # label: local + relabel stages are block-wise (merge is one step)


def _total_blocks(name: str, shape: tuple[int, ...], blocks: tuple[int, ...], params: dict[str, str]) -> int:
    from tierflow.storage.geometry import BlockGrid
    from tierflow.tasks.ops.pyramid import downsampled_shape, pyramid_factors

    if name == "features":
        return 0  # features go to the database; no block bar
    if name != "downsample":
        return len(BlockGrid(shape, blocks)) * STAGES.get(name, 1)
    total, level_shape = 0, shape
    for factors in pyramid_factors(shape, int(params.get("levels", 3)), factor=2):
        level_shape = downsampled_shape(level_shape, factors)
        total += len(BlockGrid(level_shape, tuple(min(b, s) for b, s in zip(blocks, level_shape))))
    return total


def register(app: typer.Typer) -> None:
    """Add these commands to the top-level ``tierflow`` app."""
    app.command("op")(op)
    app.command()(status)
    app.command()(resume)
    app.command()(track)


def _parse_params(values: list[str] | None) -> dict[str, str]:
    from tierflow.storage.errors import TierflowError

    params = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TierflowError(f"{item!r} is not key=value", hint="e.g. --param sigma=2 or --with markers=seeds.zarr")
        params[key.strip()] = value.strip()
    return params


def _check_op(name: str, params: dict[str, str]) -> None:
    """Refuse an unknown operation, or a parameter unknown or out of range, before any flow starts."""
    from tierflow.storage.errors import TierflowError
    from tierflow.tasks.ops.catalog import MAP_OPS, MULTI_STAGE_PARAMS
    from tierflow.tasks.ops.params import resolve_params

    if name in MULTI_STAGE_PARAMS:
        resolve_params(name, MULTI_STAGE_PARAMS[name], params)
    elif name in MAP_OPS:
        MAP_OPS[name].resolve(params)
    else:
        raise TierflowError(f"no operation {name!r}", hint=f"choose one of {sorted([*MAP_OPS, *MULTI_STAGE_PARAMS])}")


def _with_progress(total: int, output_uri: str, run: Any, config_path: str | None) -> Any:
    """Run ``run()`` while a bar counts the blocks the ledger records for ``output_uri``."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.models import BlockRecord

    db = open_database(load_db_config(config_path), migrate=True)  # a fresh database has no ledger table yet
    since = datetime.now(UTC)
    stop = threading.Event()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        bar = progress.add_task("blocks", total=total)

        def poll() -> None:
            while not stop.wait(0.5):
                try:
                    with db.session() as session:
                        done = session.scalar(
                            select(func.count()).select_from(BlockRecord).where(
                                BlockRecord.array_uri.startswith(output_uri), BlockRecord.status == "done", BlockRecord.created_at >= since
                            )
                        )
                except SQLAlchemyError:
                    continue  # the bar only shows progress: a failed poll waits for the next one
                progress.update(bar, completed=min(total, int(done or 0)))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            result = run()
        finally:
            stop.set()
            watcher.join()
        progress.update(bar, completed=total)
    return result


def op(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="convert, gaussian, threshold, mask, label, watershed or downsample.")],
    input: Annotated[str, typer.Option("--input", "-i", help="zarr array, TIFF stack or slice folder: a path or an s3:// URI.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where the zarr result goes (path or s3:// URI).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value (repeatable), e.g. sigma=2.")] = None,
    block_shape: Annotated[str | None, typer.Option("--block-shape", help="z,y,x (default: [execution].block_shape).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Parallel batches (default: one per core).")] = None,
    extra: Annotated[list[str] | None, typer.Option("--with", help="An extra input NAME=PATH, e.g. markers=seeds.zarr (watershed).")] = None,
    mask: Annotated[str | None, typer.Option("--mask", help="Restrict the op to this array's non-zero voxels.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Apply one block-wise operation to your own data, e.g. ``tierflow op gaussian -i in.zarr -o out.zarr -p sigma=2``."""
    params = _parse_params(param)
    _check_op(name, params)  # before anything heavy is imported or started
    from tierflow.flows.cli.data import _config
    from tierflow.flows.ops.flow import locate_input, output_location, run_op
    from tierflow.flows.execution.placement import check_output_placement, op_reads
    from tierflow.storage.geometry import parse_block_shape
    from tierflow.tasks.blockwise import open_source

    config = _config(ctx)
    extras = _parse_params(extra)
    check_output_placement(config, output, op_reads(input, extras, mask))
    target_uri = output_location(config, output).uri  # refused here if its tier takes no writes
    volume = open_source(locate_input(config, input))
    shape = parse_block_shape(block_shape, ndim=len(volume.shape)) if block_shape else None
    blocks = shape or tuple(config.execution.block_shape)[-len(volume.shape):]
    total = _total_blocks(name, tuple(volume.shape), blocks, params)

    def run() -> dict[str, Any]:
        from tierflow.flows.runtime.prefect_env import interactive_flows

        with interactive_flows():
            return run_op(name, input, output, params, block_shape=shape, workers=workers, config_dir=state(ctx).config_path,
                          inputs=extras or None, mask=mask)

    result = run() if as_json or not total else _with_progress(total, target_uri, run, state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    console.print(f"{name}: {result['computed']} of {result['blocks']} blocks computed, "
                  f"{result['blocks'] - result['computed']} already done -> {result['output']} (run {result['run_id']})")


def status(ctx: typer.Context, run: Annotated[str, typer.Argument(help="Run id or Prefect flow-run id.")], as_json: JsonOption = False) -> None:
    """Block progress of a run, from the ledger: done / failed per stage, and the failed blocks."""
    from sqlalchemy import select

    from tierflow.flows.cli.data import _database, _existing_run
    from tierflow.storage.db.models import BlockRecord

    db = _database(ctx)
    with db.session() as session:
        row = _existing_run(session, run)
        records = session.execute(
            select(BlockRecord.op, BlockRecord.block_id, BlockRecord.status, BlockRecord.error).where(BlockRecord.run_id == row.id).order_by(BlockRecord.id)
        ).all()
        latest: dict[tuple[str, str], tuple[str, str | None]] = {}
        for op_name, block_id, block_status, error in records:
            latest[(op_name, block_id)] = (block_status, error)
        stages: dict[str, dict[str, Any]] = {}
        for (op_name, block_id), (block_status, error) in latest.items():
            stage = stages.setdefault(op_name, {"done": 0, "failed": 0, "failed_blocks": []})
            stage[block_status if block_status in ("done", "failed") else "done"] += 1
            if block_status == "failed":
                stage["failed_blocks"].append(block_id)
        report = {"run": row.id, "flow": row.flow_name, "status": row.status, "message": row.message, "stages": stages}
    if as_json:
        print_json(report)
        return
    console.print(f"run {row.id} ({report['flow']}): {report['status']}" + (f" - {report['message']}" if report["message"] else ""))
    table = Table("stage", "done", "failed", "failed blocks")
    for name, figures in stages.items():
        table.add_row(name, str(figures["done"]), str(figures["failed"]), ", ".join(sorted(figures["failed_blocks"])))
    console.print(table)


def resume(ctx: typer.Context, run: Annotated[str, typer.Argument(help="The failed run to finish.")], as_json: JsonOption = False) -> None:
    """Finish a failed (or killed) op or pipeline run: only what the ledger does not mark done
    is computed again."""
    from tierflow.flows.cli.data import _config, _database
    from tierflow.flows.ops.flow import resume_op
    from tierflow.storage.db.repo import get_run

    _config(ctx)
    from tierflow.flows.runtime.prefect_env import interactive_flows

    with _database(ctx).session() as session:
        row = get_run(session, run)
        flow_name = row.flow_name if row is not None else None
    if flow_name == "pipeline":
        from tierflow.flows.cli.pipeline import _pipeline_summary
        from tierflow.flows.pipeline.flow import resume_pipeline

        with interactive_flows(), console.status(f"resuming pipeline run {run}"):
            result = resume_pipeline(run, config_dir=state(ctx).config_path)
        if as_json:
            print_json(result.to_dict())
            return
        _pipeline_summary(result)
        return
    with interactive_flows():
        result = resume_op(run, config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    console.print(f"resumed run {run} as run {result['run_id']}: {result['computed']} block(s) recomputed, "
                  f"{result['blocks'] - result['computed']} were already done -> {result['output']}")


def track(
    ctx: typer.Context,
    run: Annotated[list[int], typer.Option("--run", help="A features run (repeatable: one per time point).")],
    max_distance: Annotated[float, typer.Option("--max-distance", help="Largest step between time points (voxels, or units of --spacing).")],
    no_splits: Annotated[bool, typer.Option("--no-splits", help="Do not detect dividing objects.")] = False,
    max_gap: Annotated[int, typer.Option("--max-gap", min=0, help="Time points a track may skip.")] = 0,
    frame_interval: Annotated[float, typer.Option("--frame-interval", help="Time between time points.")] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Link objects across time points; store tracks, kinematics and MSD in the database."""
    from tierflow.flows.cli.data import _config
    from tierflow.flows.lifecycle.track import track as track_flow

    _config(ctx)
    from tierflow.flows.runtime.prefect_env import interactive_flows

    with interactive_flows():
        result = track_flow(runs=run, max_distance=max_distance, allow_splits=not no_splits, max_gap=max_gap,
                            frame_interval=frame_interval, config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    console.print(f"run {result['run_id']}: {result['points']} objects in {result['tracks']} tracks ({result['divisions']} divisions)")
