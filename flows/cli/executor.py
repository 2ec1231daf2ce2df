"""The warm executor: a process that has imported Prefect and tierflow once and forks a child per command.

Started in the background by the first command that starts (or finds) the managed Prefect
server (:func:`flows.runtime.executor_client.start_executor`), with that command's environment,
it imports what flow-running commands import (Prefect and its engines, zarr, SQLAlchemy, the
op, pipeline and lifecycle flows, the command line), freezes those objects out of the garbage
collector's generations (:func:`flows.runtime.prefect_env.prepare_process`; also keeps the
children's pages shared) and then listens on an abstract Unix socket whose name says which
project, environment and code it serves (:func:`flows.runtime.executor_client.socket_name`).

For each connection from its own user (``SO_PEERCRED``) it forks; the child takes the command
line, working directory, environment and the stdin/stdout/stderr descriptors the ``tierflow``
process sent, becomes that process in all that a command can see (terminal, colours, signals,
exit status), runs the command through :func:`flows.cli.root.main`, sends its exit status and
ends. The parent imports and nothing else: it never runs a flow, opens a database or loads
plugins (a child loads a lab's ops from their entry points afresh, so a reinstalled plugin is
used at once), so every child starts from the same clean state.

Its files, beside the managed server's (``<tier4>/state/prefect/``): ``executor.json`` (pid,
start time, commands served) and ``executor.log``. It ends on SIGTERM (``tierflow server
stop``), when ``executor.json`` names another process (a newer executor took over) or is gone,
or after ``[prefect].executor_idle_minutes`` without a command.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tierflow.flows.runtime.executor_client import command_of, read_message, send_message, socket_name
from tierflow.flows.runtime.launch_env import launch_environment

log = logging.getLogger("tierflow.executor")

PRELOAD = (
    "prefect", "prefect.flow_engine", "prefect.task_engine", "prefect.futures", "prefect.artifacts", "prefect.logging.handlers",
    "prefect.task_runners", "prefect.client.orchestration", "fastapi.encoders",
    "zarr", "numcodecs", "numpy", "sqlalchemy.orm", "psycopg2", "scipy.ndimage",
    "tierflow.flows.cli.root", "tierflow.flows.cli.live", "tierflow.flows.ops.flow", "tierflow.flows.ops.map",
    "tierflow.flows.ops.label", "tierflow.flows.ops.pyramid", "tierflow.flows.ops.features", "tierflow.flows.ops.cached",
    "tierflow.flows.pipeline.flow", "tierflow.flows.lifecycle.ingest", "tierflow.flows.lifecycle.promote",
    "tierflow.flows.lifecycle.retention", "tierflow.flows.lifecycle.track", "tierflow.storage.db.repo.runs",
    "tierflow.storage.db.repo.ledger", "tierflow.tasks.blockwise", "tierflow.tasks.map_blocks",
)
"""What flow-running commands import (a module missing from an install is skipped)."""
POLL_SECONDS = 2.0
_PEERCRED = struct.Struct("3i")


def preload() -> list[str]:
    """Import :data:`PRELOAD` as the command line would (its Prefect logging settings first);
    returns the modules that could not be imported."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")  # as flows.cli.root.main
    gc.disable()  # no collection while importing: prepare_process freezes what the imports made
    missing = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - an optional extra not installed: its commands import it themselves
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    from tierflow.flows.runtime.prefect_env import prepare_process

    prepare_process()
    gc.enable()
    return missing


def _peer_uid(conn: socket.socket) -> int:
    _, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return int(uid)


class Executor:
    """The listening parent (see the module's docstring)."""

    def __init__(self, location: str, state_file: Path, idle_seconds: float) -> None:
        self.location = location
        self.state_file = state_file
        self.idle_seconds = idle_seconds
        self.served = 0
        self.last_command = time.monotonic()
        self.stopping = False
        self.pid = os.getpid()

    def _state(self) -> dict[str, Any]:
        import psutil

        return {"pid": self.pid, "create_time": psutil.Process(self.pid).create_time(), "served": self.served,
                "started_at": self.started_at, "python": sys.executable}

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._state()))
        tmp.replace(self.state_file)

    def _still_mine(self) -> bool:
        try:
            return int(json.loads(self.state_file.read_text())["pid"]) == self.pid
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _take_over(self) -> None:
        """Stop the executor ``executor.json`` names (one for an older environment or code)."""
        import psutil

        try:
            old = json.loads(self.state_file.read_text())
            process = psutil.Process(int(old["pid"]))
            if abs(process.create_time() - float(old["create_time"])) < 1.0 and process.pid != self.pid:
                process.terminate()
                log.info("stopped the executor it replaces (pid %d)", process.pid)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            pass

    def serve(self) -> None:
        name = socket_name(self.location, launch_environment())
        missing = preload()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(name)
        except OSError:
            log.info("an executor for this environment and code listens already; this one ends")
            return
        listener.listen(64)
        listener.settimeout(POLL_SECONDS)
        self.last_command = time.monotonic()  # idle from now, not from before the imports
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._take_over()
        self._write_state()
        self.state_file.with_name("executor.starting").unlink(missing_ok=True)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("ready (pid %d, %d modules imported%s)", self.pid, len(sys.modules),
                 f"; not importable: {', '.join(missing)}" if missing else "")
        try:
            while not self.stopping:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    if not self._still_mine():
                        log.info("executor.json names another process or is gone: ending")
                        return
                    if time.monotonic() - self.last_command > self.idle_seconds:
                        log.info("no command for %.0f minutes: ending", self.idle_seconds / 60)
                        return
                    continue
                except InterruptedError:
                    continue
                self._accept(conn, listener)
        finally:
            listener.close()
            if self._still_mine():
                self.state_file.unlink(missing_ok=True)
            log.info("stopped after %d commands", self.served)

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _accept(self, conn: socket.socket, listener: socket.socket) -> None:
        fds: list[int] = []
        try:
            if _peer_uid(conn) != os.getuid():
                log.warning("refused a connection from another user (uid %d)", _peer_uid(conn))
                return
            conn.settimeout(10.0)
            request, fds = read_message(conn, max_fds=3)
            if request is None or len(fds) != 3:
                return  # a probe (start_executor asking whether this one listens)
            self.served += 1
            self.last_command = time.monotonic()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.settimeout(None)
                _run_child(conn, request, fds)  # never returns
            parsed = command_of(list(request.get("argv", [])))
            log.info("command %d: `tierflow %s ...` in pid %d", self.served, parsed[1] if parsed else "?", pid)
            self._write_state()
        except (OSError, ValueError) as exc:
            log.warning("a connection failed: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()


def _stdio(encodings: list[str | None]) -> None:
    """New ``sys.stdin/stdout/stderr`` on descriptors 0-2 (now the command's): buffering and
    encoding as the ``tierflow`` process would have them."""
    enc = [e or "utf-8" for e in (list(encodings) + [None] * 3)[:3]]
    sys.stdin = sys.__stdin__ = open(0, encoding=enc[0], closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=enc[1], closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding=enc[2], errors="backslashreplace",  # noqa: SIM115
                                       closefd=False)
    for handler in logging.getLogger().handlers:  # the executor's log lines do not belong in a command's output
        logging.getLogger().removeHandler(handler)


def _take_over_process(request: dict[str, Any]) -> str | None:
    """Take the ``tierflow`` process's umask, niceness, CPU affinity and resource limits; the
    reason it cannot (another cgroup, a limit above this process's hard limit, a priority
    only root may raise), or None."""
    import resource

    if request.get("cgroup") != _read_cgroup():
        return "another cgroup (its memory and CPU limits would not apply here)"
    try:
        for name, (soft, hard) in request.get("rlimits", {}).items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        if request.get("nice") is not None and request["nice"] != os.getpriority(os.PRIO_PROCESS, 0):
            os.setpriority(os.PRIO_PROCESS, 0, int(request["nice"]))
        if request.get("affinity"):
            os.sched_setaffinity(0, set(request["affinity"]))
    except (OSError, ValueError, AttributeError) as exc:
        return f"its limits or priority cannot be taken here ({exc})"
    os.umask(int(request.get("umask", 0o022)))
    return None


def _read_cgroup() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def _turned_off(argv: list[str]) -> bool:
    """Whether the command's configuration no longer wants this executor (``[prefect].executor
    = false``, or no managed server): then it is refused, and this executor ends."""
    from tierflow.configs import load_config
    from tierflow.flows.runtime.executor_client import command_of

    parsed = command_of(argv)
    try:
        prefect = load_config(parsed[0] if parsed else None).prefect
    except Exception:  # noqa: BLE001 - a configuration error is the command's to report
        return False
    return not prefect.executor or prefect.server != "managed" or bool(prefect.api_url)


def _run_child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """Become the ``tierflow`` process of ``request`` and run its command; ends the process."""
    code = 1
    try:
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in request.get("ignored_signals", []):
            signal.signal(signum, signal.SIG_IGN)  # as in the tierflow process (nohup)
        os.chdir(request["cwd"])
        env = {str(k): str(v) for k, v in request["env"].items()}
        from tierflow.flows.runtime.prefect_env import reset_environment

        reset_environment(env)
        refused = _take_over_process(request)
        if refused is None and _turned_off(list(request["argv"])):
            refused = "[prefect].executor is off, or no managed server"
            os.kill(os.getppid(), signal.SIGTERM)
        if refused is not None:
            send_message(conn, {"refused": refused})
            os._exit(0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _stdio(request.get("encoding") or [])
        from tierflow.flows.cli._app import refresh_consoles

        refresh_consoles()
        finished = threading.Event()
        threading.Thread(target=_die_with_client, args=(conn, finished), daemon=True, name="tierflow-client-watch").start()
        from tierflow.flows.runtime.stopping import on_forced_exit

        on_forced_exit(lambda status: _send_exit(conn, finished, status))
        send_message(conn, {"pid": os.getpid()})
        code = _run_command(list(request["argv"]))
        _send_exit(conn, finished, code)
        conn.close()
        import atexit

        atexit._run_exitfuncs()  # Prefect drains its log and event workers here, after the command's exit is sent
    except BaseException:  # noqa: BLE001 - a child never returns into the parent's loop
        try:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(1)
    os._exit(code)


def _send_exit(conn: socket.socket, finished: threading.Event, code: int) -> None:
    """Flush the command's output, let go of its terminal and send its exit status (once)."""
    if finished.is_set():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    finished.set()
    _release_stdio()
    send_message(conn, {"exit": code})


def _run_command(argv: list[str]) -> int:
    from tierflow.flows.cli.root import main

    sys.argv = ["tierflow", *argv]
    try:
        main(in_executor=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        sys.stderr.write(f"{exc.code}\n")
        return 1
    return 0


def _release_stdio() -> None:
    """Let go of the command's terminal or pipes (a reader waiting for their end gets it now)."""
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)


def _die_with_client(conn: socket.socket, finished: threading.Event) -> None:
    """The ``tierflow`` process is gone (killed) while its command runs: end as it did."""
    try:
        while conn.recv(64):
            pass
    except OSError:
        pass
    if not finished.is_set():
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tierflow.flows.cli.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--location", required=True, help="the project (configs folder and root) it serves")
    parser.add_argument("--state", required=True, type=Path, help="its executor.json")
    parser.add_argument("--idle-minutes", type=float, default=240.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s executor[%(process)d] %(message)s", stream=sys.stderr)
    Executor(args.location, args.state, args.idle_minutes * 60).serve()


if __name__ == "__main__":
    main()
