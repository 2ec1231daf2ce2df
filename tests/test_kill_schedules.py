"""kill -9 at random moments, then ``tierflow resume``: the result is bit for bit the
uninterrupted one, and nothing is left behind.

A seeded loop of schedules (``TIERFLOW_KILL_SCHEDULES``, default 20; ``TIERFLOW_KILL_SEED``
to replay one): each starts an op run (gaussian, threshold or label on a 64x128x128 volume in
128 blocks) or, every tenth, a pipeline run, SIGKILLs the ``tierflow`` process either a random
delay after its start or once a random number of ledger rows exist, resumes the killed run
(``tierflow resume RUN``; a run killed before it was recorded is started again), and compares
the output with the uninterrupted reference computed once per op. After each schedule: no
process of the killed command is left, no run still reads ``running``, no advisory lock is
held (``pg_locks``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import zarr
from scipy import ndimage
from sqlalchemy import text

from conftest import run_cli
from processes import advisory_locks_held, alive, project_db, spawn, wait_for

# read at import: an autouse fixture hides TIERFLOW_* variables from the tests themselves
SCHEDULES = int(os.environ.get("TIERFLOW_KILL_SCHEDULES", "20"))
SEED = int(os.environ.get("TIERFLOW_KILL_SEED", "20261127"))
PARALLEL = int(os.environ.get("TIERFLOW_KILL_PARALLEL", "2"))
BLOCK_SHAPE = "8,32,32"
OPS = {"gaussian": ["-p", "sigma=1.5"], "threshold": ["-p", "value=300"], "label": []}


def blob_volume(path: Path) -> None:
    """64x128x128 uint16: bright blobs on a zero background (every op has something to do)."""
    noise = np.random.default_rng(7).random((64, 128, 128))
    smooth = ndimage.gaussian_filter(noise, 3)
    volume = np.where(smooth > np.quantile(smooth, 0.8), (smooth * 1000).astype(np.uint16), 0).astype(np.uint16)
    zarr.create_array(str(path), shape=volume.shape, chunks=(32, 64, 64), dtype=volume.dtype)[:] = volume


def op_args(op: str, output: str) -> list[str]:
    return ["op", op, "-i", "vol.zarr", "-o", output, "--block-shape", BLOCK_SHAPE, "--workers", "2", *OPS[op]]


def pipeline_args(dataset: str, raw: Path) -> list[str]:
    return ["run", "pipeline", "--dataset", dataset, "--raw", str(raw), "--param", "sigma=1.5", "--json"]


def tables(result: dict) -> dict[str, pd.DataFrame]:
    """The pipeline's promoted tables, without the dataset's name (which differs per run)."""
    found = {}
    for name in ("objects", "tracks"):
        table = pd.read_csv(Path(result["promoted"][f"tables/{name}.csv"][len("file://"):]))
        found[name] = table.drop(columns=["dataset"], errors="ignore")
    return found


def ledger_rows(db, output_like: str) -> int:
    with db.session() as session:
        return session.execute(text("SELECT count(*) FROM block_ledger WHERE array_uri LIKE :u"), {"u": output_like}).scalar_one()


def pipeline_ledger_rows(db, dataset: str) -> int:
    """Ledger rows written by the op runs of the pipeline run(s) of ``dataset``."""
    with db.session() as session:
        return session.execute(text(
            "SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id JOIN runs p ON p.id = r.parent_id "
            "WHERE p.parameters->>'dataset' = :d"), {"d": dataset}).scalar_one()


def recorded_run(db, flow: str, key: str, value: str) -> int | None:
    """The newest ``flow`` run whose parameter ``key`` is ``value`` (raw SQL: nothing settles it)."""
    with db.session() as session:
        return session.execute(text(f"SELECT id FROM runs WHERE flow_name = :f AND parameters->>'{key}' = :v ORDER BY id DESC LIMIT 1"),
                               {"f": flow, "v": value}).scalar()


def kill_at(
    process, rng: random.Random, reference_seconds: float, recorded: Callable[[], object], rows: Callable[[], int], blocks: int
) -> str:
    """SIGKILL ``process`` at a random moment: a random delay after its start (often in
    start-up), a random delay after its run is recorded, or once a random number of ledger rows
    exist. Returns how the moment was chosen."""
    draw = rng.random()
    if draw < 0.15:
        delay = rng.uniform(0.0, reference_seconds)
        how = f"{delay:.2f} s after its start"
    elif draw < 0.6:
        wait_for(lambda: recorded() or process.poll() is not None, 240, "the run to be recorded")
        delay = rng.uniform(0.0, 0.25 * reference_seconds)  # the reference includes ~5 s of start-up
        how = f"{delay:.2f} s after its run was recorded"
    else:
        wanted = rng.randint(1, blocks - 1)
        how = f"after {wanted} ledger rows"
        wait_for(lambda: rows() >= wanted or process.poll() is not None, 240, how)
        delay = 0.0
    deadline = time.monotonic() + delay
    wait_for(lambda: time.monotonic() >= deadline or process.poll() is not None, delay + 5, "the kill moment")
    children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    wait_for(lambda: not alive(children), 60, f"the killed command's children {[c.pid for c in alive(children)]} to end")
    return how


def leftovers(db, name: str, output: str) -> list[str]:
    """What a finished schedule must not leave: processes started for it (its output or dataset
    on their command line), runs of it (children included) still running or holding their
    liveness lock."""
    from tierflow.storage.db.locks import held_run_locks

    found = [f"process {p.pid}" for p in psutil.process_iter(["cmdline"]) if {name, output} & set(p.info["cmdline"] or [])]
    with db.session() as session:
        family = session.execute(
            text(
                "WITH RECURSIVE family AS (SELECT id FROM runs WHERE (flow_name = 'op' AND parameters->>'output' = :o) "
                "OR (flow_name = 'pipeline' AND parameters->>'dataset' = :d) "
                "UNION SELECT r.id FROM runs r JOIN family f ON r.parent_id = f.id) "
                "SELECT r.id, r.status FROM runs r JOIN family USING (id)"
            ),
            {"o": output, "d": name},
        ).all()
        found += [f"run {run_id} running" for run_id, status in family if status == "running"]
        found += [f"run {run_id} lock held" for run_id in held_run_locks(session, [run_id for run_id, _ in family])]
    return found


class Schedules:
    """The references and the project the schedules run in."""

    def __init__(self, project: Path, raw: Path, env: dict[str, str], tmp_path: Path) -> None:
        self.project, self.raw, self.env, self.tmp_path = project, raw, env, tmp_path
        self.db = project_db(project)
        self.references: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}
        for op in OPS:
            started = time.monotonic()
            run_cli(*op_args(op, f"ref/{op}.zarr"), "--json", cwd=project, env=env)
            self.seconds[op] = time.monotonic() - started
            self.references[op] = zarr.open_array(str(project / "ref" / f"{op}.zarr"))[:]
        started = time.monotonic()
        self.pipeline = tables(json.loads(run_cli(*pipeline_args("ref", raw), cwd=project, env=env).stdout))
        self.seconds["pipeline"] = time.monotonic() - started

    def run(self, index: int, kind: str, rng: random.Random) -> tuple[str, str, str, bool, list[str]]:
        """One schedule: start, kill -9, resume (or start again), compare, look for leftovers."""
        project, env, db = self.project, self.env, self.db
        name = f"k{index:03d}-{kind}"
        log = self.tmp_path / f"{name}.log"
        output = f"out/{name}.zarr"
        pipeline = kind == "pipeline"
        start = pipeline_args(name, self.raw) if pipeline else op_args(kind, output)
        flow, key, value = ("pipeline", "dataset", name) if pipeline else ("op", "output", output)

        def recorded() -> int | None:
            return recorded_run(db, flow, key, value)

        def rows() -> int:
            return pipeline_ledger_rows(db, name) if pipeline else ledger_rows(db, f"%/{output}")

        process = spawn(project, *start, env=env, log=log)
        how = kill_at(process, rng, self.seconds[kind], recorded, rows, 64 if pipeline else 128)
        run_id = recorded()
        if process.returncode == 0 and not pipeline:
            done, result = "ran to the end first", None
        else:
            done = "resumed" if run_id else "started again"
            args = ("resume", str(run_id)) if run_id else start
            result = json.loads(run_cli(*args, *([] if "--json" in args else ["--json"]), cwd=project, env=env).stdout)
        if pipeline:
            got = tables(result)
            identical = all(got[t].equals(self.pipeline[t]) for t in self.pipeline)
        else:
            array = zarr.open_array(str(project / output))[:]
            identical = array.dtype == self.references[kind].dtype and np.array_equal(array, self.references[kind])
        return name, how, done, identical, leftovers(db, name, output)


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_result(project, prefect_api, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw

    blob_volume(project / "vol.zarr")
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SyntheticSpec(samples=1, time_points=2, shape=(16, 96, 96), cells=3, divisions=0, touching_pairs=0))
    schedules = Schedules(project, raw, {"PREFECT_API_URL": prefect_api}, tmp_path)
    rng = random.Random(SEED)
    plan = [(index, "pipeline" if index % 10 == 9 else rng.choice(sorted(OPS)), random.Random(rng.random())) for index in range(SCHEDULES)]
    with ThreadPoolExecutor(PARALLEL) as pool:  # two at a time: each waits mostly on its process
        outcomes = list(pool.map(lambda item: schedules.run(*item), plan))
    locks = advisory_locks_held(schedules.db)
    with schedules.db.session() as session:
        running = session.execute(text("SELECT count(*) FROM runs WHERE status = 'running'")).scalar_one()
    schedules.db.dispose()
    summary = (
        f"{len(outcomes)} kill -9 schedules (seed {SEED}): {sum(o[3] for o in outcomes)} identical to the uninterrupted run; "
        f"{sum(o[2] == 'resumed' for o in outcomes)} resumed with `tierflow resume`, {sum(o[2] == 'started again' for o in outcomes)} "
        f"killed before their run was recorded, {sum(o[2] == 'ran to the end first' for o in outcomes)} ended before the kill"
    )
    print(summary, *(f"  {o[0]}: killed {o[1]}, {o[2]}, identical={o[3]}, left {o[4]}" for o in outcomes), sep="\n")
    bad = [o for o in outcomes if not o[3] or o[4]]
    assert not bad and locks == 0 and running == 0, f"{summary}\n{bad}\nadvisory locks {locks}, running runs {running}"
    assert sum(o[2] == "resumed" for o in outcomes) >= SCHEDULES // 2, summary
