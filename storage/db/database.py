"""A connection to the results database: engine, sessions and a URL that is safe to show.

The password lives only inside the :class:`sqlalchemy.engine.URL` held here. Everything this
module prints, logs or raises uses :attr:`Database.masked_url`, and connection errors are
re-raised as :class:`~storage.errors.DatabaseUnavailableError` with the password scrubbed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tierflow.storage.db.models import Base
from tierflow.storage.errors import DatabaseError, DatabaseUnavailableError

__all__ = ["Database", "normalise_url", "postgres_url", "scrub"]


def normalise_url(url: str | URL) -> URL:
    """Parse a PostgreSQL URL and select the psycopg2 driver.

    Raises
    ------
    DatabaseError
        If the URL is not a PostgreSQL URL (tierflow's results live in PostgreSQL only).
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except Exception:  # noqa: BLE001 - SQLAlchemy raises several types for a malformed URL
        raise DatabaseError(
            "the database URL cannot be parsed", hint="use postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
        ) from None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError(
            f"the database URL uses {parsed.get_backend_name()!r}; tierflow stores results in PostgreSQL only",
            hint="use postgresql://USER:PASSWORD@HOST:PORT/DBNAME",
        )
    return parsed.set(drivername="postgresql+psycopg2")


def postgres_url(*, user: str, password: str | None, host: str, port: int, dbname: str) -> URL:
    """The URL of a PostgreSQL server, with the psycopg2 driver (the password is never shown:
    see :attr:`Database.masked_url`)."""
    return URL.create("postgresql+psycopg2", username=user, password=password, host=host, port=port, database=dbname)


def scrub(message: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``message`` by ``***``."""
    if secret:
        message = message.replace(secret, "***")
    return message


class Database:
    """The results database at one URL.

    Parameters
    ----------
    url
        A PostgreSQL URL; it may hold the password, which is never shown.
    connect_timeout
        Seconds to wait for a connection.

    Examples
    --------
    >>> db = Database("postgresql://tierflow:secret@127.0.0.1:5432/tierflow")   # doctest: +SKIP
    >>> with db.session() as session:                                           # doctest: +SKIP
    ...     session.add(Run(flow_name="ingest"))
    """

    def __init__(self, url: str | URL, *, connect_timeout: int = 10) -> None:
        self.url = normalise_url(url)
        self.connect_timeout = connect_timeout
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    def __getstate__(self) -> dict[str, object]:
        # engines and pools do not pickle: a worker process opens its own
        return {"url": self.url, "connect_timeout": self.connect_timeout, "_engine": None, "_sessions": None}

    @property
    def masked_url(self) -> str:
        """The URL with the password replaced by ``***``."""
        return self.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"Database({self.masked_url!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (created on first use, pre-pinging pooled connections)."""
        if self._engine is None:
            self._engine = create_engine(
                self.url,
                pool_pre_ping=True,
                # block threads each hold a lock connection while they work: never make one wait
                # for the pool (connections beyond the 5 kept are closed when returned)
                max_overflow=-1,
                hide_parameters=True,
                connect_args={"connect_timeout": self.connect_timeout, "application_name": "tierflow"},
            )
        return self._engine

    def unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        """Turn a driver error into a message that names the server but not the password."""
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = detail[0] if detail else type(exc).__name__
        return DatabaseUnavailableError(
            scrub(f"cannot use the results database at {self.masked_url}: {first}", self.url.password),
            hint="check [database] in configs/db.user.toml (host, port, user, password), or run `tierflow db status`",
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            with self._sessions.begin() as session:
                yield session
        except OperationalError as exc:
            if exc.connection_invalidated or "connect" in str(exc.orig).lower():
                raise self.unavailable(exc) from None
            raise

    def ping(self) -> str:
        """Connect and return the server's version string.

        Raises
        ------
        DatabaseUnavailableError
            If the server cannot be reached or refuses the credentials.
        """
        try:
            with self.engine.connect() as connection:
                return str(connection.execute(text("SHOW server_version")).scalar_one())
        except DBAPIError as exc:
            raise self.unavailable(exc) from None

    def row_counts(self) -> dict[str, int]:
        """Rows per results table (tables not yet created are left out)."""
        counts: dict[str, int] = {}
        with self.engine.connect() as connection:
            existing = set(
                connection.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                ).scalars()
            )
            for table in Base.metadata.sorted_tables:
                if table.name in existing:
                    counts[table.name] = int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        return counts

    def dispose(self) -> None:
        """Close pooled connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None
