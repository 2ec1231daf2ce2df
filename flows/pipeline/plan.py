"""What a pipeline run does: its identity and its jobs, as frozen values.

A run is keyed by its version, dataset, snapshot and parameters (:func:`pipeline_key`); it works
under ``pipeline/<dataset>/<snapshot>/<key>`` (:func:`work_prefix`) on the scratch and output
tiers. :func:`plan_pipeline` turns the snapshot's volumes and the parameters into one list of
:class:`VolumeJob` per stage::

    stage (every channel of every volume: TIFF -> zarr) -> smooth -> threshold -> label
    -> features (per sample and time point, every channel) ; stage -> pyramid

Nothing here talks to Prefect or the database; :func:`locate_volume` only reads a raw volume's
shape (downloading an S3 object to local scratch first).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from tierflow.flows.pipeline.params import PipelineParams
from tierflow.storage.raw_layout import parse_volume_name
from tierflow.storage.snapshots import Manifest, fetch_snapshot_path
from tierflow.storage.tiers import Tier
from tierflow.tasks.ops.registry import get_op

__all__ = [
    "PIPELINE_VERSION",
    "LocatedVolume",
    "PipelinePlan",
    "RawVolume",
    "VolumeJob",
    "locate_volume",
    "pipeline_key",
    "plan_pipeline",
    "raw_volumes",
    "work_prefix",
]

PIPELINE_VERSION = "1"


def pipeline_key(dataset: str, snapshot_id: str, params: PipelineParams) -> str:
    """Identity of a pipeline result: version, dataset, snapshot and parameters."""
    text = json.dumps({"version": PIPELINE_VERSION, "dataset": dataset, "snapshot": snapshot_id, "params": params.model_dump(mode="json")},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def work_prefix(dataset: str, snapshot_id: str, key: str) -> str:
    """Where a run with key ``key`` works on the scratch and output tiers (the same place on a
    resume, a new one for other parameters)."""
    return f"pipeline/{dataset}/{snapshot_id[:16]}/{key}"


@dataclass(frozen=True)
class RawVolume:
    """One raw volume of a snapshot: a stack, or a folder of slices (``slices``), at ``path``
    relative to the snapshot."""

    sample: str
    channel: int
    time_point: int
    path: str
    slices: bool


def raw_volumes(paths: Iterable[str]) -> list[RawVolume]:
    """The volumes among a snapshot's file paths (tierflow's raw layout,
    ``<sample>/<volume>[/<slice>]``), by sample, time point and channel."""
    volumes: dict[str, RawVolume] = {}
    for path in sorted(paths):
        parts = path.split("/")
        if len(parts) < 2:
            continue
        parsed = parse_volume_name(parts[1])
        if parsed is None:
            continue
        channel, time_point = parsed
        relative = "/".join(parts[:2])
        volumes.setdefault(relative, RawVolume(parts[0], channel, time_point, relative, len(parts) > 2))
    return sorted(volumes.values(), key=lambda v: (v.sample, v.time_point, v.channel))


@dataclass(frozen=True)
class LocatedVolume:
    """A raw volume with the local path the stage reads and its shape."""

    volume: RawVolume
    local: str
    shape: tuple[int, ...]


def locate_volume(source: Tier, manifest: Manifest, volume: RawVolume, tmp: Path) -> LocatedVolume:
    """A local path of a raw volume on Tier 1 (S3 objects are downloaded to ``tmp`` and verified
    against the snapshot's manifest; a local copy is reused only if it matches), and its shape."""
    from tierflow.storage.volumes import open_volume

    uri = source.uri(f"{manifest.prefix}/{volume.path}")
    local = str(Path(uri[len("file://"):])) if uri.startswith("file://") else str(fetch_snapshot_path(source, manifest, volume.path, tmp))
    return LocatedVolume(volume, local, tuple(open_volume(local).shape))


@dataclass(frozen=True)
class VolumeJob:
    """One operation on one volume: ``input`` -> ``output`` (what ``tierflow op`` takes: a local
    path or an ``s3://`` URI) with the op's ``params``, ``blocks`` blocks of work.

    A stage job is one channel of one time point (``channel`` set); the later stages work per
    sample and time point on the segmentation channel (``channel`` is None). ``shape`` is the
    volume's; ``inputs`` are extra inputs by name (features: every channel)."""

    name: str
    sample: str
    time_point: int
    input: str
    output: str
    params: dict[str, Any]
    blocks: int
    channel: int | None = None
    shape: tuple[int, ...] = ()
    inputs: dict[str, str] | None = None

    @property
    def point(self) -> tuple[str, int]:
        """(sample, time point)."""
        return self.sample, self.time_point


@dataclass(frozen=True)
class PipelinePlan:
    """Every job of a run, stage by stage, under ``work``."""

    work: str
    channels: tuple[int, ...]
    segment_channel: int
    stage: tuple[VolumeJob, ...]
    smooth: tuple[VolumeJob, ...]
    threshold: tuple[VolumeJob, ...]
    label: tuple[VolumeJob, ...]
    features: tuple[VolumeJob, ...]
    pyramid: tuple[VolumeJob, ...]

    @property
    def points(self) -> list[tuple[str, int]]:
        """Every (sample, time point), sorted."""
        return [job.point for job in self.label]

    def staged(self, sample: str, channel: int, time_point: int) -> VolumeJob | None:
        """The stage job of one channel of one time point, if the snapshot has it."""
        return next((job for job in self.stage if (job.sample, job.channel, job.time_point) == (sample, channel, time_point)), None)

    def segmented(self, sample: str, time_point: int) -> VolumeJob:
        """The stage job of the segmentation channel at one time point."""
        job = self.staged(sample, self.segment_channel, time_point)
        if job is None:
            raise KeyError((sample, self.segment_channel, time_point))
        return job


def _blocks(op: str, shape: Sequence[int], block_shape: Sequence[int], params: dict[str, Any]) -> int:
    """Blocks ``op`` writes on a volume of ``shape``, as its spec counts them (the stage's
    progress total)."""
    return get_op(op).block_count(tuple(shape), tuple(block_shape[-len(shape):]), params)


def _where(tier: Tier, key: str) -> str:
    """What ``tierflow op`` takes for ``key`` on ``tier``: a local path or an ``s3://`` URI."""
    uri = tier.uri(key)
    return str(Path(uri[len("file://"):])) if uri.startswith("file://") else uri


def plan_pipeline(located: Sequence[LocatedVolume], params: PipelineParams, *, dataset: str, work: str, scratch: Tier,
                  output: Tier) -> PipelinePlan:
    """Every job of a run on the volumes ``located`` (see :func:`locate_volume`) with ``params``,
    intermediates on ``scratch`` and pyramids on ``output`` under ``work``."""
    block_shape = params.block_shape
    stage = tuple(_stage_job(item, scratch, work, block_shape) for item in located)
    channels = tuple(sorted({item.volume.channel for item in located}))
    by_volume = {(job.sample, job.channel, job.time_point): job for job in stage}
    segment = {(s, t): job for (s, c, t), job in by_volume.items() if c == params.segment_channel}
    points = sorted({(item.volume.sample, item.volume.time_point) for item in located})

    def chain(op: str, previous: dict[tuple[str, int], str], folder: str, op_params: dict[str, Any]) -> tuple[VolumeJob, ...]:
        return tuple(VolumeJob(name=f"{s}_t{t:03d}", sample=s, time_point=t, input=previous[(s, t)],
                               output=_where(scratch, f"{work}/{folder}/{s}_t{t:03d}.zarr"), params=op_params,
                               blocks=_blocks(op, segment[(s, t)].shape, block_shape, op_params)) for s, t in points)

    smooth = chain("gaussian", {point: job.output for point, job in segment.items()}, "smooth", {"sigma": params.sigma})
    threshold = chain("threshold", {job.point: job.output for job in smooth}, "mask", {"value": params.threshold})
    label = chain("label", {job.point: job.output for job in threshold}, "labels", {"connectivity": params.connectivity})
    features = tuple(
        VolumeJob(name=job.name, sample=job.sample, time_point=job.time_point, input=job.output,
                  output=_where(scratch, f"{work}/features/{job.name}.csv"),
                  params={"time_point": job.time_point, "dataset": dataset, "sample": job.sample},
                  blocks=_blocks("features", segment[job.point].shape, block_shape, {}),
                  inputs={f"c{c}": by_volume[(job.sample, c, job.time_point)].output for c in channels
                          if (job.sample, c, job.time_point) in by_volume})
        for job in label)
    pyramid = tuple(
        VolumeJob(name=f"{s}_t{t:03d}", sample=s, time_point=t, input=segment[(s, t)].output,
                  output=_where(output, f"{work}/pyramids/{s}_t{t:03d}.ome.zarr"),
                  params={"levels": params.pyramid_levels, "method": "mean", "name": f"{s}_t{t:03d}"},
                  blocks=_blocks("downsample", segment[(s, t)].shape, block_shape, {"levels": params.pyramid_levels}))
        for s, t in points)
    return PipelinePlan(work=work, channels=channels, segment_channel=params.segment_channel, stage=stage, smooth=smooth,
                        threshold=threshold, label=label, features=features, pyramid=pyramid)


def _stage_job(item: LocatedVolume, scratch: Tier, work: str, block_shape: Sequence[int]) -> VolumeJob:
    volume = item.volume
    name = f"{volume.sample}_c{volume.channel}_t{volume.time_point:03d}"
    return VolumeJob(name=name, sample=volume.sample, time_point=volume.time_point, channel=volume.channel, input=item.local,
                     output=_where(scratch, f"{work}/staged/{name}.zarr"), params={"compression": "lz4"},
                     blocks=_blocks("convert", item.shape, block_shape, {}), shape=item.shape)
