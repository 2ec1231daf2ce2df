"""Cheap commands (issue 15): ``--help``, the read-only commands and a cached ``tierflow op``
start without importing Prefect (a second of start-up) or what they do not use.

Each command runs in its own process, as the console script runs it, under a probe that writes
the heavy modules the process ended with (``sys.modules`` at exit) to a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import run_cli

HEAVY = ("prefect", "dask", "scipy", "skimage", "alembic", "sqlalchemy", "zarr", "numpy", "boto3", "pydantic_settings")

PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in sys.modules if m.partition(".")[0] in {heavy}))))
sys.argv[0] = "tierflow"
from tierflow.flows.cli import main
main()
""".format(heavy=repr(set(HEAVY)))

HELP_WALK = """
import json, sys
import typer.main
from tierflow.flows.cli import app

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer vendors click)
        yield from walk(sub, [*path, name])

paths = list(walk(typer.main.get_command(app), []))
for path in paths:
    if path[:1] in (["op"], ["ops"]):
        continue  # these list the registered ops: checked below
    try:
        app([*path, "--help"], prog_name="tierflow", standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps({"paths": len(paths), "heavy": sorted(m for m in sys.modules if m.partition(".")[0] in %r)}))
""" % (set(HEAVY),)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_API_URL"))}
    env.update(extra)
    return env


def probe(tmp_path: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[str, set[str]]:
    """Run ``tierflow ARGS`` under the probe: its output and the heavy top-level packages it imported."""
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=cwd, env=_env(**(env or {})),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"tierflow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout, {m.partition(".")[0] for m in json.loads(out.read_text())}


def test_every_help_imports_only_the_command_line(project, tmp_path):
    """``--help`` of every command and group (walked from the Typer app) in one process: nothing
    heavy; ``op NAME --help`` and ``ops --help`` read the op registry only (numpy, no kernels)."""
    done = subprocess.run([sys.executable, "-c", HELP_WALK], cwd=project, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["paths"] > 30  # the walk saw the whole tree (groups and their commands)
    assert report["heavy"] == []
    for args in (["--help"], ["op", "--help"], ["op", "gaussian", "--help"], ["ops", "--help"]):
        text, heavy = probe(tmp_path, *args, cwd=project)
        assert "Usage" in text
        assert heavy <= {"numpy"}, (args, heavy)
    assert "sigma" in probe(tmp_path, "op", "gaussian", "--help", cwd=project)[0]


@pytest.fixture
def cached_op(project, tmp_path, prefect_api):
    """A tiny volume and a gaussian of it computed once (a real op run: Prefect, the ledger)."""
    source = zarr.create_array(project / "in.zarr", shape=(8, 32, 32), chunks=(8, 32, 32), dtype="uint16")
    source[:] = np.random.default_rng(0).integers(0, 4000, (8, 32, 32), dtype=np.uint16)
    run_cli("op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", cwd=project, env={"PREFECT_API_URL": prefect_api})
    return project


def test_cached_op_and_read_only_commands_never_import_prefect(cached_op, tmp_path):
    """A finished op is answered from the ledger without Prefect (or SciPy, dask, Alembic), still
    recorded as an ``up_to_date`` run, its output untouched; then every read-only command
    against the same database imports no Prefect either. No Prefect server is given: a
    command that started a flow run would start Prefect's ephemeral one."""
    project = cached_op
    out = project / "out.zarr"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    data = zarr.open_array(out, mode="r")[:]

    text, heavy = probe(tmp_path, "op", "gaussian", "-i", "in.zarr", "-o", "out.zarr", "-p", "sigma=1", cwd=project)
    assert "0 of 1 blocks computed, 1 already done" in text
    assert not heavy & {"prefect", "scipy", "dask", "skimage", "alembic", "boto3"}, heavy
    run_id = text.rsplit("(run ", 1)[1].rstrip(")\n")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], data)

    shown, heavy = probe(tmp_path, "runs", "show", run_id, "--json", cwd=project)
    row = json.loads(shown)
    assert (row["flow"], row["status"], row["parameters"]["up_to_date"]) == ("op", "completed", True)
    assert row["result"]["computed"] == 0 and row["result"]["blocks"] == 1
    assert "prefect" not in heavy
    for args in (["status", str(int(run_id) - 1)], ["runs", "list"], ["ops", "list"], ["ops", "show", "gaussian"],
                 ["snapshots", "list"], ["artifacts", "list"], ["config"], ["pipelines", "list"], ["tiers"], ["db", "status"],
                 ["db", "url"], ["server", "status"]):
        text, heavy = probe(tmp_path, *args, cwd=project)
        assert text.strip(), args
        assert not heavy & {"prefect", "dask", "scipy", "skimage", "boto3"}, (args, heavy)
    assert "gaussian" in probe(tmp_path, "status", str(int(run_id) - 1), cwd=project)[0]


def test_schema_head_read_without_alembic_is_alembics():
    """The cached op's schema check reads the head revision from the migration scripts without
    importing Alembic: it must be the head Alembic itself finds."""
    from tierflow.storage.db.migrate import _declared_head, heads

    assert [_declared_head()] == heads()


def _settle(project: Path) -> None:
    """Wait until every file of the project's arrays is older than the memo's racy window (a
    memo is written only from stats that old: ``flows.ops.quick.RACY_SECONDS``)."""
    from tierflow.flows.ops.quick import RACY_SECONDS

    newest = max(path.stat().st_mtime for path in project.rglob("*") if path.is_file())
    while time.time() - newest <= RACY_SECONDS + 0.2:
        time.sleep(0.1)


def _op_memo_run(project: Path, tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[str, set[str]]:
    return probe(tmp_path, "op", "gaussian", "-i", "in.zarr", *args, cwd=project, env=env)


def test_a_cached_op_is_answered_from_its_memo_until_an_input_or_a_param_changes(cached_op, tmp_path, prefect_api):
    """Issue 15: once the ledger confirmed an op up to date, the same request is answered from
    the op memo without zarr, SQLAlchemy or Prefect, and still recorded as an ``up_to_date`` run;
    a rewritten input chunk, a changed mask or another parameter is never answered from it."""
    project, env = cached_op, {"PREFECT_API_URL": prefect_api}
    _settle(project)
    text, heavy = _op_memo_run(project, tmp_path, "-o", "out.zarr", "-p", "sigma=1", env=env)  # the full check writes the memo
    assert "0 of 1 blocks computed, 1 already done" in text and "zarr" in heavy
    text, heavy = _op_memo_run(project, tmp_path, "-o", "out.zarr", "-p", "sigma=1", env=env)
    assert "0 of 1 blocks computed, 1 already done" in text
    assert not heavy & {"zarr", "sqlalchemy", "prefect", "alembic", "scipy"}, heavy
    run_id = text.rsplit("(run ", 1)[1].rstrip(")\n")
    row = json.loads(run_cli("runs", "show", run_id, "--json", cwd=project).stdout)
    full = json.loads(run_cli("runs", "show", str(int(run_id) - 1), "--json", cwd=project).stdout)  # the full check's run
    assert (row["flow"], row["status"], row["parameters"]) == ("op", "completed", full["parameters"])
    assert row["result"] == {**full["result"], "run_id": int(run_id)}
    assert (row["result"]["computed"], row["result"]["blocks"], row["result"]["up_to_date"]) == (0, 1, True)
    assert row["result"]["output"] == (project / "out.zarr").resolve().as_uri()
    assert f"run {run_id} (op): completed" in run_cli("status", run_id, cwd=project).stdout

    source = zarr.open_array(project / "in.zarr", mode="r+")
    source[0, 0, :4] = [9000, 9001, 9002, 9003]  # the one chunk rewritten: new bytes, new mtime
    text, heavy = _op_memo_run(project, tmp_path, "-o", "out.zarr", "-p", "sigma=1", env=env)
    assert "1 of 1 blocks computed" in text and "prefect" in heavy
    run_cli("op", "gaussian", "-i", "in.zarr", "-o", "fresh.zarr", "-p", "sigma=1", cwd=project, env=env)
    np.testing.assert_array_equal(zarr.open_array(project / "out.zarr", mode="r")[:], zarr.open_array(project / "fresh.zarr", mode="r")[:])

    text, heavy = _op_memo_run(project, tmp_path, "-o", "out.zarr", "-p", "sigma=2", env=env)
    assert "1 of 1 blocks computed" in text and "prefect" in heavy

    mask = zarr.create_array(project / "mask.zarr", shape=(8, 32, 32), chunks=(8, 32, 32), dtype="uint8")
    mask[:] = 1
    masked = ("-o", "masked.zarr", "--mask", "mask.zarr", "-p", "sigma=1")
    assert "1 of 1 blocks computed" in _op_memo_run(project, tmp_path, *masked, env=env)[0]
    _settle(project)
    assert "zarr" in _op_memo_run(project, tmp_path, *masked, env=env)[1]  # confirmed by the full check: the memo is written
    text, heavy = _op_memo_run(project, tmp_path, *masked, env=env)
    assert "0 of 1 blocks computed" in text and "zarr" not in heavy
    mask[0, 0, 0] = 0
    text, heavy = _op_memo_run(project, tmp_path, *masked, env=env)
    assert "1 of 1 blocks computed" in text and "prefect" in heavy


def test_the_memo_never_names_what_it_cannot_check(project):
    """S3 locations (no file stats to digest), a non-map op and Otsu's threshold (its key is
    known only once the whole input is read) always take the full check: no memo request."""
    from tierflow.configs import load_config
    from tierflow.flows.ops.quick import memo_request
    from tierflow.tasks.ops.registry import get_op

    config = load_config(str(project / "configs"))
    gaussian, threshold, label = get_op("gaussian"), get_op("threshold"), get_op("label")
    local = memo_request(gaussian, gaussian.resolve({"sigma": "1"}), "in.zarr", "out.zarr", {"sigma": "1"}, None, {}, None, config)
    assert local is not None and local.inputs == (str((Path.cwd() / "in.zarr").resolve()),)
    for where in ({"input": "s3://bucket/in.zarr"}, {"output": "s3://bucket/out.zarr"}, {"mask": "s3://bucket/mask.zarr"},
                  {"extras": {"mask": "s3://bucket/m.zarr"}}):
        request = {"input": "in.zarr", "output": "out.zarr", "extras": {}, "mask": None, **where}
        assert memo_request(gaussian, gaussian.resolve({"sigma": "1"}), request["input"], request["output"], {"sigma": "1"}, None,
                            request["extras"], request["mask"], config) is None, where
    assert memo_request(threshold, threshold.resolve({"value": "otsu"}), "in.zarr", "t.zarr", {"value": "otsu"}, None, {}, None,
                        config) is None
    assert memo_request(label, label.resolve({}), "in.zarr", "l.zarr", {}, None, {}, None, config) is None


# -- the hand-over to the warm executor (flows.runtime.executor_client) ------------------------------


def test_the_hand_over_imports_nothing_heavy_and_declines_what_it_does_not_take(tmp_path: Path) -> None:
    """With no executor listening, `delegate` says so (the command runs in its own process) having
    imported no Prefect, Typer, Rich, pydantic or SQLAlchemy; --debug, --help and read-only
    commands are never handed over."""
    code = ("import sys; from tierflow.flows.runtime.executor_client import delegate; "
            "answers = [delegate(a) for a in (['op', 'gaussian', '-i', 'a', '-o', 'b'], ['--debug', 'op'], ['op', '--help'], "
            "['status', '1'], ['--config', 'configs', 'run', 'pipeline'])]; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'prefect', 'typer', 'rich', 'pydantic', 'sqlalchemy', 'zarr'}); "
            "print(answers, heavy)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[None, None, None, None, None] []"


def test_which_commands_are_handed_over() -> None:
    from tierflow.flows.runtime.executor_client import command_of

    assert command_of(["op", "gaussian", "-i", "x"]) == (None, "op")
    assert command_of(["--config", "/p/configs", "run", "pipeline"]) == ("/p/configs", "run")
    assert command_of(["--config=/p/configs", "demo"]) == ("/p/configs", "demo")
    assert command_of(["--debug", "op"]) is None and command_of(["op", "--help"]) is None
    assert command_of(["--version"]) is None


def test_the_executors_name_changes_with_the_environment_and_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An executor serves only commands whose environment and code match those it imported."""
    from tierflow.flows.runtime import executor_client

    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    module = code / "pkg" / "mod.py"
    module.write_text("x = 1\n")
    monkeypatch.setattr(executor_client, "_code_roots", lambda: [str(code)])
    env = {"PATH": "/usr/bin", "PREFECT_API_URL": "", "TIERFLOW_PREFECT__PORT": "4200", "TERM": "xterm"}
    location = executor_client.location_key(tmp_path / "configs", tmp_path)
    name = executor_client.socket_name(location, env)
    assert name.startswith(b"\0tierflow-executor-") and executor_client.socket_name(location, dict(env)) == name
    assert executor_client.socket_name(location, {**env, "TERM": "dumb", "COLUMNS": "80"}) == name  # not shaping: same
    for changed in ({"PREFECT_API_URL": "http://other:4200/api"}, {"TIERFLOW_PREFECT__PORT": "4300"}, {"OMP_NUM_THREADS": "1"},
                    {"PYTHONPATH": "/elsewhere"}):
        assert executor_client.socket_name(location, {**env, **changed}) != name, changed
    assert executor_client.socket_name(executor_client.location_key(None, tmp_path), env) != name
    module.write_text("x = 2\n")  # an edited module (same size)
    os.utime(module, ns=(module.stat().st_atime_ns, module.stat().st_mtime_ns + 1_000_000))
    assert executor_client.socket_name(location, env) != name
    name = executor_client.socket_name(location, env)
    (code / "pkg" / "new.py").write_text("")
    assert executor_client.socket_name(location, env) != name
