"""Split work into batches so a flow run stays at a bounded number of task runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["BatchOutcome", "OpContext", "run_batches", "split_batches"]

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


@dataclass(frozen=True)
class OpContext:
    """What every multi-stage operation (label, downsample, features) is run with."""

    db: Any
    run_id: int
    op_key: str
    source: Any
    target: Any
    shape: tuple[int, ...]
    block_shape: tuple[int, ...]
    params: dict[str, Any]
    workers: int
    max_batches: int
    fault: Any = None


@dataclass
class BatchOutcome:
    """What a set of batch tasks returned: their results, and the blocks that failed."""

    results: list[Any] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    first_error: str = ""


def run_batches(runner: Any, task: Any, job: Any, batches: Sequence[Sequence[str]]) -> BatchOutcome:
    """Submit ``task(job=job, block_ids=batch)`` for every batch on ``runner`` and wait; a
    batch that raises ``BatchFailed`` contributes its failed block ids instead of a result."""
    from tasks.blockwise import BatchFailed

    outcome = BatchOutcome()
    futures = [runner.submit(task, parameters={"job": job, "block_ids": list(batch)}) for batch in batches]
    for future in futures:
        try:
            outcome.results.append(future.result())
        except BatchFailed as exc:
            outcome.failed.extend(exc.block_ids)
            outcome.first_error = outcome.first_error or exc.message
    return outcome
