"""The embedded PostgreSQL: started on first use, shared across processes, one server when two
processes race to start it, stopped by `tierflow db stop`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from tierflow.storage.db.database import Database
from tierflow.storage.db.embedded import EmbeddedPostgres

from conftest import run_cli

START_IN_A_PROCESS = """
import json, sys, time
from pathlib import Path
from tierflow.storage.db.embedded import EmbeddedPostgres
go = float(sys.argv[2])
while time.time() < go:   # both processes leave the gate at the same instant
    time.sleep(0.001)
server = EmbeddedPostgres(Path(sys.argv[1]))
url = server.start()
status = server.status()
print(json.dumps({"pid": status.pid, "port": status.port, "masked": url.render_as_string()}))
"""


def postmasters_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(process)
    return found


def test_two_processes_racing_to_start_end_with_one_server(tmp_path):
    import time

    root = tmp_path / "state" / "postgres"
    gate = str(time.time() + 3.0)
    racers = [
        subprocess.Popen([sys.executable, "-c", START_IN_A_PROCESS, str(root), gate], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    server = EmbeddedPostgres(root)
    try:
        assert all(racer.returncode == 0 for racer in racers)
        assert results[0]["pid"] == results[1]["pid"]
        assert results[0]["port"] == results[1]["port"]
        assert len(postmasters_for(server.data_dir)) == 1
        # the server outlived both processes that started it, and this one reuses it
        assert server.status().running and server.status().pid == results[0]["pid"]
        assert Database(server.url()).ping().startswith("18")
    finally:
        server.stop()
    assert not server.status().running
    assert postmasters_for(server.data_dir) == []


def test_restart_keeps_data_and_port(tmp_path):
    server = EmbeddedPostgres(tmp_path / "postgres")
    try:
        db = Database(server.start())
        with db.engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        port = server.status().port
        db.dispose()
        assert server.stop() is True
        assert server.stop() is False
        db = Database(server.start())
        assert server.status().port == port
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM kept").scalar_one() == 42
        db.dispose()
    finally:
        server.stop()
    assert oct(server.password_file.stat().st_mode & 0o777) == "0o600"


def test_db_stop_stops_the_embedded_server(project):
    run_cli("db", "upgrade", cwd=project)
    server = EmbeddedPostgres(project / "var" / "tier4-ephemeral" / "state" / "postgres")
    assert server.status().running
    out = run_cli("db", "stop", cwd=project).stdout
    assert "stopped" in out
    assert not server.status().running
    assert "was not running" in run_cli("db", "stop", cwd=project).stdout
