"""``tierflow server start|status|stop`` (the managed local Prefect server) and ``tierflow ui``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from tierflow.flows.cli._app import console, err_console, print_json, state

__all__ = ["app", "register"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
app = typer.Typer(help="The local Prefect server flow runs report to: start, status, stop.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    """Add ``server`` and ``ui`` to the top-level ``tierflow`` app."""
    root.add_typer(app, name="server")
    root.command("ui")(ui)


def _config(ctx: typer.Context) -> Any:
    from tierflow.configs import load_config
    from tierflow.flows.runtime.prefect_env import configure_prefect

    config = load_config(state(ctx).config_path)
    configure_prefect(config)
    return config


def _no_managed_server(config: Any) -> None:
    from tierflow.errors import ConfigError

    if config.prefect.api_url:
        raise ConfigError(f"[prefect].api_url = {config.prefect.api_url!r}: flow runs report to that server, tierflow manages none",
                          hint="empty [prefect].api_url in configs/tierflow.user.toml to use a managed local server")


def _describe(info: Any, executor: dict[str, Any] | None = None) -> None:
    if not info.running:
        console.print(f"Prefect server: not running (files in {escape(info.root)}); it starts with the next flow run, or "
                      "`tierflow server start`")
        return
    console.print(f"Prefect server: running, pid {info.pid}, since {info.started_at}")
    console.print(f"  UI   {info.url}")
    console.print(f"  API  {info.api_url}")
    console.print(f"  database  {info.database}: {escape(info.database_url or '')}")
    console.print(f"  log  {escape(info.log)}")
    if executor is not None:
        console.print(f"warm executor: running, pid {executor['pid']}, {executor.get('served', 0)} commands served since "
                      f"{executor.get('started_at')}; log {escape(executor['log'])}")
        if not executor.get("serves_this_shell", True):
            console.print("  (for another environment or an older version of the code: the next flow-running command from here "
                          "runs in its own process and starts a fresh one)")
    else:
        console.print("warm executor: not running (the next flow-running command starts it)")


def _executor(config: Any) -> dict[str, Any] | None:
    from tierflow.flows.runtime.executor_client import executor_info, serves_this_process

    info = executor_info(config)
    return None if info is None else {**info, "serves_this_shell": serves_this_process(config)}


@app.command()
def start(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Start the managed Prefect server unless it runs (flow runs start it on their own too)."""
    from tierflow.flows.runtime.executor_client import start_executor
    from tierflow.flows.runtime.prefect_server import ensure_server, managed_server

    config = _config(ctx)
    _no_managed_server(config)
    was = managed_server(config).info()
    info = ensure_server(config)
    already = was.running and was.pid == info.pid
    if config.prefect.server == "managed":
        start_executor(config, wait=60.0)  # the commands after this one find it ready
    executor = _executor(config)
    if as_json:
        print_json({**info.to_dict(), "already_running": already, "executor": executor})
        return
    if already:
        console.print("Prefect server: already running")
    _describe(info, executor)
    if config.prefect.server == "ephemeral":
        err_console.print(escape("note: [prefect].server = \"ephemeral\": flow runs use Prefect's own temporary server, not this one"))


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Whether the managed Prefect server runs: pid, URL, database (password masked), log."""
    from tierflow.flows.runtime.prefect_server import managed_server

    config = _config(ctx)
    info = managed_server(config).info()
    if as_json:
        print_json({**info.to_dict(), "api_url_setting": config.prefect.api_url or None, "mode": config.prefect.server,
                    "executor": _executor(config)})
        return
    if config.prefect.api_url:
        console.print(escape(f"flow runs report to [prefect].api_url = {config.prefect.api_url}"))
    _describe(info, _executor(config))


@app.command()
def stop(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Stop the managed Prefect server and the warm executor (runs and their history stay in its database)."""
    from tierflow.flows.runtime.executor_client import stop_executor
    from tierflow.flows.runtime.prefect_server import managed_server

    config = _config(ctx)
    executor_pid = stop_executor(config)
    server = managed_server(config)
    pid = server.stop()
    if as_json:
        print_json({"stopped": pid is not None, "pid": pid, "root": str(server.root), "executor_pid": executor_pid})
        return
    if executor_pid is not None:
        console.print(f"stopped the warm executor (pid {executor_pid})")
    if pid is None:
        console.print(f"Prefect server: not running ({escape(str(server.root))})")
        return
    console.print(f"stopped the Prefect server (pid {pid})")


def ui(
    ctx: typer.Context,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the UI in a web browser too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the Prefect UI's URL (starting the managed server if needed): runs, logs, artifacts."""
    config = _config(ctx)
    if config.prefect.api_url:
        url = config.prefect.api_url.rstrip("/").removesuffix("/api")
    else:
        from tierflow.flows.runtime.prefect_server import ensure_server

        url = str(ensure_server(config).url)
        if config.prefect.server == "ephemeral":
            err_console.print(escape("note: [prefect].server = \"ephemeral\": flow runs use Prefect's own temporary server, not this one"))
    if as_json:
        print_json({"url": url})
    else:
        console.print(url)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            err_console.print("no web browser found here: open the URL above yourself")
