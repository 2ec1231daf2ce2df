"""Progress of a run, told twice: a progress artifact per stage in the Prefect UI (blocks done /
total, updated as batches of blocks finish), and in-process listeners (the CLI's live display,
:func:`watch_progress`).

Artifact keys belong to one run (``run-<id>-<flow run>-<stage>-progress``: the tierflow run id
and the first 8 characters of the Prefect flow run it runs under, as projects with databases of
their own may share one Prefect server): two pipelines at once never show each other's bars.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["RunStarted", "StageEvent", "StageProgress", "announce_run", "progress_key", "watch_progress"]


@dataclass(frozen=True)
class RunStarted:
    """A run began: its ``runs.id``, its name and where to see it (``ui_url``: None when the
    Prefect API is an ephemeral one without a UI)."""

    run: int
    name: str
    flow_run_id: str | None
    ui_url: str | None


@dataclass(frozen=True)
class StageEvent:
    """A stage's count changed (``finished``: it is complete)."""

    stage: str
    done: int
    total: int
    finished: bool = False
    unit: str = "blocks"


Listener = Callable[[RunStarted | StageEvent], None]
_LISTENERS: list[Listener] = []


@contextmanager
def watch_progress(listener: Listener) -> Iterator[None]:
    """Call ``listener`` with every :class:`RunStarted` and :class:`StageEvent` of the runs in
    this process while the block runs (from any thread: keep it quick)."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def _tell(event: RunStarted | StageEvent) -> None:
    for listener in list(_LISTENERS):
        try:
            listener(event)
        except Exception:  # noqa: BLE001 - a display that fails never fails the run
            pass


def announce_run(run: int, name: str) -> RunStarted:
    """Tell the listeners that run ``run`` (named ``name``) started in the current flow run."""
    flow_run_id, ui_url = _flow_run_location()
    event = RunStarted(int(run), name, flow_run_id, ui_url)
    _tell(event)
    return event


def _flow_run_location() -> tuple[str | None, str | None]:
    """The current flow run's id and its page in the Prefect UI (None without a UI)."""
    try:
        from prefect.runtime import flow_run
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL  # type: ignore[attr-defined]

        run_id = flow_run.id
        ui = PREFECT_UI_URL.value() if PREFECT_API_URL.value() else None
    except Exception:  # noqa: BLE001 - outside a flow run there is nothing to point at
        return None, None
    return run_id, f"{str(ui).rstrip('/')}/runs/flow-run/{run_id}" if ui and run_id else None


def progress_key(run: int | None, stage: str, root_flow_run: str | None = None) -> str:
    """The progress artifact key of ``stage`` in run ``run`` under the Prefect flow run
    ``root_flow_run`` (the top-level one; Prefect keys: lowercase letters, digits and dashes).
    Run ids count per results database, so the flow run keeps two projects reporting to one
    Prefect server apart (their run 2 is not one run)."""
    scope = f"run-{run}-" if run is not None else ""
    scope += f"{str(root_flow_run)[:8]}-" if root_flow_run else ""
    text = f"{scope}{stage}-progress"
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def _root_flow_run() -> str | None:
    """The id of the top-level Prefect flow run this code runs under (None outside one)."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.root_flow_run_id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - no flow run, no API: the key goes without it
        return None


class StageProgress:
    """Progress of one stage over ``total`` blocks (Prefect progress artifact
    :func:`progress_key`) in run ``run``.

    ``advance(n)`` is called as batches finish (from any thread); the artifact is updated at
    most every ``min_interval`` seconds, and always when the stage is complete. Listeners
    (:func:`watch_progress`) hear every change.
    """

    def __init__(self, stage: str, total: int, *, run: int | None = None, unit: str = "blocks", min_interval: float = 0.5) -> None:
        from prefect.artifacts import create_progress_artifact

        self.stage, self.total, self.done, self.unit = stage, max(1, int(total)), 0, unit
        self._lock = threading.Lock()
        self._last = 0.0
        self._min_interval = min_interval
        self.key = progress_key(run, stage, _root_flow_run())
        self.artifact_id = create_progress_artifact(0.0, key=self.key, description=self._description(0))
        _tell(StageEvent(stage, 0, self.total, unit=unit))

    def _description(self, done: int) -> str:
        return f"{self.stage}: {done} / {self.total} {self.unit}"

    def advance(self, blocks: int) -> None:
        """Count ``blocks`` more as done."""
        with self._lock:
            self.done = min(self.total, self.done + int(blocks))
            done = self.done
            now = time.monotonic()
            publish = done >= self.total or now - self._last >= self._min_interval
            if publish:
                self._last = now
        _tell(StageEvent(self.stage, done, self.total, unit=self.unit))
        if publish:
            self._publish(done)

    def reach(self, blocks: int) -> None:
        """Make the count at least ``blocks`` (after a job whose exact count is known)."""
        with self._lock:
            missing = max(0, int(blocks) - self.done)
        if missing:
            self.advance(missing)

    def finish(self) -> None:
        self.reach(self.total)
        _tell(StageEvent(self.stage, self.total, self.total, finished=True, unit=self.unit))

    def _publish(self, done: int) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, 100.0 * done / self.total, description=self._description(done))
