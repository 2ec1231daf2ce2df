"""The ``tierflow`` command line (Typer + Rich): the application and its commands.

Errors print as one line with a hint; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from tierflow.flows.cli import data as data_commands
from tierflow.flows.cli import db as db_commands
from tierflow.flows.cli import deploy as deploy_commands
from tierflow.flows.cli import ops as ops_commands
from tierflow.flows.cli import pipeline as pipeline_commands
from tierflow.flows.cli import results as results_commands
from tierflow.flows.cli import server as server_commands
from tierflow.flows.cli import view as view_commands
from tierflow.flows.cli._app import CliState, PlainHelpGroup, console, print_json, report_error, state

__all__ = ["app", "main"]

app = typer.Typer(
    name="tierflow",
    help="tierflow: tiered data operations for large microscopy volumes.",
    cls=PlainHelpGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(db_commands.app, name="db")
data_commands.register(app)
ops_commands.register(app)
pipeline_commands.register(app)
view_commands.register(app)
results_commands.register(app)
deploy_commands.register(app)
server_commands.register(app)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        str | None, typer.Option("--config", metavar="DIR", help="A configs folder (default: found upward from here).")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    ctx.obj = CliState(config_path=config, debug=debug)


@app.command("config")
def show_config(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The resolved configuration and where each part came from (secrets masked)."""
    from tierflow.configs import load_config, load_db_config

    path = state(ctx).config_path
    tierflow, database = load_config(path), load_db_config(path)
    report = {
        "config_dir": str(tierflow.meta.config_dir) if tierflow.meta.config_dir else None,
        "found_by": tierflow.meta.found_by,
        "files": [str(f) for f in tierflow.meta.files + database.meta.files],
        "env_overrides": sorted(set(tierflow.meta.env_overrides + database.meta.env_overrides)),
        "paths": tierflow.meta.paths | {"database.data_dir": database.meta.paths["data_dir"]},
        "tierflow": tierflow.model_dump(mode="json"),
        "database": database.model_dump(mode="json"),
    }
    if as_json:
        print_json(report)
        return
    where = report["config_dir"] or "none: tierflow's packaged defaults (a project's configs/ holds *.user.toml or pipelines/)"
    console.print(f"[bold]configs[/]  {escape(where)} (found by {report['found_by']})")
    for file in report["files"]:
        console.print(f"  read {file}")
    for name in report["env_overrides"]:
        console.print(f"  env  {name}")
    for key, value in report["paths"].items():
        console.print(f"[bold]{key}[/]  {value}")
    console.print(f"[bold]database[/]  mode={database.mode} host={database.host} port={database.port} "
                  f"dbname={database.dbname} user={database.user} password={'***' if database.password else 'unset'}")


def main(*, in_executor: bool = False) -> None:
    """Run the command line of ``sys.argv`` in this process (``in_executor``: a child of the warm
    executor, :mod:`flows.cli.executor`, which must not start another one)."""
    debug = "--debug" in sys.argv[1:]
    if not debug:
        # commands show Rich progress, a summary, and errors as one line with a hint; Prefect's
        # run logs (per-task lines, a failed flow's traceback) go to the run log on Tier 4 and to
        # the Prefect UI instead of the terminal (--debug shows them)
        import os

        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    from tierflow.flows.runtime.prefect_env import from_command_line
    from tierflow.flows.runtime.stopping import StopRequested, stop_on_signals, stop_signal

    from_command_line(start_executor=not in_executor)
    stop_on_signals()
    try:
        app(prog_name="tierflow")  # not "python -m ..." in a child of the warm executor
    except SystemExit as exc:
        signum = stop_signal()  # Typer turns a KeyboardInterrupt into exit status 130
        if signum is not None and exc.code not in (0, None):
            report_error(StopRequested(signum))
            sys.exit(128 + signum)
        raise
    except KeyboardInterrupt:
        report_error(KeyboardInterrupt("interrupted"))
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI's single place that turns errors into messages
        if debug:
            raise
        report_error(exc)
        sys.exit(1)
