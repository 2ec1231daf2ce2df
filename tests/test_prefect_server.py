"""The managed local Prefect server (``tierflow server ...``, ``tierflow ui``), for real.

One throwaway project for the module: two ``tierflow server start`` at once (its configured
port held by another program, so the server moves to a free one), then a CLI op run, a
``python -c`` API run and a small CLI pipeline run that all land in that one server, its UI
(headless chromium) listing them, and ``tierflow server stop``. The server's database is a
``prefect`` database in the project's embedded PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import zarr

from conftest import REPO_ROOT, TIERFLOW, require_service, run_cli
from tierflow.flows.runtime.prefect_server import ManagedPrefectServer
from tierflow.storage.db.embedded import EmbeddedPostgres

pytestmark = pytest.mark.timeout(900)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MANAGED = {"TIERFLOW_PREFECT__SERVER": "managed"}


@dataclass
class Project:
    root: Path
    state: Path
    held_port: int
    starts: list[dict]

    def status(self) -> dict:
        return json.loads(run_cli("server", "status", "--json", cwd=self.root, env=MANAGED).stdout)


def _hold_a_port() -> socket.socket:
    """A listening socket on a free loopback port: 'another program' on the configured port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def _start(root: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | MANAGED
    return subprocess.Popen([TIERFLOW, "server", "start", "--json"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("managed") / "project"
    (root / "configs").mkdir(parents=True)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    holder = _hold_a_port()
    held = holder.getsockname()[1]
    (root / "configs" / "tierflow.user.toml").write_text(f"[prefect]\nport = {held}\n")
    state = root / "var" / "tier4-ephemeral" / "state"
    try:
        began = time.monotonic()
        first, second = _start(root), _start(root)  # at once: one server
        outputs = [process.communicate(timeout=600) for process in (first, second)]
        print(f"two concurrent first starts (embedded PostgreSQL init + Prefect migrations): {time.monotonic() - began:.1f} s")
        for process, (out, err) in zip((first, second), outputs, strict=True):
            assert process.returncode == 0, f"tierflow server start exited {process.returncode}\n{out}\n{err}"
        yield Project(root, state, held, [json.loads(out) for out, _ in outputs])
    finally:
        ManagedPrefectServer(state / "prefect").stop()  # before the PostgreSQL that holds its database
        EmbeddedPostgres(state / "postgres").stop()
        holder.close()


def _flow_runs(api_url: str) -> list[dict]:
    response = httpx.post(f"{api_url}/flow_runs/filter", json={}, timeout=30)
    response.raise_for_status()
    return response.json()


def _flow_names(api_url: str) -> dict[str, str]:
    response = httpx.post(f"{api_url}/flows/filter", json={}, timeout=30)
    response.raise_for_status()
    return {flow["id"]: flow["name"] for flow in response.json()}


def _runs_page(tmp: Path, url: str, names: list[str], timeout: float = 240) -> str:
    """The UI's runs page rendered by headless chromium, reloaded until every name shows (a
    loaded machine answers the UI's API calls late)."""
    assert CHROMIUM is not None
    deadline = time.monotonic() + timeout
    while True:
        command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                   "--window-size=1400,2400", f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=30000",
                   "--dump-dom", f"{url}/runs"]
        browser = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            dom, _ = browser.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            dom, _ = browser.communicate()
        if all(name in dom for name in names) or time.monotonic() > deadline:
            return dom
        time.sleep(2)


def test_two_starts_at_once_make_one_server_on_a_free_port(managed: Project) -> None:
    pids = {start["pid"] for start in managed.starts}
    assert len(pids) == 1 and None not in pids
    (pid,) = pids
    state = json.loads((managed.state / "prefect" / "server.json").read_text())
    assert state["pid"] == pid and psutil.pid_exists(pid)
    # the configured port is another program's: a free one, kept in server.json
    assert state["port"] != managed.held_port and managed.starts[0]["url"] == f"http://127.0.0.1:{state['port']}"
    assert httpx.get(f"{managed.starts[0]['api_url']}/health", timeout=30).status_code == 200
    # its own session: not stopped by a Ctrl-C in the command that started it
    assert os.getsid(pid) == pid


def test_status_shows_the_server_with_its_database_masked(managed: Project) -> None:
    status = managed.status()
    assert status["running"] is True and status["pid"] == managed.starts[0]["pid"]
    assert status["database"] == "postgres" and status["database_url"].endswith("/prefect")
    assert ":***@" in status["database_url"]
    text = run_cli("server", "status", cwd=managed.root, env=MANAGED).stdout
    assert "running" in text and status["url"] in text
    password = (managed.state / "postgres" / "superuser.password").read_text().strip()
    server_files = (managed.state / "prefect" / "server.log").read_text() + (managed.state / "prefect" / "server.json").read_text()
    for shown in (json.dumps(status), text, server_files):
        assert password not in shown


def test_cli_api_and_pipeline_runs_land_in_it_and_the_ui_shows_them(managed: Project, raw_folder: Path, tmp_path: Path) -> None:
    api = managed.status()["api_url"]
    before = {run["id"] for run in _flow_runs(api)}
    volume = managed.root / "in.zarr"
    zarr.create_array(str(volume), shape=(8, 64, 64), chunks=(8, 64, 64), dtype="uint16")[:] = (
        np.random.default_rng(0).integers(0, 4000, (8, 64, 64), dtype=np.uint16))
    run_cli("op", "gaussian", "-i", str(volume), "-o", str(managed.root / "cli.zarr"), "-p", "sigma=1", "--json",
            cwd=managed.root, env=MANAGED)
    code = f"import tierflow; print(tierflow.run_op('gaussian', {str(volume)!r}, {str(managed.root / 'api.zarr')!r}, {{'sigma': 2}}))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_API_URL"))} | MANAGED
    done = subprocess.run([sys.executable, "-c", code], cwd=managed.root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_cli("run", "pipeline", "--dataset", "emb", "--raw", str(raw_folder), "--param", "block_shape=4,32,32",
            cwd=managed.root, env=MANAGED)

    flows = _flow_names(api)
    new = [run for run in _flow_runs(api) if run["id"] not in before]
    top = [run for run in new if run.get("parent_task_run_id") is None]
    assert sorted(flows[run["flow_id"]] for run in top) == ["op", "op", "pipeline"], new
    assert all(run["state_type"] == "COMPLETED" for run in top)
    assert managed.status()["pid"] == managed.starts[0]["pid"]  # every command reused the one server

    url = run_cli("ui", cwd=managed.root, env=MANAGED).stdout.strip()
    assert url == managed.status()["url"]
    require_service(CHROMIUM is not None, "headless chromium", "install Debian's chromium package")
    names = [run["name"] for run in top]
    dom = _runs_page(tmp_path, url, names)
    missing = [name for name in names if name not in dom]
    assert not missing, f"the UI at {url}/runs does not list {missing}"


IN_PROCESS = {**MANAGED, "TIERFLOW_PREFECT__EXECUTOR": "false"}
"""The same command in its own process: another environment, so the executor does not take it
(and ``executor = false`` starts none)."""


def _executor(managed: Project) -> dict:
    executor = managed.status()["executor"]
    assert executor is not None, "no warm executor runs beside the managed server"
    return executor


def _volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> np.ndarray:
    data = np.random.default_rng(7).integers(0, 4000, shape, dtype=np.uint16)
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16")[:] = data
    return data


def test_flow_commands_run_in_the_warm_executor_as_in_their_own_process(managed: Project) -> None:
    """`server start` left a warm executor; an op handed to it computes what SciPy computes on the
    whole volume, prints what the same op prints in its own process, and fails the same way."""
    from scipy import ndimage

    executor = _executor(managed)
    assert psutil.Process(executor["pid"]).cmdline()[1:3] == ["-m", "tierflow.flows.cli.executor"]
    data = _volume(managed.root / "exec-in.zarr", (16, 96, 80), (8, 48, 40))
    params = ["-p", "sigma=1.5", "-p", "mode=reflect", "-p", "truncate=4", "-p", "backend=scipy", "-p", "out_dtype=float32",
              "--block-shape", "8,48,40"]
    served = executor["served"]
    warm = run_cli("op", "gaussian", "-i", "exec-in.zarr", "-o", "warm.zarr", *params, "--json", cwd=managed.root, env=MANAGED)
    assert _executor(managed)["served"] == served + 1  # taken by the executor
    own = run_cli("op", "gaussian", "-i", "exec-in.zarr", "-o", "own.zarr", *params, "--json", cwd=managed.root, env=IN_PROCESS)
    assert _executor(managed)["served"] == served + 1  # not by the executor
    reference = ndimage.gaussian_filter(data.astype(np.float32), 1.5, mode="reflect", truncate=4.0)
    warm_out, own_out = (zarr.open_array(str(managed.root / name))[:] for name in ("warm.zarr", "own.zarr"))
    np.testing.assert_allclose(warm_out, reference, atol=1e-3)
    np.testing.assert_array_equal(warm_out, own_out)
    warm_json, own_json = json.loads(warm.stdout), json.loads(own.stdout)
    ignore = {"run_id", "output", "op_key", "flow_run_id", "started_at", "finished_at"}
    assert ({k: v for k, v in warm_json.items() if k not in ignore and "seconds" not in k}
            == {k: v for k, v in own_json.items() if k not in ignore and "seconds" not in k})
    assert warm_json["computed"] == warm_json["blocks"] == 8
    # the run's row says where it ran: the executor's child, not the `tierflow` process
    shown = json.loads(run_cli("runs", "show", str(warm_json["run_id"]), "--json", cwd=managed.root, env=MANAGED).stdout)
    assert shown["status"] == "completed"
    # bad input: the same message and exit status from either process, naming the file
    bad = [run_cli("op", "gaussian", "-i", "missing.zarr", "-o", "x.zarr", "-p", "sigma=1", cwd=managed.root, env=env, check=False)
           for env in (MANAGED, IN_PROCESS)]
    assert bad[0].returncode == bad[1].returncode == 1
    assert bad[0].stderr == bad[1].stderr and "missing.zarr" in bad[0].stderr
    assert _executor(managed)["served"] == served + 2


def _started_run(root: Path, before: set[int], timeout: float = 300) -> int:
    """The id of the op run that appeared since ``before``, once its row says ``running``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = json.loads(run_cli("runs", "list", "--json", cwd=root, env=MANAGED).stdout)
        new = [run for run in runs if run["id"] not in before and run["status"] == "running"]
        if new:
            return int(new[0]["id"])
        time.sleep(0.2)
    raise AssertionError("no op run got going")


def _run_ids(root: Path) -> set[int]:
    return {run["id"] for run in json.loads(run_cli("runs", "list", "--all", "--json", cwd=root, env=MANAGED).stdout)}


def _op_in_background(root: Path, output: str, preexec_fn=None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | MANAGED
    # 32 blocks of SciPy's gaussian with a wide kernel (~0.5 s each): seconds of work, so the
    # signals below reach a command that is still running (checked where it matters)
    return subprocess.Popen([TIERFLOW, "op", "gaussian", "-i", "long-in.zarr", "-o", output, "-p", "sigma=10", "-p", "backend=scipy",
                             "--block-shape", "32,64,64"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=preexec_fn)


def test_ctrl_c_and_sigkill_of_the_command_reach_its_process_in_the_executor(managed: Project) -> None:
    _volume(managed.root / "long-in.zarr", (64, 256, 256), (32, 64, 64))
    served = _executor(managed)["served"]
    before = _run_ids(managed.root)
    command = _op_in_background(managed.root, "interrupted.zarr")
    run_id = _started_run(managed.root, before)
    command.send_signal(signal.SIGINT)  # as Ctrl-C in its terminal, twice: the second ends the command at once
    try:
        command.wait(timeout=1.5)
    except subprocess.TimeoutExpired:
        command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=300)
    assert command.returncode == 130, err
    assert "SIGINT" in err and "without an exit status" not in err
    shown = json.loads(run_cli("runs", "show", str(run_id), "--json", cwd=managed.root, env=MANAGED).stdout)
    assert shown["status"] == "cancelled" and "SIGINT" in (shown.get("message") or ""), shown
    assert _executor(managed)["served"] == served + 1

    before = _run_ids(managed.root)
    command = _op_in_background(managed.root, "killed.zarr")
    run_id = _started_run(managed.root, before)
    executor = psutil.Process(_executor(managed)["pid"])
    children = executor.children()
    assert children, "the op runs in a child of the executor"
    command.kill()
    command.communicate(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=120)
    assert not alive, "the command's process in the executor outlived its killed `tierflow` process"
    status = json.loads(run_cli("status", str(run_id), "--json", cwd=managed.root, env=MANAGED).stdout)
    assert status["status"] == "crashed", status
    left = 32 - status["stages"].get("gaussian", {}).get("done", 0)  # no stage row before its first batch ends
    resumed = json.loads(run_cli("resume", str(run_id), "--json", cwd=managed.root, env=MANAGED).stdout)
    assert resumed["computed"] == left > 0 and resumed["blocks"] == 32  # only what the killed run left

    # under nohup (SIGHUP ignored) a hang-up does not end the command, and files get its umask
    def nohup_umask_077() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.umask(0o077)

    served = _executor(managed)["served"]
    before = _run_ids(managed.root)
    command = _op_in_background(managed.root, "hung-up.zarr", preexec_fn=nohup_umask_077)
    run_id = _started_run(managed.root, before)
    assert command.poll() is None, "the op ended before its hang-up: give it more work"
    command.send_signal(signal.SIGHUP)
    stages = json.loads(run_cli("status", str(run_id), "--json", cwd=managed.root, env=MANAGED).stdout)["stages"]
    done_then = stages.get("gaussian", {}).get("done", 0)
    _, err = command.communicate(timeout=600)
    assert command.returncode == 0, err
    assert json.loads(run_cli("runs", "show", str(run_id), "--json", cwd=managed.root, env=MANAGED).stdout)["status"] == "completed"
    assert done_then < 32, "every block was done by the time of the hang-up: give the op more work"
    assert _executor(managed)["served"] == served + 1
    modes = {oct(path.stat().st_mode & 0o777) for path in (managed.root / "hung-up.zarr").rglob("*")}
    assert modes <= {oct(0o600), oct(0o700)}, modes


def test_the_executor_serves_only_its_own_user(managed: Project) -> None:
    """Its socket is in the abstract namespace (no file permissions): SO_PEERCRED decides."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    config_dir = managed.root / "configs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | MANAGED
    code = ("import os, socket, sys; from tierflow.flows.runtime.executor_client import read_message, send_message; "
            "name = bytes.fromhex(sys.argv[1]); os.setgid(65534); os.setuid(65534); "
            "s = socket.socket(socket.AF_UNIX); s.connect(name); "
            "from tierflow.flows.runtime.executor_client import process_settings; "
            "request = {'argv': ['op', '--help'], 'cwd': '/', 'env': {}, 'encoding': [], **process_settings()}; "
            "exec('try:\\n send_message(s, request, [0, 1, 2]); print(read_message(s)[0])\\n"
            "except (ConnectionResetError, BrokenPipeError): print(None)')")
    served = _executor(managed)["served"]
    # the name as the `tierflow` processes of this environment compute it
    probe = subprocess.run([sys.executable, "-c", "import sys; from tierflow.flows.runtime.executor_client import location_key, "
                            "socket_name; from tierflow.flows.runtime.launch_env import launch_environment; from pathlib import Path; "
                            "print(socket_name(location_key(Path(sys.argv[1]), Path(sys.argv[2])), launch_environment()).hex())",
                            str(config_dir), str(managed.root)], env=env, capture_output=True, text=True, timeout=60, check=True)
    name = probe.stdout.strip()
    own = subprocess.run([sys.executable, "-c", code.replace("os.setgid(65534); os.setuid(65534); ", ""), name], env=env,
                         capture_output=True, text=True, timeout=120)
    assert "'pid'" in own.stdout, (own.stdout, own.stderr)  # the name is right: its own user is served
    assert _executor(managed)["served"] == served + 1
    other = subprocess.run([sys.executable, "-c", code, name], env=env, capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "None", (other.stdout, other.stderr)  # connection closed, nothing run
    assert _executor(managed)["served"] == served + 1

    # the other way round: another user squats the name of an executor that is not running
    # another environment (another name: no executor of ours there; and none is started for it)
    squatted = env | {"PREFECT_CLIENT_MAX_RETRIES": "4", "TIERFLOW_PREFECT__EXECUTOR": "false"}
    probe = subprocess.run([sys.executable, "-c", "import sys; from tierflow.flows.runtime.executor_client import location_key, "
                            "socket_name; from tierflow.flows.runtime.launch_env import launch_environment; from pathlib import Path; "
                            "print(socket_name(location_key(Path(sys.argv[1]), Path(sys.argv[2])), launch_environment()).hex())",
                            str(config_dir), str(managed.root)], env=squatted, capture_output=True, text=True, timeout=60, check=True)
    squat = ("import os, socket, sys; from tierflow.flows.runtime.executor_client import send_message; os.setgid(65534); "
             "os.setuid(65534); s = socket.socket(socket.AF_UNIX); s.bind(bytes.fromhex(sys.argv[1])); s.listen(); "
             "print('ready', flush=True); "
             "c, _ = s.accept(); c.recv(1 << 20); send_message(c, {'pid': 1}); send_message(c, {'exit': 0})")
    squatter = subprocess.Popen([sys.executable, "-c", squat, probe.stdout.strip()], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline().strip() == "ready"
        done = run_cli("op", "gaussian", "-i", "exec-in.zarr", "-o", "not-squatted.zarr", "-p", "sigma=1", cwd=managed.root,
                       env=squatted)
        assert "held by another user (uid 65534)" in done.stderr
        assert zarr.open_array(str(managed.root / "not-squatted.zarr")).shape == (16, 96, 80)  # computed here, not there
    finally:
        squatter.kill()
        squatter.wait()


def test_executor_false_in_the_configuration_ends_the_running_executor(managed: Project) -> None:
    user_toml = managed.root / "configs" / "tierflow.user.toml"
    kept = user_toml.read_text()
    executor = psutil.Process(_executor(managed)["pid"])
    user_toml.write_text(kept.replace("[prefect]\n", "[prefect]\nexecutor = false\n"))
    try:
        done = run_cli("op", "gaussian", "-i", "exec-in.zarr", "-o", "turned-off.zarr", "-p", "sigma=1", "--json", cwd=managed.root,
                       env=MANAGED)
        assert json.loads(done.stdout)["computed"] == json.loads(done.stdout)["blocks"]  # run in its own process
        _, alive = psutil.wait_procs([executor], timeout=60)
        assert not alive, "the executor runs on with [prefect].executor = false"
        assert managed.status()["executor"] is None
    finally:
        user_toml.write_text(kept)
    run_cli("server", "start", cwd=managed.root, env=MANAGED)  # a fresh one, for what follows
    assert _executor(managed)["pid"] != executor.pid


def test_stop_stops_it_and_a_stale_state_file_is_not_running(managed: Project) -> None:
    status = managed.status()
    pid, port = status["pid"], status["port"]
    executor = _executor(managed)
    out = run_cli("server", "stop", cwd=managed.root, env=MANAGED).stdout
    assert f"pid {pid}" in out and f"warm executor (pid {executor['pid']})" in out
    assert not psutil.pid_exists(executor["pid"]) or psutil.Process(executor["pid"]).status() == psutil.STATUS_ZOMBIE
    assert not (managed.state / "prefect" / "executor.json").exists() and managed.status()["executor"] is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens there any more
    assert managed.status()["running"] is False
    assert "not running" in run_cli("server", "stop", cwd=managed.root, env=MANAGED).stdout

    gone = subprocess.Popen(["true"])
    gone.wait()
    state_file = managed.state / "prefect" / "server.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "pid": gone.pid, "create_time": None}))
    assert managed.status()["running"] is False


def test_a_shared_server_in_api_url_means_no_managed_server(project: Path) -> None:
    (project / "configs" / "tierflow.user.toml").write_text('[prefect]\napi_url = "http://prefect.lab.invalid:4200/api"\n')
    assert run_cli("ui", cwd=project, env=MANAGED).stdout.strip() == "http://prefect.lab.invalid:4200"
    refused = run_cli("server", "start", cwd=project, env=MANAGED, check=False)
    assert refused.returncode == 1 and "[prefect].api_url" in refused.stderr and "tierflow.user.toml" in refused.stderr
    assert not (project / "var" / "tier4-ephemeral" / "state" / "prefect").exists()  # nothing was started


def test_do_not_track_follows_analytics_enabled_and_the_users_own_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from tierflow.configs import load_config
    from tierflow.flows.runtime import prefect_env

    monkeypatch.setattr(prefect_env, "_SET_HERE", set())
    for name in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED"):  # as in a fresh process (restored after)
        monkeypatch.delenv(name, raising=False)
    prefect_env.configure_prefect(load_config(REPO_ROOT / "configs"))
    assert os.environ["DO_NOT_TRACK"] == "1"  # analytics_enabled = false, the default
    monkeypatch.setenv("TIERFLOW_PREFECT__ANALYTICS_ENABLED", "true")
    prefect_env.configure_prefect(load_config(REPO_ROOT / "configs"))
    assert "DO_NOT_TRACK" not in os.environ and os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # the user's own
    monkeypatch.delenv("TIERFLOW_PREFECT__ANALYTICS_ENABLED")
    prefect_env.configure_prefect(load_config(REPO_ROOT / "configs"))
    assert os.environ["DO_NOT_TRACK"] == "0"
