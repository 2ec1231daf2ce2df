"""Prefect settings tierflow applies before Prefect is imported, and the API flow runs report to.

Prefect reads its settings from the environment when it is first imported, so flows and the CLI
call :func:`configure_prefect` (or rely on the safe defaults set when :mod:`flows` is imported)
before importing any module that imports ``prefect``. Values the user set in the environment
always win.

Flow runs report to the managed local Prefect server (:mod:`flows.runtime.prefect_server`),
started by the first run that needs it: :func:`use_prefect_server` starts it and points this
process at it (through the environment before Prefect is imported, through a settings context
after), :func:`interactive_flows` and :func:`on_prefect_server` (the public API) call it. Commands
that only read never do.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # importing flows (and so every command line) stays cheap: configs loads pydantic
    from tierflow.configs import TierflowConfig

__all__ = ["apply_defaults", "configure_prefect", "from_command_line", "interactive_flows", "on_prefect_server",
           "prefect_api", "prepare_process", "reset_environment", "use_prefect_server"]

_DEFAULTS = {
    # Clusters and CI have no internet: never try to send usage analytics (the server's, and
    # the SDK's telemetry, which honours the DO_NOT_TRACK convention).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # The ephemeral server's first start migrates its SQLite database: 20 s is not enough.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Task results stay in memory; tierflow's own results live in PostgreSQL and on the tiers.
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}
_SET_HERE: set[str] = set()  # the variables tierflow set (the user's own are never changed)
_CONFIG: TierflowConfig | None = None  # the configuration the CLI command loaded
_START_EXECUTOR = False  # a command line in its own process: start the warm executor with the managed server


def _default(name: str, value: str) -> None:
    if name not in os.environ or name in _SET_HERE:
        os.environ[name] = value
        _SET_HERE.add(name)


def apply_defaults() -> None:
    """Set tierflow's safe Prefect defaults where the environment has no value."""
    from tierflow.flows.runtime.launch_env import capture

    capture()  # the environment before tierflow changes anything
    for name, value in _DEFAULTS.items():
        _default(name, value)


def reset_environment(env: dict[str, str]) -> None:
    """Make ``env`` this process's launch environment, then apply the defaults again (a child of
    the warm executor taking over a ``tierflow`` process's command)."""
    global _CONFIG
    from tierflow.flows.runtime.launch_env import replace

    os.environ.clear()
    os.environ.update(env)
    replace(env)
    _SET_HERE.clear()
    _CONFIG = None
    apply_defaults()


def from_command_line(*, start_executor: bool) -> None:
    """This process runs a ``tierflow`` command: with ``start_executor``, the first start (or
    sighting) of the managed Prefect server also starts the warm executor."""
    global _START_EXECUTOR
    _START_EXECUTOR = start_executor


def configure_prefect(config: TierflowConfig) -> None:
    """Apply ``[prefect]`` from the configuration (environment variables still win).

    Starts nothing: the Prefect server is started by the first flow run (:func:`use_prefect_server`).
    """
    global _CONFIG
    apply_defaults()
    settings = config.prefect
    _default("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(settings.ephemeral_startup_timeout_seconds))
    _default("PREFECT_SERVER_ANALYTICS_ENABLED", str(settings.analytics_enabled).lower())
    if settings.analytics_enabled and "DO_NOT_TRACK" in _SET_HERE:
        os.environ.pop("DO_NOT_TRACK", None)
        _SET_HERE.discard("DO_NOT_TRACK")
    if settings.api_url:
        os.environ.setdefault("PREFECT_API_URL", settings.api_url)
    _CONFIG = config


def use_prefect_server(config: TierflowConfig | None = None) -> str | None:
    """The Prefect API this process's flow runs report to; starts the managed server if that
    is the one (see :func:`flows.runtime.prefect_server.api_url_for`).

    ``PREFECT_API_URL`` (the environment, or a settings context such as Prefect's test harness)
    wins; else ``config`` (default: the one :func:`configure_prefect` was given, else
    :func:`configs.load_config`). The URL is put into the environment, where Prefect reads it
    when it is imported later and the processes this one starts find it; a Prefect imported
    before is pointed at it by :func:`prefect_api` and :func:`interactive_flows`.

    Returns
    -------
    str or None
        The API URL, or ``None`` for Prefect's ephemeral server (``[prefect].server = "ephemeral"``).
    """
    global _START_EXECUTOR
    if os.environ.get("PREFECT_API_URL") and "PREFECT_API_URL" not in _SET_HERE:
        return os.environ["PREFECT_API_URL"]
    if "prefect" in sys.modules and "PREFECT_API_URL" not in _SET_HERE:
        from prefect.settings import get_current_settings

        current = get_current_settings().api.url
        if current:
            return str(current)
    from tierflow.flows.runtime.prefect_server import api_url_for

    if config is None:
        from tierflow.configs import load_config

        config = _CONFIG or load_config()
    url = api_url_for(config)  # also when set here before: the server may have been stopped since
    global _START_EXECUTOR
    if _START_EXECUTOR and url and not config.prefect.api_url:
        _START_EXECUTOR = False  # once per command
        from tierflow.flows.runtime.executor_client import start_executor

        start_executor(config)
    if url:  # for Prefect if not imported yet, and for the processes this one starts (Dask workers)
        _default("PREFECT_API_URL", url)
        _default("PREFECT_UI_URL", url.removesuffix("/api"))
    return url


def _server_updates(url: str | None) -> dict[Any, Any]:
    """Settings that point an already imported Prefect at ``url`` (none if it points there)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, get_current_settings  # type: ignore[attr-defined]

    if not url or get_current_settings().api.url == url:
        return {}
    return {PREFECT_API_URL: url, PREFECT_UI_URL: url.removesuffix("/api")}


@contextmanager
def prefect_api(config: TierflowConfig | None = None) -> Iterator[str | None]:
    """Flow runs started inside report to :func:`use_prefect_server`'s API, even when Prefect
    was imported before (a notebook): a temporary settings context points it there."""
    url = use_prefect_server(config)
    from prefect.settings import temporary_settings

    updates = _server_updates(url)
    if not updates:
        yield url
        return
    with temporary_settings(updates=updates):
        yield url


_F = TypeVar("_F", bound=Callable[..., Any])


def on_prefect_server(function: _F) -> _F:
    """``function`` (a public API entry that runs flows, with a ``config_dir`` parameter) run
    inside :func:`prefect_api` for the configuration its ``config_dir`` names."""
    import inspect

    signature = inspect.signature(getattr(function, "fn", function))

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tierflow.configs import load_config

        config_dir = signature.bind_partial(*args, **kwargs).arguments.get("config_dir")
        with prefect_api(load_config(config_dir)):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


_PREPARED = False
_QUIET_SETTINGS: dict[tuple[int, str | None], tuple[Any, Any]] = {}


def prepare_process() -> None:
    """One-time process set-up for flow runs started in front of a user (measured here).

    * Prefect imports FastAPI's encoders lazily when it serialises the first flow run's
      parameters: 0.26 s inside the first run; imported here, with the rest of start-up.
    * After start-up imports (Prefect, pydantic models, SQLAlchemy) the process holds ~10^6
      objects that live as long as it does; every full garbage collection walked them all
      (5-7 % of CPU time in a 512 MiB gaussian run). ``gc.freeze()`` moves them out of the
      collector's generations; new garbage is still collected.
    """
    global _PREPARED
    if _PREPARED:
        return
    import gc

    import fastapi.encoders  # noqa: F401 - see above

    gc.freeze()  # without a gc.collect() first: 0.12 s of a small op's whole command, for start-up's little garbage
    _PREPARED = True


@contextmanager
def interactive_flows() -> Iterator[None]:
    """Run flows started from the CLI, a notebook or a benchmark.

    Turns off Prefect's flow-run heartbeat thread: Prefect 3.8 joins it when a flow run ends,
    and it sleeps in one-second steps, so every flow run takes up to a second longer.
    Heartbeats let a server notice a crashed run started by a worker; a run started from the
    CLI or a notebook ends (or visibly crashes) in front of its user. Deployments keep Prefect's
    default. Points the runs at the managed Prefect server (:func:`use_prefect_server`, which
    starts it on first use), prepares the process once (see :func:`prepare_process`) and, with
    ``[prefect].server = "ephemeral"``, ties Prefect's ephemeral API server, if one is started,
    to this process (see :func:`flows.runtime.server_watchdog.tie_ephemeral_server`).
    """
    url = use_prefect_server()  # before Prefect is imported, where it still can be
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY  # type: ignore[attr-defined]

    from tierflow.flows.runtime.server_watchdog import tie_ephemeral_server

    prepare_process()
    current = prefect.context.get_settings_context()
    # as prefect.settings.temporary_settings, but the updated settings (0.1 s of pydantic
    # validation) are made once per process
    key = (id(current.settings), url)
    cached = _QUIET_SETTINGS.get(key)
    if cached is None or cached[0] is not current.settings:
        updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, **_server_updates(url)}
        cached = (current.settings, current.settings.copy_with_update(updates=updates))
        _QUIET_SETTINGS[key] = cached
    quiet = cached[1]
    with prefect.context.SettingsContext(profile=current.profile, settings=quiet):
        tie_ephemeral_server()  # only when no API URL is set (server = "ephemeral")
        yield
