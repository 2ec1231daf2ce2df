"""Block-wise operation commands: ``tierflow op``, ``tierflow ops list|show``, ``tierflow status RUN``,
``tierflow resume RUN``. What ops exist and what they take comes from the op registry
(:mod:`tierflow.tasks.ops.registry`)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from typer.core import TyperCommand
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from tierflow.flows.cli import complete
from tierflow.flows.cli._app import console, err_console, parse_params, print_json, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]

ops_app = typer.Typer(help="The operations tierflow can run (built in, and from installed plugins).", no_args_is_help=True)


class _OpCommand(TyperCommand):
    """``tierflow op --help`` lists the registered ops; ``tierflow op NAME --help`` adds that
    op's own parameters (read when help is asked for, so the command line starts without
    importing the ops)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["tierflow_op_args"] = list(args)  # --help is eager: the op name is read from here
        try:
            return super().parse_args(ctx, args)
        except typer.BadParameter as exc:
            if exc.param is not None and exc.param.name == "name" and not exc.message:  # no op named: say which there are
                from tierflow.tasks.ops.registry import op_names

                exc.message = f"Choose one of {', '.join(op_names())} (`tierflow ops list` describes them)"
            raise

    def get_help(self, ctx: Any) -> str:
        from tierflow.tasks.ops.registry import all_ops

        if not hasattr(self, "_base_help"):
            self._base_help = self.help or ""
        specs = {spec.name: spec for spec in all_ops()}
        chosen = next((a for a in ctx.meta.get("tierflow_op_args", []) if a in specs), None)
        if chosen is not None:
            self.help = f"{self._base_help}\n\n{_op_help(specs[chosen])}"
        else:
            lines = "\n\n".join(f"[bold]{spec.name}[/]: {_escape(spec.summary)}" for spec in specs.values())
            self.help = f"{self._base_help}\n\nOps (`tierflow ops show NAME` for their parameters):\n\n{lines}"
        return super().get_help(ctx)


def _op_help(spec: Any) -> str:
    """The help paragraphs of one op: what it does, where it comes from, each parameter."""
    described = spec.describe()
    head = f"[bold]{spec.name}[/] ({spec.kind} op, version {spec.version}, from {_escape(spec.origin)}): {_escape(spec.summary)}"
    lines = [head, "Parameters (-p KEY=VALUE):"]
    for param, info in described["params"].items():
        default = "required" if info["required"] else f"default {info['default']!r}"
        lines.append(f"[bold]{param}[/] ({_escape(default)}; {_escape(info['allowed'])}): {_escape(info['help'])}")
    if spec.inputs:
        lines.append(f"Extra inputs: {', '.join(spec.inputs)} (--with NAME=PATH)")
    lines.append(f"More (JSON Schema, halo, resources): `tierflow ops show {spec.name}`")
    return "\n\n".join(lines)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _total_blocks(name: str, shape: tuple[int, ...], blocks: tuple[int, ...], params: dict[str, Any]) -> int:
    """Blocks ``name`` writes in all (the progress bar's total), as its spec counts them."""
    from tierflow.tasks.ops.registry import get_op

    return get_op(name).block_count(shape, blocks, params)


def register(app: typer.Typer) -> None:
    """Add these commands to the top-level ``tierflow`` app."""
    app.command("op", cls=_OpCommand)(op)
    app.add_typer(ops_app, name="ops")
    app.command()(status)
    app.command()(resume)
    app.command()(track)


def _check_op(name: str, params: dict[str, str]) -> dict[str, Any]:
    """Refuse an unknown operation, or a parameter unknown or out of range, before any flow
    starts; returns the resolved parameters."""
    from tierflow.tasks.ops.registry import get_op

    return get_op(name).resolve(params)


@ops_app.command("list")
def ops_list(as_json: JsonOption = False) -> None:
    """Every op: name, kind, version, the package it comes from and what it does (``--json``:
    with its parameters' JSON Schema). A plugin that cannot be used is named below the list."""
    from tierflow.tasks.ops.registry import all_ops, broken_plugins

    specs = all_ops()
    broken = broken_plugins()
    if as_json:
        print_json([spec.describe() for spec in specs])
        for plugin in broken:
            err_console.print(f"[yellow]broken plugin:[/] {_escape(plugin.error().message)}", soft_wrap=True)
        return
    table = Table(Column("op", no_wrap=True), "kind", "version", "package", "inputs", "what it does")  # names are typed: never cut
    for spec in specs:
        table.add_row(spec.name, spec.kind, spec.version, spec.package, ", ".join(spec.inputs), _escape(spec.summary))
    console.print(table)
    for plugin in broken:
        console.print(f"[yellow]broken plugin:[/] {_escape(plugin.error().message)}", soft_wrap=True)


@ops_app.command("show")
def ops_show(name: Annotated[str, typer.Argument(
    metavar="OP", help="An op (see `tierflow ops list`).", autocompletion=complete.op_names)], as_json: JsonOption = False) -> None:
    """One op: its parameters (type, default, what is allowed, what each means, their JSON
    Schema), halo with the default parameters, extra inputs, resources and package."""
    from tierflow.tasks.ops.registry import get_op

    spec = get_op(name)
    described = spec.describe()
    if as_json:
        print_json(described)
        return
    console.print(f"[bold]{name}[/] ({described['kind']} op, version {described['version']}, from {_escape(spec.origin)}): "
                  f"{_escape(described['summary'])}", soft_wrap=True)
    if described["inputs"]:
        console.print(f"extra inputs: {', '.join(described['inputs'])} (give them as --with NAME=PATH)")
    if spec.kind == "map":
        halo = described["halo"]
        console.print("halo with the default parameters: " + (", ".join(f"{k} {tuple(v)}" for k, v in halo.items()) if halo
                                                               else "depends on the parameters given"))
    if described["resources"]:
        console.print("resources: " + ", ".join(f"{k}={v}" for k, v in described["resources"].items()))
    table = Table("parameter", "default", "allowed", "meaning")
    for param, info in described["params"].items():
        default = "(required)" if info["required"] else repr(info["default"])
        table.add_row(param, _escape(default), _escape(info["allowed"]), _escape(info["help"]))
    console.print(table)
    console.print("JSON Schema of the parameters:")
    console.print_json(data=described["schema"])


def _with_progress(total: int, output_uri: str, run: Any, config_path: str | None) -> Any:
    """Run ``run()`` while a bar counts the blocks the ledger records for ``output_uri``."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.repo import count_done_since
    from tierflow.storage.errors import DatabaseError

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
                        done = count_done_since(session, output_uri, since)
                except DatabaseError:
                    continue  # the bar only shows progress: a failed poll waits for the next one
                progress.update(bar, completed=min(total, done))

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
    name: Annotated[str, typer.Argument(
        metavar="OP", help="The op (see `tierflow ops list`, or the list in this help).", autocompletion=complete.op_names)],
    input: Annotated[str, typer.Option(
        "--input", "-i", metavar="PATH|URI", help="zarr array, TIFF stack or slice folder: a path or an s3:// URI.")],
    output: Annotated[str, typer.Option("--output", "-o", metavar="PATH|URI", help="Where the zarr result goes (path or s3:// URI).")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", metavar="KEY=VALUE", help="An op parameter (repeatable), e.g. sigma=2.")] = None,
    block_shape: Annotated[str | None, typer.Option(
        "--block-shape", metavar="Z,Y,X", help="Block shape (default: [execution].block_shape).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, metavar="N", help="Parallel batches (default: one per core).")] = None,
    extra: Annotated[list[str] | None, typer.Option(
        "--with", metavar="NAME=PATH", help="An extra input NAME=PATH the op takes, e.g. markers=seeds.zarr (watershed).")] = None,
    mask: Annotated[str | None, typer.Option("--mask", metavar="PATH|URI", help="Restrict the op to this array's non-zero voxels.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compute every block again, even those the ledger has done (the ledger keeps the old rows as history).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply one block-wise operation to your own data, e.g. ``tierflow op gaussian -i in.zarr -o out.zarr -p sigma=2``."""
    params = parse_params(param)
    resolved = _check_op(name, params)  # before anything heavy is imported or started
    from tierflow.flows.cli.data import _config
    from tierflow.flows.execution.placement import check_output_placement, op_reads

    config = _config(ctx)
    extras = parse_params(extra)
    check_output_placement(config, output, op_reads(input, extras, mask))
    memo = None if force else _memo_request(name, resolved, input, output, params, block_shape, extras, mask, config)
    known = _answer(memo, state(ctx).config_path) if memo is not None else None
    if known is not None:  # the op memo answered: nothing changed since the ledger confirmed it (no zarr, SQLAlchemy or Prefect)
        _op_summary(name, known, as_json)
        return
    from tierflow.flows.ops.cached import up_to_date  # a finished op is answered without importing Prefect
    from tierflow.flows.ops.request import locate_input, output_location
    from tierflow.storage.geometry import fit_block_shape, parse_block_shape
    from tierflow.storage.image_meta import leading_axes
    from tierflow.tasks.blockwise import open_source

    target_uri = output_location(config, output).uri  # refused here if its tier takes no writes
    volume = open_source(locate_input(config, input))
    shape = parse_block_shape(block_shape) if block_shape else None
    if shape is not None and len(shape) > len(volume.shape):
        parse_block_shape(block_shape, ndim=len(volume.shape))  # refused: one side per axis
    blocks = fit_block_shape(shape or config.execution.block_shape, volume.shape, leading=leading_axes(volume.axes), axes=volume.axes,
                             key="--block-shape")
    shape = blocks if shape is not None else None
    total = _total_blocks(name, tuple(volume.shape), blocks, resolved)

    def run() -> dict[str, Any]:
        from tierflow.flows.ops.flow import op_flow  # imports Prefect: only when there is work to do
        from tierflow.flows.runtime.prefect_env import interactive_flows

        with interactive_flows():
            return op_flow(name, input, output, params, block_shape=shape, workers=workers, config_dir=state(ctx).config_path,
                           inputs=extras or None, mask=mask, force=force)

    result = None if force else up_to_date(name, input, output, params, shape, state(ctx).config_path, extras or None, mask, config,
                                            memo=memo)
    if result is None:
        from tierflow.flows.runtime.prefect_env import use_prefect_server

        use_prefect_server(config)  # before the progress bar: a first start shows a status line of its own
        result = run() if as_json or not total else _with_progress(total, target_uri, run, state(ctx).config_path)
    _op_summary(name, result, as_json)


def _op_summary(name: str, result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    console.print(f"{name}: {result['computed']} of {result['blocks']} blocks computed, "
                  f"{result['blocks'] - result['computed']} already done -> {result['output']} (run {result['run_id']})")


def _memo_request(name: str, resolved: dict[str, Any], input: str, output: str, params: dict[str, Any], block_shape: str | None,
                  extras: dict[str, str], mask: str | None, config: Any) -> Any:
    from tierflow.flows.ops.quick import memo_request
    from tierflow.tasks.ops.registry import get_op

    return memo_request(get_op(name), resolved, input, output, params, block_shape, extras, mask, config)


def _answer(memo: Any, config_path: str | None) -> dict[str, Any] | None:
    from tierflow.flows.ops.quick import answer

    return answer(memo, config_path)


def status(ctx: typer.Context, run: Annotated[str, typer.Argument(metavar="RUN", help="Run id or Prefect flow-run id.")],
           as_json: JsonOption = False) -> None:
    """Block progress of a run, from the ledger: done / failed per stage (a pipeline's from the
    runs inside it), and the failed blocks."""
    from tierflow.flows.cli.data import _database, _existing_run

    db = _database(ctx)
    with db.session() as session:
        row = _existing_run(session, run)
        served = (row.result or {}).get("served_from_run") if isinstance(row.result, dict) else None
        # a pipeline run served from cache computed nothing: the stages are those of the run it was served from
        stages = _stages(session, _existing_run(session, str(served)) if served is not None else row)
        report = {"run": row.id, "flow": row.flow_name, "status": row.status, "message": row.message, "served_from_run": served,
                  "stages": stages}
    if as_json:
        print_json(report)
        return
    console.print(f"run {row.id} ({report['flow']}): {report['status']}"
                  + (f" - {_escape(report['message'])}" if report["message"] else ""))
    if served is not None:
        console.print(f"served from the cache of run {served}; its stages:")
    table = Table("stage", "done", "failed", "failed blocks")
    for name, figures in stages.items():
        table.add_row(name, str(figures["done"]), str(figures["failed"]), ", ".join(sorted(figures["failed_blocks"])))
    console.print(table)


def _stages(session: Any, row: Any) -> dict[str, dict[str, Any]]:
    """Done / failed blocks per stage of run ``row`` and the runs inside it (the latest attempt
    of each block counts): ``smooth: gaussian`` for a pipeline's stage, the ledger's op otherwise."""
    from tierflow.storage.db.repo import child_runs, latest_state_counts

    family, level = [row], [row]
    while level:
        level = [child for parent in level for child in child_runs(session, parent.id)]
        family += level
    stage_of = {member.id: (member.parameters or {}).get("stage") for member in family}
    stages: dict[str, dict[str, Any]] = {}
    for counted in latest_state_counts(session, list(stage_of)):  # counted in the database: a few rows, however many blocks
        name = f"{stage_of[counted.run_id]}: {counted.op}" if stage_of[counted.run_id] else counted.op
        figures = stages.setdefault(name, {"done": 0, "failed": 0, "failed_blocks": []})
        figures["failed" if counted.failed else "done"] += counted.blocks
        figures["failed_blocks"] += counted.block_ids
    return stages


def resume(ctx: typer.Context, run: Annotated[str, typer.Argument(
    metavar="RUN", help="The failed run to finish.")], as_json: JsonOption = False) -> None:
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

        from tierflow.flows.cli.live import live_progress

        with interactive_flows(), live_progress(err_console, enabled=not as_json):
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
    run: Annotated[list[int], typer.Option("--run", metavar="RUN", help="A features run (repeatable: one per time point).")],
    max_distance: Annotated[float, typer.Option(
        "--max-distance", metavar="DISTANCE", help="Largest step between time points (voxels, or units of --spacing).")],
    no_splits: Annotated[bool, typer.Option("--no-splits", help="Do not detect dividing objects.")] = False,
    max_gap: Annotated[int, typer.Option("--max-gap", min=0, metavar="N", help="Time points a track may skip.")] = 0,
    frame_interval: Annotated[float | None, typer.Option(
        "--frame-interval", metavar="SECONDS",
        help="Time between time points (s); default: the inputs' metadata, else 1 (per frame).")] = None,
    spacing: Annotated[str | None, typer.Option(
        "--spacing", metavar="Z,Y,X", help="Voxel size z,y,x in µm (y,x in 2-D): links and kinematics in µm (--max-distance too); "
        "default: kinematics in the features runs' voxel size, linking in voxels.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Link objects across time points; store tracks, kinematics, MSD and per-point steps in the database."""
    from tierflow.flows.cli.data import _config
    from tierflow.flows.lifecycle.track import track as track_flow

    _config(ctx)
    from tierflow.flows.runtime.prefect_env import interactive_flows

    with interactive_flows():
        result = track_flow(runs=run, max_distance=max_distance, allow_splits=not no_splits, max_gap=max_gap,
                            frame_interval=frame_interval, spacing=_spacing(spacing), config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    console.print(f"run {result['run_id']}: {result['points']} objects in {result['tracks']} tracks ({result['divisions']} divisions); "
                  f"lengths in {result['length_unit']}, times in {result['time_unit']}")


def _spacing(text: str | None) -> list[float] | None:
    """``--spacing 2,0.65,0.65`` as numbers, refused with the option named before any work."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or not all(0 < v < float("inf") for v in values):
        raise typer.BadParameter(f"{text!r} is not 2 or 3 positive numbers separated by commas (z,y,x in µm)",
                                 param_hint="--spacing")
    return values
