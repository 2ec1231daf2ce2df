"""What a pipeline run does: its identity and its jobs, as frozen values.

A run is keyed by its version, dataset, snapshot, pipeline (its spec's content) and parameters
(:func:`pipeline_key`); it works under ``pipeline/<dataset>/<snapshot>/<key>``
(:func:`work_prefix`) on the scratch and output tiers. :func:`plan_pipeline` turns the
snapshot's volumes, the pipeline's spec and the parameters into jobs::

    stage (every channel of every volume: TIFF -> zarr, referenced as raw.c0, raw.c1, ...)
    -> the spec's stages in dependency order, each one op per sample and time point
    -> features (per sample and time point) ; pyramids of [outputs] pyramid

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

from tierflow.errors import TierflowError
from tierflow.flows.pipeline.params import PipelineParams
from tierflow.flows.pipeline.spec import PipelineSpec, parse_ref, substitute
from tierflow.flows.pipeline.spec_params import stage_params
from tierflow.storage.raw_layout import parse_volume_name
from tierflow.storage.snapshots import Manifest, fetch_snapshot_path
from tierflow.storage.tiers import Tier
from tierflow.tasks.ops.registry import get_op

__all__ = [
    "PIPELINE_VERSION",
    "LocatedVolume",
    "PipelinePlan",
    "RawVolume",
    "StagePlan",
    "VolumeJob",
    "locate_volume",
    "pipeline_key",
    "plan_pipeline",
    "raw_volumes",
    "work_prefix",
]

PIPELINE_VERSION = "3"


def pipeline_key(dataset: str, snapshot_id: str, params: PipelineParams) -> str:
    """Identity of a pipeline result: version, dataset, snapshot, the pipeline's content (its
    spec's digest) and parameters."""
    text = json.dumps({"version": PIPELINE_VERSION, "dataset": dataset, "snapshot": snapshot_id, "pipeline": params.spec_digest,
                       "params": params.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def work_prefix(dataset: str, snapshot_id: str, key: str) -> str:
    """Where a run with key ``key`` works on the scratch and output tiers (the same place on a
    resume, a new one for other parameters)."""
    return f"pipeline/{dataset}/{snapshot_id[:16]}/{key}"


@dataclass(frozen=True)
class RawVolume:
    """One raw volume of a snapshot: a stack, or a folder of slices (``slices``), at ``path``
    relative to the snapshot; or one volume of a multi-dimensional file, picked out of it by
    ``selector`` (``"t=1&c=0"``). ``sample`` is the pipeline's: ``<sample>_p<N>`` for position
    ``N`` of a sample with positions."""

    sample: str
    channel: int
    time_point: int
    path: str
    slices: bool
    selector: str = ""


def raw_volumes(paths: Iterable[str], manifest: Manifest | None = None) -> list[RawVolume]:
    """The volumes of a snapshot, by sample, time point and channel: those its manifest records
    per file (:class:`~storage.snapshots.VolumeRecord`: multi-dimensional files, stacks), and
    for the other file paths tierflow's raw layout by name (``<sample>/<volume>[/<slice>]``;
    manifests written before ingest recorded volumes)."""
    volumes: dict[str, RawVolume] = {}
    recorded = {relative for relative, _ in manifest.volumes()} if manifest is not None else set()
    for relative, record in manifest.volumes() if manifest is not None else []:
        sample = record.sample if record.position is None else f"{record.sample}_p{record.position}"
        address = f"{relative}#{record.selector}" if record.selector else relative
        volumes.setdefault(address, RawVolume(sample, record.channel, record.time_point, relative, False, record.selector))
    for path in sorted(paths):
        parts = path.split("/")
        if len(parts) < 2 or path in recorded:
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
    local += f"#{volume.selector}" if volume.selector else ""
    return LocatedVolume(volume, local, tuple(open_volume(local).shape))


@dataclass(frozen=True)
class VolumeJob:
    """One operation on one volume: ``input`` -> ``output`` (what ``tierflow op`` takes: a local
    path or an ``s3://`` URI) with the op's ``params``, ``blocks`` blocks of work.

    A stage job is one channel of one time point (``channel`` set); the pipeline's stages work
    per sample and time point (``channel`` is None). ``shape`` is the volume's; ``inputs`` are
    extra inputs by name (watershed's markers, the features' channels); ``reads`` the
    references (``raw.c0``, a stage) the job reads, input first (its lineage)."""

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
    reads: tuple[str, ...] = ()

    @property
    def point(self) -> tuple[str, int]:
        """(sample, time point)."""
        return self.sample, self.time_point


@dataclass(frozen=True)
class StagePlan:
    """One stage of the spec: ``op`` on every sample and time point; its outputs on ``tier``
    (``scratch``, or ``output`` when [outputs] promote names it)."""

    name: str
    op: str
    jobs: tuple[VolumeJob, ...]
    tier: str = "scratch"


@dataclass(frozen=True)
class PipelinePlan:
    """Every job of a run under ``work``: ``stage`` (raw -> zarr, every channel), the spec's
    ``stages`` in dependency order, ``features`` and ``pyramid``."""

    work: str
    channels: tuple[int, ...]
    stage: tuple[VolumeJob, ...]
    stages: tuple[StagePlan, ...]
    features: tuple[VolumeJob, ...]
    pyramid: tuple[VolumeJob, ...]

    @property
    def points(self) -> list[tuple[str, int]]:
        """Every (sample, time point), sorted."""
        return sorted({job.point for job in self.stage})

    def staged(self, sample: str, channel: int, time_point: int) -> VolumeJob | None:
        """The stage job of one channel of one time point, if the snapshot has it."""
        return next((job for job in self.stage if (job.sample, job.channel, job.time_point) == (sample, channel, time_point)), None)

    def of(self, name: str) -> StagePlan:
        """The stage called ``name``.

        Raises
        ------
        KeyError
            If the pipeline has no such stage.
        """
        found = next((stage for stage in self.stages if stage.name == name), None)
        if found is None:
            raise KeyError(name)
        return found


def _blocks(op: str, shape: Sequence[int], block_shape: Sequence[int], params: dict[str, Any]) -> int:
    """Blocks ``op`` writes on a volume of ``shape``, as its spec counts them (the stage's
    progress total)."""
    return get_op(op).block_count(tuple(shape), tuple(block_shape[-len(shape):]), params)


def _where(tier: Tier, key: str) -> str:
    """What ``tierflow op`` takes for ``key`` on ``tier``: a local path or an ``s3://`` URI."""
    uri = tier.uri(key)
    return str(Path(uri[len("file://"):])) if uri.startswith("file://") else uri


def _channel_name(ref: str) -> str:
    """A features channel's name: ``raw.c1`` -> ``c1``, a stage -> its name."""
    return ref.removeprefix("raw.")


def plan_pipeline(located: Sequence[LocatedVolume], params: PipelineParams, spec: PipelineSpec, *, dataset: str, work: str,
                  scratch: Tier, output: Tier) -> PipelinePlan:
    """Every job of a run of ``spec`` on the volumes ``located`` (see :func:`locate_volume`) with
    ``params``, intermediates on ``scratch``, promoted stages and pyramids on ``output``, under
    ``work``.

    Raises
    ------
    TierflowError
        If a stage reads a channel the snapshot lacks at some sample and time point.
    """
    block_shape, values = params.block_shape, dict(params.values)
    stage = tuple(_stage_job(item, scratch, work, block_shape) for item in located)
    channels = tuple(sorted({item.volume.channel for item in located}))
    points = sorted({job.point for job in stage})
    where = {(f"raw.c{job.channel}", job.sample, job.time_point): (job.output, job.shape) for job in stage}

    def find(ref: str, sample: str, time_point: int, who: str) -> tuple[str, tuple[int, ...]]:
        if (ref, sample, time_point) not in where:
            raise TierflowError(f"{who} reads {ref}, and sample {sample} has no such volume at time point {time_point}",
                                hint=f"the snapshot's channels are {list(channels)}: use one of raw.c{channels[0]}..."
                                     f"{'raw.c' + str(channels[-1])} (or a --param that picks it)")
        return where[(ref, sample, time_point)]

    stages = []
    for decl in spec.ordered():
        tier = output if decl.name in spec.outputs.promote else scratch
        op_params = stage_params(spec, decl.name, values)
        reads = (substitute(decl.input, values), *(substitute(ref, values) for ref in decl.with_.values()))
        jobs = []
        for sample, time_point in points:
            name = f"{sample}_t{time_point:03d}"
            source, shape = find(reads[0], sample, time_point, f"stage {decl.name!r}")
            extras = {key: find(ref, sample, time_point, f"stage {decl.name!r}")[0] for key, ref in zip(decl.with_, reads[1:], strict=True)}
            job = VolumeJob(name=name, sample=sample, time_point=time_point, input=source,
                            output=_where(tier, f"{work}/{decl.name}/{name}.zarr"), params=op_params,
                            blocks=_blocks(decl.op, shape, block_shape, op_params), shape=shape, inputs=extras or None, reads=reads)
            where[(decl.name, sample, time_point)] = (job.output, shape)
            jobs.append(job)
        stages.append(StagePlan(decl.name, decl.op, tuple(jobs), "output" if tier is output else "scratch"))
    return PipelinePlan(work=work, channels=channels, stage=stage, stages=tuple(stages),
                        features=_features(spec, values, points, channels, find, where, dataset, work, scratch, block_shape),
                        pyramid=_pyramids(spec, values, points, find, work, output, block_shape))


def _features(spec: PipelineSpec, values: dict[str, Any], points: list[tuple[str, int]], channels: tuple[int, ...], find: Any,
              where: dict[tuple[str, str, int], Any], dataset: str, work: str, scratch: Tier,
              block_shape: Sequence[int]) -> tuple[VolumeJob, ...]:
    wanted = spec.outputs.features
    if wanted is None:
        return ()
    labels = substitute(wanted.labels, values)
    given = [wanted.channels] if isinstance(wanted.channels, str) else list(wanted.channels)
    refs = [r for ref in given for r in ([f"raw.c{c}" for c in channels] if parse_ref(substitute(ref, values)) == ("raw", None)
                                         else [substitute(ref, values)])]
    jobs = []
    for sample, time_point in points:
        name = f"{sample}_t{time_point:03d}"
        source, shape = find(labels, sample, time_point, "[outputs] features")
        # a channel missing here is left out
        present = [ref for ref in refs if not ref.startswith("raw.") or (ref, sample, time_point) in where]
        jobs.append(VolumeJob(name=name, sample=sample, time_point=time_point, input=source,
                              output=_where(scratch, f"{work}/features/{name}.csv"),
                              params={"time_point": time_point, "dataset": dataset, "sample": sample},
                              blocks=_blocks("features", shape, block_shape, {}), shape=shape,
                              inputs={_channel_name(ref): find(ref, sample, time_point, "[outputs] features")[0] for ref in present},
                              reads=(labels, *present)))
    return tuple(jobs)


def _pyramids(spec: PipelineSpec, values: dict[str, Any], points: list[tuple[str, int]], find: Any, work: str, output: Tier,
              block_shape: Sequence[int]) -> tuple[VolumeJob, ...]:
    wanted = spec.outputs.pyramid
    if wanted is None:
        return ()
    refs = [substitute(ref, values) for ref in wanted.inputs]
    levels = int(substitute(wanted.levels, values))
    jobs = []
    for ref in refs:
        for sample, time_point in points:
            name = f"{sample}_t{time_point:03d}" + ("" if len(refs) == 1 else f"_{_channel_name(ref).replace('.', '_')}")
            source, shape = find(ref, sample, time_point, "[outputs] pyramid")
            jobs.append(VolumeJob(name=name, sample=sample, time_point=time_point, input=source,
                                  output=_where(output, f"{work}/pyramids/{name}.ome.zarr"),
                                  params={"levels": levels, "method": wanted.method, "name": name},
                                  blocks=_blocks("downsample", shape, block_shape, {"levels": levels}), shape=shape, reads=(ref,)))
    return tuple(jobs)


def _stage_job(item: LocatedVolume, scratch: Tier, work: str, block_shape: Sequence[int]) -> VolumeJob:
    volume = item.volume
    name = f"{volume.sample}_c{volume.channel}_t{volume.time_point:03d}"
    return VolumeJob(name=name, sample=volume.sample, time_point=volume.time_point, channel=volume.channel, input=item.local,
                     output=_where(scratch, f"{work}/staged/{name}.zarr"), params={"compression": "lz4"},
                     blocks=_blocks("convert", item.shape, block_shape, {}), shape=item.shape)
