"""What a stopped or killed ``tierflow`` leaves behind, with real signals on real processes.

* SIGKILL: Prefect's ephemeral API server (a child process) ends with the command; the killed
  run reads as ``crashed`` in every reader and holds no lock; ``tierflow resume`` finishes it.
* SIGTERM: the command stops within seconds even inside a long block batch, with its run
  ``cancelled`` and the signal named, no process left, and resume working afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import psutil
import pytest
import zarr
from sqlalchemy import text

from conftest import run_cli
from processes import alive, advisory_locks_held, project_db, running_run, spawn, wait_for, write_volume

THRESHOLD = 2000


def test_sigkill_leaves_no_server_and_the_run_reads_crashed_then_resumes(project, tmp_path):
    """No PREFECT_API_URL: the command starts Prefect's ephemeral server, which must die with it."""
    data = write_volume(project / "vol.zarr", (64, 128, 128), (16, 64, 64))
    env = {"PREFECT_HOME": str(tmp_path / "prefect-home")}  # a server database of its own
    args = ("op", "threshold", "-i", "vol.zarr", "-o", "mask.zarr", "-p", f"value={THRESHOLD}", "--block-shape", "2,8,8", "--workers", "1")
    db = project_db(project)
    process = spawn(project, *args, env=env)
    try:
        run_id = wait_for(lambda: running_run(db) or process.poll() is not None, 240, "the op run to start")
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("server_watchdog" in " ".join(child.cmdline()) for child in children), [c.cmdline() for c in children]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        wait_for(lambda: not alive(children), 60, f"the killed command's children {[c.pid for c in alive(children)]} to end")
        assert not [p for p in psutil.process_iter(["cmdline"]) if f"server_watchdog {process.pid}" in " ".join(p.info["cmdline"] or [])]
        assert running_run(db) == run_id  # nobody could record its end...

        listed = {r["id"]: r for r in json.loads(run_cli("runs", "list", "--json", cwd=project, env=env).stdout)}
        assert listed[run_id]["status"] == "crashed" and "process ended without finishing" in listed[run_id]["message"]
        status = json.loads(run_cli("status", str(run_id), "--json", cwd=project, env=env).stdout)
        assert status["status"] == "crashed"
        # PostgreSQL drops a dead connection's locks once it notices the socket closed
        wait_for(lambda: advisory_locks_held(db) == 0, 60, "PostgreSQL to drop the stopped command's locks")
        resumed = json.loads(run_cli("resume", str(run_id), "--json", cwd=project, env=env).stdout)
        assert resumed["blocks"] == 32 * 16 * 16 and resumed["run_id"] != run_id
        assert np.array_equal(zarr.open_array(str(project / "mask.zarr"))[:], (data > THRESHOLD).astype(np.uint8))
        with db.session() as session:
            states = dict(session.execute(text("SELECT id, status FROM runs")).all())
        assert states == {run_id: "crashed", resumed["run_id"]: "completed"}
        # PostgreSQL drops a dead connection's locks once it notices the socket closed
        wait_for(lambda: advisory_locks_held(db) == 0, 60, "PostgreSQL to drop the stopped command's locks")
    finally:
        if process.poll() is None:
            process.kill()
        db.dispose()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_a_batch_stops_within_seconds_marks_the_run_and_resume_finishes(project, prefect_api, signum):
    """SIGTERM, or Ctrl-C (SIGINT). One worker, 8192 small blocks in two batches: each batch
    computes for seconds."""
    data = write_volume(project / "vol.zarr", (128, 256, 256), (32, 128, 128), seed=1)
    env = {"PREFECT_API_URL": prefect_api}
    args = (
        "op",
        "threshold",
        "-i",
        "vol.zarr",
        "-o",
        "mask.zarr",
        "-p",
        f"value={THRESHOLD}",
        "--block-shape",
        "4,16,16",
        "--workers",
        "1",
    )
    db = project_db(project)
    process = spawn(project, *args, env=env)
    try:
        run_id = wait_for(lambda: running_run(db) or process.poll() is not None, 240, "the op run to start")
        assert process.poll() is None, f"the run ended before it could be stopped: {process.communicate()}"
        chunks = project / "mask.zarr" / "c"
        wait_for(lambda: (chunks.exists() and any(chunks.rglob("*"))) or process.poll() is not None, 120, "a batch to write blocks")
        children = psutil.Process(process.pid).children(recursive=True)
        stopped_at = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        took = time.monotonic() - stopped_at
        assert _block_rows(db, run_id, "done") < 32 * 16 * 16, "the run finished before the signal: make its batches longer"
        assert took < 10, f"{took:.1f} s to stop"
        name = signal.Signals(signum).name
        print(f"{name}: stopped in {took:.1f} s")
        assert process.returncode == 128 + signum, stderr
        assert f"stopped by {name}" in stderr and "Traceback" not in stderr
        wait_for(lambda: not alive(children), 30, "the stopped command's children to end")
        with db.session() as session:
            status, message = session.execute(text("SELECT status, message FROM runs WHERE id = :r"), {"r": run_id}).one()
        assert (status, message) == ("cancelled", f"StopRequested: stopped by {name}")
        # PostgreSQL drops a dead connection's locks once it notices the socket closed
        wait_for(lambda: advisory_locks_held(db) == 0, 60, "PostgreSQL to drop the stopped command's locks")
        resumed = json.loads(run_cli("resume", str(run_id), "--json", cwd=project, env=env).stdout)
        assert resumed["blocks"] == 32 * 16 * 16
        assert np.array_equal(zarr.open_array(str(project / "mask.zarr"))[:], (data > THRESHOLD).astype(np.uint8))
    finally:
        if process.poll() is None:
            process.kill()
        db.dispose()


def test_resume_after_sigkill_ends_the_killed_flow_run_in_prefect(project, prefect_api):
    """A SIGKILLed op cannot tell the Prefect server that its flow run ended: the flow run, and
    the task runs it had started, stay Running. ``tierflow resume`` knows the process is dead
    and ends them as Crashed, so the server shows nothing running that nothing runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    write_volume(project / "vol.zarr", (128, 256, 256), (32, 128, 128), seed=2)
    env = {"PREFECT_API_URL": prefect_api}
    args = ("op", "threshold", "-i", "vol.zarr", "-o", "mask.zarr", "-p", f"value={THRESHOLD}", "--block-shape", "4,16,16",
            "--workers", "1")
    db = project_db(project)
    process = spawn(project, *args, env=env)
    try:
        run_id = wait_for(lambda: running_run(db) or process.poll() is not None, 240, "the op run to start")
        wait_for(lambda: _block_rows(db, run_id, "done") > 0 or process.poll() is not None, 240, "a batch to record its blocks")
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        with db.session() as session:
            flow_run_id = session.execute(text("SELECT flow_run_id FROM runs WHERE id = :r"), {"r": run_id}).scalar_one()
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run_id).state.type.value == "RUNNING"  # what the kill left behind
        wait_for(lambda: advisory_locks_held(db) == 0, 60, "PostgreSQL to drop the killed command's locks")
        resumed = json.loads(run_cli("resume", str(run_id), "--json", cwd=project, env=env).stdout)
        assert resumed["computed"] == 32 * 16 * 16 - _block_rows(db, run_id, "done")
        with get_client(sync_client=True) as client:
            killed = client.read_flow_run(flow_run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        assert killed.state.type.value == "CRASHED" and f"tierflow run {run_id}" in killed.state.message
        assert tasks and not [t for t in tasks if t.state is None or not t.state.is_final()], [(t.name, t.state) for t in tasks]
    finally:
        if process.poll() is None:
            process.kill()
        db.dispose()


def _block_rows(db, run_id: int, status: str) -> int:
    with db.session() as session:
        return session.execute(
            text("SELECT count(*) FROM block_ledger WHERE run_id = :r AND status = :s"), {"r": run_id, "s": status}
        ).scalar_one()
