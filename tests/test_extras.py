"""A feature whose extra is not installed stops before any work with the install that fixes it.

The test venv has every extra (``make venv``), so absence is simulated by fault injection in a
child process that then runs the real CLI: ``sys.modules[name] = None`` makes ``import name``
(and ``importlib.util.find_spec``) fail as if the package were not installed, and the server
check is shown a FastAPI release Prefect 3.8.8's server cannot import (0.165.0, checked here).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from tierflow.errors import MissingExtraError

# argv: <modules to hide, comma-separated> <FastAPI version to report or ""> <tierflow args...>
_INJECT = """
import sys
hidden, fastapi_version, args = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in filter(None, hidden.split(",")):
    sys.modules[name] = None  # fault injection: the package is not installed
if fastapi_version:
    import fastapi
    fastapi.__version__ = fastapi_version  # fault injection: another FastAPI release
sys.argv = ["tierflow", *args]
from tierflow.flows.cli import main
main()
"""


def _cli(*args: str, cwd: Path, hidden: tuple[str, ...] = (), fastapi_version: str = "",
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, in an environment lacking ``hidden`` (see the module docstring)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_API_URL"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", _INJECT, ",".join(hidden), fastapi_version, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def _says(done: subprocess.CompletedProcess[str], *phrases: str) -> str:
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    for phrase in phrases:
        assert phrase in output, f"{phrase!r} missing from:\n{output}"
    assert "Traceback" not in output, output
    return output


def test_s3_tier_needs_the_s3_extra(project: Path) -> None:
    done = _cli("tiers", cwd=project, hidden=("boto3",),
                env={"TIERFLOW_TIERS__OUTPUT__BACKEND": "s3", "TIERFLOW_TIERS__OUTPUT__ROOT": "s3://lab/output"})
    _says(done, "tier output (s3://lab/output) needs boto3: not installed here", "pip install 'tierflow[s3]'")


def test_slurm_backend_needs_the_slurm_extra(project: Path) -> None:
    """Refused when the configuration is read, so before any command does anything."""
    done = _cli("tiers", cwd=project, hidden=("dask_jobqueue",), env={"TIERFLOW_EXECUTION__BACKEND": "slurm"})
    _says(done, '[execution].backend = "slurm" needs dask-jobqueue: not installed here', "pip install 'tierflow[slurm]'")


def test_bioimage_cpp_backend_needs_its_extra(project: Path) -> None:
    output = project / "smooth.zarr"
    done = _cli("op", "gaussian", "-i", str(project / "in.zarr"), "-o", str(output), "-p", "sigma=1", "-p", "backend=bioimage-cpp",
                cwd=project, hidden=("bioimage_cpp",))
    _says(done, "the gaussian's backend 'bioimage-cpp' needs bioimage-cpp", "pip install 'tierflow[bioimage-cpp]'")
    assert not output.exists()


@pytest.mark.parametrize("server", ["managed", "ephemeral"])
def test_local_prefect_server_needs_the_server_extra(project: Path, server: str) -> None:
    source, output = project / "in.zarr", project / "smooth.zarr"
    zarr.create_array(source, shape=(4, 16, 16), chunks=(4, 16, 16), dtype="uint16")[:] = 7
    done = _cli("op", "gaussian", "-i", str(source), "-o", str(output), "-p", "sigma=1", cwd=project, fastapi_version="0.165.0",
                env={"TIERFLOW_PREFECT__SERVER": server})
    _says(done, f'([prefect].server = "{server}") runs on this machine and fails with FastAPI 0.165.0', "needs FastAPI < 0.151",
          "pip install 'tierflow[server]'", "[prefect].api_url")
    assert not output.exists()  # refused before the run started
    assert not (project / "var" / "tier4-ephemeral" / "state" / "prefect" / "server.json").exists()  # no server was started


def test_a_client_of_a_shared_server_takes_any_fastapi() -> None:
    """With an API URL no server runs here: the check stays out of the way (in-process: the
    check itself, without a flow, since no shared server is at that URL)."""
    from tierflow.extras import require_server_extra

    script = ("import fastapi; fastapi.__version__ = '0.165.0'\n"
              "from tierflow.flows.runtime.prefect_env import interactive_flows\n"
              "with interactive_flows():\n    print('entered')\n")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "entered" in done.stdout, done.stdout + done.stderr
    require_server_extra("this test's venv")  # the `server` extra is installed here: no error
    assert MissingExtraError.__module__ == "tierflow.errors"


def test_all_is_every_extra() -> None:
    """``tierflow[all]`` lists the other feature extras' requirements (spelled out, see pyproject.toml)."""
    import tomllib

    from conftest import REPO_ROOT

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    union = {requirement for name, requirements in extras.items() if name not in ("all", "dev") for requirement in requirements}
    assert sorted(extras["all"]) == sorted(union)
