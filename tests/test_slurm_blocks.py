"""Block work in SLURM jobs: ``[execution].backend = "slurm"`` puts batches on Dask workers that
dask-jobqueue starts with sbatch, on the real single-node cluster of ``.ci/slurm-up.sh``.

The retry tests kill a batch's worker job for real (``scancel`` from inside the batch: the one
fault hook). How the job ended is then answered by a recorded scheduler line: this cluster
cannot produce OUT_OF_MEMORY (memory is not enforced) and a TIMEOUT would take minutes, so that
answer, and only that, is the fake; the job ids, the new jobs and the ledger are real.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import zarr
from scipy import ndimage
from sqlalchemy import select

from conftest import run_cli
from test_slurm_deployments import scontrol, slurm  # noqa: F401 - the cluster fixture
from tierflow.tasks.ops.filters import cast_output

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault hook runs in SLURM jobs


def _slurm_config(project: Path, **extra: str) -> None:
    """Block work in SLURM jobs. The jobs start in the project folder, as on a cluster where the
    checkout is shared (its ``configs/`` folder no longer shadows tierflow's: ``tierflow.configs``)."""
    lines = ['[execution]\nbackend = "slurm"\nmax_workers = 2\n',
             '[slurm]\ncores_per_job = 1\nmemory_per_job = "1GB"\nwalltime = "00:15:00"\nmax_jobs = 2\n'
             + "".join(f"{k} = {v}\n" for k, v in extra.items())]
    (project / "configs" / "tierflow.user.toml").write_text("\n".join(lines))


def _mebibytes(memory: str) -> float:
    """scontrol's ``MinMemoryNode`` (``954M``, ``2G``) in MiB."""
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}
    return float(memory[:-1]) * units[memory[-1]] if memory[-1] in units else float(memory)


def _ledger(project: Path):
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.storage.db.models import BlockRecord

    db = open_database(load_db_config(str(project / "configs")))
    with db.session() as session:
        rows = session.scalars(select(BlockRecord).order_by(BlockRecord.id)).all()
        return [(r.op, r.block_id, r.status, r.attempt, r.slurm_job_id, r.error) for r in rows]


class KillJobOnce:
    """Fault hook: the first time ``block_id`` is computed, end the SLURM job the batch runs in
    (as the kernel's out-of-memory killer or the time limit would)."""

    def __init__(self, block_id: str, marker: str) -> None:
        self.block_id, self.marker = block_id, marker

    def __call__(self, block_id: str) -> None:
        if block_id != self.block_id or os.path.exists(self.marker) or not os.environ.get("SLURM_JOB_ID"):
            return
        Path(self.marker).write_text(os.environ["SLURM_JOB_ID"])
        subprocess.run(["scancel", os.environ["SLURM_JOB_ID"]], check=False)
        time.sleep(120)  # the job ends around us


class RecordedAnswer:
    """SLURM's answer for the killed job: a recorded ``scontrol`` state (see the module docstring);
    every other job is asked for real."""

    def __init__(self, marker: str, state: str) -> None:
        from tierflow.flows.slurm.scheduler import SlurmScheduler

        self.marker, self.state, self.real = marker, state, SlurmScheduler()

    def job(self, job_id: str):
        from tierflow.flows.slurm.scheduler import SlurmJob

        if os.path.exists(self.marker) and Path(self.marker).read_text() == str(job_id):
            return SlurmJob(job_id=str(job_id), state=self.state, reason={"TIMEOUT": "TimeLimit"}.get(self.state, "OutOfMemory"),
                            exit_code="0:125" if self.state == "OUT_OF_MEMORY" else "0:15", name="tierflow-blocks", source="recorded")
        return self.real.job(job_id)


@pytest.mark.parametrize(("state", "attempt_batches"), [("OUT_OF_MEMORY", 1), ("TIMEOUT", 2)])
def test_a_batch_whose_job_died_is_retried_the_slurm_way(slurm, project, prefect_api, tmp_path, state, attempt_batches):  # noqa: F811
    from tierflow.flows.ops.flow import run_op

    _slurm_config(project)
    data = np.random.default_rng(3).integers(0, 4000, (32, 64, 64)).astype(np.uint16)
    zarr.create_array(str(tmp_path / "in.zarr"), shape=data.shape, chunks=(16, 32, 32), dtype=data.dtype)[:] = data
    marker = str(tmp_path / "killed-job")
    result = run_op("gaussian", str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"),
                    {"sigma": 1.5, "backend": "scipy", "mode": "reflect", "truncate": 4.0}, block_shape=(16, 32, 32), workers=2,
                    config_dir=str(project / "configs"), fault=KillJobOnce("0.1.1", marker), slurm_scheduler=RecordedAnswer(marker, state))
    whole = cast_output(ndimage.gaussian_filter(data.astype(np.float32), 1.5, mode="reflect", truncate=4.0), "uint16")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], whole)
    assert result["computed"] == 8
    killed = Path(marker).read_text()
    rows = _ledger(project)
    lost = [r for r in rows if r[2] == "failed"]
    assert lost and all(r[4] == killed and state in r[5] and r[3] == 1 for r in lost)  # the first attempt, its job and why
    retried = {r[1]: r for r in rows if r[2] == "done" and r[1] in {x[1] for x in lost}}
    assert set(retried) == {r[1] for r in lost} and all(r[3] == 2 and r[4] and r[4] != killed for r in retried.values())
    assert not [r for r in rows if r[2] == "running"]
    second_jobs = {r[4] for r in retried.values()}
    if state == "OUT_OF_MEMORY":  # the retry ran in jobs asking for twice the memory
        first = _mebibytes(scontrol(killed)["MinMemoryNode"])
        # dask-jobqueue rounds "1GB" to 954M and "2.0GB" to 2G: twice, within its rounding
        assert first > 0 and all(1.9 <= _mebibytes(scontrol(job)["MinMemoryNode"]) / first <= 2.2 for job in second_jobs)
    else:  # the retry ran in halves: each half is its own task run, so its own ledger start
        assert len({r[1] for r in lost}) >= 2


def test_pipeline_with_the_slurm_backend_puts_its_blocks_in_slurm_jobs(slurm, project, prefect_api):  # noqa: F811
    _slurm_config(project)
    done = run_cli("demo", "--samples", "1", "--time-points", "3", "--json", cwd=project,
                   env={"PREFECT_API_URL": prefect_api, "TIERFLOW_PIPELINE__PYRAMID_LEVELS": "2"})
    assert '"status": "completed"' in done.stdout or '"run_id"' in done.stdout
    rows = _ledger(project)
    block_rows = [r for r in rows if r[2] == "done"]
    assert block_rows, "no block in the ledger"
    jobs = {r[4] for r in block_rows}
    assert None not in jobs, f"blocks computed outside SLURM: {[r for r in block_rows if r[4] is None][:5]}"
    for job in jobs:  # real jobs the scheduler knows, started by dask-jobqueue
        assert scontrol(job)["JobName"] == "tierflow-blocks"
    assert {r[0] for r in block_rows} >= {"gaussian", "threshold"}
