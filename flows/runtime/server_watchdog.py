"""Prefect's ephemeral API server, tied to the tierflow process that started it.

Without a ``PREFECT_API_URL``, Prefect 3.8 starts a temporary API server as a child process
(``python -m uvicorn ... prefect.server.api.server:create_app``, see
``prefect.server.api.server.SubprocessASGIServer``) and stops it from an ``atexit`` hook. A
process killed with SIGKILL (or any signal without a handler) runs no ``atexit`` hook, so the
server lived on, re-parented to init. :func:`tie_ephemeral_server` makes Prefect start the
same command through ``python -m tierflow.flows.runtime.server_watchdog PARENT_PID ...``, which runs uvicorn
exactly as before plus a watchdog thread: when the parent process is gone (``getppid()``
changes), the server is told to stop (SIGTERM, uvicorn's graceful shutdown) and, failing
that, exits. ``PR_SET_PDEATHSIG`` was not used: it fires when the *thread* that started the
child ends, and Prefect may start the server from a short-lived worker thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

__all__ = ["main", "tie_ephemeral_server", "watch_parent"]

WATCHDOG_MODULE = "tierflow.flows.runtime.server_watchdog"


def watch_parent(parent_pid: int, *, interval: float = 0.2, grace: float = 5.0) -> threading.Thread:
    """Stop this process once ``parent_pid`` is no longer its parent: SIGTERM to itself, then
    a hard exit ``grace`` seconds later if it is still running.

    Returns
    -------
    threading.Thread
        The (daemon) watchdog thread, started.
    """
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name="tierflow-parent-watchdog", daemon=True)
    thread.start()
    return thread


class _TiedSubprocess:
    """``subprocess`` as Prefect's server module sees it: ``Popen`` of ``python -m uvicorn``
    goes through this module's watchdog; everything else is the real module."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args: list[str], *rest: Any, **kwargs: Any) -> subprocess.Popen[Any]:  # noqa: N802 - subprocess's name
        if list(args[1:3]) == ["-m", "uvicorn"]:
            # -P: the working directory is not put on sys.path, so a user's own configs/ or flows/
            # folder there cannot shadow tierflow's modules in the server process
            args = [args[0], "-P", "-m", WATCHDOG_MODULE, str(os.getpid()), *args[3:]]
        return subprocess.Popen(args, *rest, **kwargs)


def tie_ephemeral_server() -> bool:
    """If this process would start Prefect's ephemeral API server (no ``PREFECT_API_URL``),
    make that server end with this process (idempotent).

    Returns
    -------
    bool
        Whether the ephemeral server is tied (False when an API URL is configured).
    """
    from prefect.settings import PREFECT_API_URL  # type: ignore[attr-defined]

    if PREFECT_API_URL.value():
        return False
    from prefect.server.api import server

    if not isinstance(server.subprocess, _TiedSubprocess):
        server.subprocess = _TiedSubprocess()  # type: ignore[assignment]
    return True


def main(argv: list[str]) -> None:
    """``python -m tierflow.flows.runtime.server_watchdog PARENT_PID UVICORN_ARGS...``: run uvicorn with
    ``UVICORN_ARGS`` while a watchdog ends it when ``PARENT_PID`` is gone."""
    import runpy

    watch_parent(int(argv[0]))
    sys.argv = ["uvicorn", *argv[1:]]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
