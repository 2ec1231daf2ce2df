"""The terminal's view of a pipeline run while it runs: where to watch it (the Prefect UI page of
the run), then the current stage with blocks done / total and the time it took.

On a terminal a Rich progress display shows a bar per stage; without one (a log file, CI) one
line per finished stage is printed. Both hear the run through
:func:`tierflow.flows.runtime.progress.watch_progress` (the pipeline runs in this process).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

__all__ = ["NO_UI_HINT", "live_progress"]

NO_UI_HINT = ("no Prefect UI for this run (it reports to a temporary Prefect server that ends with the command); to watch runs, "
              "let tierflow run its own Prefect server: [prefect].server = \"managed\" (the default; `tierflow ui` prints its URL)")


class _LiveView:
    """Turns progress events into a Rich display (``progress``) or into lines (None)."""

    def __init__(self, console: Console, progress: Progress | None) -> None:
        self.console, self.progress = console, progress
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stages: dict[str, tuple[TaskID | None, float, bool]] = {}  # stage -> (bar, started, finished)
        self._announced = False

    def __call__(self, event: Any) -> None:
        from tierflow.flows.runtime.progress import RunStarted

        with self._lock:
            if isinstance(event, RunStarted):
                self._run_started(event)
            else:
                self._stage(event)

    def _print(self, text: str) -> None:
        (self.progress.console if self.progress is not None else self.console).print(text, soft_wrap=True, highlight=False, markup=False)

    def _run_started(self, event: Any) -> None:
        if self._announced:
            return  # a nested run (ingest inside a pipeline) is shown as its stages
        self._announced = True
        where = f"Prefect UI: {event.ui_url}" if event.ui_url else NO_UI_HINT
        self._print(f"run {event.run}: {event.name}\n  {where}\n  `tierflow status {event.run}` shows its stages from another shell")

    def _stage(self, event: Any) -> None:
        bar, started, finished = self._stages.get(event.stage, (None, 0.0, True))
        if finished and not event.finished:  # a stage starts (or starts again)
            started = time.monotonic()
            bar = self.progress.add_task(event.stage, total=event.total) if self.progress is not None else None
            finished = False
        if self.progress is not None and bar is not None:
            self.progress.update(bar, completed=event.done, total=event.total)
        if event.finished and not finished:
            finished = True
            if self.progress is None:
                self._print(f"{event.stage}: {event.done}/{event.total} {event.unit} in {time.monotonic() - started:.1f} s "
                            f"(elapsed {time.monotonic() - self.started:.1f} s)")
        self._stages[event.stage] = (bar, started, finished)


@contextmanager
def live_progress(console: Console, enabled: bool = True) -> Iterator[None]:
    """Show the progress of the runs in this process on ``console`` while the block runs
    (``enabled=False``: nothing, for ``--json``)."""
    from tierflow.flows.runtime.progress import watch_progress

    if not enabled:
        yield
        return
    if not console.is_terminal:
        with watch_progress(_LiveView(console, None)):
            yield
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress, watch_progress(_LiveView(console, progress)):
        yield
