"""Scale without a cluster: one map op over >= 10^5 blocks, its ledger, a resume after SIGKILL,
and ``tierflow status`` on a 10^6-row ledger, against the managed Prefect server.

    .venv/bin/python benchmarks/scale.py [--grid 50,40,50] [--block 8,64,64] [--ledger-rows 1000000]
                                         [--out benchmarks/results-scale.json]

In a throwaway project (the committed default configs, its embedded PostgreSQL, ``tierflow server
start``), a uint8 zarr array whose chunks are never written (every block reads the fill value, so
the kernel's work is trivial and what is measured is orchestration, the ledger and I/O metadata):

1. ``tierflow op threshold -p value=1`` over every block, as a user runs it (a subprocess, in its
   own process so its peak RSS is its own: ``TIERFLOW_PREFECT__EXECUTOR=false``): wall, ms per
   block, peak RSS; the Prefect API's task runs and flow runs of it, and task runs in a
   non-terminal state (none may be left);
2. the same command again (every block done): the first re-run makes the full ledger check (the
   done-check), the second is answered by the op memo;
3. the op to a second output, SIGKILLed once the ledger holds some of its blocks, then
   ``tierflow resume RUN``: it must compute exactly the blocks not done (ledger counts);
4. ledger rows inserted with the repository's own bulk insert
   (:func:`storage.db.repo.ledger.record_blocks`) into a **synthetic** run until the ledger holds
   ``--ledger-rows``: insert time per row; then ``tierflow status RUN`` of the op run and of the
   synthetic run (the SQL query's time with EXPLAIN ANALYZE, and the whole command's).

Prints the figures and writes them as JSON (with ``uptime``'s load: other work on the machine
slows everything alike).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIERFLOW = str(Path(sys.executable).with_name("tierflow"))
NON_TERMINAL = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def make_project(work: Path, shape: tuple[int, ...], block: tuple[int, ...]) -> Path:
    """A throwaway project holding ``empty.zarr``: ``shape`` uint8, chunks ``block``, no chunk written."""
    import zarr

    project = work / "project"
    (project / "configs").mkdir(parents=True)
    for default in (ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, project / "configs" / default.name)
    zarr.create_array(str(project / "empty.zarr"), shape=shape, chunks=block, dtype="uint8", fill_value=0)
    return project


def run_measured(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 7200) -> dict[str, Any]:
    """Run a command; its wall, exit code, stdout and peak RSS (MiB, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=timeout)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {err.strip()[-3000:]}")
    return {"wall_s": wall, "stdout": out, "children_max_rss_mib": usage.ru_maxrss / 1024}


def run_rss(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a command and read its own peak RSS with ``wait4`` (not the max over every child so far)."""
    started = time.perf_counter()
    with open(os.devnull, "w") as devnull, tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=devnull)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}: {stderr.strip()[-3000:]}")
    return {"wall_s": wall, "stdout": stdout, "peak_rss_mib": usage.ru_maxrss / 1024}


class Prefect:
    """The few Prefect API calls the benchmark makes (its REST API, as any client)."""

    def __init__(self, api_url: str) -> None:
        import httpx

        self.api, self.http = api_url.rstrip("/"), httpx.Client(timeout=120)

    def healthy(self) -> bool:
        return self.http.get(f"{self.api}/health").status_code == 200

    def task_runs(self, flow_run_ids: list[str], states: list[str] | None = None) -> int:
        body: dict[str, Any] = {"flow_runs": {"id": {"any_": flow_run_ids}}}
        if states:
            body["task_runs"] = {"state": {"type": {"any_": states}}}
        return int(self.http.post(f"{self.api}/task_runs/count", json=body).json())

    def all_task_runs(self, states: list[str] | None = None) -> int:
        body: dict[str, Any] = {"task_runs": {"state": {"type": {"any_": states}}}} if states else {}
        return int(self.http.post(f"{self.api}/task_runs/count", json=body).json())

    def flow_runs(self, states: list[str] | None = None) -> int:
        body: dict[str, Any] = {"flow_runs": {"state": {"type": {"any_": states}}}} if states else {}
        return int(self.http.post(f"{self.api}/flow_runs/count", json=body).json())


def database(project: Path) -> Any:
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(str(project / "configs")), migrate=True)


def flow_run_of(db: Any, run_id: int) -> str | None:
    from tierflow.storage.db.repo import get_run

    with db.session() as session:
        row = get_run(session, run_id)
        return str(row.flow_run_id) if row is not None and row.flow_run_id else None


def ledger_counts(db: Any, array_uri: str) -> dict[str, int]:
    """Done rows per run of one output (raw SQL: a benchmark reads what the ledger holds)."""
    from sqlalchemy import text

    with db.session() as session:
        rows = session.execute(text("SELECT run_id, count(*), count(DISTINCT block_id) FROM block_ledger "
                                    "WHERE array_uri = :uri AND status = 'done' GROUP BY run_id ORDER BY run_id"), {"uri": array_uri})
        return {str(run_id): int(count) for run_id, count, _ in rows}


def op_argv(output: str, block: tuple[int, ...]) -> list[str]:
    return [TIERFLOW, "op", "threshold", "-i", "empty.zarr", "-o", output, "-p", "value=1",
            "--block-shape", ",".join(map(str, block)), "--json"]


def first_run(project: Path, env: dict[str, str], block: tuple[int, ...], prefect: Prefect, db: Any, blocks: int) -> dict[str, Any]:
    """The op over every block, its re-runs, and what the Prefect API holds of it."""
    flows_before = prefect.flow_runs()
    print(f"op over {blocks} blocks... ({uptime()})", flush=True)
    run = run_rss(op_argv("out.zarr", block), project, env)
    result = json.loads(run["stdout"])
    flow_run = flow_run_of(db, result["run_id"])
    figures = {
        "blocks": result["blocks"], "computed": result["computed"], "batches": result.get("batches"), "run_id": result["run_id"],
        "output": result["output"],
        "wall_s": round(run["wall_s"], 2), "ms_per_block": round(1000 * run["wall_s"] / result["blocks"], 3),
        "peak_rss_mib": round(run["peak_rss_mib"], 1), "load_after": uptime(),
        "prefect_task_runs": prefect.task_runs([flow_run]) if flow_run else None,
        "prefect_task_runs_non_terminal": prefect.task_runs([flow_run], NON_TERMINAL) if flow_run else None,
        "prefect_flow_runs_created": prefect.flow_runs() - flows_before, "prefect_healthy": prefect.healthy(),
    }
    print(json.dumps(figures), flush=True)
    check = run_rss(op_argv("out.zarr", block), project, env)  # every block done: the full ledger check
    memo = run_rss(op_argv("out.zarr", block), project, env)   # the same again: the op memo answers
    figures["rerun_full_check_s"] = round(check["wall_s"], 3)
    figures["rerun_full_check_computed"] = json.loads(check["stdout"])["computed"]
    figures["rerun_full_check_peak_rss_mib"] = round(check["peak_rss_mib"], 1)
    figures["rerun_memo_s"] = round(memo["wall_s"], 3)
    figures["done_check_query_s"] = done_check_query(db, result)
    return figures


def done_check_query(db: Any, result: dict[str, Any]) -> float:
    """The done-check's own query (every done block's fingerprint of the op key in the output)."""
    from tierflow.storage.db.repo.ledger import done_fingerprints

    with db.session() as session:
        started = time.perf_counter()
        done = done_fingerprints(session, result["op_key"], result["output"])
        seconds = time.perf_counter() - started
    assert len(done) == result["blocks"], (len(done), result["blocks"])
    return round(seconds, 3)


def kill_and_resume(project: Path, env: dict[str, str], block: tuple[int, ...], db: Any, blocks: int, prefect: Prefect,
                    kill_after: int, uri: str) -> dict[str, Any]:
    """The op to ``killed.zarr`` (ledger URI ``uri``), SIGKILLed once the ledger holds ``kill_after`` of its blocks; then resumed."""
    process = subprocess.Popen(op_argv("killed.zarr", block), cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 3600
    done: dict[str, int] = {}
    while time.monotonic() < deadline and process.poll() is None:
        done = ledger_counts(db, uri)
        if sum(done.values()) >= kill_after:
            break
        time.sleep(0.5)
    if process.poll() is not None:
        raise RuntimeError(f"the op ended (exit {process.returncode}) before the ledger held {kill_after} blocks")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    at_kill = ledger_counts(db, uri)
    killed_run = int(next(iter(at_kill)))
    done_before = sum(at_kill.values())
    print(f"SIGKILLed run {killed_run} with {done_before} blocks done; resuming... ({uptime()})", flush=True)
    resumed = run_rss([TIERFLOW, "resume", str(killed_run), "--json"], project, env)
    result = json.loads(resumed["stdout"])
    after = ledger_counts(db, uri)
    from sqlalchemy import text

    with db.session() as session:
        distinct = int(session.scalar(text("SELECT count(DISTINCT block_id) FROM block_ledger WHERE array_uri = :uri AND status = 'done'"),
                                      {"uri": uri}))
        overlap = int(session.scalar(text(
            "SELECT count(*) FROM (SELECT block_id FROM block_ledger WHERE array_uri = :uri AND status = 'done' "
            "GROUP BY block_id HAVING count(*) > 1) twice"), {"uri": uri}))
    flow_run = flow_run_of(db, result["run_id"])
    return {"killed_run": killed_run, "done_at_kill": done_before, "resume_run": result["run_id"], "resume_computed": result["computed"],
            "expected_to_compute": blocks - done_before, "resume_wall_s": round(resumed["wall_s"], 2),
            "resume_peak_rss_mib": round(resumed["peak_rss_mib"], 1), "ledger_done_rows_by_run": after,
            "distinct_done_blocks": distinct, "blocks_done_twice": overlap,
            "resume_prefect_task_runs": prefect.task_runs([flow_run]) if flow_run else None,
            "correct": result["computed"] == blocks - done_before and distinct == blocks and overlap == 0}


def synthetic_rows(db: Any, target_rows: int, op_run: dict[str, Any]) -> dict[str, Any]:
    """Fill the ledger to ``target_rows`` with rows of one synthetic run, through the
    repository's bulk insert (``record_blocks``); the insert time per row."""
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from tierflow.storage.db.models import BlockRecord
    from tierflow.storage.db.repo import start_run
    from tierflow.storage.db.repo.ledger import record_blocks

    with db.session() as session:
        have = int(session.scalar(select(func.count()).select_from(BlockRecord)))
        run = start_run(session, flow_name="op", parameters={"synthetic": True, "op": "threshold"})
        run_id = int(run.id)
    missing, chunk, seconds, now = max(0, target_rows - have), 50_000, 0.0, datetime.now(UTC)
    base = {"run_id": run_id, "op": "threshold", "op_key": "synthetic", "array_uri": "file:///synthetic.zarr", "attempt": 1,
            "host": "bench", "seconds": 0.001, "bytes": 32768, "started_at": now, "finished_at": now, "input_fingerprint": "0" * 32}
    print(f"ledger holds {have} rows; inserting {missing} synthetic rows... ({uptime()})", flush=True)
    for start in range(0, missing, chunk):
        rows = [base | {"block_id": f"{i // 2500}.{i // 50 % 50}.{i % 50}", "status": "failed" if i % 100_000 == 7 else "done",
                        **({"error": "RuntimeError: synthetic"} if i % 100_000 == 7 else {})}
                for i in range(start, min(missing, start + chunk))]
        with db.session() as session:
            started = time.perf_counter()
            record_blocks(session, rows)
            session.commit()
            seconds += time.perf_counter() - started
    with db.session() as session:
        total = int(session.scalar(select(func.count()).select_from(BlockRecord)))
        session.execute(select(func.now()))
    from sqlalchemy import text

    with db.engine.connect() as connection:
        connection.execute(text("ANALYZE block_ledger"))
        connection.commit()
    return {"synthetic_run": run_id, "synthetic_rows": missing, "ledger_rows": total,
            "insert_s": round(seconds, 2), "insert_us_per_row": round(1e6 * seconds / max(1, missing), 1)}


def vacuum(db: Any) -> None:
    from sqlalchemy import text

    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE block_ledger"))


def status_figures(project: Path, env: dict[str, str], db: Any, run_id: int) -> dict[str, Any]:
    """``tierflow status RUN``: its SQL query (timed as the CLI calls it, and EXPLAIN ANALYZE) and the whole command."""
    from sqlalchemy import text

    from tierflow.storage.db.repo import latest_state_counts
    from tierflow.storage.db.repo.ledger import status_query

    query = status_query([run_id]).compile(db.engine, compile_kwargs={"literal_binds": True})
    times = []
    with db.session() as session:
        for _ in range(3):
            started = time.perf_counter()
            counts = latest_state_counts(session, [run_id])
            times.append(time.perf_counter() - started)
        plan = [row[0] for row in session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {query}"))]
    command = [run_measured([TIERFLOW, "status", str(run_id), "--json"], project, env)["wall_s"] for _ in range(3)]
    executed = next((float(line.split(":")[1].split()[0]) for line in plan if line.startswith("Execution Time")), None)
    return {"run": run_id, "blocks": sum(c.blocks for c in counts), "query_ms": round(1000 * min(times), 1),
            "query_ms_all": [round(1000 * t, 1) for t in times], "explain_execution_ms": executed,
            "command_s": round(min(command), 3), "command_s_all": [round(c, 3) for c in command], "plan": plan}


class Saved:
    """The results so far, written out at the end whatever happened (a failed phase keeps the others)."""

    def __init__(self, path: Path, results: dict[str, Any]) -> None:
        self.path, self.results = path, results

    def write(self) -> None:
        self.path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", default="50,40,50", help="blocks per axis (z,y,x); default 100,000 blocks")
    parser.add_argument("--block", default="8,64,64", help="block (= chunk) shape z,y,x")
    parser.add_argument("--ledger-rows", type=int, default=1_000_000)
    parser.add_argument("--kill-fraction", type=float, default=0.3, help="SIGKILL once this fraction of blocks is done")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-scale.json"))
    args = parser.parse_args()
    out = Path(args.out).resolve()  # before the benchmark moves into its throwaway project
    grid = tuple(int(v) for v in args.grid.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    shape = tuple(g * b for g, b in zip(grid, block, strict=True))
    blocks = 1
    for g in grid:
        blocks *= g
    work = Path(tempfile.mkdtemp(prefix="tierflow-bench-scale-"))
    project = make_project(work, shape, block)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", TIERFLOW_PREFECT__EXECUTOR="false")
    results: dict[str, Any] = {"shape": shape, "block": block, "blocks": blocks, "cpu_count": os.cpu_count(), "load_start": uptime()}
    print(f"work folder {work}; shape {shape}, block {block}: {blocks} blocks; starting the Prefect server...", flush=True)
    os.chdir(project)
    saved = Saved(out, results)
    try:
        started = run_measured([TIERFLOW, "server", "start", "--json"], project, env)
        prefect = Prefect(json.loads(started["stdout"])["api_url"])
        db = database(project)
        results["op"] = first_run(project, env, block, prefect, db, blocks)
        results["resume"] = kill_and_resume(project, env, block, db, blocks, prefect, int(args.kill_fraction * blocks),
                                            results["op"]["output"].replace("out.zarr", "killed.zarr"))
        print(json.dumps(results["resume"]), flush=True)
        results["prefect_after"] = {"healthy": prefect.healthy(), "task_runs": prefect.all_task_runs(),
                                    "task_runs_non_terminal": prefect.all_task_runs(NON_TERMINAL), "flow_runs": prefect.flow_runs(),
                                    "flow_runs_non_terminal": prefect.flow_runs(NON_TERMINAL)}
        results["ledger"] = synthetic_rows(db, args.ledger_rows, results["op"])
        print(json.dumps(results["ledger"]), flush=True)
        results["status_op_run"] = status_figures(project, env, db, results["op"]["run_id"])
        results["status_synthetic_run"] = status_figures(project, env, db, results["ledger"]["synthetic_run"])
        vacuum(db)  # what autovacuum does soon after a big insert: the index-only scan then skips the table
        results["status_op_run_vacuumed"] = status_figures(project, env, db, results["op"]["run_id"])
        results["status_synthetic_run_vacuumed"] = status_figures(project, env, db, results["ledger"]["synthetic_run"])
        results["load_end"] = uptime()
        print(json.dumps(results, indent=2, default=str))
        print(f"\nwritten to {out}")
    finally:
        saved.write()
        subprocess.run([TIERFLOW, "server", "stop"], cwd=project, env=env, capture_output=True, timeout=300)
        subprocess.run([TIERFLOW, "db", "stop"], cwd=project, env=env, capture_output=True, timeout=300)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
