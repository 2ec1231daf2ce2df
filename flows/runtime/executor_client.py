"""Hand a command to the project's warm executor: the client half (no Prefect, no pydantic).

A new ``tierflow op`` run in a fresh process spends most of its time importing (Prefect alone is
~1 s here; zarr, SQLAlchemy and tierflow's flow modules ~0.5 s more) before a ~0.4 s flow run.
The warm executor (:mod:`flows.cli.executor`) is a process beside the managed Prefect server
that has imported all of that once; for each command it forks a child that runs the command
exactly as the ``tierflow`` process would, on that process's own terminal (this module passes
its stdin, stdout and stderr over a Unix socket, as Mercurial's ``chg`` does), in its working
directory and with its environment. The ``tierflow`` process waits for the child's exit status
and exits with it; Ctrl-C, SIGTERM and SIGHUP are passed on to the child, and if the
``tierflow`` process is killed (SIGKILL) its child is killed too, so a command behaves the same
whichever process runs it.

A command goes to the executor only when one is listening for exactly this situation; its
socket name (Linux abstract namespace; the executor serves only its own user, by
``SO_PEERCRED``) is derived from the user, the configs folder, the environment variables that
shape what is imported (``PREFECT_*``, ``TIERFLOW_*``, ``PYTHON*``, thread-count variables …),
the interpreter and a stamp of tierflow's source files and of ``sys.path``. Any change (an
edited module, a package installed, another ``PREFECT_API_URL``) gives another name, finds no
executor, and the command runs in its own process as before — which also starts a fresh
executor for the next commands. Everything else (``--debug``, read-only commands, other
platforms, ``[prefect].executor = false``) runs in its own process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.configs import TierflowConfig

__all__ = ["ROUTED_COMMANDS", "command_of", "delegate", "executor_files", "executor_info", "location_key", "process_settings",
           "read_message", "send_message", "serves_this_process", "socket_name", "start_executor", "stop_executor"]

ROUTED_COMMANDS = frozenset({"op", "resume", "track", "ingest", "promote", "retention", "run", "demo"})
"""The commands that run flows (and so import Prefect): the ones the executor takes."""

_ENV_PREFIXES = ("PREFECT_", "TIERFLOW_", "PYTHON", "DO_NOT_TRACK", "OMP_", "OPENBLAS_", "MKL_", "NUMEXPR_", "NUMBA_", "BLIS_",
                 "LD_", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "HOME", "ZARR_", "DASK_", "AWS_CONFIG_FILE", "TZ")
"""Environment variables that can change what a process imports or how: the executor imported
under one set of values serves only commands with the same values. Not ``VIRTUAL_ENV`` (the
interpreter is in the digest) nor ``XDG_SESSION_ID`` and the like (they differ per login, and
every login would start an executor of its own)."""
_PEERCRED = struct.Struct("3i")
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 16 << 20


def _code_roots() -> list[str]:
    """tierflow's package folders (an editable install maps its subpackages to the repository)."""
    import importlib.util

    roots: list[str] = []
    for name in ("tierflow", "tierflow.flows", "tierflow.tasks", "tierflow.storage", "tierflow.configs"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.extend(spec.submodule_search_locations)
    return sorted(set(roots))


def _walk(folder: str) -> Iterator[os.DirEntry[str]]:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if entry.name != "__pycache__" and not entry.name.startswith("."):
                yield from _walk(entry.path)
        elif entry.name.endswith((".py", ".toml")):
            yield entry


def code_stamp() -> str:
    """A stamp of the code a process would import: tierflow's source files (names, sizes,
    mtimes; ~300 files, a few ms) and the ``site-packages`` folders on ``sys.path`` (a package
    installed or removed changes their mtime)."""
    digest = hashlib.sha256()
    for root in _code_roots():
        for entry in sorted(_walk(root), key=lambda e: e.path):
            stat = entry.stat()
            digest.update(f"{entry.path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    for folder in sys.path:
        if not folder.endswith(("site-packages", "dist-packages")):
            continue  # sys.path[0] is the script's folder or the working directory: not the code
        try:
            digest.update(f"{folder}\0{os.stat(folder or '.').st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{folder}\0-\n".encode())
    return digest.hexdigest()


def environment_stamp(env: Mapping[str, str]) -> str:
    """A stamp of the variables in ``env`` that shape a process (see ``_ENV_PREFIXES``)."""
    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}\n".encode())
    for key in sorted(env):
        if key.startswith(_ENV_PREFIXES):
            digest.update(f"{key}={env[key]}\n".encode())
    return digest.hexdigest()


def location_key(config_dir: Path | None, project_root: Path) -> str:
    """Which project a command is about: its configs folder and project root."""
    return f"{config_dir}\n{project_root}"


def socket_name(location: str, env: Mapping[str, str]) -> bytes:
    """The executor's abstract socket name for a project, an environment and the code as it is now."""
    stamp = hashlib.sha256(f"{os.getuid()}\0{location}\0{environment_stamp(env)}\0{code_stamp()}".encode()).hexdigest()
    return b"\0tierflow-executor-" + stamp[:40].encode()


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: list[int] | None = None) -> None:
    """One length-prefixed JSON message (with file descriptors passed alongside, if given)."""
    data = json.dumps(message).encode()
    frame = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], fds)
        sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, size: int, prefix: bytes = b"") -> bytes | None:
    data = bytearray(prefix)
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_message(sock: socket.socket, *, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message (``None`` when the peer closed the connection) and any descriptors."""
    fds: list[int] = []
    if max_fds:
        first, fds, _, _ = socket.recv_fds(sock, 65536, max_fds)
        if not first:
            return None, fds
    else:
        first = sock.recv(_HEADER.size)
        if not first:
            return None, fds
    head = _recv_exact(sock, _HEADER.size, first[:_HEADER.size])
    if head is None:
        return None, fds
    (size,) = _HEADER.unpack(head)
    if size > _MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes from the executor's peer")
    body = _recv_exact(sock, size, first[_HEADER.size:])
    if body is None:
        return None, fds
    return dict(json.loads(body)), fds


def command_of(argv: list[str]) -> tuple[str | None, str | None] | None:
    """(``--config`` value, command name) of a command line; ``None`` when it is not one for the
    executor (``--debug``, ``--help``, completion)."""
    config: str | None = None
    command: str | None = None
    args = iter(argv)
    for arg in args:
        if arg in ("--debug", "--help", "-h", "--install-completion", "--show-completion"):
            return None
        if command is None:
            if arg == "--config":
                config = next(args, None)
            elif arg.startswith("--config="):
                config = arg.split("=", 1)[1]
            elif arg.startswith("-"):
                return None
            else:
                command = arg
    if any(key.startswith("_TIERFLOW_COMPLETE") for key in os.environ):
        return None
    return config, command


def delegate(argv: list[str]) -> int | None:
    """Run a command line in the project's warm executor, if one is listening for it.

    Returns
    -------
    int or None
        The command's exit status, or ``None`` when no executor took it (run it here).
    """
    if sys.platform != "linux":
        return None
    parsed = command_of(argv)
    if parsed is None or parsed[1] not in ROUTED_COMMANDS:
        return None
    from tierflow.configs.layers import find_config_dir
    from tierflow.flows.runtime.launch_env import launch_environment
    from tierflow.storage.errors import ConfigError

    try:
        location = find_config_dir(parsed[0])
    except ConfigError:
        return None  # said by the command itself
    env = launch_environment()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_name(location_key(location.config_dir, location.project_root), env))
        if not _ours(sock):
            sock.close()
            return None
        stdio = [0, 1, 2]
        for fd in stdio:
            os.fstat(fd)  # a closed descriptor: run here
        ignored = [int(signum) for signum in _PASSED_ON if signal.getsignal(signum) == signal.SIG_IGN]
        send_message(sock, {"argv": argv, "cwd": os.getcwd(), "env": dict(env), "ignored_signals": ignored, **process_settings(),
                            "encoding": [getattr(stream, "encoding", None) or "utf-8" for stream in (sys.stdin, sys.stdout, sys.stderr)]},
                     stdio)
        reply, _ = read_message(sock)
    except (OSError, ValueError):
        sock.close()
        return None
    if reply is None or "pid" not in reply:  # refused (another cgroup, limits it cannot take, executor turned off)
        sock.close()
        return None
    return _wait(sock, int(reply["pid"]), set(ignored))


def _ours(sock: socket.socket) -> bool:
    """Whether the process listening on ``sock`` runs as this user: an abstract socket has no
    file permissions, so another user could bind the name once the executor is gone, and would
    get this command's environment and terminal."""
    _, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid == os.getuid():
        return True
    sys.stderr.write(f"warning: the tierflow executor socket of this project is held by another user (uid {uid}); "
                     "running here, not there\n")
    return False


def process_settings() -> dict[str, Any]:
    """What a process inherits besides its environment, which the executor's child takes over
    (or refuses, and the command runs in its own process): umask, niceness, CPU affinity,
    resource limits and cgroup (a SLURM job's or a systemd unit's memory and CPU limits)."""
    import resource

    mask = os.umask(0)
    os.umask(mask)
    limits = {name: list(resource.getrlimit(getattr(resource, name))) for name in dir(resource) if name.startswith("RLIMIT_")}
    return {"umask": mask, "nice": os.getpriority(os.PRIO_PROCESS, 0), "affinity": sorted(os.sched_getaffinity(0)),
            "rlimits": limits, "cgroup": _cgroup()}


def _cgroup() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


_PASSED_ON = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def _wait(sock: socket.socket, pid: int, ignored: set[int]) -> int:
    """Pass signals on to the command's process until its exit status arrives; Ctrl-Z stops it
    with this process (and ``fg`` continues both). If it ends without a status after a signal
    was passed on, this process ends by that signal too, as the command would have."""
    passed: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        passed.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def suspend(_signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT

    def resume(_signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        signal.signal(signal.SIGTSTP, suspend)

    for signum in _PASSED_ON:
        if signum not in ignored:  # e.g. SIGHUP under nohup: the command ignores it too
            signal.signal(signum, forward)
    signal.signal(signal.SIGTSTP, suspend)
    signal.signal(signal.SIGCONT, resume)
    try:
        message, _ = read_message(sock)
    except (OSError, ValueError):
        message = None
    finally:
        sock.close()
    if message is not None and "exit" in message:
        return int(message["exit"])
    if passed:  # ended by the signal it was given, as this process would have been
        signal.signal(passed[-1], signal.SIG_DFL)
        os.kill(os.getpid(), passed[-1])
        return 128 + passed[-1]
    sys.stderr.write(f"error: the command's process (pid {pid}, forked by tierflow's warm executor) ended without an "
                     "exit status; it was killed or crashed (`tierflow server status` names the executor's log)\n")
    return 1


def serves_this_process(config: TierflowConfig) -> bool:
    """Whether an executor listens for this process's environment and code (the next command
    from this shell goes to it)."""
    from tierflow.flows.runtime.launch_env import launch_environment

    return _listening(socket_name(location_key(config.meta.config_dir, config.meta.project_root), launch_environment()))


# -- the executor's lifecycle, for the command line and `tierflow server` ---------------------------


def executor_files(config: TierflowConfig) -> tuple[Path, Path]:
    """``executor.json`` and ``executor.log`` beside the managed Prefect server's files."""
    root = config.state_dir / "prefect"
    return root / "executor.json", root / "executor.log"


def _listening(name: bytes) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(name)
        except OSError:
            return False
        return True


def start_executor(config: TierflowConfig, *, wait: float = 0.0) -> bool:
    """Start the warm executor of ``config``'s project in the background unless one listens (or is
    starting) for this process's environment and code; returns whether one was started.

    With ``wait`` (seconds), wait until it listens (``tierflow server start``); otherwise never
    wait: the commands after this one use it once it has imported everything (a few seconds).
    """
    if sys.platform != "linux" or not config.prefect.executor:
        return False
    import subprocess
    import time

    from tierflow.flows.runtime.launch_env import launch_environment

    env = launch_environment()
    location = location_key(config.meta.config_dir, config.meta.project_root)
    name = socket_name(location, env)
    if _listening(name):
        return False
    state, log = executor_files(config)
    starting = state.with_name("executor.starting")
    started = False
    if _process_of(starting) is None:
        state.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "tierflow.flows.cli.executor", "--location", location, "--state", str(state),
                 "--idle-minutes", str(config.prefect.executor_idle_minutes)],
                env=dict(env), cwd=str(config.meta.project_root) if config.meta.project_root.is_dir() else None,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True)
        _write_process(starting, process.pid)
        started = True
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not _listening(name):
        time.sleep(0.1)
    return started


def _write_process(path: Path, pid: int) -> None:
    import psutil

    try:
        path.write_text(json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time()}))
    except (OSError, psutil.Error):
        pass


def _process_of(path: Path) -> dict[str, Any] | None:
    """The JSON of ``path`` if the process it names (pid and start time) still runs."""
    import psutil

    try:
        info = json.loads(path.read_text())
        process = psutil.Process(int(info["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE or abs(process.create_time() - float(info["create_time"])) >= 1.0:
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return dict(info)


def executor_info(config: TierflowConfig) -> dict[str, Any] | None:
    """What ``executor.json`` says (pid, start, commands served, log), if its process still runs."""
    state, log = executor_files(config)
    info = _process_of(state)
    return None if info is None else {**info, "log": str(log)}


def stop_executor(config: TierflowConfig, timeout: float = 10.0) -> int | None:
    """Stop the warm executor (commands it is running go on to their end); its pid, or ``None``."""
    import psutil

    info = executor_info(config)
    if info is None:
        return None
    pid = int(info["pid"])
    try:
        process = psutil.Process(pid)
        process.terminate()
        process.wait(timeout)
    except psutil.TimeoutExpired:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass
    executor_files(config)[0].unlink(missing_ok=True)
    return pid
