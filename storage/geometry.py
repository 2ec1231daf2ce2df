"""Block geometry: regions of interest, blocks with halos, and the block grid of an array.

A :class:`Block` has a *write ROI* (the voxels it owns in the output, aligned to the output's
chunks) and a *read ROI* (the write ROI grown by the kernel's halo, clipped to the array). Block
ids come from the grid position (``"2.0.3"``), so re-planning the same array and block shape gives
the same ids, which is what lets the ledger say which blocks are done.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product

from tierflow.storage.errors import InvalidParameterError, TierflowError

__all__ = ["Block", "BlockGrid", "Roi", "fit_block_shape", "inner_chunks", "normalise_halo", "parse_block_shape"]


def parse_block_shape(text: str | Sequence[int], *, key: str = "--block-shape", ndim: int | None = None) -> tuple[int, ...]:
    """A block shape from ``"z,y,x"`` text (or a sequence): positive integers, ``ndim`` of them.

    Raises
    ------
    InvalidParameterError
        Naming ``key``, the value given and what is allowed.
    """
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(str(part).strip()) for part in parts)
    except ValueError:
        shape = ()
    allowed = f"{ndim} positive integers" if ndim else "positive integers"
    if not shape or any(side <= 0 for side in shape) or (ndim is not None and len(shape) != ndim):
        shown = text if isinstance(text, str) else ",".join(map(str, text))
        raise InvalidParameterError(f"{key} {shown!r} is not a block shape",
                                    hint=f"give {allowed} separated by commas, one per axis (z,y,x), e.g. 64,256,256")
    return shape


def fit_block_shape(block_shape: Sequence[int], shape: Sequence[int], *, leading: int = 0, axes: str = "",
                    key: str = "block shape") -> tuple[int, ...]:
    """A block shape for an array of ``shape`` whose first ``leading`` axes are not spatial
    (time, channel): one given per axis is kept; more are cut to the last ones (a z,y,x default
    for a 2-D image); one per spatial axis gets block side 1 on the leading axes (each block
    holds one time point and channel).

    Raises
    ------
    InvalidParameterError
        If fewer sides are given than the array has spatial axes.
    """
    given, ndim = tuple(int(b) for b in block_shape), len(shape)
    if len(given) >= ndim:
        return given[len(given) - ndim:]
    spatial = ndim - leading
    if len(given) >= spatial:
        return (1,) * (ndim - len(given)) + given
    named = f" (axes {axes})" if axes else ""
    also = f" (or {spatial}, one per spatial axis)" if spatial != ndim else ""
    raise InvalidParameterError(f"{key} {','.join(map(str, given))!r} has {len(given)} axes but the input has {ndim}{named}",
                                hint=f"give {ndim} positive integers{also} separated by commas, one per axis")


@dataclass(frozen=True)
class Roi:
    """An axis-aligned box: ``offset`` (inclusive) and ``shape``, one entry per axis."""

    offset: tuple[int, ...]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.offset) != len(self.shape):
            raise ValueError(f"Roi offset {self.offset} and shape {self.shape} differ in axes")

    @property
    def end(self) -> tuple[int, ...]:
        """Exclusive end per axis."""
        return tuple(o + s for o, s in zip(self.offset, self.shape, strict=True))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of voxels."""
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        """Slices selecting this ROI from the whole array."""
        return tuple(slice(o, e) for o, e in zip(self.offset, self.end, strict=True))

    def grow(self, halo: Sequence[int], within: Sequence[int]) -> Roi:
        """This ROI grown by ``halo`` on every side, clipped to ``[0, within)``."""
        start = tuple(max(0, o - h) for o, h in zip(self.offset, halo, strict=True))
        stop = tuple(min(w, e + h) for e, h, w in zip(self.end, halo, within, strict=True))
        return Roi(start, tuple(b - a for a, b in zip(start, stop, strict=True)))

    def relative_to(self, outer: Roi) -> tuple[slice, ...]:
        """Slices selecting this ROI from an array that holds ``outer``."""
        return tuple(slice(o - p, o - p + s) for o, p, s in zip(self.offset, outer.offset, self.shape, strict=True))

    def union(self, other: Roi) -> Roi:
        """The bounding box of both ROIs."""
        start = tuple(min(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        stop = tuple(max(a, b) for a, b in zip(self.end, other.end, strict=True))
        return Roi(start, tuple(b - a for a, b in zip(start, stop, strict=True)))


@dataclass(frozen=True)
class Block:
    """One block of work: ``write_roi`` it owns, ``read_roi`` it reads (write ROI + halo)."""

    block_id: str
    index: tuple[int, ...]
    write_roi: Roi
    read_roi: Roi

def normalise_halo(halo: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """One non-negative halo width per axis."""
    values = (halo,) * ndim if isinstance(halo, int) else tuple(int(h) for h in halo)
    if len(values) != ndim or any(h < 0 for h in values):
        raise TierflowError(f"halo {halo!r} must be one non-negative integer or one per axis ({ndim} axes)")
    return values


class BlockGrid:
    """The blocks of an array of ``shape`` cut into ``block_shape`` pieces (last ones smaller).

    Parameters
    ----------
    shape
        Array shape (z, y, x) or (y, x).
    block_shape
        Block shape, one entry per axis.
    halo
        Halo width, one integer or one per axis.

    Examples
    --------
    >>> grid = BlockGrid((37, 101, 77), (16, 32, 32), halo=2)
    >>> grid.grid_shape, len(grid)
    ((3, 4, 3), 36)
    >>> grid.block("2.3.2").write_roi
    Roi(offset=(32, 96, 64), shape=(5, 5, 13))
    """

    def __init__(self, shape: Sequence[int], block_shape: Sequence[int], halo: int | Sequence[int] = 0) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.block_shape = tuple(int(b) for b in block_shape)
        if len(self.block_shape) != len(self.shape):
            raise TierflowError(
                f"block_shape {self.block_shape} has {len(self.block_shape)} axes but the array has {len(self.shape)}"
            )
        if any(b <= 0 for b in self.block_shape):
            raise TierflowError(f"block_shape {self.block_shape} must be positive on every axis")
        self.halo = normalise_halo(halo, len(self.shape))
        self.grid_shape = tuple(math.ceil(s / b) if s else 0 for s, b in zip(self.shape, self.block_shape, strict=True))

    def __len__(self) -> int:
        return math.prod(self.grid_shape)

    def __iter__(self) -> Iterator[Block]:
        for index in product(*(range(n) for n in self.grid_shape)):
            yield self.block_at(index)

    def block_at(self, index: Sequence[int]) -> Block:
        """The block at grid position ``index``."""
        index = tuple(int(i) for i in index)
        if len(index) != len(self.grid_shape) or any(not 0 <= i < n for i, n in zip(index, self.grid_shape, strict=True)):
            raise TierflowError(f"block index {index} is outside the grid {self.grid_shape}")
        offset = tuple(i * b for i, b in zip(index, self.block_shape, strict=True))
        shape = tuple(min(b, s - o) for b, s, o in zip(self.block_shape, self.shape, offset, strict=True))
        write = Roi(offset, shape)
        return Block(".".join(map(str, index)), index, write, write.grow(self.halo, self.shape))

    def block(self, block_id: str) -> Block:
        """The block with id ``"i.j.k"``."""
        try:
            index = tuple(int(part) for part in block_id.split("."))
        except ValueError:
            raise TierflowError(f"block id {block_id!r} is not of the form 'i.j.k'") from None
        return self.block_at(index)

    def neighbours(self, block: Block) -> Iterator[tuple[int, Block]]:
        """The next block along each axis (``axis, block``), where there is one."""
        for axis, n in enumerate(self.grid_shape):
            if block.index[axis] + 1 < n:
                index = list(block.index)
                index[axis] += 1
                yield axis, self.block_at(index)


def inner_chunks(shard_shape: Sequence[int]) -> tuple[int, ...]:
    """The chunks inside a shard: each axis cut in 4 (or 2) where that leaves at least 8
    voxels, so a shard object holds up to 64 chunks that a viewer reads one by one."""
    return tuple(next((s // k for k in (4, 2) if s % k == 0 and s // k >= 8), s) for s in shard_shape)
