"""Command overhead: whole-process wall times of ``tierflow`` commands beside ``import prefect``.

    .venv/bin/python benchmarks/cli.py [--repeat 7] [--no-ephemeral] [--out benchmarks/results-cli.json]

Every command runs as a user runs it (the console script, a fresh process, in a throwaway
project with its embedded PostgreSQL already started), interleaved with the others in each of
``--repeat`` rounds, so a busy machine slows all of them alike; the median of each is compared
with the median of ``python -c "import prefect"`` (the yardstick). Commands:

* ``python -c pass`` (the interpreter alone) and ``python -c "import prefect"``;
* ``tierflow --help``, ``tierflow ops list``, ``tierflow status RUN``;
* a cached ``tierflow op gaussian`` on a 32x64x64 uint16 volume (every block done: the ledger answers);
* a new ``tierflow op gaussian`` on that volume (a new output each time) with the Prefect server
  already up (:func:`server_up`: tierflow's managed server, and the warm executor beside it that
  runs flow-running commands in a forked child, :mod:`flows.cli.executor`), and, for comparison
  only, the same in the command's own process (``TIERFLOW_PREFECT__EXECUTOR=false``) and with
  Prefect's ephemeral server (``[prefect] server = "ephemeral"``: started by the command itself);
* the cached op in its own process too (answered by the op memo, :mod:`flows.ops.quick`).

Prints a table (command, median, ratio to ``import prefect``, target, met?) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TIERFLOW = str(Path(sys.executable).with_name("tierflow"))

TARGETS = {"tierflow --help": 0.3, "cached tierflow op": 0.5, "new tierflow op (server up)": 1.5}
"""Issue 15: whole-process time as a fraction of ``import prefect``."""


@contextmanager
def server_up(project: Path, env: dict[str, str]) -> Iterator[str]:
    """The Prefect server up before the commands run: tierflow's managed server (``tierflow
    server start``, ``[prefect] server = "managed"``; it waits for the warm executor too), stopped
    at the end; yields its API URL."""
    _, started = _run([TIERFLOW, "server", "start", "--json"], project, env)
    try:
        yield json.loads(started)["api_url"]
    finally:
        subprocess.run([TIERFLOW, "server", "stop"], cwd=project, env=env, capture_output=True, timeout=120)


def make_project(work: Path) -> Path:
    """A throwaway project (the committed default configs) holding a 32x64x64 uint16 volume."""
    import numpy as np
    import zarr

    project = work / "project"
    (project / "configs").mkdir(parents=True)
    for default in (ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, project / "configs" / default.name)
    volume = zarr.create_array(str(project / "tiny.zarr"), shape=(32, 64, 64), chunks=(32, 64, 64), dtype="uint16")
    volume[:] = np.random.default_rng(0).integers(0, 4000, (32, 64, 64), dtype=np.uint16)
    return project


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return seconds, done.stdout


def _op(output: str, *extra: str) -> list[str]:
    """``tierflow op gaussian`` of the tiny volume, as a user types it (with its progress bar)."""
    return [TIERFLOW, "op", "gaussian", "-i", "tiny.zarr", "-o", output, "-p", "sigma=1", *extra]


def commands(ephemeral: bool) -> dict[str, tuple[list[str] | None, str]]:
    """Each measured command by name: its argv (``None``: built per round) and which environment
    it runs in (``server``: tierflow pointed at the server that is up; ``ephemeral``: no server)."""
    table: dict[str, tuple[list[str] | None, str]] = {
        "python -c pass": ([PYTHON, "-c", "pass"], "server"),
        'python -c "import prefect"': ([PYTHON, "-c", "import prefect"], "server"),
        "tierflow --help": ([TIERFLOW, "--help"], "server"),
        "tierflow ops list": ([TIERFLOW, "ops", "list"], "server"),
        "tierflow status RUN": (None, "server"),
        "cached tierflow op": (_op("cached.zarr"), "server"),
        "cached tierflow op (own process)": (_op("cached.zarr"), "own"),
        "new tierflow op (server up)": (None, "server"),
        "new tierflow op (server up, own process)": (None, "own"),
    }
    if ephemeral:
        table["new tierflow op (ephemeral server)"] = (None, "ephemeral")
    return table


def measure(project: Path, envs: dict[str, dict[str, str]], rounds: int, ephemeral: bool) -> dict[str, list[float]]:
    """Every command once per round, interleaved; the wall times of each."""
    _, first = _run(_op("cached.zarr", "--json"), project, envs["server"])  # the output the cached op finds done (and a warm server)
    _run(_op("cached.zarr"), project, envs["own"])  # its first re-run in its own process writes the op memo
    status = [TIERFLOW, "status", str(json.loads(first)["run_id"])]
    if ephemeral:
        _run(_op("warm-up-ephemeral.zarr"), project, envs["ephemeral"])  # the ephemeral server's first start migrates its DB
    table = commands(ephemeral)
    times: dict[str, list[float]] = {name: [] for name in table}
    for round_ in range(rounds):
        for name, (argv, env_name) in table.items():
            if name == "tierflow status RUN":
                argv = status
            elif argv is None:
                argv = _op(f"new-{env_name}-{round_}.zarr")
            seconds, _ = _run(argv, project, envs[env_name])
            times[name].append(seconds)
        print(f"round {round_ + 1}/{rounds}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()), flush=True)
    return times


def report(times: dict[str, list[float]], rounds: int) -> dict[str, object]:
    """The table (printed) and its figures (returned, for the JSON file)."""
    yardstick = statistics.median(times['python -c "import prefect"'])
    rows = []
    print(f"\n{'command':<38} {'median s':>9} {'x import prefect':>17} {'target':>8}  met?")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(name)
        ratio = median / yardstick
        met = None if target is None else ratio <= target
        rows.append({"command": name, "median_s": round(median, 3), "ratio": round(ratio, 3), "target": target, "met": met,
                     "times_s": [round(v, 3) for v in values]})
        print(f"{name:<38} {median:>9.3f} {ratio:>16.2f}x {'' if target is None else f'<= {target}':>8}  "
              f"{'' if met is None else ('yes' if met else 'NO')}")
    return {"repeat": rounds, "cpu_count": os.cpu_count(), "python": sys.version.split()[0], "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="rounds; each command runs once per round, the median is reported")
    parser.add_argument("--no-ephemeral", action="store_true", help="skip the new op with Prefect's ephemeral server")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results-cli.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tierflow-bench-cli-"))
    project = make_project(work)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_"))}
    base["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    print(f"work folder {work}; starting the Prefect server...", flush=True)
    try:
        with server_up(project, base) as api_url:
            print(f"Prefect API {api_url}", flush=True)
            envs = {"server": base, "own": {**base, "TIERFLOW_PREFECT__EXECUTOR": "false"},
                    "ephemeral": {**base, "TIERFLOW_PREFECT__SERVER": "ephemeral", "PREFECT_HOME": str(work / "prefect-ephemeral")}}
            times = measure(project, envs, args.repeat, not args.no_ephemeral)
        results = report(times, args.repeat)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {args.out}")
    finally:
        subprocess.run([TIERFLOW, "db", "stop"], cwd=project, env=base, capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
