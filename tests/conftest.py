"""Shared fixtures: real PostgreSQL (embedded), throwaway projects, service requirements.

Tests needing a service the machine may lack (SLURM, Ceph) call :func:`require_service`: on a
laptop they skip with a message saying how to enable them; under ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tierflow.storage.db.database import Database
from tierflow.storage.db.embedded import EmbeddedPostgres
from tierflow.storage.db.migrate import upgrade

pytest_plugins = ["s3_servers"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TIERFLOW = str(Path(sys.executable).with_name("tierflow"))


def pytest_configure(config: pytest.Config) -> None:
    """Under root, give this session a base temp folder of its own.

    The embedded PostgreSQL runs as an unprivileged OS user when tierflow runs as root, so its
    data folders must stay traversable; every pytest session resets ``/tmp/pytest-of-root`` to
    mode 0700, which would lock out servers that another, concurrent session started there.
    """
    if os.geteuid() == 0 and not config.option.basetemp:
        import tempfile

        config.option.basetemp = tempfile.mkdtemp(prefix="tierflow-pytest-")
        config._tierflow_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    basetemp = getattr(config, "_tierflow_basetemp", None)
    if basetemp:
        shutil.rmtree(basetemp, ignore_errors=True)


def require_service(available: bool, what: str, how: str) -> None:
    """Skip (laptop) or fail (``CI=true``) when a real service a test needs is missing."""
    if available:
        return
    message = f"{what} is not available here; {how}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _clean_tierflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own TIERFLOW_* variables."""
    for name in list(os.environ):
        if name.startswith("TIERFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """One real embedded PostgreSQL for the session (each test gets its own database in it)."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "postgres", dbname="postgres")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def empty_db(pg_server: EmbeddedPostgres) -> Iterator[Database]:
    """A fresh, empty database of its own on the session server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = Database(pg_server.url())
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(pg_server.url().set(database=name))
    yield db
    db.dispose()
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A fresh database migrated to the newest schema."""
    upgrade(empty_db)
    return empty_db


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A throwaway checkout: ``configs/`` with the committed defaults, tiers under ``var/``.

    Any embedded server started in it is stopped at teardown.
    """
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    (root / "analysis" / "notebooks").mkdir(parents=True)
    yield root
    state = root / "var" / "tier4-ephemeral" / "state"
    if (state / "prefect" / "server.json").is_file():  # before the PostgreSQL that holds its database
        from tierflow.flows.runtime.prefect_server import ManagedPrefectServer

        ManagedPrefectServer(state / "prefect").stop()
    server = EmbeddedPostgres(state / "postgres")
    server.stop()


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tierflow`` console script as a user would.

    Flow runs use Prefect's ephemeral server (or ``PREFECT_API_URL`` in ``env``), not a managed
    server per throwaway project; a test of the managed server passes ``TIERFLOW_PREFECT__SERVER``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    full_env.update(env or {})
    full_env.setdefault("TIERFLOW_PREFECT__SERVER", "ephemeral")
    done = subprocess.run(
        [TIERFLOW, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
    if check and done.returncode != 0:
        raise AssertionError(f"tierflow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server for the session (Prefect's test harness: a temporary SQLite DB).

    Yields its API URL, so subprocesses (the CLI) can report to the same server.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def raw_folder(tmp_path: Path) -> Path:
    """A small raw folder in tierflow's layout: 2 samples x 2 channels x 2 time points."""
    import numpy as np
    import tifffile

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for sample in ("s1", "s2"):
        for channel in (0, 1):
            for time_point in (0, 1):
                folder = raw / sample
                folder.mkdir(parents=True, exist_ok=True)
                stack = rng.integers(0, 4000, (4, 32, 32), dtype=np.uint16)
                tifffile.imwrite(folder / f"emb_c{channel}_t{time_point:03d}.tif", stack, photometric="minisblack")
    return raw
