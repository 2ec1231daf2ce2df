"""The SLURM scheduler as its command-line tools: submit with ``sbatch``, read a job with
``scontrol`` (or ``sacct`` once the controller has forgotten it, or ``squeue``), cancel with
``scancel``. No REST API: Debian's Slurm 22.05 has none of the versions ``prefect-slurm``
needs, and many sites run no slurmrestd.

Job states are read as SLURM names them (``JobState``), never guessed from exit codes: Slurm
22.05 reports a job killed at its time limit as exit ``0:15``, which looks like success.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tierflow.errors import SlurmError

__all__ = ["END_STATES", "SlurmError", "SlurmJob", "SlurmScheduler", "parse_scontrol_job"]

END_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                        "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"})
"""States of a job that has ended."""


@dataclass(frozen=True)
class SlurmJob:
    """What the scheduler says about one job."""

    job_id: str
    state: str
    """SLURM's state name, e.g. ``RUNNING`` or ``TIMEOUT`` (``CANCELLED by 0`` becomes ``CANCELLED``)."""
    reason: str = ""
    exit_code: str = ""
    """``code:signal`` as SLURM reports it."""
    name: str = ""
    comment: str = ""
    node: str = ""
    source: str = ""
    """The command that answered: ``scontrol``, ``sacct`` or ``squeue``."""
    fields: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ended(self) -> bool:
        return self.state in END_STATES

    @classmethod
    def from_scontrol(cls, line: str) -> SlurmJob:
        """The job of one ``scontrol show job -o ID`` line."""
        fields = parse_scontrol_job(line)
        return cls(job_id=fields.get("JobId", ""), state=_state_name(fields.get("JobState", "")), reason=fields.get("Reason", ""),
                   exit_code=fields.get("ExitCode", ""), name=fields.get("JobName", ""), comment=fields.get("Comment", ""),
                   node=fields.get("NodeList", ""), source="scontrol", fields=fields)


_PAIR = re.compile(r"(\w[\w:/]*)=(.*?)(?=\s\w[\w:/]*=|$)")


def parse_scontrol_job(line: str) -> dict[str, str]:
    """``scontrol show job -o ID`` output (one line of ``Key=Value`` pairs; values may hold spaces)
    as a dict."""
    return {key: value.strip() for key, value in _PAIR.findall(line.strip())}


def _state_name(raw: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``RUNNING+`` (sacct) -> ``RUNNING``."""
    return raw.split()[0].rstrip("+") if raw.strip() else "UNKNOWN"


class SlurmScheduler:
    """Run SLURM's commands (they must be on ``PATH``, as on any login node).

    Parameters
    ----------
    timeout
        Seconds a command may take before it is treated as failed (a busy controller answers
        slowly; the caller retries on its next poll).
    """

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout

    def _run(self, command: Sequence[str], *, env: Mapping[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        executable = shutil.which(command[0])
        if executable is None:
            raise SlurmError(f"{command[0]} is not on PATH: run the worker on a machine with the SLURM client commands (a login node)")
        try:
            result = subprocess.run([executable, *command[1:]], capture_output=True, text=True, timeout=self.timeout,
                                    env=dict(env) if env is not None else None, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{' '.join(command)}` did not answer within {self.timeout:.0f} s") from None
        if check and result.returncode != 0:
            raise SlurmError(f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result

    def submit(self, script_path: str, *, env: Mapping[str, str]) -> str:
        """``sbatch --parsable SCRIPT`` with ``env`` as the job's environment (sbatch exports the
        submitting environment, so values never need to be written into the script); returns
        the job id."""
        result = self._run(["sbatch", "--parsable", script_path], env=env)
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch {script_path} answered {result.stdout.strip()!r}, not a job id")
        return job_id

    def job(self, job_id: str) -> SlurmJob | None:
        """The job's state from ``scontrol``, else ``sacct``, else ``squeue``; ``None`` when no
        tool knows it any more (ended longer ago than the controller's ``MinJobAge`` on a
        cluster without accounting)."""
        result = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if result.returncode == 0 and "JobState=" in result.stdout:
            return SlurmJob.from_scontrol(result.stdout.splitlines()[0])
        if shutil.which("sacct"):
            result = self._run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State,ExitCode,Reason,JobName,Comment,NodeList"],
                               check=False)
            for line in result.stdout.splitlines() if result.returncode == 0 else []:
                parts = line.split("|")
                if len(parts) >= 7 and parts[0] == str(job_id):
                    return SlurmJob(job_id=str(job_id), state=_state_name(parts[1]), exit_code=parts[2], reason=parts[3],
                                    name=parts[4], comment=parts[5], node=parts[6], source="sacct")
        result = self._run(["squeue", "-h", "-j", str(job_id), "-o", "%i|%T|%r|%j|%k|%N"], check=False)
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            parts = line.split("|")
            if len(parts) >= 6 and parts[0] == str(job_id):
                return SlurmJob(job_id=str(job_id), state=_state_name(parts[1]), reason=parts[2], name=parts[3],
                                comment=parts[4], node=parts[5], source="squeue")
        return None

    def cancel(self, job_id: str, *, signal: str | None = None) -> None:
        """``scancel [--signal=SIG] ID`` (a job that has already ended is not an error)."""
        command = ["scancel", *([f"--signal={signal}"] if signal else []), str(job_id)]
        result = self._run(command, check=False)
        if result.returncode != 0 and "Invalid job id" not in result.stderr and "already completing" not in result.stderr:
            raise SlurmError(f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}")
