"""Data-lifecycle commands: ingest, snapshots, artifacts, promote, retention, preflight, tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tierflow.flows.cli._app import console, err_console, print_json, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

snapshots_app = typer.Typer(help="Snapshots on Tier 1.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Artifacts on every tier.", no_args_is_help=True)


def _config(ctx: typer.Context) -> Any:
    from tierflow.configs import load_config
    from tierflow.flows.runtime.prefect_env import configure_prefect

    config = load_config(state(ctx).config_path)
    configure_prefect(config)
    return config


def _database(ctx: typer.Context) -> Any:
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(state(ctx).config_path), migrate=True)


def _existing_run(session: Any, run: str) -> Any:
    """The ``runs`` row of ``run`` (an id or a Prefect flow-run id), or a one-line error."""
    from tierflow.storage.db.repo import get_run
    from tierflow.storage.errors import TierflowError

    row = get_run(session, run)
    if row is None:
        raise TierflowError(f"no run {run!r}", hint="see `tierflow runs list`")
    return row


def _size(n: int) -> str:
    from tierflow.storage.preflight import format_bytes

    return format_bytes(n)


def register(app: typer.Typer) -> None:
    """Add these commands to the top-level ``tierflow`` app."""
    app.command()(ingest)
    app.command("check-raw")(check_raw)
    app.command()(promote)
    app.command()(retention)
    app.command()(preflight)
    app.command()(tiers)
    app.add_typer(snapshots_app, name="snapshots")
    app.add_typer(artifacts_app, name="artifacts")


def ingest(
    ctx: typer.Context,
    raw_dir: Annotated[str, typer.Argument(metavar="RAW_DIR", help="A folder in tierflow's raw layout.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="NAME", help="Dataset name (letters, digits, . _ -).")],
    as_json: JsonOption = False,
) -> None:
    """Snapshot RAW_DIR onto Tier 1 (content-addressed, write-once); prints the snapshot id."""
    _config(ctx)
    from tierflow.flows.lifecycle.ingest import ingest as ingest_flow
    from tierflow.flows.runtime.prefect_env import interactive_flows
    from tierflow.storage.raw_layout import check_raw_folder
    from tierflow.storage.tiers import check_name

    check_name(dataset, "dataset")
    check_raw_folder(Path(raw_dir).expanduser())  # before any flow starts

    with interactive_flows():
        result = ingest_flow(raw_dir=raw_dir, dataset=dataset, config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    what = "new snapshot" if result["new"] else "snapshot already present"
    err_console.print(
        f"{what}: {result['files']} files, {_size(result['bytes'])} "
        f"(uploaded {result['uploaded']}, already there {result['present']}) at {result['uri']}"
    )
    console.print(result["snapshot_id"])


def check_raw(
    raw_dir: Annotated[str, typer.Argument(metavar="RAW_DIR", help="A raw folder to look at (nothing is copied).")],
    as_json: JsonOption = False,
) -> None:
    """Say what RAW_DIR holds, per sample: channels (with names), time points, positions, shapes,
    voxel size; and every entry that cannot be used, with the file and what to do. Exits 1 when
    something cannot be used (for scripts), 0 when all of it can."""
    import logging

    from tierflow.storage.raw_report import describe_raw_folder, raw_summary

    logging.getLogger("tifffile").setLevel(logging.ERROR + 10)  # its own lines name no file: ours do
    raw = Path(raw_dir).expanduser()
    summary = raw_summary(raw)
    if as_json:
        print_json(summary)
    else:
        console.print(describe_raw_folder(raw), markup=False, highlight=False)
    if summary["warnings"]:
        raise typer.Exit(1)


@snapshots_app.command("list")
def snapshots_list(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", metavar="NAME", help="Only this dataset's snapshots.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Snapshots recorded in the results database, newest first."""
    from tierflow.storage.db.repo import list_snapshots

    db = _database(ctx)
    with db.session() as session:
        rows = [
            {"dataset": s.dataset, "snapshot_id": s.snapshot_id, "files": s.file_count, "bytes": s.total_bytes,
             "uri": s.uri, "created_at": s.created_at.isoformat(timespec="seconds")}
            for s in list_snapshots(session, dataset)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("dataset", "snapshot id", "files", "size", "created", "uri", title=f"{len(rows)} snapshot(s)")
    for row in rows:
        table.add_row(row["dataset"], row["snapshot_id"], str(row["files"]), _size(row["bytes"]), row["created_at"], row["uri"])
    console.print(table)


@artifacts_app.command("list")
def artifacts_list(
    ctx: typer.Context,
    tier: Annotated[str | None, typer.Option("--tier", metavar="TIER", help="source, output, scratch or ephemeral.")] = None,
    run: Annotated[int | None, typer.Option("--run", metavar="RUN", help="Only artifacts this run produced.")] = None,
    include_deleted: Annotated[bool, typer.Option("--all", help="Include deleted artifacts.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Artifacts with their tier, size, promotion and deletion state."""
    from tierflow.storage.db.repo import list_artifacts

    db = _database(ctx)
    with db.session() as session:
        rows = [
            {"id": a.id, "name": a.name, "kind": a.kind, "tier": a.tier, "bytes": a.bytes, "run": a.run_id,
             "sha256": a.sha256, "uri": a.uri, "pinned": a.pinned,
             "promoted_at": a.promoted_at.isoformat(timespec="seconds") if a.promoted_at else None,
             "promoted_uri": a.promoted_uri,
             "deleted_at": a.deleted_at.isoformat(timespec="seconds") if a.deleted_at else None}
            for a in list_artifacts(session, tier=tier, run_id=run, include_deleted=include_deleted)
        ]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "tier", "size", "run", "promoted", "deleted", "uri", title=f"{len(rows)} artifact(s)")
    for row in rows:
        table.add_row(str(row["id"]), row["name"], row["tier"], _size(row["bytes"]), str(row["run"] or ""),
                      row["promoted_at"] or "", row["deleted_at"] or "", row["uri"])
    console.print(table)


def promote(
    ctx: typer.Context,
    run: Annotated[str | None, typer.Option("--run", metavar="RUN", help="Promote this run's Tier 2 artifacts.")] = None,
    artifact: Annotated[list[str] | None, typer.Option(
        "--artifact", "-a", metavar="ID|URI", help="An artifact id or URI (repeatable).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy artifacts to Tier 1, verify them by reading back, then record the promotion."""
    _config(ctx)
    from tierflow.flows.lifecycle.promote import promote as promote_flow

    from tierflow.flows.runtime.prefect_env import interactive_flows

    with interactive_flows():
        result = promote_flow(run=run, artifacts=artifact or None, config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    if not result["promoted"]:
        console.print("nothing to promote")
    for item in result["promoted"]:
        console.print(f"promoted artifact {item['artifact']} -> {item['uri']} "
                      f"({_size(item['bytes'])}, sha256 {item['sha256'][:12]}..., verified)")


def retention(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Apply the retention rules of [retention] to Tiers 2-4 (Tier 1 is never touched)."""
    _config(ctx)
    from tierflow.flows.lifecycle.retention import retention as retention_flow

    from tierflow.flows.runtime.prefect_env import interactive_flows

    with interactive_flows():
        result = retention_flow(dry_run=dry_run, config_dir=state(ctx).config_path)
    if as_json:
        print_json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    table = Table("tier", "bytes", "reason", "uri", title=f"{verb} {len(result['plan'])} item(s), {_size(result['deleted_bytes'])}")
    for item in result["plan"]:
        table.add_row(item["tier"], str(item["bytes"]), item["reason"], item["uri"])
    console.print(table)
    accounting = Table("tier", "used", "promoted", "reclaimable", title="storage per tier")
    for name, figures in result["accounting"].items():
        accounting.add_row(name, _size(figures["used"]), _size(figures["promoted"]), _size(figures["reclaimable"]))
    console.print(accounting)


def preflight(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT", help="zarr arrays, TIFF stacks or slice folders (paths or s3:// URIs).")],
    block_shape: Annotated[str | None, typer.Option(
        "--block-shape", metavar="Z,Y,X", help="Block shape (default: [execution].block_shape).")] = None,
    halo: Annotated[int, typer.Option("--halo", min=0, metavar="N", help="Voxels read around each block.")] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, metavar="N", help="Parallel batches (default: [execution].max_workers, else one per core).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Warn instead of failing when over budget.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Estimate peak RAM and scratch disk for a run from array headers only (no pixels read)."""
    import os

    from tierflow.storage.preflight import preflight_check

    config = _config(ctx)
    shape = tuple(int(v) for v in block_shape.split(",")) if block_shape else tuple(config.execution.block_shape)
    count = workers or config.execution.max_workers or os.cpu_count() or 1
    report = preflight_check(
        inputs,
        block_shape=shape,
        halo=halo,
        workers=count,
        scratch_dir=config.tier_root("scratch") if config.tiers.scratch.backend == "posix" else config.state_dir,
        force=force,
    )
    if as_json:
        print_json(
            {
                "peak_ram_bytes": report.estimate.peak_ram_bytes,
                "disk_bytes": report.estimate.disk_bytes,
                "available_ram": report.available_ram,
                "available_disk": report.available_disk,
                "ram_level": report.ram_level,
                "disk_level": report.disk_level,
                "breakdown": report.estimate.breakdown,
            }
        )
        return
    console.print(str(report))


def tiers(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Each tier's role, backend, root and bytes used."""
    from tierflow.flows.runtime.tiers import open_tiers

    config = _config(ctx)
    opened = open_tiers(config)
    rows = []
    for tier in opened:
        settings = getattr(config.tiers, tier.name)
        rows.append(
            {
                "tier": tier.name,
                "backend": settings.backend,
                "root": tier.uri(),
                "write_once": tier.write_once,
                "endpoint_url": settings.endpoint_url,
                "used_bytes": tier.usage(""),
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table("tier", "backend", "write-once", "used", "root")
    for row in rows:
        table.add_row(row["tier"], row["backend"], "yes" if row["write_once"] else "no", _size(row["used_bytes"]), row["root"])
    console.print(table)
