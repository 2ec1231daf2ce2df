"""The SLURM worker's pure parts: batch scripts, scontrol parsing, end state -> Prefect state.

The scontrol lines are recorded from this project's single-node Slurm 22.05 cluster; the
OUT_OF_MEMORY one, which that cluster cannot produce (it does not enforce memory), is written in
the same format with the state and reason a cgroup-enforcing cluster reports."""

from __future__ import annotations

import pytest

from tierflow.flows.slurm.outcomes import job_outcome
from tierflow.flows.slurm.scheduler import SlurmJob, parse_scontrol_job
from tierflow.flows.slurm.script import SlurmJobSpec, render_batch_script
from tierflow.storage.errors import TierflowError

RECORDED = {
    "COMPLETED": (
        'JobId=1 JobName=prefect-rec-ok UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice'
        '=0 Account=(null) QOS=(null) JobState=COMPLETED Reason=None Dependency=(null) Requeue=1 Restarts=0 B'
        'atchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTime=2026-11'
        '-21T18:07:35 EligibleTime=2026-11-21T18:07:35 AccrueTime=2026-11-21T18:07:35 StartTime=2026-11-21T18'
        ':07:37 EndTime=2026-11-21T18:07:37 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026'
        '-11-21T18:07:37 Scheduler=Main Partition=debug AllocNode:Sid=localhost:29636 ReqNodeList=(null) ExcN'
        'odeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*'
        ':* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinMem'
        'oryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=YES Contiguous=0 License'
        's=(null) Network=(null) Command=/tmp/ok.sh WorkDir=/tmp StdErr=/tmp/rec-1.log StdIn=/dev/null StdOut'
        '=/tmp/rec-1.log Power='
    ),
    "FAILED": (
        'JobId=2 JobName=prefect-rec-fail UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Ni'
        'ce=0 Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 Re'
        'starts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A SubmitTi'
        'me=2026-11-21T18:07:35 EligibleTime=2026-11-21T18:07:35 AccrueTime=2026-11-21T18:07:35 StartTime=202'
        '6-11-21T18:07:37 EndTime=2026-11-21T18:07:37 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSche'
        'dEval=2026-11-21T18:07:37 Scheduler=Main Partition=debug AllocNode:Sid=localhost:29636 ReqNodeList=('
        'null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S'
        ':C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNod'
        'e=1 MinMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=YES Contiguous'
        '=0 Licenses=(null) Network=(null) Command=/tmp/fail.sh WorkDir=/tmp StdErr=/tmp/rec-2.log StdIn=/dev'
        '/null StdOut=/tmp/rec-2.log Power='
    ),
    "CANCELLED": (
        'JobId=3 JobName=prefect-rec-long UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Ni'
        'ce=0 Account=(null) QOS=(null) JobState=CANCELLED Reason=None Dependency=(null) Requeue=1 Restarts=0'
        ' BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:00:02 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-'
        '11-21T18:07:35 EligibleTime=2026-11-21T18:07:35 AccrueTime=2026-11-21T18:07:35 StartTime=2026-11-21T'
        '18:07:37 EndTime=2026-11-21T18:07:39 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=20'
        '26-11-21T18:07:37 Scheduler=Main Partition=debug AllocNode:Sid=localhost:29636 ReqNodeList=(null) Ex'
        'cNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0'
        ':*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 MinM'
        'emoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=YES Contiguous=0 Licen'
        'ses=(null) Network=(null) Command=/tmp/long.sh WorkDir=/tmp StdErr=/tmp/rec-3.log StdIn=/dev/null St'
        'dOut=/tmp/rec-3.log Power='
    ),
    # job killed at --time=1 (one minute): exit code 0:15, as if it had ended well
    "TIMEOUT": (
        'JobId=4 JobName=prefect-rec-long UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901756 Ni'
        'ce=0 Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=1 Restart'
        's=0 BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:01:24 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=20'
        '26-11-21T18:07:35 EligibleTime=2026-11-21T18:07:35 AccrueTime=2026-11-21T18:07:35 StartTime=2026-11-'
        '21T18:07:37 EndTime=2026-11-21T18:09:01 Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval'
        '=2026-11-21T18:07:37 Scheduler=Main Partition=debug AllocNode:Sid=localhost:29636 ReqNodeList=(null)'
        ' ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T='
        '0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 M'
        'inMemoryNode=0 MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=YES Contiguous=0 Li'
        'censes=(null) Network=(null) Command=/tmp/long.sh WorkDir=/tmp StdErr=/tmp/rec-4.log StdIn=/dev/null'
        ' StdOut=/tmp/rec-4.log Power='
    ),
    # not producible here (memory is not enforced): the state and reason a cgroup cluster reports
    "OUT_OF_MEMORY": "JobId=11 JobName=prefect-2b JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125 NodeList=node3",
}


def job_from(line: str) -> SlurmJob:
    return SlurmJob.from_scontrol(line)


def test_scontrol_lines_parse_with_spaces_in_values():
    fields = parse_scontrol_job(RECORDED["COMPLETED"])
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0" and fields["NodeList"] == "vm"
    assert fields["CPUs/Task"] == "1" and fields["AllocNode:Sid"].startswith("localhost")
    spaced = parse_scontrol_job("JobId=5 JobName=x JobState=RUNNING Comment=a b c WorkDir=/work/my data Power=")
    assert spaced["Comment"] == "a b c" and spaced["WorkDir"] == "/work/my data"  # values with spaces stay whole


@pytest.mark.parametrize(("state", "prefect_state", "code", "words"), [
    ("COMPLETED", "Completed", 0, "completed"),
    ("TIMEOUT", "Crashed", 143, "time limit"),        # 0:15 must not read as success
    ("OUT_OF_MEMORY", "Crashed", 253, "out of memory"),
    ("FAILED", "Crashed", 3, "FAILED"),
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


def test_a_lost_batch_that_finished_is_counted_not_requeued(db):
    """A worker job can end after its batch wrote its blocks and before Dask gathered the answer
    (Dask: "Couldn't gather keys ... memory"). The ledger has those blocks done in this run: they
    count as computed and are not submitted again; only the blocks not done are requeued. (CI saw
    "6 of 8 computed" for a run that computed all 8.)"""
    from tierflow.flows.execution.slurm_retries import LostBatch, SlurmBatchRetries
    from tierflow.storage.db.repo import record_blocks, start_run

    with db.session() as session:
        run_id = start_run(session, flow_name="op").id
        base = {"run_id": run_id, "op": "gaussian", "op_key": "k", "array_uri": "file:///o.zarr"}
        record_blocks(session, [base | {"block_id": b, "status": "done"} for b in ("1.0.0", "1.0.1", "2.0.0")])
        record_blocks(session, [base | {"block_id": "3.0.0", "status": "done", "run_id": start_run(session, flow_name="op").id}])
    retries = SlurmBatchRetries(db, run_id, "k", "file:///o.zarr")
    finished = retries.decide(LostBatch(["1.0.0", "1.0.1"], "memory"))
    assert (finished.action, finished.batches, finished.finished) == ("finished", [], 2)
    partly = retries.decide(LostBatch(["2.0.0", "2.0.1"], "memory"))
    assert (partly.action, partly.batches, partly.finished) == ("requeue", [["2.0.1"]], 1)
    other_run = retries.decide(LostBatch(["3.0.0"], "memory"))  # done by another run: this run did not compute it
    assert (other_run.action, other_run.batches, other_run.finished) == ("requeue", [["3.0.0"]], 0)
