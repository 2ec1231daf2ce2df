"""The README's database promises, through the installed `tierflow` command:
zero-config embedded use from anywhere in a checkout, an external server from one config
file, and a password that shows nowhere."""

from __future__ import annotations

import json
import logging

import pytest

from tierflow.storage.db.database import Database
from tierflow.storage.db.embedded import EmbeddedPostgres
from tierflow.storage.db.migrate import head_revision
from tierflow.storage.errors import DatabaseUnavailableError

from conftest import run_cli


def test_no_config_at_all_upgrade_then_status_from_a_nested_folder(project):
    nested = project / "analysis" / "notebooks"
    upgraded = run_cli("db", "upgrade", cwd=nested)
    assert f"-> {head_revision()}" in upgraded.stdout
    status = json.loads(run_cli("db", "status", "--json", cwd=nested).stdout)
    assert status["mode"] == "embedded"
    assert status["schema_revision"] == head_revision() and status["schema_current"] is True
    assert status["server"]["running"] is True
    assert status["server"]["data_dir"] == str(project / "var" / "tier4-ephemeral" / "state" / "postgres" / "data")
    from tierflow.storage.db.models import Base

    assert status["row_counts"] == {table.name: 0 for table in Base.metadata.sorted_tables}
    assert {"runs", "snapshots", "snapshot_files", "artifacts", "artifact_lineage", "block_ledger",
            "object_features", "object_intensities", "retention_events"} <= set(status["row_counts"])
    embedded_password = EmbeddedPostgres(project / "var" / "tier4-ephemeral" / "state" / "postgres").password()
    for args in (("db", "status"), ("db", "url"), ("config",), ("config", "--json")):
        done = run_cli(*args, cwd=nested)
        assert embedded_password not in done.stdout + done.stderr
    assert "***" in run_cli("db", "url", cwd=nested).stdout
    # a second upgrade is a no-op
    assert "already at revision" in run_cli("db", "upgrade", cwd=project).stdout


@pytest.fixture
def other_server(tmp_path):
    """A second PostgreSQL on its own port stands in for a lab's external server."""
    server = EmbeddedPostgres(tmp_path / "external-pg", user="lab", dbname="results")
    server.start()
    yield server
    server.stop()


def test_external_server_from_db_user_toml_moves_everything_there(project, other_server):
    port = other_server.status().port
    password = other_server.password()
    (project / "configs" / "db.user.toml").write_text(
        f'[database]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        f'dbname = "results"\nuser = "lab"\npassword = "{password}"\n'
    )
    outputs = [
        run_cli("db", "upgrade", cwd=project),
        run_cli("db", "status", "--json", cwd=project),
        run_cli("db", "status", cwd=project),
        run_cli("db", "url", cwd=project),
        run_cli("--debug", "config", cwd=project),
        run_cli("db", "stop", cwd=project),
    ]
    status = json.loads(outputs[1].stdout)
    assert status["mode"] == "external" and status["server"] is None
    assert status["url"] == f"postgresql+psycopg2://lab:***@127.0.0.1:{port}/results"
    assert status["schema_current"] is True
    for done in outputs:
        assert password not in done.stdout + done.stderr
    # the tables are on the other server, and no embedded server was created for the project
    assert "runs" in Database(other_server.url()).row_counts()
    assert not (project / "var" / "tier4-ephemeral" / "state" / "postgres" / "data").exists()


def test_wrong_password_is_one_readable_line_without_any_password(project, other_server):
    port = other_server.status().port
    wrong = "Wr0ng-Secret-Value"
    (project / "configs" / "db.user.toml").write_text(
        f'[database]\nmode = "external"\nport = {port}\nuser = "lab"\ndbname = "results"\npassword = "{wrong}"\n'
    )
    done = run_cli("db", "status", cwd=project, check=False)
    assert done.returncode == 1
    assert "password authentication failed" in done.stderr
    assert "Traceback" not in done.stderr
    assert wrong not in done.stdout + done.stderr
    assert other_server.password() not in done.stdout + done.stderr
    debug = run_cli("--debug", "db", "status", cwd=project, check=False)
    assert "Traceback" in debug.stderr and wrong not in debug.stdout + debug.stderr


def test_missing_password_error_through_the_cli(project):
    (project / "configs" / "db.user.toml").write_text('[database]\nmode = "external"\nport = 5432\n')
    done = run_cli("db", "status", cwd=project, check=False)
    assert done.returncode == 1
    assert "db.user.toml" in done.stderr and "password" in done.stderr and "Traceback" not in done.stderr


def test_password_stays_out_of_exceptions_and_logs(other_server, caplog):
    wrong = "Another-Wrong-Secret"
    db = Database(other_server.url().set(password=wrong))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DatabaseUnavailableError) as info:
        db.ping()
    text = str(info.value) + repr(info.value) + repr(db) + caplog.text
    assert wrong not in text and other_server.password() not in text
    assert "lab:***@" in str(info.value)
    good = Database(other_server.url())
    good.ping()
    assert other_server.password() not in repr(good) + good.masked_url + caplog.text


def test_managed_prefect_server_beside_an_external_results_database(project, other_server):
    """External results DB: the managed Prefect server keeps its own database in SQLite under
    Tier 4 state (`database = "auto"`), no embedded PostgreSQL is made, runs land in the lab's
    server, and the second op goes to the warm executor; no password in any of it."""
    import numpy as np
    import sqlite3

    import psutil
    import zarr

    port = other_server.status().port
    password = other_server.password()
    (project / "configs" / "db.user.toml").write_text(
        f'[database]\nmode = "external"\nhost = "127.0.0.1"\nport = {port}\n'
        f'dbname = "results"\nuser = "lab"\npassword = "{password}"\n'
    )
    managed = {"TIERFLOW_PREFECT__SERVER": "managed"}
    zarr.create_array(str(project / "in.zarr"), shape=(8, 32, 32), chunks=(8, 32, 32), dtype="uint16")[:] = (
        np.arange(8 * 32 * 32, dtype=np.uint16).reshape(8, 32, 32))
    state = project / "var" / "tier4-ephemeral" / "state"
    try:
        started = json.loads(run_cli("server", "start", "--json", cwd=project, env=managed).stdout)
        assert started["running"] is True
        assert started["database"] == "sqlite"
        prefect_db = state / "prefect" / "prefect.db"
        assert prefect_db.is_file()
        assert started["executor"] is not None
        first = json.loads(run_cli("op", "gaussian", "-i", "in.zarr", "-o", "a.zarr", "-p", "sigma=1", "--json", cwd=project,
                                   env=managed).stdout)
        status = json.loads(run_cli("server", "status", "--json", cwd=project, env=managed).stdout)
        assert status["executor"]["served"] == 1 and status["pid"] == started["pid"]
        with Database(other_server.url()).engine.connect() as connection:
            rows = connection.exec_driver_sql(
                "SELECT status, flow_run_id::text FROM runs WHERE id = %s" % int(first["run_id"])).all()
        assert len(rows) == 1 and rows[0][0] == "completed"
        # the flow run is in Prefect's own SQLite file (read directly, not through the server)
        with sqlite3.connect(f"file:{prefect_db}?mode=ro", uri=True) as prefect:
            found = prefect.execute("SELECT state_type FROM flow_run WHERE id = ?", (rows[0][1],)).fetchall()
        assert found == [("COMPLETED",)]
        assert not (state / "postgres" / "data").exists()  # nothing embedded
        texts = [json.dumps(started), json.dumps(status), (state / "prefect" / "server.json").read_text(),
                 (state / "prefect" / "executor.log").read_text(), (state / "prefect" / "server.log").read_text()]
        assert not [text for text in texts if password in text]
    finally:
        stopped = run_cli("server", "stop", "--json", cwd=project, env=managed, check=False)
    done = json.loads(stopped.stdout)
    assert done["stopped"] and done["executor_pid"] == status["executor"]["pid"]
    for pid in (done["pid"], done["executor_pid"]):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
