"""The ``image`` stage: one OME-Zarr 0.5 image per sample on the output tier (then Tier 1), every
channel and time point of the sample (axes t, c, z, y, x) at its physical scale, a pyramid
downsampled along z, y, x only, and the segmentation under ``labels/<name>`` with its own
label-safe (mode) pyramid; layout in :mod:`storage.sample_image`.

:func:`plan_images` runs before any work (a sharded output whose shards the blocks would split is
refused there); :func:`image_stage` writes block-wise on the block engine (ledger, locks,
resume): level 0 from the staged volumes and the segmentation, each next level from the one
before; then the display windows (from the top level: cheap), the label colours and the
metadata, built with ome-zarr-models and validated.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from tierflow.errors import BlockFailuresError, TierflowError
from tierflow.flows.execution.batching import collect_batches, submit_batches
from tierflow.flows.execution.runners import block_task_runner
from tierflow.flows.pipeline.params import PipelineParams
from tierflow.flows.pipeline.plan import PipelinePlan
from tierflow.flows.pipeline.spec import PipelineSpec, substitute
from tierflow.flows.runtime.progress import StageProgress
from tierflow.storage.arrays import ArrayLocation
from tierflow.storage.geometry import BlockGrid
from tierflow.storage.image_meta import ImageMetadata
from tierflow.storage.ome_zarr import pyramid_transforms, validate_ome_zarr
from tierflow.storage.sample_image import (
    ChannelDisplay,
    PhysicalScale,
    channel_color,
    check_shard_alignment,
    create_level,
    image_attributes,
    inner_chunks,
    label_attributes,
    labels_attributes,
)
from tierflow.storage.tiers import Tier
from tierflow.tasks.blockwise import SourceRef, open_source, plan_batches
from tierflow.tasks.ops.pyramid import downsampled_shape, pyramid_factors
from tierflow.tasks.pyramid_blocks import LevelJob, downsample_level
from tierflow.tasks.sample_image_blocks import PlaceJob, place_volumes

__all__ = ["SampleImageJob", "WrittenImage", "image_stage", "plan_images"]

OBJECTS_TABLE = "../../tables/objects.csv"
"""The objects table, relative to a promoted sample image's group (``images/<sample>.ome.zarr``: ``..`` is
``images/``, as the labels' ``source`` ``../../`` is their image)."""


@dataclass(frozen=True)
class SampleImageJob:
    """One sample's image: ``key`` on the output tier; its volumes by ``"t,c"`` index (staged
    channels) and its segmentation by ``"t,0"`` (``labels``, named ``label_name``)."""

    sample: str
    name: str
    key: str
    time_points: tuple[int, ...]
    channels: tuple[int, ...]
    spatial: tuple[int, int, int]
    sources: dict[str, str]
    levels: int
    scale: PhysicalScale
    channel_names: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    label_name: str | None = None
    label_stage: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.time_points), len(self.channels), *self.spatial)

    def shapes(self, channels: int | None = None) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        """Every level's shape and factors (relative to the level before), t and c never
        downsampled; ``channels``: 1 for the labels."""
        factors = [(1, 1, *f) for f in pyramid_factors(self.spatial, self.levels, factor=2)]
        shape = self.shape if channels is None else (len(self.time_points), channels, *self.spatial)
        shapes = [shape]
        for level_factors in factors[1:]:
            shapes.append(downsampled_shape(shapes[-1], level_factors))
        return shapes, factors


@dataclass(frozen=True)
class WrittenImage:
    """A sample image as written: where, and the metadata its viewers' links are made from."""

    sample: str
    name: str
    key: str
    shape: tuple[int, ...]
    attributes: dict[str, Any]
    label_name: str | None = None


def _geometry(shape: Sequence[int], block_shape: Sequence[int], shard_shape: Sequence[int] | None) -> dict[str, Any]:
    """A level's chunks, shards and write blocks (one time point and channel, whole shards)."""
    spatial = shape[2:]
    block = (1, 1, *(min(b, n) for b, n in zip(block_shape, spatial, strict=True)))
    if shard_shape is None:
        return {"chunks": block, "shards": None, "block": block}
    return {"chunks": (1, 1, *inner_chunks(shard_shape)), "shards": (1, 1, *shard_shape), "block": block}


def _metadata(path: str, open_volume: Any) -> ImageMetadata:
    """A raw volume's physical metadata (none when it cannot be read: it is a help, the
    stage reports an unreadable volume)."""
    try:
        return open_volume(path).metadata
    except (TierflowError, OSError, ValueError):
        return ImageMetadata()


def plan_images(plan: PipelinePlan, spec: PipelineSpec, params: PipelineParams, output: Tier) -> tuple[SampleImageJob, ...]:
    """One image job per sample when the spec's ``[outputs] image`` asks for it.

    Raises
    ------
    TierflowError
        If a sample's volumes differ in shape, or the output is sharded and the blocks would
        split its shards (naming the array, its shard shape and the block shape).
    """
    from tierflow.storage.volumes import open_volume

    wanted = spec.outputs.image
    if wanted is None:
        return ()
    values = dict(params.values)
    levels = int(substitute(wanted.levels, values))
    label_stage = substitute(wanted.labels or spec.outputs.segmentation or "", values) or None
    label_jobs = {job.point: job for job in plan.of(label_stage).jobs} if label_stage else {}
    jobs = []
    for sample in sorted({job.sample for job in plan.stage}):
        staged = [job for job in plan.stage if job.sample == sample]
        times = tuple(sorted({job.time_point for job in staged}))
        spatial = {tuple(job.shape[-3:]) for job in staged}
        if len(spatial) != 1:
            raise TierflowError(f"[outputs] image: sample {sample}'s volumes differ in shape ({sorted(spatial)})",
                                hint="one image holds every channel and time point of a sample: give them one z, y, x shape")
        first = {c: next(job for job in staged if job.channel == c) for c in plan.channels if any(j.channel == c for j in staged)}
        meta = {c: _metadata(job.input, open_volume) for c, job in first.items()}
        names = tuple((meta[c].channel_names[0] if c in meta and len(meta[c].channel_names) == 1 else f"c{c}") for c in plan.channels)
        scale = PhysicalScale.from_metadata(next(iter(meta.values())))
        sources = {f"{times.index(job.time_point)},{plan.channels.index(job.channel)}": job.output for job in staged}
        labels = {f"{times.index(t)},0": label_jobs[(sample, t)].output for t in times if (sample, t) in label_jobs}
        key = f"{plan.work}/images/{sample}.ome.zarr"
        job = SampleImageJob(sample=sample, name=f"images/{sample}.ome.zarr", key=key, time_points=times, channels=plan.channels,
                             spatial=next(iter(spatial)), sources=sources, levels=levels, scale=scale, channel_names=names,
                             labels=labels, label_name=(wanted.name or label_stage) if labels else None, label_stage=label_stage)
        shapes, _ = job.shapes()
        for level, shape in enumerate(shapes):
            geometry = _geometry(shape, params.block_shape, params.shard_shape)
            for array in [f"{job.name}/{level}"] + ([f"{job.name}/labels/{job.label_name}/{level}"] if labels else []):
                check_shard_alignment(array, shape, geometry["block"], geometry["shards"])
        jobs.append(job)
    return tuple(jobs)


def _op_key(job: SampleImageJob, part: str, block_shape: Sequence[int], shard_shape: Sequence[int] | None) -> str:
    text = json.dumps([job.key, part, job.shape, job.levels, list(block_shape), shard_shape and list(shard_shape),
                       sorted(job.sources.items()) if part == "image" else sorted(job.labels.items())])
    return f"image:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass
class _Writer:
    """Writes one pyramid (the image, or its labels) level by level on a task runner."""

    db: Any
    run_id: int
    tier: Tier
    runner: Any
    workers: int
    progress: Any
    block_shape: tuple[int, ...]
    shard_shape: tuple[int, ...] | None

    def pyramid(self, job: SampleImageJob, key: str, sources: dict[str, SourceRef], dtype: Any, method: str,
                part: str) -> list[tuple[int, ...]]:
        shapes, factors = job.shapes(1 if part == "labels" else None)
        op_key = _op_key(job, part, self.block_shape, self.shard_shape)
        for level, shape in enumerate(shapes):
            geometry = _geometry(shape, self.block_shape, self.shard_shape)
            create_level(self.tier, f"{key}/{level}", shape=shape, dtype=dtype, chunks=geometry["chunks"], shards=geometry["shards"])
            target = ArrayLocation(self.tier, f"{key}/{level}")
            common = {"op_key": op_key, "run_id": self.run_id, "shape": shape, "block_shape": geometry["block"], "db": self.db,
                      "target": target}
            if level == 0:
                batch_job: Any = PlaceJob(source=next(iter(sources.values())), sources=sources, **common)
                task, label = place_volumes, f"{part}:place"
            else:
                batch_job = LevelJob(source=ArrayLocation(self.tier, f"{key}/{level - 1}"), in_shape=shapes[level - 1],
                                     factors=tuple(factors[level]), method=method, level=level, **common)
                task, label = downsample_level, f"{part}:level{level}"
            grid = BlockGrid(shape, geometry["block"])
            batches = plan_batches(grid, [b.block_id for b in grid], max_batches=64 * self.workers, min_batches=2 * self.workers)
            outcome = collect_batches(submit_batches(self.runner, task, batch_job, batches), self.progress)
            if outcome.failed:
                raise BlockFailuresError(f"image {job.sample} {label}", self.run_id, outcome.failed, outcome.first_error)
        return shapes


def _windows(job: SampleImageJob, top: Any) -> list[ChannelDisplay]:
    """Each channel's display window from the pyramid's top level (percentiles 0.1-99.9 over
    every time point) and its data range there."""
    data = np.asarray(top[:])
    channels = []
    for index, channel in enumerate(job.channels):
        values = data[:, index].astype(np.float64).ravel()
        low, high = (np.percentile(values, (0.1, 99.9)) if values.size else (0.0, 1.0))
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        channels.append(ChannelDisplay(job.channel_names[index], channel_color(channel), lo, max(hi, lo + 1), float(low),
                                       float(max(high, low + 1))))
    return channels


def _label_values(array: Any, block_shape: Sequence[int]) -> list[int]:
    """Every label id of a label level, read block by block."""
    found: set[int] = set()
    for block in BlockGrid(array.shape, block_shape):
        found.update(int(v) for v in np.unique(np.asarray(array[block.write_roi.slices])) if v)
    return sorted(found)


def image_block_count(jobs: Sequence[SampleImageJob], block_shape: Sequence[int]) -> int:
    """Blocks of every level of every image and label pyramid (the stage's progress total)."""
    total = 0
    for job in jobs:
        for channels in (None, 1) if job.labels else (None,):
            shapes, _ = job.shapes(channels)
            total += sum(len(BlockGrid(s, _geometry(s, block_shape, None)["block"])) for s in shapes)
    return int(total)


def image_run_name() -> str:
    """``image: 2 samples`` (the stage's subflow)."""
    from prefect.runtime import flow_run

    jobs = (flow_run.parameters or {}).get("jobs") or []
    return f"image: {len(jobs)} sample{'s' if len(jobs) != 1 else ''}"


@flow(name="pipeline-stage", flow_run_name=image_run_name)
def image_stage(jobs: list[SampleImageJob], block_shape: tuple[int, int, int], shard_shape: tuple[int, int, int] | None,
                workers: int | None, config_dir: str | None, parent_run: int) -> list[WrittenImage]:
    """Write every sample's image and labels on the output tier (see the module docstring)."""
    import zarr

    from tierflow.configs import load_config, load_db_config
    from tierflow.flows.ops.request import locate_input
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.tiers import open_tiers

    config = load_config(config_dir)
    from tierflow.storage.zarr_codecs import use_codec_pipeline  # imports zarr: only when it runs

    use_codec_pipeline(config.execution.codec_pipeline)
    db, output = open_database(load_db_config(config_dir)), open_tiers(config).output
    workers = workers or config.execution.max_workers or os.cpu_count() or 1
    progress = StageProgress("image", image_block_count(jobs, block_shape), run=parent_run)
    written = []
    with block_task_runner(config, workers) as runner:
        writer = _Writer(db, parent_run, output, runner, workers, progress.advance, tuple(block_shape),
                         tuple(shard_shape) if shard_shape else None)
        for job in jobs:
            sources = {index: locate_input(config, where) for index, where in job.sources.items()}
            label_sources = {index: locate_input(config, where) for index, where in job.labels.items()}
            dtype = open_source(next(iter(sources.values()))).dtype
            group = zarr.open_group(store=output.zarr_store(job.key), mode="a", zarr_format=3)
            shapes = writer.pyramid(job, job.key, sources, dtype, "mean", "image")
            scales, translations = pyramid_transforms(job.shapes()[1], base_scale=job.scale.base())
            channels = _windows(job, zarr.open_array(store=output.zarr_store(f"{job.key}/{len(shapes) - 1}"), mode="r"))
            extra = {"tierflow": {"sample": job.sample, "time_points": list(job.time_points), "channels": list(job.channels),
                                  "tables": {"objects": {"path": OBJECTS_TABLE, "rows": {"sample": job.sample}}}}}
            attributes = image_attributes(job.sample, job.scale, scales, translations, channels, extra=extra)
            if job.labels and job.label_name:
                label_key = f"{job.key}/labels/{job.label_name}"
                zarr.open_group(store=output.zarr_store(f"{job.key}/labels"), mode="a", zarr_format=3).update_attributes(
                    labels_attributes([job.label_name]))
                label_group = zarr.open_group(store=output.zarr_store(label_key), mode="a", zarr_format=3)
                label_dtype = open_source(next(iter(label_sources.values()))).dtype
                writer.pyramid(job, label_key, label_sources, label_dtype, "mode", "labels")
                level0 = zarr.open_array(store=output.zarr_store(f"{label_key}/0"), mode="r")
                values = _label_values(level0, _geometry(level0.shape, block_shape, shard_shape)["block"])
                label_group.update_attributes(label_attributes(job.label_name, job.scale, scales, translations, values))
                attributes["tierflow"]["labels"] = {job.label_name: {"stage": job.label_stage, "objects": len(values)}}
            group.update_attributes(attributes)
            validate_ome_zarr(output.zarr_store(job.key, read_only=True))
            if job.labels and job.label_name:
                validate_ome_zarr(output.zarr_store(f"{job.key}/labels/{job.label_name}", read_only=True))
            written.append(WrittenImage(job.sample, job.name, job.key, job.shape, attributes, job.label_name))
    progress.finish()
    get_run_logger().info("stage image: wrote %d sample image(s): %s", len(written), ", ".join(
        f"sample {w.sample} ({len(w.attributes['tierflow']['time_points'])} time points, "
        f"{len(w.attributes['tierflow']['channels'])} channels)" for w in written))
    return written
