"""Orchestration of a multiscale pyramid written as OME-Zarr 0.5 (``downsample`` op).

Level 0 is a block-wise copy of the input into the group; each next level is computed from the
previous one. Intensities are averaged (a box filter: anti-aliasing); label images take the most
frequent non-zero label of each window (``mode``, the label-safe default for integer label
arrays) or its first voxel (``nearest``). The group validates with ome-zarr-models.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger

from tierflow.storage.arrays import ArrayLocation, create_output_array
from tierflow.storage.db.repo.ledger import done_blocks, done_count
from tierflow.errors import BlockFailuresError, InvalidParameterError, TierflowError
from tierflow.storage.tiers import PosixTier
from tierflow.storage.ome_zarr import multiscales_attributes, pyramid_transforms, validate_ome_zarr, write_multiscales_metadata
from tierflow.flows.execution.batching import collect_batches, submit_batches
from tierflow.flows.ops.request import OpContext
from tierflow.flows.execution.outputs import claim_output
from tierflow.tasks.blockwise import SourceRef, open_source, plan_batches
from tierflow.tasks.ops.catalog import DownsampleParams
from tierflow.tasks.ops.spec import literal_choices
from tierflow.tasks.ops.pyramid import downsampled_shape, pyramid_factors
from tierflow.tasks.pyramid_blocks import LevelJob, downsample_level

__all__ = ["run_pyramid"]

METHODS = literal_choices(DownsampleParams.model_fields["method"].annotation)


LABEL_DTYPES = ("int32", "uint32", "int64", "uint64")
"""Integer types that ``method=auto`` takes for labels: cameras write 8- and 16-bit images,
segmentation tools 32- and 64-bit label images."""


def auto_method(volume: Any) -> tuple[str, str]:
    """What ``method=auto`` downsamples ``volume`` with, and why. ``mode`` (never an id that is
    not in the level above) for a label image: one a tierflow label op wrote, one whose metadata
    says so (OME-Zarr ``image-label``), or a 32/64-bit integer array (see :data:`LABEL_DTYPES`).
    ``mean`` for an image: floats, another tierflow op's output, or an integer array whose
    microscope metadata (channel names, voxel size) marks it as an acquisition.

    Raises
    ------
    InvalidParameterError
        For an 8/16-bit integer array with nothing saying which it is (a uint16 camera image and
        a uint16 Cellpose mask look alike): averaging labels would invent ids, so the user says.
    """
    attributes = getattr(getattr(volume, "array", None), "attrs", {}) or {}
    made_by = (attributes.get("tierflow") or {}).get("op") if isinstance(attributes.get("tierflow"), dict) else None
    if made_by:
        return ("mode", f"written by tierflow's {made_by} op") if _makes_labels(made_by) else (
            "mean", f"an image written by tierflow's {made_by} op")
    metadata = getattr(volume, "metadata", None)
    if getattr(metadata, "labels", False) or "image-label" in attributes:
        return "mode", "its metadata marks it as labels (image-label)"
    dtype = np.dtype(volume.dtype)
    if dtype.kind == "f":
        return "mean", f"a {dtype} image"
    if dtype.name in LABEL_DTYPES:
        return "mode", f"{dtype} arrays are taken for labels (pass method=mean to average one)"
    if metadata is not None and (metadata.channel_names or metadata.scale):
        return "mean", f"a {dtype} image with microscope metadata (channels or voxel size)"
    raise InvalidParameterError(
        f"downsample: {getattr(volume, 'uri', 'the input')} is a {dtype} array with nothing saying whether it holds "
        "intensities or labels (method=auto)",
        hint="pass -p method=mean for an intensity image, or -p method=mode for a label image (averaging labels invents ids)")


def _method(requested: str, source: SourceRef) -> str:
    if requested not in METHODS:
        raise TierflowError(f"downsample: method {requested!r} is not one of {METHODS}")
    if requested != "auto":
        return requested
    method, why = auto_method(open_source(source))
    get_run_logger().info("downsample method=auto: %s (%s)", method, why)
    return method


def _makes_labels(op: str) -> bool:
    from tierflow.tasks.ops.registry import get_op

    try:
        return get_op(op).makes_labels
    except ValueError:  # made by an op no longer registered
        return False


def _copyable_source(source: SourceRef, chunks: tuple[int, ...], dtype: np.dtype) -> ArrayLocation | None:
    """The source as a zarr location if level 0 can take its encoded chunks as they are:
    a zarr v3 array, unsharded, with level 0's chunks and dtype (a 512 MiB level 0 was a
    third of a 4-level pyramid's time when decoded and re-encoded)."""
    if isinstance(source, ArrayLocation):
        location = source
    else:
        path = Path(source)
        if not (path / "zarr.json").is_file():
            return None
        location = ArrayLocation(PosixTier("source", path.parent), path.name)
    try:
        array = location.open()
    except Exception:  # noqa: BLE001 - not a zarr v3 array: decode and re-encode
        return None
    if getattr(array, "shards", None) or tuple(array.chunks) != tuple(chunks) or np.dtype(array.dtype) != np.dtype(dtype):
        return None
    return location


def _same_codecs(a: Any, b: Any) -> bool:
    return (a.serializer, tuple(a.compressors), tuple(a.filters), a.fill_value) == (
        b.serializer,
        tuple(b.compressors),
        tuple(b.filters),
        b.fill_value,
    )


def run_pyramid(ctx: OpContext) -> dict[str, Any]:
    """Write levels ``0 .. levels-1`` into the group at ``target`` and its OME-Zarr metadata."""
    db, run_id, op_key, target, params = ctx.db, ctx.run_id, ctx.op_key, ctx.target, ctx.params
    levels, ndim = int(params.get("levels") or 3), len(ctx.shape)
    method = _method(str(params.get("method") or "auto"), ctx.source)
    voxel = [float(v) for v in str(params.get("voxel_size") or ",".join(["1"] * ndim)).split(",")]
    factors = pyramid_factors(ctx.shape, levels, factor=2)
    shapes = [tuple(ctx.shape)]
    for level_factors in factors[1:]:
        shapes.append(downsampled_shape(shapes[-1], level_factors))
    group = _claim_group(ctx, levels)
    with ctx.runner(extra_threads=1) as runner:
        deferred: tuple[LevelJob, list[list[str]]] | None = None
        previous: SourceRef = ctx.source
        for level in range(levels):
            job, batches = _level(ctx, level, shapes, factors, previous, method)
            if level == 0 and levels > 1 and job.copy_from is not None:
                # level 0 holds the source's voxels, so level 1 reads the source while level 0's
                # chunks are copied: their batches are submitted interleaved (copy is I/O,
                # level 1 is CPU), on one more thread than there are workers
                deferred = (job, batches)
                continue
            _run_level(ctx, runner, (job, batches), deferred if level == 1 else None)
            previous = job.target
    with db.session() as session:  # from the ledger: a retried batch still counts its blocks
        computed = done_count(session, run_id, [f"{op_key}:level{level}" for level in range(levels)])
    blocks = ctx.spec.block_count(ctx.shape, ctx.block_shape, params)
    scales, translations = pyramid_transforms(factors, base_scale=voxel, window_centered=method != "nearest")
    write_multiscales_metadata(group, multiscales_attributes(
        name=str(params.get("name") or "image"), axes=("z", "y", "x")[-ndim:], scales=scales,
        paths=[str(level) for level in range(levels)], translations=translations))
    if target.tier.uri().startswith("file:"):
        validate_ome_zarr(target.tier.zarr_store(target.key, read_only=True))
    return {"levels": levels, "method": method, "shapes": [list(s) for s in shapes], "computed": computed, "blocks": blocks}


def _claim_group(ctx: OpContext, levels: int) -> Any:
    """The output group, claimed for this op key (its levels' ledger rows with it) and stamped."""
    import zarr

    target, holder = ctx.target, []

    def open_stamped_group() -> None:
        group = zarr.open_group(store=target.tier.zarr_store(target.key), mode="a")
        stamp = {"op": "downsample", "version": ctx.spec.version, "op_key": ctx.op_key}
        if group.attrs.get("tierflow") != stamp:
            group.attrs["tierflow"] = stamp
        holder.append(group)

    claim_output(ctx.db, target, ctx.op_key, open_stamped_group,
                 ledger_uris=[ArrayLocation(target.tier, f"{target.key}/{level}").uri for level in range(levels)])
    return holder[0]


def _level(ctx: OpContext, level: int, shapes: list[tuple[int, ...]], factors: list[Any], previous: SourceRef,
           method: str) -> tuple[LevelJob, list[list[str]]]:
    """Level ``level``'s array (created), its job and its batches of blocks not yet done."""
    level_shape = shapes[level]
    chunks = tuple(min(b, s) for b, s in zip(ctx.block_shape, level_shape, strict=True))
    location = ArrayLocation(ctx.target.tier, f"{ctx.target.key}/{level}")
    copy_from = _copyable_source(ctx.source, chunks, ctx.dtype) if level == 0 else None
    array = create_output_array(location, shape=level_shape, dtype=ctx.dtype, chunks=chunks,
                                codecs_like=copy_from.open() if copy_from is not None else None)
    if copy_from is not None and not _same_codecs(array, copy_from.open()):
        copy_from = None  # an earlier level 0 with other codecs: decode and re-encode
    job = LevelJob(op_key=ctx.op_key, run_id=ctx.run_id, source=previous, target=location, db=ctx.db, fault=ctx.fault,
                   in_shape=tuple(shapes[level - 1] if level else ctx.shape), shape=level_shape, block_shape=chunks,
                   factors=tuple(factors[level]), method=method, level=level, copy_from=copy_from, force=ctx.force)
    with ctx.db.session() as session:
        done = set() if ctx.force else done_blocks(session, f"{ctx.op_key}:level{level}", location.uri)  # forced: every block again
    remaining = [b.block_id for b in job.grid if b.block_id not in done]
    # one batch per worker at least (map ops take two): a pyramid level is short, and each task run
    # costs client and Prefect-server CPU on the same cores (512 MiB, 2 cores: 1.09 s against 1.18 s
    # with two per worker, medians of 6 interleaved runs)
    batches = plan_batches(job.grid, remaining, max_batches=ctx.max_batches, min_batches=ctx.workers)
    if 0 < len(batches) < ctx.workers:  # the top levels: too few blocks to keep every worker busy
        job = dataclasses.replace(job, threads=ctx.workers // len(batches))
    return job, batches


def _run_level(ctx: OpContext, runner: Any, current: tuple[LevelJob, list[list[str]]],
               deferred: tuple[LevelJob, list[list[str]]] | None) -> None:
    """Run a level's batches (interleaved with level 0's deferred copy, if any).

    Raises
    ------
    BlockFailuresError
        Listing the failed blocks of the level that failed.
    """
    job, batches = current
    runs = [deferred, current] if deferred is not None else [current]
    futures: list[list[Any]] = [[] for _ in runs]
    for index in range(max(len(b) for _, b in runs)):
        for slot, (level_job, level_batches) in enumerate(runs):
            futures[slot] += submit_batches(runner, downsample_level, level_job, level_batches[index:index + 1])
    for (level_job, _), level_futures in zip(runs, futures, strict=True):
        outcome = collect_batches(level_futures, ctx.progress)
        if outcome.failed:
            raise BlockFailuresError(f"downsample:level{level_job.level}", ctx.run_id, outcome.failed, outcome.first_error)
