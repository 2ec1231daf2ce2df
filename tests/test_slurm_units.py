"""The SLURM worker's pure parts: batch scripts, scontrol parsing, end state -> Prefect state.

The scontrol lines are recorded from this project's single-node Slurm 22.05 cluster (and, for
OUT_OF_MEMORY, which that cluster cannot produce because it does not enforce memory, from the
same format with the state a cgroup-enforcing cluster reports)."""

from __future__ import annotations

import pytest

from flows.slurm.outcomes import job_outcome
from flows.slurm.scheduler import SlurmJob, parse_scontrol_job
from flows.slurm.script import SlurmJobSpec, render_batch_script
from storage.errors import TierflowError

RECORDED = {
    "COMPLETED": "JobId=7 JobName=prefect-0f7c UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 Account=(null) "
                 "QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
                 "ExitCode=0:0 RunTime=00:00:09 TimeLimit=00:05:00 NodeList=node1 Comment=prefect-flow-run=0f7c;pool=p "
                 "WorkDir=/work/my data",
    "TIMEOUT": "JobId=9 JobName=prefect-1a JobState=TIMEOUT Reason=TimeLimit Dependency=(null) ExitCode=0:15 "
               "RunTime=00:01:01 TimeLimit=00:01:00 NodeList=node1",
    "OUT_OF_MEMORY": "JobId=11 JobName=prefect-2b JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125 NodeList=node3",
    "FAILED": "JobId=12 JobName=prefect-3c JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 NodeList=node1",
    "CANCELLED": "JobId=13 JobName=prefect-4d JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=node1",
}


def job_from(line: str) -> SlurmJob:
    fields = parse_scontrol_job(line)
    return SlurmJob(job_id=fields["JobId"], state=fields["JobState"].split()[0], reason=fields.get("Reason", ""),
                    exit_code=fields.get("ExitCode", ""), name=fields.get("JobName", ""), node=fields.get("NodeList", ""))


def test_scontrol_lines_parse_with_spaces_in_values():
    fields = parse_scontrol_job(RECORDED["COMPLETED"])
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0"
    assert fields["WorkDir"] == "/work/my data"  # a value with a space stays whole
    assert fields["Comment"] == "prefect-flow-run=0f7c;pool=p"


@pytest.mark.parametrize(("state", "prefect_state", "code", "words"), [
    ("COMPLETED", "Completed", 0, "completed"),
    ("TIMEOUT", "Crashed", 143, "time limit"),        # 0:15 must not read as success
    ("OUT_OF_MEMORY", "Crashed", 253, "out of memory"),
    ("FAILED", "Crashed", 1, "FAILED"),
    ("CANCELLED", "Cancelled", 130, "outside Prefect"),
])
def test_end_states_map_to_prefect_states_with_the_reason(state, prefect_state, code, words):
    outcome = job_outcome(RECORDED[state].split()[0].split("=")[1], job_from(RECORDED[state]))
    assert outcome.state == prefect_state
    assert outcome.status_code == code
    assert words in outcome.message


def test_a_cancellation_asked_by_prefect_is_a_clean_cancel_and_a_forgotten_job_crashes():
    assert job_outcome("13", job_from(RECORDED["CANCELLED"]), cancel_requested=True).status_code == 0
    gone = job_outcome("99", None)
    assert gone.state == "Crashed" and "99" in gone.message


def test_batch_script_carries_every_variable_and_no_environment_values():
    script = render_batch_script(SlurmJobSpec(
        name="prefect-abc", comment="prefect-flow-run=abc;pool=p", output="/logs/prefect-abc-%j.log",
        command="/usr/bin/python3 -m prefect flow-run execute", working_dir="/work/tierflow", partition="debug",
        time="00:10:00", mem="2G", cpus_per_task=2, gpus="a100:1", account="lab", qos="short", constraint="skylake",
        extra_directives=["--exclusive"], preamble="module load python/3.11",
    ))
    for line in ["#SBATCH --job-name=prefect-abc", "#SBATCH --partition=debug", "#SBATCH --time=00:10:00", "#SBATCH --mem=2G",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --gpus=a100:1", "#SBATCH --account=lab", "#SBATCH --qos=short",
                 "#SBATCH --constraint=skylake", "#SBATCH --exclusive", "#SBATCH --chdir=/work/tierflow", "#SBATCH --export=ALL",
                 "module load python/3.11", "exec /usr/bin/python3 -m prefect flow-run execute"]:
        assert line in script.splitlines()
    assert "PREFECT_API" not in script  # the environment goes through sbatch, never into the file


@pytest.mark.parametrize(("field", "value", "message"), [
    ("time", "two hours", "time='two hours'"), ("mem", "lots", "mem='lots'"),
    ("extra_directives", ["exclusive"], "not one sbatch option"), ("cpus_per_task", 0, "cpus_per_task=0"),
])
def test_malformed_job_variables_are_refused_by_name(field, value, message):
    spec = {"name": "n", "comment": "c", "output": "o", "command": "x", field: value}
    with pytest.raises(TierflowError, match=message.replace("(", r"\(")):
        render_batch_script(SlurmJobSpec(**spec))
