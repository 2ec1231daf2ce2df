"""Batches of work: split file lists (blocks are planned by :func:`tasks.blockwise.plan_batches`),
submit batch tasks and collect what they return, so a flow run stays at a bounded number of task
runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["BatchOutcome", "LostBatchError", "collect_batches", "run_batches", "split_batches", "submit_batches"]

T = TypeVar("T")


def split_batches(items: Sequence[T], max_batches: int, *, min_batch: int = 1) -> list[list[T]]:
    """Split ``items`` into at most ``max_batches`` contiguous batches of near-equal size.

    Examples
    --------
    >>> split_batches(list(range(5)), 2)
    [[0, 1, 2], [3, 4]]
    >>> split_batches(list(range(5)), 10, min_batch=2)
    [[0, 1], [2, 3], [4]]
    """
    if not items:
        return []
    count = max(1, min(max_batches, -(-len(items) // max(1, min_batch))))
    size, extra = divmod(len(items), count)
    result, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        result.append(list(items[start:end]))
        start = end
    return result


@dataclass
class BatchOutcome:
    """What a set of batch tasks returned: their results, and the blocks that failed."""

    results: list[Any] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    first_error: str = ""
    lost: list[LostBatchError] = field(default_factory=list)
    """Batches whose task died without a ``BatchFailed`` (with ``lost=True``; e.g. its Dask
    worker's SLURM job ended)."""


@dataclass(frozen=True)
class LostBatchError:
    """A batch whose task raised something other than ``BatchFailed``."""

    block_ids: list[str]
    error: str


def run_batches(runner: Any, task: Any, job: Any, batches: Sequence[Sequence[str]], progress: Any = None) -> BatchOutcome:
    """Submit ``task(job=job, block_ids=batch)`` for every batch on ``runner`` and wait; a
    batch that raises ``BatchFailed`` contributes its failed block ids instead of a result.
    ``progress(n)`` is told how many blocks each finished batch completed."""
    return collect_batches(submit_batches(runner, task, job, batches), progress)


def submit_batches(runner: Any, task: Any, job: Any, batches: Sequence[Sequence[str]]) -> list[Any]:
    """Submit ``task(job=job, block_ids=batch)`` for every batch; returns the futures (see
    :func:`collect_batches`)."""
    futures = []
    for batch in batches:
        future = runner.submit(task, parameters={"job": job, "block_ids": list(batch)})
        future.tierflow_block_ids = list(batch)  # for collect_batches(lost=True)
        futures.append(future)
    return futures


def collect_batches(futures: Sequence[Any], progress: Any = None, *, lost: bool = False) -> BatchOutcome:
    """Wait for batch futures; a batch that raises ``BatchFailed`` contributes its failed block
    ids instead of a result; ``progress(n)``, if given, hears of the blocks each one finished.
    With ``lost``, a batch that raises anything else is returned in ``outcome.lost`` instead of
    raising (the caller decides whether to submit it again)."""
    from tierflow.tasks.blockwise import BatchFailed

    outcome = BatchOutcome()
    for future in futures:
        try:
            result = future.result()
            outcome.results.append(result)
            if progress is not None and isinstance(result, dict):
                progress(int(result.get("done", 0)) + int(result.get("skipped", 0)))
        except BatchFailed as exc:
            outcome.failed.extend(exc.block_ids)
            outcome.first_error = outcome.first_error or exc.message
        except Exception as exc:
            if not lost or not hasattr(future, "tierflow_block_ids"):
                raise
            outcome.lost.append(LostBatchError(list(future.tierflow_block_ids), f"{type(exc).__name__}: {exc}"[:2000]))
    return outcome
