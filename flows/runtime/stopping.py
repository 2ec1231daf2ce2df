"""Stop the ``tierflow`` command within seconds on SIGTERM or Ctrl-C, with its runs marked.

On the first SIGTERM or SIGINT, :func:`stop_on_signals`

* raises :class:`StopRequested` (a ``KeyboardInterrupt``; inside a flow run, Prefect's own
  ``TerminationSignal`` for SIGTERM) in the main thread, so the run in progress unwinds as
  usual: its ``runs`` row becomes ``cancelled`` with the signal's name, Prefect records the
  flow run's end, the CLI prints one line;
* starts a thread that marks every run of this process ``cancelled`` at once (so the reason is
  recorded whatever happens next) and another that, if the process has not ended ``grace``
  seconds later, stops Prefect's ephemeral server and ends the process with ``os._exit``.
  Unwinding can wait on a block batch that is still computing: Prefect's thread pool joins its
  workers when the flow's task runner closes, and Python joins non-daemon threads at exit.

A second signal ends the process at once. The blocks of every batch that finished stay in the
ledger, so ``tierflow resume RUN`` computes only the others (the batch cut short included).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["StopRequested", "on_forced_exit", "stop_on_signals", "stop_signal"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESEND_WINDOW = 1.0
"""Seconds after the first signal in which another is taken for Prefect's own re-send: a flow
run's SIGTERM handler restores the handler it replaced and ``os.kill``s the process again."""
_RECEIVED: list[int] = []
_FIRST_AT: list[float] = []
_BEFORE_EXIT: list[Callable[[int], None]] = []


def on_forced_exit(hook: Callable[[int], None]) -> None:
    """Call ``hook(status)`` right before the process ends with ``os._exit`` (the grace ran out,
    or a second signal): a child of the warm executor sends its exit status on."""
    _BEFORE_EXIT.append(hook)


def _force_exit(status: int) -> None:
    for hook in _BEFORE_EXIT:
        try:
            hook(status)
        except Exception:  # noqa: BLE001 - on the way out: the exit must happen
            pass
    os._exit(status)


class StopRequested(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, or Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def stop_signal() -> int | None:
    """The signal that asked this process to stop, if one did."""
    return _RECEIVED[0] if _RECEIVED else None


def _stop_ephemeral_server() -> None:
    """Stop Prefect's ephemeral API server if this process started one (as Prefect's own
    ``atexit`` hook would, which ``os._exit`` skips)."""
    server = sys.modules.get("prefect.server.api.server")
    if server is None:
        return
    for instance in list(server.SubprocessASGIServer._instances.values()):
        try:
            instance.stop()
        except Exception:  # noqa: BLE001 - best effort on the way out; its watchdog ends it anyway
            pass


def _cancel_runs(signum: int) -> None:
    runs = sys.modules.get("tierflow.flows.runtime.runs")  # not imported (as by --help): no run to mark
    if runs is None:
        return
    try:
        runs.cancel_live_runs(runs.stop_message(signum))
    except Exception:  # noqa: BLE001 - database away: the runs read as crashed once this process is gone
        pass


def _say_stopped(signum: int) -> None:
    sys.stderr.write(f"error: stopped by {signal.Signals(signum).name}; blocks already done are kept "
                     "(`tierflow runs list` shows the run; `tierflow resume RUN` finishes it)\n")
    sys.stderr.flush()


def _exit_after(signum: int, grace: float) -> None:
    time.sleep(grace)
    _stop_ephemeral_server()
    _say_stopped(signum)
    _force_exit(128 + signum)


def _watch(read_fd: int, grace: float) -> None:
    """Hear every signal the moment it arrives, whichever Python handler runs for it."""
    while True:
        for signum in os.read(read_fd, 64):
            if signum not in STOP_SIGNALS:
                continue
            if _RECEIVED:
                if time.monotonic() - _FIRST_AT[0] < RESEND_WINDOW:
                    continue  # Prefect re-sends the signal to the handler it replaced: the same stop
                _say_stopped(signum)
                _force_exit(128 + signum)  # a second signal: stop now
            _RECEIVED.append(signum)
            _FIRST_AT.append(time.monotonic())
            # two threads: marking the runs may wait on the database, the exit must not
            threading.Thread(target=_exit_after, args=(signum, grace), name="tierflow-stop-timer", daemon=True).start()
            threading.Thread(target=_cancel_runs, args=(signum,), name="tierflow-stop-runs", daemon=True).start()


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)


def stop_on_signals(grace: float = 3.0) -> None:
    """Handle SIGTERM and SIGINT as described in this module (call once, from the main thread).

    Prefect replaces the SIGTERM handler while a flow runs (its handler raises
    ``TerminationSignal``), so the stop does not rely on a handler: the signal's number reaches a
    watcher thread through :func:`signal.set_wakeup_fd`, written by the interpreter's own C-level
    handler for every handled signal.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    threading.Thread(target=_watch, args=(read_fd, grace), name="tierflow-signal-watch", daemon=True).start()
