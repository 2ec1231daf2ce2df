"""Deployments on a real SLURM cluster, as a lab runs them.

A real ``prefect server start`` on a free port, the single-node SLURM cluster of
``.ci/slurm-up.sh``, a checkout whose ``configs/tierflow.user.toml`` points at both, then the
commands of the README: ``tierflow deploy``, ``tierflow worker slurm`` in the background,
``prefect deployment run`` and ``prefect flow-run cancel``. Nothing is faked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from conftest import REPO_ROOT, TIERFLOW, require_service, run_cli
from prefect_servers import PREFECT, clean_env, make_checkout
from prefect_servers import prefect_server as start_prefect_server

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def slurm() -> None:
    installed = all(shutil.which(tool) for tool in ("sbatch", "squeue", "scontrol", "scancel", "slurmctld", "slurmd", "munged"))
    require_service(installed, "SLURM", "install it with `bash .ci/install-slurm.sh` (root)")
    up = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=120)
    require_service(up.returncode == 0, "a running SLURM cluster", f"`bash .ci/slurm-up.sh` said: {up.stderr.strip()}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free port (its own SQLite database), as a lab would run it."""
    with start_prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory, prefect_server: str, slurm: None) -> Iterator[Path]:
    """A checkout (the code linked in, configs copied) with a user overlay for the server and
    small SLURM jobs, deployed with `tierflow deploy`."""
    root = make_checkout(tmp_path_factory.mktemp("lab") / "tierflow", prefect_server,
                         '[slurm]\nflow_run_mem = "1G"\nflow_run_time = "00:15:00"\npool_concurrency = 4\n'
                         'cores_per_job = 1\nmemory_per_job = "1GB"\nwalltime = "00:15:00"\nmax_jobs = 2\n')
    run_cli("db", "upgrade", cwd=root)  # the embedded server belongs to the test, not to a job
    deployed = run_cli("deploy", cwd=root)
    assert "tierflow-slurm" in deployed.stdout
    yield root
    run_cli("db", "stop", cwd=root, check=False)


class Worker:
    """`tierflow worker slurm` in the background, restartable; its output goes to a log file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_path = root / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen([TIERFLOW, "worker", "slurm"], cwd=self.root, env=clean_env(PREFECT_WORKER_QUERY_SECONDS="2"),
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started_before = self.log().count("started!")
        deadline = time.monotonic() + 60
        while self.log().count("started!") <= started_before:
            assert self.process.poll() is None and time.monotonic() < deadline, f"worker did not start:\n{self.log()[-3000:]}"
            time.sleep(0.5)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def worker(checkout: Path) -> Iterator[Worker]:
    handle = Worker(checkout)
    handle.start()
    yield handle
    handle.stop()


def deployment_run(root: Path, deployment: str, *args: str) -> str:
    """`prefect deployment run NAME ...` (stock Prefect); returns the flow run id."""
    done = subprocess.run([PREFECT, "deployment", "run", deployment, *args], cwd=root, capture_output=True, text=True,
                          env=clean_env(PREFECT_API_URL=_api(root)), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout).group(1)


def _api(root: Path) -> str:
    return re.search(r'api_url = "([^"]+)"', (root / "configs" / "tierflow.user.toml").read_text()).group(1)


def flow_run(root: Path, flow_run_id: str) -> dict:
    return httpx.get(f"{_api(root)}/flow_runs/{flow_run_id}", timeout=10).json()


def wait_for(root: Path, flow_run_id: str, states: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = flow_run(root, flow_run_id)
        if run["state_type"] in states:
            return run
        assert time.monotonic() < deadline, f"flow run stayed {run['state_type']} ({run['state']['message']})"
        time.sleep(1)


def wait_for_message(root: Path, run_id: str, words: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while words not in (final := flow_run(root, run_id))["state"]["message"]:
        assert time.monotonic() < deadline, f"the run's state never said {words!r}: {final['state']}"
        time.sleep(1)
    return final


def scontrol(job_id: str) -> dict[str, str]:
    from tierflow.flows.slurm.scheduler import parse_scontrol_job

    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True)
    return parse_scontrol_job(done.stdout)


def in_squeue(job_id: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
    return job_id in done.stdout.split()


def wait_job(job_id: str, state: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while scontrol(job_id).get("JobState", "").split()[0] != state:
        assert time.monotonic() < deadline, f"SLURM job {job_id} never reached {state}: {scontrol(job_id).get('JobState')}"
        time.sleep(0.5)


def job_of(root: Path, flow_run_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not (flow_run(root, flow_run_id).get("infrastructure_pid") or ""):
        assert time.monotonic() < deadline, "the worker never reported a SLURM job id"
        time.sleep(0.5)
    return flow_run(root, flow_run_id)["infrastructure_pid"]


def test_deploy_creates_both_pools_every_deployment_and_the_nightly_schedule(checkout, prefect_server):
    api = prefect_server
    pools = {name: httpx.get(f"{api}/work_pools/{name}", timeout=10).json() for name in ("tierflow-local", "tierflow-slurm")}
    assert pools["tierflow-local"]["type"] == "process"
    assert pools["tierflow-slurm"]["type"] == "tierflow-slurm"
    assert pools["tierflow-slurm"]["concurrency_limit"] == 4  # [slurm].pool_concurrency
    slurm_form = pools["tierflow-slurm"]["base_job_template"]["variables"]["properties"]
    assert {"partition", "time", "mem", "cpus_per_task", "gpus", "account", "qos", "constraint", "extra_directives",
            "preamble", "python", "log_dir"} <= set(slurm_form)
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    names = {d["name"]: d for d in deployments}
    assert {"pipeline-local", "pipeline-slurm", "ingest-local", "ingest-slurm", "promote-local", "promote-slurm",
            "retention-nightly", "retention-slurm", "check-local", "check-slurm"} <= set(names)
    assert all("tierflow" in d["tags"] for d in names.values())
    nightly = names["retention-nightly"]["schedules"]
    assert nightly and nightly[0]["schedule"]["cron"] == "30 2 * * *" and nightly[0]["active"]
    # stock Prefect applies the same file
    stock = subprocess.run([PREFECT, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all"], cwd=checkout,
                           env=clean_env(PREFECT_API_URL=api, TIERFLOW_HOME=str(checkout)), capture_output=True, text=True, timeout=300)
    assert stock.returncode == 0, stock.stdout[-2000:] + stock.stderr[-2000:]


def test_a_deployment_runs_as_a_slurm_job_and_its_results_land_in_postgresql(checkout, worker):
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.models import Run

    run_id = deployment_run(checkout, "cluster-check/check-slurm")
    run = wait_for(checkout, run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
    assert run["state_type"] == "COMPLETED", run["state"]["message"]
    job_id = run["infrastructure_pid"]
    wait_job(job_id, "COMPLETED", timeout=60)  # the engine reports the run, then its process exits
    job = scontrol(job_id)
    assert job["JobName"] == f"prefect-{run_id}" and job["ExitCode"] == "0:0"
    # job variables left empty took the site defaults of [slurm] in the user overlay
    assert job["TimeLimit"] == "00:15:00" and job["MinMemoryNode"] == "1G"
    db = open_database(load_db_config(str(checkout / "configs")))
    with db.session() as session:
        row = session.scalars(select(Run).where(Run.flow_name == "cluster-check")).all()
    recorded = [r for r in row if str(r.flow_run_id) == run_id]
    assert len(recorded) == 1 and recorded[0].status == "completed"
    assert recorded[0].parameters["slurm_job_id"] == job_id  # the flow ran inside that job
    db.dispose()
    log = Path(checkout / "var" / "tier4-ephemeral" / "logs" / "slurm" / f"prefect-{run_id}-{job_id}.log")
    assert f"SLURM job {job_id}" in log.read_text()


def test_cancelling_a_running_or_a_queued_run_removes_its_job(checkout, worker):
    running = deployment_run(checkout, "cluster-check/check-slurm", "--param", "seconds=300")
    # a job that cannot start for an hour: cancelled while it waits in the queue
    queued = deployment_run(checkout, "cluster-check/check-slurm", "--param", "seconds=1",
                            "--job-variable", f"extra_directives={json.dumps(['--begin=now+3600'])}")
    running_job, queued_job = job_of(checkout, running), job_of(checkout, queued)
    wait_job(running_job, "RUNNING")
    wait_for(checkout, running, {"RUNNING"})
    assert scontrol(queued_job)["JobState"] == "PENDING"
    for run_id in (running, queued):
        done = subprocess.run([PREFECT, "flow-run", "cancel", run_id], capture_output=True, text=True,
                              env=clean_env(PREFECT_API_URL=_api(checkout)), timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    for run_id, job_id in ((running, running_job), (queued, queued_job)):
        final = wait_for(checkout, run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, timeout=120)
        assert final["state_type"] == "CANCELLED", final["state"]
        deadline = time.monotonic() + 60
        while in_squeue(job_id):
            assert time.monotonic() < deadline, f"job {job_id} is still in squeue after its run was cancelled"
            time.sleep(1)
        # the queued job can only go by scancel; the running one is ended either by scancel or,
        # when Prefect's runner inside the job sees the cancellation first, by the flow process
        # stopping itself (the job then ends COMPLETED, exit 0): either way nothing keeps running
        allowed = {"CANCELLED"} if job_id == queued_job else {"CANCELLED", "COMPLETED"}
        assert scontrol(job_id)["JobState"] in allowed, (job_id, scontrol(job_id))


def test_a_restarted_worker_finds_its_jobs_and_reports_how_they_ended(checkout, worker):
    finishing = deployment_run(checkout, "cluster-check/check-slurm", "--param", "seconds=15")
    killed = deployment_run(checkout, "cluster-check/check-slurm", "--param", "seconds=300")
    finishing_job, killed_job = job_of(checkout, finishing), job_of(checkout, killed)
    wait_job(finishing_job, "RUNNING")
    wait_job(killed_job, "RUNNING")
    worker.kill()
    # while no worker watches: an administrator cancels one job; the other one ends by itself
    subprocess.run(["scancel", killed_job], check=True)
    wait_job(killed_job, "CANCELLED")
    # the engine in the job often reports Crashed on scancel's SIGTERM before it dies; whether it
    # gets there first depends on the load, so the test makes it so (the one injected fault: the
    # state the engine would have sent)
    crashed = {"state": {"type": "CRASHED", "name": "Crashed", "message": "Execution was aborted by a termination signal."},
               "force": True}
    assert httpx.post(f"{_api(checkout)}/flow_runs/{killed}/set_state", json=crashed, timeout=10).json()["status"] == "ACCEPT"
    worker.start()
    done = wait_for(checkout, finishing, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout=120)
    assert done["state_type"] == "COMPLETED"
    # the engine in the job may report Crashed on scancel's SIGTERM before it dies (a race the
    # load decides): the restarted worker asks SLURM and records what happened, Cancelled
    cancelled = wait_for(checkout, killed, {"CANCELLED", "FAILED", "COMPLETED"}, timeout=180)
    assert cancelled["state_type"] == "CANCELLED", cancelled["state"]
    assert f"SLURM job {killed_job} was cancelled outside Prefect" in cancelled["state"]["message"]
    logs = httpx.post(f"{_api(checkout)}/logs/filter", json={"logs": {"flow_run_id": {"any_": [killed]}}}, timeout=10).json()
    assert any(f"follows SLURM job {killed_job} again" in entry["message"] or "the flow had reported Crashed" in entry["message"]
               for entry in logs)


def test_a_job_killed_at_its_time_limit_is_reported_as_such_not_as_success(checkout, worker):
    # Slurm 22.05 reports this job's exit code as 0:15; only its state says TIMEOUT
    run_id = deployment_run(checkout, "cluster-check/check-slurm", "--param", "seconds=600", "--param", "database=false",
                            "--job-variable", "time=00:01:00")
    job_id = job_of(checkout, run_id)
    wait_for(checkout, run_id, {"CRASHED", "FAILED", "COMPLETED", "CANCELLED"}, timeout=300)
    wait_job(job_id, "TIMEOUT", timeout=60)
    assert scontrol(job_id)["ExitCode"] == "0:15"
    # the engine in the job saw only SIGTERM; the worker then reports what SLURM says
    final = wait_for_message(checkout, run_id, "time limit")
    assert final["state_type"] == "CRASHED" and f"SLURM job {job_id}" in final["state"]["message"]
    # on a loaded node the engine's own Crashed report (forced) can reach the API after the
    # worker's: the worker restores SLURM's account. The one injected fault: the late report, sent
    # as the engine sends it (CI saw this race once; it cannot be produced on demand)
    late = {"state": {"type": "CRASHED", "name": "Crashed", "message": "Execution was aborted by a termination signal."},
            "force": True}
    assert httpx.post(f"{_api(checkout)}/flow_runs/{run_id}/set_state", json=late, timeout=10).json()["status"] == "ACCEPT"
    restored = wait_for_message(checkout, run_id, "time limit")
    assert restored["state_type"] == "CRASHED" and f"SLURM job {job_id}" in restored["state"]["message"]
    assert "aborted by a termination signal" in restored["state"]["message"], restored["state"]

