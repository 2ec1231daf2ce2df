"""Output arrays of block-wise operations: where they live and how they are created.

An output is created with chunks that divide the block shape, so every block writes whole
chunks and no two blocks ever write the same chunk. Scratch arrays use Blosc-LZ4 (on 2 cores the
codec, not the disk, limits I/O: zstd wrote ~100 MiB/s here, lz4 ~200 MiB/s).
"""

from __future__ import annotations

import json

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tierflow.storage.errors import TierError, TierflowError
from tierflow.storage.geometry import inner_chunks
from tierflow.storage.tiers.base import Tier

__all__ = ["LABEL_STATE_SUFFIX", "ArrayLocation", "ChunkWriter", "array_sidecars", "check_chunks_align", "check_output_layout",
           "check_writable", "create_output_array", "output_layout"]

LABEL_STATE_SUFFIX = ".tierflow-label"
"""Label's merge state lives beside its output array, under ``<array key>.tierflow-label/<op key>/``."""


def array_sidecars(key: str) -> list[str]:
    """The folders tierflow keeps beside the array at ``key`` (label's merge state): counted
    and reclaimed with the array."""
    return [f"{key.rstrip('/')}{LABEL_STATE_SUFFIX}"]


@dataclass(frozen=True)
class ArrayLocation:
    """A zarr array at ``key`` on ``tier``."""

    tier: Tier
    key: str

    @property
    def uri(self) -> str:
        return self.tier.uri(self.key)

    def exists(self) -> bool:
        return self.tier.exists(f"{self.key}/zarr.json")

    def open(self, *, read_only: bool = True) -> Any:
        import zarr

        return zarr.open_array(store=self.tier.zarr_store(self.key, read_only=read_only), mode="r" if read_only else "r+")

    def writer(self) -> ChunkWriter:
        """The array opened for block writes (see :class:`ChunkWriter`)."""
        return ChunkWriter(self.open(read_only=False))


def check_writable(location: ArrayLocation) -> None:
    """Refuse an output on a tier that takes no writes (read-only) or no new results
    (write-once: Tier 1), before any work starts.

    Raises
    ------
    TierError
        Naming the output, the tier and what to do instead.
    """
    tier = location.tier
    if tier.read_only or tier.write_once:
        kind = "read-only" if tier.read_only else "write-once"
        raise TierError(
            f"output {location.uri} is on tier {tier.name} ({tier.uri()}), which is {kind}: an operation cannot write there",
            hint="write the output under the scratch or output tier's root (see `tierflow tiers`); "
            "results reach Tier 1 only through `tierflow promote`",
        )


class ChunkWriter:
    """Writes blocks into a zarr array, skipping zarr's own empty-chunk check for blocks that
    hold data.

    zarr (``write_empty_chunks=False``) compares every chunk it writes with the fill value so
    as not to store empty chunks; that comparison cost 1.4 s of CPU per 512 MiB of uint16 here
    (writing took 2.0 s instead of 0.6 s). ``numpy.any`` answers the same question in
    milliseconds: blocks with data go through an array configured with
    ``write_empty_chunks=True``, empty ones through the default array (which stores nothing and
    removes a previous chunk).
    """

    def __init__(self, array: Any) -> None:
        self.array = array
        self._dense = array.with_config({"write_empty_chunks": True})
        fill = array.fill_value
        self._fill = None if fill is None else np.asarray(fill, dtype=array.dtype)

    def __setitem__(self, selection: Any, values: np.ndarray) -> None:
        if self._fill is None:
            self.array[selection] = values
            return
        holds_data = values.any() if not self._fill.any() and values.dtype.kind != "f" else bool(np.any(values != self._fill))
        (self._dense if holds_data else self.array)[selection] = values


def _compressors(codec: str) -> Any:
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if codec == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)]
    if codec == "zstd":
        return [ZstdCodec(level=3)]
    if codec == "none":
        return None
    raise TierflowError(f"compression {codec!r} is not one of lz4, zstd, none")


def check_chunks_align(location: ArrayLocation, block_shape: Sequence[int]) -> None:
    """Refuse an existing output array whose chunks (shards, when sharded) are not
    ``block_shape``, before anything is written.

    Every block writes exactly one chunk (or shard) of its output, which the output is created
    with; into an array chunked otherwise, a block would straddle chunks that its neighbours
    also write, and concurrent writers would corrupt each other's chunks (or, with a block shape
    that is a multiple of the chunks, reuse an array the run would not have created). A missing
    output, or one of another number of axes (refused by :func:`create_output_array`), passes.

    Raises
    ------
    TierflowError
        Naming the output, its chunks, the block shape, and what to do.
    """
    if not location.exists():
        return
    array = location.open(read_only=True)
    chunks = tuple(int(c) for c in (array.shards or array.chunks))
    block_shape = tuple(int(b) for b in block_shape)
    if len(chunks) != len(block_shape) or chunks == block_shape:
        return
    what = "shards" if array.shards else "chunks"
    straddle = any(b % c for b, c in zip(block_shape, chunks, strict=True))
    raise TierflowError(
        f"{location.uri} exists with {what} {chunks}, but this run writes blocks of {block_shape}"
        + (f": blocks would straddle its {what}, and concurrent writers would corrupt each other's {what}" if straddle
           else f": the output is written with {what} = block shape"),
        hint=f"run with --block-shape {','.join(map(str, chunks))} (its {what}), or choose another output, or delete {location.uri} first",
    )


def output_layout(block_shape: Sequence[int], *, sharded: bool) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """``(chunks, shards)`` of an op output written block by block: one chunk per block, or
    (``sharded``) one shard per block holding the small chunks of :func:`inner_chunks`."""
    block_shape = tuple(int(b) for b in block_shape)
    return (inner_chunks(block_shape), block_shape) if sharded else (block_shape, None)


def check_output_layout(location: ArrayLocation, *, shape: Sequence[int], chunks: Sequence[int], shards: Sequence[int] | None) -> None:
    """Refuse, before any work, an existing output of another shape or layout than the run
    would create it with (:func:`create_output_array` checks the same when it reuses the array;
    an op that creates its output late, as label after its local pass, calls this first).

    Raises
    ------
    TierflowError
        Naming the output, its shape and layout, the run's, and what to do.
    """
    if not location.exists():
        return
    array = location.open(read_only=True)
    shards = None if shards is None else tuple(int(s) for s in shards)
    if tuple(array.shape) != tuple(shape) or tuple(array.chunks) != tuple(chunks) or array.shards != shards:
        raise _layout_error(location, array, f"{tuple(shape)} chunks {tuple(chunks)}" + (f" in shards {shards}" if shards else ""),
                            sharded=shards is not None)


def _layout_error(location: ArrayLocation, array: Any, wanted: str, *, sharded: bool) -> TierflowError:
    """The refusal of an existing output; the hint says which setting writes into it when only
    sharding differs (``sharded``: whether this run writes shards)."""
    hint = "choose another output, or delete the old array first"
    if bool(array.shards) != sharded:
        value = "true" if array.shards else "false"
        hint = (f"{location.uri} is {'sharded' if array.shards else 'not sharded'} and this run writes it "
                f"{'sharded' if sharded else 'unsharded'} ([execution].shard_outputs): set shard_outputs = {value} "
                f"(TIERFLOW_EXECUTION__SHARD_OUTPUTS={value} for one command) to write into it, or {hint}")
    return TierflowError(f"{location.uri} exists as {array.shape} {array.dtype} {_layout(array)}, not {wanted}", hint=hint)


def _layout(array: Any) -> str:
    return f"chunks {tuple(array.chunks)}" + (f" in shards {tuple(array.shards)}" if array.shards else "")


def create_output_array(
    location: ArrayLocation,
    *,
    shape: Sequence[int],
    dtype: np.dtype | str,
    chunks: Sequence[int],
    compression: str = "lz4",
    attributes: Mapping[str, Any] | None = None,
    fill_value: Any = 0,
    codecs_like: Any = None,
    shards: Sequence[int] | None = None,
) -> Any:
    """Create the output array, or reuse an existing one of the same shape, dtype, chunks and
    shards (a resumed or repeated run writes into it). ``codecs_like``: take the serializer,
    compressors, filters and fill value of that array instead of ``compression``. ``shards``:
    zarr v3 shards of that shape holding ``chunks`` (see :func:`output_layout`).

    Raises
    ------
    TierflowError
        If an array of another shape, dtype or chunking is already there.
    """
    import zarr

    if location.exists():
        array = location.open(read_only=False)
        shards = None if shards is None else tuple(int(s) for s in shards)
        if (tuple(array.shape) != tuple(shape) or np.dtype(array.dtype) != np.dtype(dtype) or tuple(array.chunks) != tuple(chunks)
                or array.shards != shards):
            raise _layout_error(location, array, f"{tuple(shape)} {np.dtype(dtype)} chunks {tuple(chunks)}"
                                + (f" in shards {shards}" if shards else ""), sharded=shards is not None)
        wanted = json.loads(json.dumps(dict(attributes or {}), default=str))
        if any(array.attrs.get(key) != value for key, value in wanted.items()):
            # rewrite only on change: zarr.json's mtime is part of the array's content id, which
            # keys the cache of every operation reading it (a needless rewrite recomputed them)
            array.attrs.update(wanted)
        return array
    codecs: dict[str, Any] = {"compressors": _compressors(compression)}
    if codecs_like is not None:  # the same encoding as another array (to copy its chunks as they are)
        codecs = {"serializer": codecs_like.serializer, "compressors": codecs_like.compressors, "filters": codecs_like.filters}
        fill_value = codecs_like.fill_value
    array = zarr.create_array(
        store=location.tier.zarr_store(location.key),
        shape=tuple(shape),
        chunks=tuple(chunks),
        shards=None if shards is None else tuple(shards),
        dtype=np.dtype(dtype),
        **codecs,
        fill_value=fill_value,
        dimension_names=("z", "y", "x")[-len(shape):] if len(shape) <= 3 else None,
        attributes=dict(attributes or {}),
    )
    return array
