"""The managed local Prefect server: one per Tier 4, started on first use, shared by every run.

Without a shared server (``[prefect].api_url``), Prefect 3 starts a temporary server in every
process that runs a flow (~20 s each, and the runs vanish with it). tierflow instead keeps one
``prefect server start`` running in the background, managed like the embedded PostgreSQL
(:mod:`tierflow.storage.db.embedded`): started by the first command, notebook or script that runs
a flow, reused by all of them, stopped by ``tierflow server stop``. Its files:

``<tier4>/state/prefect/``
    ``server.json``  pid, port, URL and database of the server (no password)
    ``server.lock``  the inter-process lock held while starting or stopping
    ``server.log``   the server's output (warnings and errors)
    ``home/``        its ``PREFECT_HOME``
    ``prefect.db``   its SQLite database, when it uses SQLite

Its database is a database of its own (``[prefect].database_name``) on the embedded PostgreSQL
by default. Two processes starting it at once end with one server: the start runs under a file
lock and re-reads ``server.json`` inside it. The server runs in a session of its own, so a
Ctrl-C in the command that started it does not stop it; a ``server.json`` whose process is gone
is stale and replaced by the next start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tierflow.errors import PrefectServerError
from tierflow.extras import require_server_extra

if TYPE_CHECKING:
    from tierflow.configs import DatabaseConfig, TierflowConfig

__all__ = ["ManagedPrefectServer", "ServerDatabase", "ServerInfo", "api_url_for", "ensure_server", "managed_server"]

# the client's settings and logging of the command that starts the server are not the server's
_NOT_INHERITED = ("PREFECT_API_", "PREFECT_UI_", "PREFECT_SERVER_UI_", "PREFECT_SERVER_DATABASE_", "PREFECT_HOME",
                  "PREFECT_PROFILE", "PREFECT_LOGGING_")


@dataclass(frozen=True)
class ServerDatabase:
    """The database a server is started with."""

    kind: str
    url: str
    """With the password: only for the server's environment."""
    masked_url: str

    @property
    def password(self) -> str | None:
        return urlsplit(self.url).password


@dataclass(frozen=True)
class ServerInfo:
    """What ``server.json`` and the process table say about the managed server."""

    running: bool
    pid: int | None
    port: int | None
    url: str | None
    database: str | None
    database_url: str | None
    started_at: str | None
    root: str
    log: str

    @property
    def api_url(self) -> str | None:
        """The API the clients talk to (``<url>/api``)."""
        return f"{self.url}/api" if self.url else None

    def to_dict(self) -> dict[str, Any]:
        """For ``tierflow server status --json`` (the database URL is masked)."""
        return {**asdict(self), "api_url": self.api_url}


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` is still the process that was started (not a reused pid, not a zombie)."""
    import psutil

    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(process.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _announce(message: str) -> AbstractContextManager[Any]:
    """A Rich status line on stderr while the server starts (nothing when stderr is no terminal)."""
    from rich.console import Console

    console = Console(stderr=True)
    return console.status(message) if console.is_terminal or console.is_jupyter else nullcontext()


def _said_started(info: ServerInfo) -> None:
    """One line that stays (terminal or not): a server now runs in the background, and how to stop it."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(
        f"started the Prefect server in the background: {info.url} (pid {info.pid}; `tierflow ui` prints its URL, "
        "`tierflow server stop` stops it)", markup=False, soft_wrap=True)


class ManagedPrefectServer:
    """A ``prefect server start`` in the background, its files in ``root``.

    Parameters
    ----------
    root
        The server's folder, e.g. ``<tier4>/state/prefect``.
    host
        Loopback address to listen on.
    port
        Preferred port; when another program holds it, the port remembered in ``server.json``
        or a free one is used.
    startup_timeout
        Seconds to wait for ``/api/health`` (the first start migrates the database).
    """

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 4200, startup_timeout: float = 300.0) -> None:
        self.root = Path(root).expanduser().resolve()
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.state_file = self.root / "server.json"
        self.lock_file = self.root / "server.lock"
        self.log_file = self.root / "server.log"
        self.home = self.root / "home"

    # -- inspection -------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except (FileNotFoundError, ValueError):
            return {}

    def info(self) -> ServerInfo:
        """Read ``server.json`` and check that the process it names still runs."""
        state = self._read_state()
        running = _alive(state.get("pid"), state.get("create_time"))
        return ServerInfo(running=running, pid=state.get("pid") if running else None, port=state.get("port"), url=state.get("url"),
                          database=state.get("database"), database_url=state.get("database_url"),
                          started_at=state.get("started_at"), root=str(self.root), log=str(self.log_file))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, database: Callable[[], ServerDatabase], *, analytics: bool = False) -> ServerInfo:
        """Start the server unless it runs already (and answers); return where it is.

        ``database`` is called only when a server is started (it may start PostgreSQL).

        Raises
        ------
        PrefectServerError
            If it does not answer within ``startup_timeout`` (the message names its log).
        """
        info = self.info()
        if info.running and info.api_url and _healthy(info.api_url):
            return info
        # a server started from this environment needs the `server` extra's FastAPI: said here,
        # before PostgreSQL or the server process starts (a client of a running one needs nothing)
        require_server_extra('the managed Prefect server ([prefect].server = "managed")')
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.lock_file, timeout=self.startup_timeout + 60):
                info = self.info()  # another process may have started it meanwhile
                if info.running and info.api_url:
                    self._wait_healthy(info.api_url, info.pid, None)
                    return info
                first = not self.state_file.exists()
                message = "starting the Prefect server" + (" (first start migrates its database)…" if first else "…")
                with _announce(message):
                    info = self._launch(database(), analytics=analytics)
                _said_started(info)
                return info
        except Timeout:
            raise PrefectServerError(
                f"timed out waiting for the lock {self.lock_file}",
                hint="another tierflow process is starting the Prefect server; if none is, delete the lock file",
            ) from None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (SIGTERM to its process group, SIGKILL after ``timeout``).

        Returns
        -------
        int or None
            The pid stopped, or ``None`` when it was not running.
        """
        if not self.info().running:
            return None
        from filelock import FileLock

        with FileLock(self.lock_file, timeout=self.startup_timeout + 60):
            info = self.info()
            if not info.running or info.pid is None:
                return None
            self._terminate(info.pid, timeout)
            self._write_state({**self._read_state(), "pid": None, "create_time": None})
            return info.pid

    # -- internals --------------------------------------------------------------------------

    def _write_state(self, state: dict[str, Any]) -> None:
        partial = self.state_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(partial, self.state_file)

    def _choose_port(self) -> int:
        if not _port_in_use(self.host, self.port):
            return self.port
        remembered = self._read_state().get("port")
        if remembered and remembered != self.port and not _port_in_use(self.host, int(remembered)):
            return int(remembered)
        return _free_port(self.host)

    def _environment(self, url: str, database: ServerDatabase, analytics: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")  # no access log line per API call in server.log
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=database.url,
            PREFECT_API_URL=f"{url}/api",
            # the UI calls the API it is told, whatever port this server got
            PREFECT_UI_API_URL=f"{url}/api",
            PREFECT_UI_URL=url,
            PREFECT_SERVER_UI_ENABLED="true",
            PREFECT_SERVER_ANALYTICS_ENABLED=str(analytics).lower(),
        )
        if not analytics:
            env.setdefault("DO_NOT_TRACK", "1")
        return env

    def _launch(self, database: ServerDatabase, *, analytics: bool) -> ServerInfo:
        port = self._choose_port()
        try:
            return self._launch_on(port, database, analytics=analytics)
        except PrefectServerError:
            if not _port_in_use(self.host, port):
                raise
            # another program (another project's server) took the port meanwhile: once more on a free one
            return self._launch_on(_free_port(self.host), database, analytics=analytics)

    def _launch_on(self, port: int, database: ServerDatabase, *, analytics: bool) -> ServerInfo:
        import psutil

        url = f"http://{self.host}:{port}"
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-P", "-m", "prefect", "server", "start", "--host", self.host, "--port", str(port)]
        with open(self.log_file, "w") as log:
            process = subprocess.Popen(command, env=self._environment(url, database, analytics), cwd=self.root,
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # not stopped by a Ctrl-C in the command that starts it
        state = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time(), "port": port, "url": url,
                 "database": database.kind, "database_url": database.masked_url,
                 "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        self._write_state(state)
        try:
            self._wait_healthy(f"{url}/api", process.pid, database.password)
        except PrefectServerError:
            self._terminate(process.pid, 10)
            self._write_state({**state, "pid": None, "create_time": None})
            raise
        return self.info()

    def _wait_healthy(self, api_url: str, pid: int | None, secret: str | None) -> None:
        state = self._read_state()
        deadline = time.monotonic() + self.startup_timeout
        while not _healthy(api_url):
            if not _alive(pid, state.get("create_time")):
                raise PrefectServerError(f"the Prefect server at {api_url} exited while starting" + self._log_tail(secret),
                                         hint=f"see its log {self.log_file}")
            if time.monotonic() > deadline:
                raise PrefectServerError(f"the Prefect server at {api_url} did not answer within {self.startup_timeout:.0f} s"
                                         + self._log_tail(secret),
                                         hint=f"see its log {self.log_file}; raise [prefect].startup_timeout_seconds on a slow machine")
            time.sleep(0.5)

    def _log_tail(self, secret: str | None, lines: int = 15) -> str:
        if not self.log_file.is_file():
            return ""
        tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        if secret:
            tail = tail.replace(secret, "***")
        return f"\nlast lines of {self.log_file}:\n{tail}"

    def _terminate(self, pid: int, timeout: float) -> None:
        import psutil

        try:
            os.killpg(pid, signal.SIGTERM)  # its own session: the group is the server and any child
        except ProcessLookupError:
            return
        try:
            psutil.Process(pid).wait(timeout)
        except psutil.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            psutil.Process(pid).wait(10)
        except psutil.NoSuchProcess:
            pass


# -- from the configuration --------------------------------------------------------------------


def managed_server(config: TierflowConfig) -> ManagedPrefectServer:
    """The managed server of a configuration's Tier 4 (not started)."""
    return ManagedPrefectServer(config.state_dir / "prefect", port=config.prefect.port,
                                startup_timeout=float(config.prefect.startup_timeout_seconds))


def server_database(config: TierflowConfig, db_config: DatabaseConfig) -> ServerDatabase:
    """The database ``[prefect].database`` names: a database on the results server (started if
    embedded) or SQLite under the server's folder."""
    kind = config.prefect.database
    if kind == "auto":
        kind = "postgres" if db_config.mode == "embedded" else "sqlite"
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{managed_server(config).root / 'prefect.db'}"
        return ServerDatabase("sqlite", url, url)
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.admin import ensure_sibling_database

    sibling = ensure_sibling_database(open_database(db_config), config.prefect.database_name)
    return ServerDatabase("postgres", sibling.url, sibling.masked_url)


def ensure_server(config: TierflowConfig) -> ServerInfo:
    """Start the managed server of ``config`` unless it runs; return where it is."""
    from tierflow.configs import load_db_config

    server = managed_server(config)
    return server.start(lambda: server_database(config, load_db_config(config.meta.config_dir)),
                        analytics=config.prefect.analytics_enabled)


def api_url_for(config: TierflowConfig) -> str | None:
    """The Prefect API flow runs report to: ``[prefect].api_url``, else the managed server
    (started if needed), else ``None`` (``server = "ephemeral"``: Prefect's own per process)."""
    if config.prefect.api_url:
        return config.prefect.api_url
    if config.prefect.server == "ephemeral":
        require_server_extra('Prefect\'s ephemeral server ([prefect].server = "ephemeral")')
        return None
    return ensure_server(config).api_url
