"""Split work into batches so a flow run stays at a bounded number of task runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["split_batches"]

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
