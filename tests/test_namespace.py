"""tierflow installs one top-level package, ``tierflow``: a user's own ``configs/``, ``flows/``
or ``tasks.py`` in the working directory shadows nothing, and a wheel holds nothing else."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO_ROOT, TIERFLOW


def test_a_users_own_configs_flows_and_tasks_shadow_nothing(tmp_path: Path) -> None:
    for folder in ("configs", "flows"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "__init__.py").write_text(f"raise ImportError('the user\\'s own {folder}, not tierflow\\'s')\n")
    (tmp_path / "tasks.py").write_text("raise ImportError(\"the user's own tasks.py\")\n")
    code = ("import tierflow, tierflow.flows.cli, tierflow.tasks.blockwise, tierflow.storage.tiers\n"
            "from tierflow import load_config, run_op\n"
            "print(load_config.__module__, run_op.__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["tierflow.configs.settings", "tierflow.flows.ops.flow"]
    helped = subprocess.run([TIERFLOW, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0 and "Usage" in helped.stdout, helped.stderr


def test_the_wheel_holds_only_the_tierflow_package(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("tierflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"tierflow", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for expected in ("tierflow/flows/ops/flow.py", "tierflow/storage/db/migrations/env.py", "tierflow/configs/tierflow.def.toml",
                     "tierflow/storage/db/migrations/versions/0005_block_input_fingerprint.py"):
        assert expected in names, expected
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tierflow = tierflow.flows.cli:main" in entry_points and "tierflow.flows.slurm.worker" in entry_points
