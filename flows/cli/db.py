"""``tierflow db``: the results database (upgrade, status, url, psql, pgpass, stop)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tierflow.flows.cli._app import console, err_console, print_json, state

if TYPE_CHECKING:  # the database layer (SQLAlchemy, Alembic) is imported by the commands that use it
    from tierflow.storage.db.database import Database

app = typer.Typer(help="The results database: upgrade, status, url, psql, pgpass, stop.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def database_status(db: Database, mode: str, server: dict[str, Any] | None) -> dict[str, Any]:
    """Everything `tierflow db status` reports (the password is never part of it)."""
    from tierflow.storage.db.migrate import current_revision, head_revision

    current = current_revision(db)
    head = head_revision()
    return {
        "mode": mode,
        "url": db.masked_url,
        "server_version": db.ping(),
        "server": server,
        "schema_revision": current,
        "schema_head": head,
        "schema_current": current == head,
        "row_counts": db.row_counts(),
    }


def _server_info(ctx: typer.Context) -> tuple[Any, dict[str, Any] | None]:
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import embedded_server

    config = load_db_config(state(ctx).config_path)
    if config.mode != "embedded":
        return config, None
    status = embedded_server(config).status()
    return config, {
        "data_dir": str(status.data_dir),
        "running": status.running,
        "pid": status.pid,
        "port": status.port,
    }


@app.command()
def upgrade(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Create or migrate the schema to the newest revision (starts the embedded server)."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.migrate import current_revision, upgrade as upgrade_schema

    config = load_db_config(state(ctx).config_path)
    db = open_database(config)
    before = current_revision(db)
    upgrade_schema(db)
    after = current_revision(db)
    if as_json:
        print_json({"url": db.masked_url, "before": before, "after": after, "upgraded": before != after})
        return
    if before == after:
        console.print(f"schema already at revision [bold]{after}[/] (head) on {db.masked_url}")
    else:
        console.print(f"schema upgraded {before or 'empty'} -> [bold]{after}[/] on {db.masked_url}")


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Server, schema revision and row counts per table."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    config = load_db_config(state(ctx).config_path)
    db = open_database(config)
    _, server = _server_info(ctx)
    report = database_status(db, config.mode, server)
    if as_json:
        print_json(report)
        return
    console.print(f"[bold]database[/]  {report['url']}  ({report['mode']}, PostgreSQL {report['server_version']})")
    if server:
        console.print(f"[bold]server[/]    pid {server['pid']} port {server['port']} data {server['data_dir']}")
    schema = report["schema_revision"] or "none"
    note = "[green]current[/]" if report["schema_current"] else f"[yellow]behind head {report['schema_head']}[/]: run `tierflow db upgrade`"
    console.print(f"[bold]schema[/]    revision {schema} ({note})")
    if report["row_counts"]:
        table = Table("table", "rows", title="rows per table")
        for name, count in report["row_counts"].items():
            table.add_row(name, str(count))
        console.print(table)


@app.command()
def url(
    ctx: typer.Context,
    show_password: Annotated[bool, typer.Option("--show-password",
                                                help="Print the URL with the password (a secret: do not share it).")] = False,
    as_json: JsonOption = False,
) -> None:
    """The database URL (postgresql://..., for psql, SQLAlchemy and pandas), the password masked."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.db_client import connection_parts

    config = load_db_config(state(ctx).config_path)
    parts = connection_parts(open_database(config))
    if as_json:
        print_json({"url": parts.url(show_password=show_password)})
    else:
        console.print(parts.url(show_password=show_password), soft_wrap=True)
    if show_password:
        err_console.print("[yellow]this URL contains the database password[/]: keep it out of notebooks, logs and commits "
                          "(`tierflow db pgpass` stores it in ~/.pgpass for psql, DBeaver and pandas instead)")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def psql(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(
        metavar="PSQL_ARGS", help="Arguments for psql, after --: e.g. -- -c 'select count(*) from pipeline_objects'.")] = None,
    program: Annotated[str | None, typer.Option(
        "--psql", metavar="PATH", help="The psql to run (default: the embedded server's own, else psql on PATH).")] = None,
) -> None:
    """Open psql on the results database (the password goes to psql in its environment, never on screen)."""
    import os

    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.db_client import connection_parts, psql_binary

    config = load_db_config(state(ctx).config_path)
    parts = connection_parts(open_database(config))
    binary = psql_binary(program)
    sys.stdout.flush()
    os.execve(binary, [binary, *(args or [])], os.environ | parts.libpq_env() | {"PGAPPNAME": "tierflow-psql"})


@app.command()
def pgpass(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option(
        "--file", metavar="PATH", help="The password file (default: $PGPASSFILE, else ~/.pgpass).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Store the database password in ~/.pgpass (mode 0600): psql, DBeaver (auth "PgPass") and pandas connect without it.

    The URL to use is printed (no password in it); an entry for the same host, port, database
    and user is replaced, every other line kept."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.db_client import connection_parts, pgpass_path, update_pgpass

    config = load_db_config(state(ctx).config_path)
    parts = connection_parts(open_database(config))
    path = file or pgpass_path()
    replaced = update_pgpass(path, parts)
    url = parts.bare_url()
    if as_json:
        print_json({"file": str(path), "replaced": replaced, "url": url})
        return
    what = "updated the entry" if replaced else "added an entry"
    console.print(f"{what} for {parts.user}@{parts.host}:{parts.port}/{parts.dbname} in {path} (mode 0600)")
    # libpq reads $PGPASSFILE, else ~/.pgpass: another file must be named to every client
    where = "" if path.expanduser().resolve() == pgpass_path().resolve() else f"PGPASSFILE={path} "
    console.print(f"connect with: {where}psql '{url}'   or   pandas.read_sql(query, sqlalchemy.create_engine('{url}'))"
                  + (f" with PGPASSFILE={path} in the environment" if where else ""), soft_wrap=True, markup=False)
    if config.mode == "embedded":
        console.print("the embedded server keeps its port while it is free; if it moves, run `tierflow db pgpass` again")


@app.command()
def stop(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stop the embedded server (an external server is not tierflow's to stop)."""
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import embedded_server

    config = load_db_config(state(ctx).config_path)
    if as_json:
        server = embedded_server(config) if config.mode == "embedded" else None
        prefect_pid = _stop_prefect_server(ctx, quiet=True) if server else None
        print_json({"mode": config.mode, "root": str(server.root) if server else None, "stopped": bool(server and server.stop()),
                    "prefect_server_pid": prefect_pid})
        return
    if config.mode != "embedded":
        console.print(f"database mode is {config.mode!r}: nothing to stop (tierflow manages only its embedded server)")
        raise typer.Exit(0)
    _stop_prefect_server(ctx)
    server = embedded_server(config)
    if server.stop():
        console.print(f"stopped the embedded PostgreSQL at {server.root}")
    else:
        console.print(f"the embedded PostgreSQL at {server.root} was not running")


def _stop_prefect_server(ctx: typer.Context, *, quiet: bool = False) -> int | None:
    """The managed Prefect server keeps its database in this PostgreSQL: it stops first (and the
    warm executor with it)."""
    from tierflow.configs import load_config
    from tierflow.flows.runtime.executor_client import stop_executor
    from tierflow.flows.runtime.prefect_server import managed_server

    config = load_config(state(ctx).config_path)
    executor = stop_executor(config)
    if executor is not None and not quiet:
        console.print(f"stopped the warm executor (pid {executor})")
    server = managed_server(config)
    if server.info().database != "postgres":
        return None
    pid = server.stop()
    if pid is not None and not quiet:
        console.print(f"stopped the Prefect server (pid {pid}), whose database is in this PostgreSQL")
    return pid
