"""CLI: ``tierflow demo``, ``tierflow run pipeline``, ``tierflow runs list|show`` and
``tierflow serve``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from tierflow.flows.cli import complete
from tierflow.flows.cli._app import console, err_console, parse_params, print_json, state

if TYPE_CHECKING:
    from tierflow.flows.pipeline.report import PipelineResult

__all__ = ["register"]

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
run_app = typer.Typer(help="Run a flow: `tierflow run pipeline [NAME] --dataset NAME --raw RAW_DIR` (or `--snapshot ID`).",
                      no_args_is_help=True)
pipelines_app = typer.Typer(help="Pipelines (TOML specs in configs/pipelines/): `tierflow pipelines list`.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs recorded in the results database.", no_args_is_help=True)


def _pipeline_summary(result: PipelineResult, *, look: bool = True) -> None:
    """What a pipeline run made, where it is, and (``look``) how to look at it."""
    usage = result["tier_usage"]
    head = "served from cache (run {})".format(result["served_from_run"]) if result.get("cached") else "completed"
    tracks = f", {result['tracks']} tracks, {result['divisions']} divisions" if result.tracked else ""  # no [outputs] track: none
    console.print(f"[bold]pipeline run {result['run_id']}[/] {head}: snapshot [cyan]{result['snapshot_id']}[/] "
                  f"({result['volumes']} volumes) -> {result['objects']} objects{tracks}")
    console.print(f"  tiers: {usage['written_scratch']:,} B on scratch, {usage['written_output']:,} B on output, "
                  f"{usage['promoted']:,} B promoted to Tier 1, {usage['reclaimed']:,} B of scratch reclaimed")
    for sample, image in sorted((result.get("images") or {}).items()):
        shape = " x ".join(map(str, image["shape"]))
        console.print(f"  image {sample}: {image['uri']} (t x c x z x y x = {shape}; channels {', '.join(image['channels'])}; "
                      f"labels {', '.join(image['labels']) or '-'})", soft_wrap=True)
    console.print(f"  report: {result['promoted'].get('report.md', result.get('report_uri'))}")
    console.print(f"  run log: {result['log']}")
    if look:
        viewer = (f"tierflow view {result['run_id']} (Neuroglancer link per sample)" if result.get("images")
                  else "tierflow serve, then the report's Neuroglancer links" if result.get("links") else None)
        objects = f"; tierflow results {result['run_id']} (its objects as a table, CSV or Parquet)" if result["objects"] else ""
        console.print(f"  look at the results: tierflow runs show {result['run_id']}{objects}" + (f"; {viewer}" if viewer else ""),
                      soft_wrap=True)


def run_pipeline(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", metavar="NAME", help="Dataset name.")],
    name: Annotated[str | None, typer.Argument(
        metavar="PIPELINE", autocompletion=complete.pipeline_names,
        help="The pipeline: a name (`tierflow pipelines list`) or a .toml spec; default cells.", show_default=False)] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", metavar="ID", help="Snapshot id (or a unique prefix).")] = None,
    raw: Annotated[Path | None, typer.Option("--raw", metavar="RAW_DIR", help="Or a raw folder to ingest first.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", metavar="KEY=VALUE",
        help="Set a parameter of the pipeline's [params] (or block_shape): key=value (repeatable).")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, metavar="N", help="Parallel batches per operation.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compute everything again, even if an earlier run did: not served from its result, every block computed "
        "in a new place, results promoted to Tier 1 under this run (earlier Tier 1 results stay as they are).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a pipeline (default cells: stage, smooth, threshold, label, features, track, pyramid,
    promote, retention, report) on a snapshot or a raw folder. Progress is shown as it runs:
    the stage, its blocks done / total, the time, and the run's page in the Prefect UI."""
    from tierflow.flows.cli.data import _config
    from tierflow.flows.pipeline.library import find_spec
    from tierflow.flows.pipeline.params import PipelineParams
    from tierflow.storage.raw_layout import check_raw_folder
    from tierflow.storage.tiers import check_name

    config = _config(ctx)
    params = parse_params(param)
    check_name(dataset, "dataset")
    spec = find_spec(name, config.meta.config_dir)
    PipelineParams.from_config(config, params, spec)  # refuse bad parameters and inputs before any flow starts
    if raw is not None:
        check_raw_folder(raw.expanduser())
    from tierflow.flows.cli.live import live_progress
    from tierflow.flows.pipeline.flow import pipeline
    from tierflow.flows.runtime.prefect_env import interactive_flows

    with interactive_flows(), live_progress(err_console, enabled=not as_json):
        result = pipeline(dataset, snapshot=snapshot, raw_dir=str(raw) if raw else None, spec=spec.file, params=params,
                          workers=workers, config_dir=state(ctx).config_path, force=force)
    if as_json:
        print_json(result.to_dict())
        return
    _pipeline_summary(result)


def pipelines_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The pipelines this project can run: its own configs/pipelines/*.toml and tierflow's."""
    from tierflow.flows.cli.data import _config
    from tierflow.flows.pipeline.library import list_specs
    from tierflow.flows.pipeline.spec_params import params_model
    from tierflow.tasks.ops.spec import describe_field

    config = _config(ctx)
    rows = []
    for spec in list_specs(config.meta.config_dir):
        fields = params_model(spec).model_fields
        rows.append({"name": spec.name, "description": spec.description, "file": spec.file,
                     "stages": [{"name": s.name, "op": s.op} for s in spec.ordered()],
                     "params": {name: {"default": info.default, "help": info.description or "", "allowed": describe_field(info)}
                                for name, info in fields.items()}})
    if as_json:
        print_json(rows)
        return
    table = Table(Column("pipeline", no_wrap=True), "stages", "parameters (defaults)", "file")
    for row in rows:
        table.add_row(f"[bold]{row['name']}[/]\n{escape(row['description'])}", " -> ".join(s["name"] for s in row["stages"]),
                      ", ".join(f"{k}={v['default']}" for k, v in row["params"].items()), row["file"])
    console.print(table)


def demo(
    ctx: typer.Context,
    raw_dir: Annotated[Path | None, typer.Option(
        "--raw", metavar="RAW_DIR", help="Where the synthetic raw data goes (default var/demo/raw).")] = None,
    samples: Annotated[int, typer.Option("--samples", min=1, max=20, metavar="N", help="Samples to synthesize.")] = 2,
    time_points: Annotated[int, typer.Option("--time-points", min=2, max=100, metavar="N", help="Time points per sample.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The main job on embedded defaults: synthesize a time-lapse (moving, dividing and touching
    cells in 2 channels), ingest it, run the pipeline, print what came out and how to look."""
    from tierflow.flows.cli.data import _config
    from tierflow.flows.cli.live import live_progress
    from tierflow.flows.pipeline.flow import pipeline
    from tierflow.flows.runtime.prefect_env import interactive_flows
    from tierflow.tasks.synthetic import SyntheticSpec, linking_accuracy, write_synthetic_raw

    config = _config(ctx)
    raw = (raw_dir or Path(config.meta.project_root) / "var" / "demo" / "raw").expanduser().resolve()
    spec = SyntheticSpec(samples=samples, time_points=time_points)
    with console.status(f"synthesizing {samples} samples x {spec.channels} channels x {time_points} time points of "
                        f"{'x'.join(map(str, spec.shape))} uint16 in {raw}"):
        truth = write_synthetic_raw(raw, spec)
    with interactive_flows(), live_progress(err_console, enabled=not as_json):
        result = pipeline("demo", raw_dir=str(raw), config_dir=state(ctx).config_path)
    points = _track_points(ctx, result)
    score = linking_accuracy(truth, points)
    if as_json:
        print_json({**result.to_dict(), "linking": score})
        return
    _pipeline_summary(result, look=False)  # the demo says below how to look, at more length
    console.print(f"  tracking vs the generator's ground truth: {score['correct']}/{score['links']} links right "
                  f"({score['accuracy']:.1%}), {score['detected']:.1%} of true cells detected")
    _artifacts_per_tier(ctx)
    console.print("\n[bold]Look at the results[/]")
    console.print("  Prefect UI:   tierflow ui   (prints its URL -> Runs, Artifacts)")
    console.print(f"  this run:     tierflow runs show {result['run_id']}")
    console.print(f"  its objects:  tierflow results {result['run_id']}   (track ids, channel means; --format csv|parquet)")
    console.print("  SQL:          tierflow db psql   (views pipeline_objects, track_summary, stage_blocks; tables object_features, "
                  "track_points, track_kinematics, track_msd)", markup=False)
    if result.get("images"):
        console.print(f"  Neuroglancer: tierflow view {result['run_id']}   (serves the sample images, prints a link per sample: "
                      "channels + labels)")
        return
    first_link = next(iter(result.get("links", {}).values()), None)
    if first_link:
        console.print("  Neuroglancer: tierflow serve   (publishes Tier 1), then open a link from the report, e.g.")
        console.print(f"    {first_link[:160]}...")


def _track_points(ctx: typer.Context, result: PipelineResult) -> Any:
    import pandas as pd

    from tierflow.flows.cli.data import _database
    from tierflow.storage.db.repo import child_runs, track_rows

    db = _database(ctx)
    run_id = result.get("served_from_run") or result["run_id"]
    columns = ["sample", "time_point", "track_id", "parent_track_id", "centroid_z", "centroid_y", "centroid_x"]
    with db.session() as session:
        track_runs = child_runs(session, run_id, flow_name="track")
        points = track_rows(session, "points", track_runs[-1].id if track_runs else None, columns)
    return pd.DataFrame(points.rows, columns=columns)


def _artifacts_per_tier(ctx: typer.Context) -> None:
    from tierflow.flows.cli.data import _database
    from tierflow.storage.db.repo import live_usage_by_tier

    db = _database(ctx)
    with db.session() as session:
        usage = live_usage_by_tier(session)
    console.print("  live artifacts: " + ", ".join(f"{u.tier} {u.count} ({u.bytes:,} B)" for u in usage))


def runs_list(
    ctx: typer.Context,
    flow: Annotated[str | None, typer.Option("--flow", metavar="FLOW", help="Only runs of this flow (pipeline, op, ingest...).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000, metavar="N", help="At most this many runs.")] = 30,
    all_runs: Annotated[bool, typer.Option("--all", help="Also the runs inside other runs (a pipeline's op, promote... runs).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Recent runs you started (``--all``: with the runs inside them): id, flow, status, start,
    duration, parent."""
    from tierflow.flows.cli.data import _database
    from tierflow.storage.db.repo import count_runs, list_runs

    db = _database(ctx)
    with db.session() as session:
        total = count_runs(session, flow_name=flow, top_level=not all_runs)
        rows = [{"id": r.id, "flow": r.flow_name, "status": r.status, "started_at": r.started_at, "seconds": r.seconds,
                 "parent": r.parent_id, "flow_run_id": str(r.flow_run_id) if r.flow_run_id else None, "message": r.message}
                for r in list_runs(session, limit=limit, flow_name=flow, top_level=not all_runs)]
    if as_json:
        print_json(rows)
        return
    table = Table("run", "flow", "status", "started", "seconds", "parent", "message")
    for r in rows:
        table.add_row(str(r["id"]), r["flow"], r["status"], f"{r['started_at']:%Y-%m-%d %H:%M:%S}" if r["started_at"] else "",
                      f"{r['seconds']:.1f}" if r["seconds"] is not None else "", str(r["parent"] or ""), escape((r["message"] or "")[:60]))
    console.print(table)
    kind = "runs" if all_runs else "top-level runs"
    more = [] if len(rows) == total else ["`--limit N` for more"]
    if not all_runs:
        more.append("`--all` for the runs inside them")
    console.print(f"{len(rows)} of {total} {kind}{' of flow ' + escape(flow) if flow else ''}" + (f" ({'; '.join(more)})" if more else ""))


def runs_show(ctx: typer.Context, run: Annotated[str, typer.Argument(metavar="RUN", help="Run id or Prefect flow-run id.")],
              as_json: JsonOption = False) -> None:
    """One run: parameters, result, child runs, artifacts and block progress."""
    from tierflow.flows.cli.data import _database, _existing_run
    from tierflow.storage.db.repo import block_counts, child_runs, list_artifacts

    db = _database(ctx)
    with db.session() as session:
        row = _existing_run(session, run)
        children = child_runs(session, row.id)
        family = [row.id, *[c.id for c in children]]
        artifacts = list_artifacts(session, run_id=row.id, include_deleted=True)
        blocks = block_counts(session, family)
        report = {
            "id": row.id,
            "flow": row.flow_name,
            "status": row.status,
            "message": row.message,
            "parameters": row.parameters,
            "started_at": row.started_at,
            "ended_at": row.ended_at,
            "seconds": row.seconds,
            "host": row.host,
            "code_version": row.code_version,
            "flow_run_id": str(row.flow_run_id) if row.flow_run_id else None,
            "parent": row.parent_id,
            "result": row.result,
            "children": [{"id": c.id, "flow": c.flow_name, "status": c.status} for c in children],
            "artifacts": [
                {
                    "id": a.id,
                    "tier": a.tier,
                    "name": a.name,
                    "uri": a.uri,
                    "bytes": a.bytes,
                    "promoted_uri": a.promoted_uri,
                    "deleted": a.deleted_at is not None,
                }
                for a in artifacts
            ],
            "blocks": blocks,
        }
    if as_json:
        print_json(report)
        return
    console.print(
        f"[bold]run {report['id']}[/] {report['flow']}: {report['status']}"
        + (f" ({report['seconds']:.1f} s)" if report["seconds"] else "")
        + (f" - {escape(report['message'])}" if report["message"] else "")
    )
    console.print(f"  parameters: {_escape(_readable(report['parameters']))}", soft_wrap=True)
    served = (report["result"] or {}).get("served_from_run")
    if served is not None:  # its children, artifacts and blocks are the earlier run's
        console.print(f"  served from the cache of run {served}: its stages, artifacts and blocks are that run's "
                      f"(`tierflow runs show {served}`, `tierflow status {served}`)")
    if report["flow_run_id"]:
        console.print(f"  Prefect flow run: {report['flow_run_id']}")
    if report["children"]:
        counts: dict[str, int] = {}
        for child in report["children"]:
            counts[f"{child['flow']} {child['status']}"] = counts.get(f"{child['flow']} {child['status']}", 0) + 1
        console.print("  child runs: " + ", ".join(f"{n} x {k}" for k, n in sorted(counts.items())))
    if report["blocks"]:
        console.print("  blocks: " + ", ".join(f"{k} {v}" for k, v in sorted(report["blocks"].items())))
    _artifact_table([a for a in report["artifacts"] if not a["deleted"]])
    deleted: dict[str, list[int]] = {}
    for a in report["artifacts"]:
        if a["deleted"]:
            deleted.setdefault(a["tier"], []).append(a["bytes"])
    for tier, sizes in sorted(deleted.items()):
        console.print(f"  {len(sizes)} {tier} artifact(s) deleted ({sum(sizes):,} B reclaimed; `--json` lists them)")
    result = report["result"] or {}
    for name, url in sorted((result.get("links") or {}).items())[:3]:
        console.print(f"  neuroglancer {name}: {url[:120]}...")


def _artifact_table(artifacts: list[dict[str, Any]]) -> None:
    if not artifacts:
        return
    table = Table("artifact", "tier", "name", "bytes", "state")
    for a in artifacts:
        state_text = f"promoted -> {a['promoted_uri']}" if a["promoted_uri"] else "live"
        table.add_row(str(a["id"]), a["tier"], a["name"], f"{a['bytes']:,}", state_text)
    console.print(table)


def _readable(value: Any) -> str:
    """Recorded parameters as text: ``dataset=demo, params: (sigma=1.5, block_shape=16,128,128)``."""
    if isinstance(value, dict):
        parts = [f"{k}: ({_readable(v)})" if isinstance(v, dict) and v else f"{k}={_readable(v)}" for k, v in value.items()
                 if v is not None and v != {} and v != []]
        return ", ".join(parts)
    if isinstance(value, list | tuple):
        return ",".join(_readable(v) for v in value)
    return str(value)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def serve(
    ctx: typer.Context,
    tier: Annotated[str, typer.Option(
        "--tier", metavar="TIER", help="The tier to publish: source (Tier 1) or output (Tier 2).")] = "source",
    port: Annotated[int | None, typer.Option(
        "--port", min=1, max=65535, metavar="PORT", help="Default: the port of [pipeline].data_url.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the root, tier and URL as JSON (then serve).")] = False,
) -> None:
    """Publish Tier 1 (or 2) over HTTP with CORS on 127.0.0.1, read-only, so that Neuroglancer
    (in the browser) can load its zarr arrays; files only (no listings, no dot-files, nothing
    outside the tier, never scratch or ephemeral). Ctrl-C stops it."""
    from urllib.parse import urlparse

    from tierflow.configs import load_db_config
    from tierflow.flows.cli.data import _config
    from tierflow.flows.viewing.serve import tier_server

    config = _config(ctx)
    server = tier_server(config, load_db_config(state(ctx).config_path), tier, port or urlparse(config.pipeline.data_url).port or 9000)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    if as_json:
        print_json({"root": str(server.root), "tier": tier, "url": url})  # flushed: the server runs on
    else:
        console.print(f"serving {server.root} (tier {tier}) at {url} with CORS; Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    run_app.command("pipeline")(run_pipeline)
    pipelines_app.command("list")(pipelines_list)
    app.add_typer(pipelines_app, name="pipelines")
    app.add_typer(run_app, name="run")
    runs_app.command("list")(runs_list)
    runs_app.command("show")(runs_show)
    app.add_typer(runs_app, name="runs")
    app.command("demo")(demo)
    app.command("serve")(serve)
