"""Connect a user's own client (psql, DBeaver, pandas) to the results database, without digging
the embedded server's port and password out of ``var/``.

The password goes where clients look for it and nowhere on screen: ``PGPASSWORD`` in the
environment of the ``psql`` tierflow starts, or a ``~/.pgpass`` entry (mode 0600), which
libpq (psql, psycopg2 and so pandas/SQLAlchemy) and DBeaver (authentication "PgPass") read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierflow.errors import TierflowError
from tierflow.storage.db.embedded import client_binary

__all__ = ["ConnectionParts", "connection_parts", "pgpass_path", "psql_binary", "update_pgpass"]


@dataclass(frozen=True)
class ConnectionParts:
    """Where the results database is, for libpq clients (the password is left out of ``repr``)."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    _url: Any = field(default=None, repr=False, compare=False)

    def url(self, *, show_password: bool = False) -> str:
        """``postgresql://user:***@host:port/dbname`` (psql, SQLAlchemy and pandas take it);
        the password itself only with ``show_password``."""
        return self._url.set(drivername="postgresql").render_as_string(hide_password=not show_password)

    def bare_url(self) -> str:
        """The URL without any password (a client finds it in ~/.pgpass)."""
        # URL.set(password=None) keeps the password: replace the field itself
        return self._url._replace(drivername="postgresql", password=None).render_as_string(hide_password=False)

    def libpq_env(self) -> dict[str, str]:
        """``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE`` and ``PGPASSWORD`` (if any)."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": self.dbname}
        return env | ({"PGPASSWORD": self.password} if self.password else {})


def connection_parts(db: Any) -> ConnectionParts:
    """The parts of an open :class:`~storage.db.database.Database`'s URL."""
    url = db.url
    return ConnectionParts(url.host or "127.0.0.1", int(url.port or 5432), url.username or "", url.database or "", url.password, url)


def pgpass_path() -> Path:
    """Where libpq reads passwords: ``$PGPASSFILE``, else ``~/.pgpass``."""
    return Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass").expanduser()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _fields(line: str) -> list[str]:
    """A .pgpass line's fields, ``\\:`` and ``\\\\`` kept escaped (compared escaped)."""
    fields, current, escaped = [], "", False
    for char in line:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def update_pgpass(path: Path, parts: ConnectionParts) -> bool:
    """Write ``host:port:dbname:user:password`` into the .pgpass file ``path`` (created with mode
    0600, which libpq requires): it replaces an entry for the same host, port, database and user
    and keeps every other line. Returns True when an entry was replaced, False when added.

    Raises
    ------
    TierflowError
        If the connection has no password, or the file cannot be written.
    """
    if not parts.password:
        raise TierflowError("the results database has no password to store", hint="set password under [database] in configs/db.user.toml")
    key = [_escape(v) for v in (parts.host, str(parts.port), parts.dbname, parts.user)]
    entry = ":".join([*key, _escape(parts.password)])
    try:
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.startswith("#") or _fields(line)[:4] != key]
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join([*kept, entry]) + "\n")
        path.chmod(0o600)
    except OSError as exc:
        raise TierflowError(f"cannot write {path}: {exc.strerror}", hint="give another file with --file, or fix its permissions") from None
    return len(kept) < len(lines)


def psql_binary(given: str | None = None) -> str:
    """The ``psql`` to run: ``given``, else the embedded PostgreSQL bundle's (the server's own
    version), else ``psql`` on PATH.

    Raises
    ------
    TierflowError
        If none is found.
    """
    if given:
        found = shutil.which(given)
        if found is None:
            raise TierflowError(f"--psql {given}: no such program", hint="give the path of a psql executable")
        return found
    bundled = client_binary("psql")
    found = str(bundled) if bundled else shutil.which("psql")
    if found is None:
        raise TierflowError("no psql found (neither in the embedded PostgreSQL bundle nor on PATH)",
                            hint="install the PostgreSQL client (e.g. apt-get install postgresql-client) or give --psql PATH")
    return found
