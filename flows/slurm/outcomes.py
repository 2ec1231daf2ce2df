"""How a SLURM job's end becomes a Prefect state: SLURM's own state name and reason decide,
never the exit code alone (Slurm 22.05 reports a job killed at its time limit as ``0:15``)."""

from __future__ import annotations

from dataclasses import dataclass

from tierflow.flows.slurm.scheduler import SlurmJob

__all__ = ["JobOutcome", "job_outcome"]

_WHY = {
    "TIMEOUT": "hit its time limit (TIMEOUT): raise the job variable `time` or split the work",
    "OUT_OF_MEMORY": "ran out of memory (OUT_OF_MEMORY): raise the job variable `mem`",
    "NODE_FAIL": "lost its node (NODE_FAIL): run it again",
    "PREEMPTED": "was preempted by a higher-priority job (PREEMPTED): run it again, or use a partition/qos without preemption",
    "BOOT_FAIL": "could not boot its node (BOOT_FAIL)",
    "DEADLINE": "missed its deadline (DEADLINE)",
    "REVOKED": "was revoked by a federated cluster (REVOKED)",
    "SPECIAL_EXIT": "ended in SPECIAL_EXIT",
}


@dataclass(frozen=True)
class JobOutcome:
    """``state`` is ``"Completed"`` (leave the flow's own state), ``"Crashed"`` or ``"Cancelled"``."""

    state: str
    message: str
    status_code: int


def _exit_status(exit_code: str) -> int:
    code, _, signal = exit_code.partition(":")
    if code.isdigit() and int(code):
        return int(code)
    if signal.isdigit() and int(signal):
        return 128 + int(signal)
    return 0


def job_outcome(job_id: str, job: SlurmJob | None, *, cancel_requested: bool = False) -> JobOutcome:
    """The Prefect side of a job's end.

    Parameters
    ----------
    job_id
        The SLURM job id.
    job
        What the scheduler reports (``None``: no tool knows the job any more).
    cancel_requested
        The worker called ``scancel`` because the flow run was cancelled.
    """
    if job is None:
        return JobOutcome("Crashed", f"SLURM job {job_id} ended and no SLURM tool still knows how (no accounting?); "
                                     "see its log under the job variable log_dir", 1)
    where = f" on {job.node}" if job.node and job.node not in ("(null)", "None assigned") else ""
    if job.state == "COMPLETED":
        return JobOutcome("Completed", f"SLURM job {job_id} completed{where}", 0)
    if job.state == "CANCELLED":
        who = "at the flow run's cancellation" if cancel_requested else "outside Prefect (scancel)"
        return JobOutcome("Cancelled", f"SLURM job {job_id} was cancelled {who}", 0 if cancel_requested else 130)
    status = _exit_status(job.exit_code) or 1
    if job.state == "FAILED":
        reason = f", reason {job.reason}" if job.reason and job.reason != "None" else ""
        return JobOutcome("Crashed", f"SLURM job {job_id} FAILED{where} with exit code {job.exit_code}{reason}; see its log", status)
    why = _WHY.get(job.state, f"ended in state {job.state}")
    return JobOutcome("Crashed", f"SLURM job {job_id}{where} {why}", status)
