"""The batch script of one flow run's SLURM job: ``#SBATCH`` lines from the job variables, the
site's environment preamble (``module load ...``), then the Prefect engine.

Nothing secret is written here: the job's environment (Prefect API URL and key, tierflow's
settings) reaches the job through ``sbatch``'s own environment (``--export=ALL``), not the file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from tierflow.storage.errors import TierflowError

__all__ = ["SlurmJobSpec", "render_batch_script"]

_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")
_MEM = re.compile(r"^\d+[KMGT]?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class SlurmJobSpec:
    """What one job asks of the scheduler (empty values are left to the cluster's defaults)."""

    name: str
    comment: str
    output: str
    """Path of the job's log (stdout and stderr); ``%j`` is the job id."""
    command: str
    working_dir: str = ""
    partition: str = ""
    time: str = ""
    mem: str = ""
    cpus_per_task: int | None = None
    gpus: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    extra_directives: Sequence[str] = field(default_factory=tuple)
    preamble: str = ""


def _check(spec: SlurmJobSpec) -> None:
    if spec.time and not _TIME.match(spec.time):
        raise TierflowError(f"SLURM job variable time={spec.time!r} is not a SLURM time limit (e.g. 02:00:00, 1-00:00:00 or minutes)")
    if spec.mem and not _MEM.match(spec.mem):
        raise TierflowError(f"SLURM job variable mem={spec.mem!r} is not a SLURM memory size (e.g. 8G, 16000M)")
    if spec.cpus_per_task is not None and spec.cpus_per_task < 1:
        raise TierflowError(f"SLURM job variable cpus_per_task={spec.cpus_per_task} must be at least 1")
    for line in spec.extra_directives:
        if not line.strip().startswith("-") or "\n" in line:
            raise TierflowError(f"SLURM job variable extra_directives: {line!r} is not one sbatch option (e.g. --exclusive)")
    for name in ("name", "comment", "partition", "gpus", "account", "qos", "constraint"):
        if any(c in getattr(spec, name) for c in "\n\r"):
            raise TierflowError(f"SLURM job variable {name} must be one line")


def render_batch_script(spec: SlurmJobSpec) -> str:
    """The ``sbatch`` script for ``spec``.

    Raises
    ------
    TierflowError
        If a variable is malformed (names the variable and shows a valid example).
    """
    _check(spec)
    options: list[str] = [
        f"--job-name={spec.name}",
        f"--comment={spec.comment}",
        f"--output={spec.output}",
        "--export=ALL",
    ]
    for flag, value in (("partition", spec.partition), ("time", spec.time), ("mem", spec.mem), ("gpus", spec.gpus),
                        ("account", spec.account), ("qos", spec.qos), ("constraint", spec.constraint)):
        if value:
            options.append(f"--{flag}={value}")
    if spec.cpus_per_task:
        options.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.working_dir:
        options.append(f"--chdir={spec.working_dir}")
    lines = ["#!/bin/bash", *(f"#SBATCH {shlex.quote(option) if ' ' in option else option}" for option in options)]
    lines += [f"#SBATCH {line.strip()}" for line in spec.extra_directives]
    lines += ["", "# written by tierflow's SLURM worker: one Prefect flow run", "set -eo pipefail"]
    if spec.preamble.strip():
        lines += ["", "# site environment (job variable `preamble`)", spec.preamble.rstrip()]
    lines += ["", 'echo "tierflow: flow run ${PREFECT__FLOW_RUN_ID} in SLURM job ${SLURM_JOB_ID} on $(hostname)"',
              f"exec {spec.command}", ""]
    return "\n".join(lines)
