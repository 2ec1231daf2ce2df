"""A real ``prefect server start`` on a free loopback port, and a checkout that deploys to it,
for the tests that run tierflow's deployments as a lab does (``test_slurm_deployments``,
``test_ui_form``)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT

PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without TIERFLOW_* and PREFECT_* (no developer settings leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERFLOW_", "PREFECT_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


@contextmanager
def prefect_server(home: Path, *, ui: bool = False, timeout: float = 180) -> Iterator[str]:
    """`prefect server start` on a free port with its own SQLite database under ``home``;
    yields its API URL once ``/api/health`` answers, stops it on exit. With ``ui`` it serves the
    web UI too, told to call this API (``PREFECT_UI_API_URL``)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="true" if ui else "false")
    if ui:
        env.update(PREFECT_UI_API_URL=url, PREFECT_API_URL=url)
    log_path = home / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prefect server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)


def make_checkout(root: Path, api_url: str, user_toml: str = "") -> Path:
    """A tierflow checkout at ``root`` (the code linked in, the default configs copied) whose
    ``configs/tierflow.user.toml`` points at the Prefect server ``api_url``."""
    (root / "configs").mkdir(parents=True)
    for part in ("flows", "tasks", "storage", "deployments"):
        (root / part).symlink_to(REPO_ROOT / part)
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    for module in (REPO_ROOT / "configs").glob("*.py"):  # a checkout's configs/ is also the loader's package
        (root / "configs" / module.name).symlink_to(module)
    (root / "configs" / "tierflow.user.toml").write_text(f'[prefect]\napi_url = "{api_url}"\n\n{user_toml}')
    return root
