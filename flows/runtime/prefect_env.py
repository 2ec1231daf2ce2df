"""Prefect settings tierflow applies before Prefect is imported.

Prefect reads its settings from the environment when it is first imported, so flows and the CLI
call :func:`configure_prefect` (or rely on the safe defaults set when :mod:`flows` is imported)
before importing any module that imports ``prefect``. Values the user set in the environment
always win.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tierflow.configs import TierflowConfig

__all__ = ["apply_defaults", "configure_prefect", "interactive_flows", "prepare_process"]

_DEFAULTS = {
    # Clusters and CI have no internet: never try to send usage analytics.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # The ephemeral server's first start migrates its SQLite database: 20 s is not enough.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Task results stay in memory; tierflow's own results live in PostgreSQL and on the tiers.
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
}


def apply_defaults() -> None:
    """Set tierflow's safe Prefect defaults where the environment has no value."""
    for name, value in _DEFAULTS.items():
        os.environ.setdefault(name, value)


def configure_prefect(config: TierflowConfig) -> None:
    """Apply ``[prefect]`` from the configuration (environment variables still win)."""
    apply_defaults()
    settings = config.prefect
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(settings.ephemeral_startup_timeout_seconds))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", str(settings.analytics_enabled).lower())
    if settings.api_url:
        os.environ.setdefault("PREFECT_API_URL", settings.api_url)


_PREPARED = False
_QUIET_SETTINGS: dict[int, tuple[object, object]] = {}


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

    gc.collect()
    gc.freeze()
    _PREPARED = True


@contextmanager
def interactive_flows() -> Iterator[None]:
    """Run flows started from the CLI, a notebook or a benchmark.

    Turns off Prefect's flow-run heartbeat thread: Prefect 3.8 joins it when a flow run ends,
    and it sleeps in one-second steps, so every flow run takes up to a second longer.
    Heartbeats let a server notice a crashed run started by a worker; a run started from the
    CLI or a notebook ends (or visibly crashes) in front of its user. Deployments keep Prefect's
    default. Also prepares the process once (see :func:`prepare_process`) and ties Prefect's
    ephemeral API server, if one is started, to this process (see
    :func:`flows.runtime.server_watchdog.tie_ephemeral_server`).
    """
    import prefect.context
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY  # type: ignore[attr-defined]

    from tierflow.flows.runtime.server_watchdog import tie_ephemeral_server

    prepare_process()
    tie_ephemeral_server()
    current = prefect.context.get_settings_context()
    # as prefect.settings.temporary_settings, but the updated settings (0.1 s of pydantic
    # validation) are made once per process
    cached = _QUIET_SETTINGS.get(id(current.settings))
    if cached is None or cached[0] is not current.settings:
        cached = (current.settings, current.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        _QUIET_SETTINGS[id(current.settings)] = cached
    quiet = cached[1]
    with prefect.context.SettingsContext(profile=current.profile, settings=quiet):
        yield
