"""The ``tierflow-slurm`` Prefect worker type: each flow run is one ``sbatch`` job.

Registered through the ``prefect.collections`` entry point, so the stock commands find it::

    prefect work-pool create tierflow-slurm --type tierflow-slurm
    prefect worker start --pool tierflow-slurm --type tierflow-slurm

(The type is not called ``slurm``: the ``prefect-slurm`` package registers that name for its
REST-API worker, and a later registration silently wins.)

The worker runs where the SLURM client commands are (a login node). For every flow run it
writes a batch script under Tier 4 (``logs/slurm/``), submits it with ``sbatch`` and reports
the job id as the run's infrastructure id; then it follows the job (``scontrol``, ``sacct``,
``squeue``) until it ends and reports SLURM's end state with its reason: TIMEOUT,
OUT_OF_MEMORY, NODE_FAIL, PREEMPTED and FAILED become Crashed (or Cancelled for CANCELLED)
unless the flow already reported a final state itself. A Prefect cancellation becomes
``scancel`` — also for a job still waiting in the queue, which Prefect alone would leave
"Cancelling" until the job starts. A restarted worker adopts the runs of its pool that have a
job (the job name carries the flow run id) and follows them to their end.

Site defaults for empty job variables come from ``[slurm]`` in ``configs/`` (a user overlay
such as ``configs/tierflow.user.toml``), read when the worker prepares each run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
from pydantic import Field
from prefect.client.schemas.objects import StateType
from prefect.exceptions import InfrastructureNotFound, ObjectNotFound
from prefect.states import Cancelled, Crashed
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

from tierflow.flows.slurm.outcomes import job_outcome
from tierflow.flows.slurm.scheduler import SlurmJob, SlurmScheduler
from tierflow.flows.slurm.script import SlurmJobSpec, render_batch_script

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.client.schemas.objects import Flow as APIFlow

__all__ = ["WORKER_TYPE", "SlurmJobConfiguration", "SlurmVariables", "SlurmWorker", "SlurmWorkerResult", "job_name"]

WORKER_TYPE = "tierflow-slurm"


def job_name(flow_run_id: UUID | str) -> str:
    """The SLURM job name of a flow run's job: how a restarted worker recognises its jobs."""
    return f"prefect-{flow_run_id}"


class SlurmJobConfiguration(BaseJobConfiguration):
    """One flow run's job, resolved from the pool's template, the deployment's job variables and
    the site defaults (``[slurm]``)."""

    partition: str = Field(default="")
    time: str = Field(default="")
    mem: str = Field(default="")
    cpus_per_task: int | None = Field(default=None)
    gpus: str = Field(default="")
    account: str = Field(default="")
    qos: str = Field(default="")
    constraint: str = Field(default="")
    extra_directives: list[str] = Field(default_factory=list)
    preamble: str = Field(default="")
    python: str = Field(default="")
    log_dir: str = Field(default="")
    working_dir: str = Field(default="")
    poll_seconds: float = Field(default=5.0)

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        configured_command = self.command  # the base class fills in a bare `prefect ...` when empty
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        site = _site_defaults()
        for key, value in site.items():
            if key in type(self).model_fields and getattr(self, key) in ("", None, []):
                setattr(self, key, value)
        # without these the job would run against a throw-away local server the UI never sees
        self.env["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"
        if site.get("home") and not self.env.get("TIERFLOW_HOME"):
            self.env["TIERFLOW_HOME"] = site["home"]
        # the Prefect engine of the Python that has tierflow (a bare `prefect` may not be on the
        # compute node's PATH)
        self.command = configured_command or f"{self.python or sys.executable} -m prefect flow-run execute"


def _site_defaults() -> dict[str, Any]:
    """Empty job variables filled from tierflow's ``[slurm]`` (and Tier 4 for the logs)."""
    try:
        from tierflow.configs import load_config

        config = load_config()
    except Exception:  # noqa: BLE001 - no tierflow configs where the worker runs: stock defaults
        return {}
    settings = config.slurm
    config_dir = config.meta.config_dir
    return {
        "partition": settings.partition,
        "account": settings.account,
        "qos": settings.qos,
        "constraint": settings.constraint,
        "time": settings.flow_run_time,
        "mem": settings.flow_run_mem,
        "cpus_per_task": settings.flow_run_cpus,
        "extra_directives": list(settings.job_directives),
        "preamble": settings.preamble,
        "python": settings.python,
        "log_dir": str(Path(config.tier_root("ephemeral")) / "logs" / "slurm"),
        "home": str(Path(config_dir).parent) if config_dir else "",
    }


class SlurmVariables(BaseVariables):
    """The job variables shown in the work pool's form in the Prefect UI."""

    partition: str = Field(default="", description="sbatch --partition (empty: [slurm].partition, else the cluster's default)")
    time: str = Field(default="", description="sbatch --time, e.g. 02:00:00 (empty: [slurm].flow_run_time)")
    mem: str = Field(default="", description="sbatch --mem, e.g. 8G (empty: [slurm].flow_run_mem)")
    cpus_per_task: int | None = Field(default=None, description="sbatch --cpus-per-task (empty: [slurm].flow_run_cpus)")
    gpus: str = Field(default="", description="sbatch --gpus, e.g. 1 or a100:2")
    account: str = Field(default="", description="sbatch --account (empty: [slurm].account)")
    qos: str = Field(default="", description="sbatch --qos (empty: [slurm].qos)")
    constraint: str = Field(default="", description="sbatch --constraint, e.g. skylake")
    extra_directives: list[str] = Field(default_factory=list, description="More #SBATCH lines, e.g. --exclusive")
    preamble: str = Field(default="", description="Shell lines run before the flow, e.g. module load python/3.11")
    python: str = Field(default="", description="Python on the compute nodes (empty: [slurm].python, else the worker's)")
    log_dir: str = Field(default="", description="Folder of the job scripts and logs (empty: Tier 4 logs/slurm)")
    working_dir: str = Field(default="", description="Working directory of the job (empty: the submit directory)")
    poll_seconds: float = Field(default=5.0, ge=0.5, description="Seconds between checks of the job's state")


class SlurmWorkerResult(BaseWorkerResult):
    """The job id (``identifier``) and the status code derived from SLURM's end state."""


class SlurmWorker(BaseWorker[SlurmJobConfiguration, SlurmVariables, SlurmWorkerResult]):
    """Runs each flow run of its pool as a SLURM job (see the module docstring)."""

    type = WORKER_TYPE
    job_configuration = SlurmJobConfiguration
    job_configuration_variables = SlurmVariables
    _description = "Runs each flow run as a SLURM batch job (sbatch), follows it with scontrol/sacct/squeue, cancels with scancel."
    _display_name = "SLURM (tierflow)"
    _documentation_url = "https://github.com/tierflow/tierflow#running-on-a-slurm-cluster"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheduler = SlurmScheduler()
        self._followed: set[UUID] = set()
        self._reconciled: set[UUID] = set()
        """Ids of the Crashed states already compared with SLURM's account (each is looked at once)."""

    async def run(self, flow_run: FlowRun, configuration: SlurmJobConfiguration,
                  task_status: anyio.abc.TaskStatus[str] | None = None) -> SlurmWorkerResult:
        logger = self.get_flow_run_logger(flow_run)
        log_dir = Path(configuration.log_dir or Path.cwd() / "slurm-logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        name = job_name(flow_run.id)
        script = render_batch_script(SlurmJobSpec(
            name=name, comment=f"prefect-flow-run={flow_run.id};pool={self._work_pool_name}",
            output=str(log_dir / f"{name}-%j.log"), command=configuration.command or "", working_dir=configuration.working_dir,
            partition=configuration.partition, time=configuration.time, mem=configuration.mem,
            cpus_per_task=configuration.cpus_per_task, gpus=configuration.gpus, account=configuration.account,
            qos=configuration.qos, constraint=configuration.constraint, extra_directives=configuration.extra_directives,
            preamble=configuration.preamble,
        ))
        script_path = log_dir / f"{name}.sbatch"
        script_path.write_text(script)
        env = {**os.environ, **{key: value for key, value in configuration.env.items() if value is not None}}
        self._followed.add(flow_run.id)
        try:
            job_id = await anyio.to_thread.run_sync(lambda: self.scheduler.submit(str(script_path), env=env))
            logger.info(f"Submitted as SLURM job {job_id} (script {script_path}, log {log_dir / f'{name}-{job_id}.log'})")
            if task_status is not None:
                task_status.started(job_id)
            return await self._follow(flow_run.id, job_id, configuration.poll_seconds)
        finally:
            self._followed.discard(flow_run.id)

    async def _follow(self, flow_run_id: UUID, job_id: str, poll_seconds: float) -> SlurmWorkerResult:
        """Poll the job until it ends; turn a Prefect cancellation into ``scancel``; report SLURM's
        end state on the flow run unless the flow reported a final state itself."""
        cancel_requested = False
        missing_polls = failed_polls = 0
        while True:
            try:
                job = await anyio.to_thread.run_sync(self.scheduler.job, job_id)
            except Exception as exc:  # noqa: BLE001 - a slow or restarting controller: ask again next poll
                failed_polls += 1
                self._logger.warning(f"SLURM job {job_id}: could not read its state ({exc}); poll {failed_polls}")
                if failed_polls >= 60:
                    raise
                await anyio.sleep(poll_seconds)
                continue
            failed_polls = 0
            if job is not None and job.ended:
                break
            if job is None:
                missing_polls += 1
                if missing_polls >= 3:  # forgotten by every tool: it has ended, how is unknown
                    break
            else:
                missing_polls = 0
                try:
                    flow_run = await self.client.read_flow_run(flow_run_id)
                except ObjectNotFound:  # the run was deleted: its job has no purpose left
                    await anyio.to_thread.run_sync(self.scheduler.cancel, job_id)
                    return SlurmWorkerResult(identifier=job_id, status_code=0)
                except Exception as exc:  # noqa: BLE001 - the API is briefly away: the job goes on
                    self._logger.warning(f"Flow run {flow_run_id}: could not read its state ({exc})")
                    await anyio.sleep(poll_seconds)
                    continue
                if flow_run.state is not None and flow_run.state.type == StateType.CANCELLING and not cancel_requested:
                    self._logger.info(f"Flow run {flow_run_id} is cancelling: scancel {job_id} ({job.state})")
                    await anyio.to_thread.run_sync(self.scheduler.cancel, job_id)
                    cancel_requested = True
            await anyio.sleep(poll_seconds)
        return await self._report_end(flow_run_id, job_id, job, cancel_requested)

    async def _report_end(self, flow_run_id: UUID, job_id: str, job: SlurmJob | None, cancel_requested: bool) -> SlurmWorkerResult:
        outcome = job_outcome(job_id, job, cancel_requested=cancel_requested)
        try:
            flow_run = await self.client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return SlurmWorkerResult(identifier=job_id, status_code=outcome.status_code)
        logger = self.get_flow_run_logger(flow_run)
        final = flow_run.state is not None and flow_run.state.is_final()
        if outcome.state == "Cancelled" and (not final or cancel_requested):
            await self.client.set_flow_run_state(flow_run_id, Cancelled(message=outcome.message), force=True)
            logger.info(outcome.message)
        elif outcome.state == "Crashed" and not final:
            await self.client.set_flow_run_state(flow_run_id, Crashed(message=outcome.message), force=False)
            logger.error(outcome.message)
        elif outcome.state == "Crashed" and flow_run.state.is_crashed():
            # the engine saw only a signal ("aborted by a termination signal"): SLURM knows why
            message = f"{outcome.message} (the flow run said: {flow_run.state.message})"
            await self.client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            logger.error(message)
        elif outcome.state == "Crashed":
            logger.warning(f"{outcome.message} (the flow had reported {flow_run.state.name})")
        return SlurmWorkerResult(identifier=job_id, status_code=outcome.status_code)

    async def kill_infrastructure(self, infrastructure_pid: str, configuration: SlurmJobConfiguration, grace_seconds: int = 30) -> None:
        """``scancel`` the job (called by Prefect for a run cancelled before its job started)."""
        job = await anyio.to_thread.run_sync(self.scheduler.job, infrastructure_pid)
        if job is None or job.ended:
            raise InfrastructureNotFound(f"SLURM job {infrastructure_pid} is not queued or running")
        await anyio.to_thread.run_sync(self.scheduler.cancel, infrastructure_pid)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        await self._adopt_running_jobs()
        await self._reconcile_crashed_runs()
        return await super().get_and_submit_flow_runs()

    async def _reconcile_crashed_runs(self) -> None:
        """The engine in a job reports Crashed ("aborted by a termination signal") on the SIGTERM of
        ``scancel`` or of the time limit, and on a loaded node that report can reach the API after
        the worker recorded SLURM's account, or while no worker watched: on every poll, each new
        Crashed state of this pool's recent runs is compared once with how SLURM says the job ended;
        a cancelled job becomes Cancelled, any other end Crashed with SLURM's reason (TIMEOUT,
        OUT_OF_MEMORY, ...) before the engine's words."""
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, WorkPoolFilter,
                                                    WorkPoolFilterName)
        from prefect.client.schemas.sorting import FlowRunSort

        if self._work_pool_name is None:
            return
        try:
            runs = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED]))),
                sort=FlowRunSort.END_TIME_DESC, limit=50,
            )
        except Exception as exc:  # noqa: BLE001 - retried on the next poll
            self._logger.warning(f"Could not list this pool's crashed flow runs: {exc}")
            return
        for flow_run in runs:
            job_id, state = flow_run.infrastructure_pid, flow_run.state
            if state is None or state.id in self._reconciled or flow_run.id in self._followed or not job_id or not job_id.isdigit():
                continue
            await self._reconcile_crashed_run(flow_run, job_id)

    async def _reconcile_crashed_run(self, flow_run: FlowRun, job_id: str) -> None:
        state = flow_run.state
        if f"SLURM job {job_id} " in (state.message or ""):  # already SLURM's account
            self._reconciled.add(state.id)
            return
        job = await anyio.to_thread.run_sync(self.scheduler.job, job_id)
        if job is not None and not job.ended:  # still COMPLETING: ask again on the next poll
            return
        self._reconciled.add(state.id)
        if job is None or (job.name and job.name != job_name(flow_run.id)):
            return
        outcome = job_outcome(job_id, job)
        logger = self.get_flow_run_logger(flow_run)
        if outcome.state == "Cancelled":
            await self.client.set_flow_run_state(flow_run.id, Cancelled(message=outcome.message), force=True)
            logger.info(f"{outcome.message} (the flow had reported Crashed)")
        elif outcome.state == "Crashed":
            message = f"{outcome.message} (the flow run said: {state.message})"
            await self.client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
            logger.error(message)

    async def _adopt_running_jobs(self) -> None:
        """Follow the runs of this pool that have a SLURM job nobody follows (the worker was
        restarted while they were queued or running)."""
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, WorkPoolFilter,
                                                    WorkPoolFilterName)

        if self._runs_task_group is None or self._work_pool_name is None:
            return
        try:
            runs = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]))),
            )
        except Exception as exc:  # noqa: BLE001 - retried on the next poll
            self._logger.warning(f"Could not list this pool's running flow runs: {exc}")
            return
        for flow_run in runs:
            job_id = flow_run.infrastructure_pid
            if not job_id or not job_id.isdigit() or flow_run.id in self._followed:
                continue
            job = await anyio.to_thread.run_sync(self.scheduler.job, job_id)
            if job is not None and job.name and job.name != job_name(flow_run.id):
                continue  # the id was reused by another job: not ours
            self._followed.add(flow_run.id)
            message = f"Worker {self.name!r} follows SLURM job {job_id} again ({job.state if job else 'ended'})"
            self._logger.info(f"{message}: flow run {flow_run.id}")
            self.get_flow_run_logger(flow_run).info(message)  # in the run's logs, in the UI
            self._runs_task_group.start_soon(self._follow_adopted, flow_run.id, job_id)

    async def _follow_adopted(self, flow_run_id: UUID, job_id: str) -> None:
        try:
            await self._follow(flow_run_id, job_id, 5.0)
        except Exception:  # noqa: BLE001 - one run's trouble must not stop the worker
            self._logger.exception(f"Lost track of SLURM job {job_id} (flow run {flow_run_id})")
        finally:
            self._followed.discard(flow_run_id)
