"""A progress artifact per pipeline stage: blocks done / total in the Prefect UI, updated as
batches of blocks finish."""

from __future__ import annotations

import threading
import time

__all__ = ["StageProgress"]


class StageProgress:
    """Progress of one stage over ``total`` blocks (Prefect progress artifact ``<key>``).

    ``advance(n)`` is called as batches finish (from any thread); the artifact is updated at
    most every ``min_interval`` seconds, and always when the stage is complete.
    """

    def __init__(self, stage: str, total: int, *, key_prefix: str = "", min_interval: float = 0.5) -> None:
        from prefect.artifacts import create_progress_artifact

        self.stage, self.total, self.done = stage, max(1, int(total)), 0
        self._lock = threading.Lock()
        self._last = 0.0
        self._min_interval = min_interval
        key = f"{key_prefix}{stage}-progress".lower().replace("_", "-")
        self.artifact_id = create_progress_artifact(0.0, key=key, description=self._description())

    def _description(self) -> str:
        return f"{self.stage}: {self.done} / {self.total} blocks"

    def advance(self, blocks: int) -> None:
        """Count ``blocks`` more as done."""
        with self._lock:
            self.done = min(self.total, self.done + int(blocks))
            now = time.monotonic()
            if self.done < self.total and now - self._last < self._min_interval:
                return
            self._last = now
            done = self.done
        self._publish(done)

    def reach(self, blocks: int) -> None:
        """Make the count at least ``blocks`` (after a job whose exact count is known)."""
        with self._lock:
            missing = max(0, int(blocks) - self.done)
        if missing:
            self.advance(missing)

    def finish(self) -> None:
        self.reach(self.total)

    def _publish(self, done: int) -> None:
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, 100.0 * done / self.total, description=f"{self.stage}: {done} / {self.total} blocks")
