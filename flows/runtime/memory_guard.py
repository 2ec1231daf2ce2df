"""Stop a run cleanly before the machine swaps (checked at stage boundaries)."""

from __future__ import annotations

import psutil

from tierflow.errors import MemoryLimitError

__all__ = ["MemoryGuard", "MemoryLimitError"]


class MemoryGuard:
    """Checks the machine's RAM in use against a limit (percent of total)."""

    def __init__(self, limit_percent: float) -> None:
        self.limit_percent = float(limit_percent)

    def used_percent(self) -> float:
        memory = psutil.virtual_memory()
        return 100.0 * (memory.total - memory.available) / memory.total

    def check(self, stage: str, *, run_id: int | None = None) -> None:
        """Raise :class:`MemoryLimitError` naming ``stage`` if RAM in use exceeds the limit.

        Raises
        ------
        MemoryLimitError
            Before ``stage`` starts; whatever earlier stages finished stays done.
        """
        used = self.used_percent()
        if used > self.limit_percent:
            resume = f"`tierflow resume {run_id}`" if run_id is not None else "the same command"
            raise MemoryLimitError(
                f"stopped before stage {stage!r}: {used:.0f} % of RAM in use, above the limit of "
                f"{self.limit_percent:g} % ([execution].memory_limit_percent); finished stages are kept",
                hint=f"free memory (or raise the limit, or use smaller blocks), then {resume} goes on from here",
            )
