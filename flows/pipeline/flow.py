"""The main job: the ``pipeline`` flow, from a raw folder or a snapshot to promoted results,
running any pipeline spec (:mod:`.spec`; default ``cells``).

Stages, each a subflow in the Prefect UI with a progress artifact (blocks done / total)::

    ingest (or an existing snapshot) -> stage (TIFF -> zarr on scratch, every channel)
    -> the spec's stages (cells: smooth -> threshold -> label), in dependency order
    -> features (per object, into PostgreSQL) -> track (+ kinematics, MSD)
    -> pyramid (OME-Zarr on the output tier) -> image (one OME-Zarr per sample: channels, time
    points, labels; :mod:`.sample_image`) -> tables -> promote -> retention (this run's
    scratch) -> report (markdown in the UI and on Tier 1, with Neuroglancer links)

Paths under the tiers are derived from the snapshot and the parameters
(``pipeline/<dataset>/<snapshot>/<key>``), so

* a re-run with the same snapshot and parameters is served from the completed run's result;
* a failed or killed run resumes (``tierflow resume RUN``): every operation's ledger skips the
  blocks already done, finished stages cost a query each;
* any change of parameters works in a new place and recomputes.

A memory guard checks RAM at every stage boundary; every run tees its log to Tier 4.

This module runs a plan (:mod:`.plan`: the jobs of every stage, as data) stage by stage and
returns a :class:`~.report.PipelineResult` (:mod:`.report`: the result, its markdown report and
UI artifacts); :mod:`.tables` writes the CSV tables.
"""

from __future__ import annotations

import errno
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from tierflow.configs import TierflowConfig, load_config, load_db_config
from tierflow.flows.lifecycle.ingest import ingest
from tierflow.flows.lifecycle.promote import promote
from tierflow.flows.lifecycle.retention import retention
from tierflow.flows.lifecycle.track import track
from tierflow.flows.ops.flow import BlockFailuresError, op_flow
from tierflow.flows.pipeline.library import find_spec
from tierflow.flows.pipeline.params import PipelineParams
from tierflow.flows.pipeline.plan import (
    PIPELINE_VERSION,
    PipelinePlan,
    StagePlan,
    VolumeJob,
    locate_volume,
    pipeline_key,
    plan_pipeline,
    raw_volumes,
    work_prefix,
)
from tierflow.flows.pipeline.sample_image import SampleImageJob, WrittenImage, image_stage, plan_images
from tierflow.flows.pipeline.spec import DEFAULT_PIPELINE, PipelineSpec, substitute
from tierflow.flows.pipeline.report import (
    PipelineResult,
    TierUsage,
    image_summaries,
    neuroglancer_links,
    publish_artifacts,
    render_report,
)
from tierflow.flows.pipeline.tables import write_tables
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.memory_guard import MemoryGuard
from tierflow.flows.runtime.progress import StageProgress, announce_run
from tierflow.flows.runtime.run_names import describe_pipeline, pipeline_run_name, rename_flow_run, stage_run_name
from tierflow.flows.runtime.run_log import tee_run_log
from tierflow.flows.runtime.runs import recorded_run, run_to_resume
from tierflow.flows.runtime.tiers import Tiers, open_tiers
from tierflow.storage.arrays import array_sidecars
from tierflow.storage.db.database import Database
from tierflow.storage.db.repo import (
    add_artifact,
    adopt_run,
    artifacts_by_ids,
    completed_runs_with_key,
    get_artifact,
    match_snapshots,
    snapshot_paths,
)
from tierflow.storage.errors import TierflowError
from tierflow.storage.snapshots import read_manifest
from tierflow.storage.tiers import Tier

__all__ = ["PIPELINE_VERSION", "PipelineParams", "PipelineResult", "StageResult", "op_stage", "pipeline", "pipeline_key",
           "resume_pipeline", "resume_this_run"]


# -- helpers -----------------------------------------------------------------------------------

@contextmanager
def resume_this_run(run: int, stage: str, writes_to: str) -> Iterator[None]:
    """A stage's failure says to resume the *pipeline* run ``run`` (which re-runs its child op
    runs, skipping their done blocks), not the child run that failed; a full disk names the tier
    root the stage writes to (``writes_to``)."""
    try:
        yield
    except BlockFailuresError as exc:
        full = "No space left on device" in exc.message
        raise TierflowError(
            f"pipeline run {run}, stage {stage}: " + (f"the disk of {writes_to} is full: " if full else "") + exc.message,
            hint=(f"free space on {writes_to} (or give it more), then " if full else "fix the cause, then ")
            + f"`tierflow resume {run}` finishes the pipeline run: every block already done is skipped",
        ) from None
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise TierflowError(f"pipeline run {run}, stage {stage}: the disk of {writes_to} is full ({exc})",
                            hint=f"free space on {writes_to}, then `tierflow resume {run}` finishes the pipeline run") from None


def _register(db: Database, run_id: int, *, kind: str, name: str, tier_name: str, tier: Tier, key: str, dataset: str,
              snapshot_pk: int, inputs: Sequence[int] = (), input_snapshots: Sequence[int] = ()) -> int:
    """Record an artifact of this run (or take over the row of an earlier, unfinished run of the
    same work); returns its id."""
    uri = tier.uri(key)
    # a zarr is a tree of objects, counted with what is kept beside it (label's merge state),
    # as retention counts and reclaims it
    size = sum(tier.usage(part) for part in (key, *array_sidecars(key))) if key.endswith(".zarr") else tier.stat(key).size
    with db.session() as session:
        row = get_artifact(session, uri)
        if row is not None:
            row.run_id, row.bytes, row.deleted_at = run_id, size, None
            return int(row.id)
        artifact = add_artifact(session, kind=kind, name=name, tier=tier_name, uri=uri, bytes=size, run_id=run_id, dataset=dataset,
                                snapshot_pk=snapshot_pk, inputs=list(inputs), input_snapshots=list(input_snapshots))
        return int(artifact.id)


@dataclass(frozen=True)
class StageResult:
    """One job of a stage, done: the ``op`` run that did it and where its output is."""

    job: VolumeJob
    run_id: int
    output: str


def _about(job: VolumeJob) -> str:
    """What a job is about: ``sample s1, channel 0, time point 3``."""
    channel = f", channel {job.channel}" if job.channel is not None else ""
    return f"sample {job.sample}{channel}, time point {job.time_point}"


@flow(name="pipeline-stage", flow_run_name=stage_run_name)
def op_stage(stage: str, op: str, jobs: list[VolumeJob], block_shape: tuple[int, ...], workers: int | None, config_dir: str | None,
             parent_run: int) -> list[StageResult]:
    """One stage: ``op`` on every job (input, output, params, extra inputs), in this flow run,
    with a progress artifact over all the jobs' blocks."""
    logger = get_run_logger()
    total = sum(job.blocks for job in jobs)
    progress = StageProgress(stage, total, run=parent_run)
    results, reached = [], 0
    for job in jobs:
        result = op_flow.fn(op, job.input, job.output, dict(job.params), block_shape=tuple(block_shape), workers=workers,
                            config_dir=config_dir, inputs=dict(job.inputs) if job.inputs is not None else None,
                            progress=progress.advance, parent_run=parent_run, stage=stage,
                            shard_outputs=False)  # stage outputs are scratch; the sample image is sharded by shard_shape
        reached += job.blocks
        progress.reach(reached)
        logger.info("stage %s: %s of %s: %d of %d block(s) computed, %d already done (op run %d)", stage, op, _about(job),
                    result["computed"], result["blocks"], result["blocks"] - result["computed"], result["run_id"])
        results.append(StageResult(job=job, run_id=int(result["run_id"]), output=str(result["output"])))
    progress.finish()
    logger.info("stage %s: %s on %d volume(s), %d block(s)", stage, op, len(jobs), total)
    return results


def _run_name(config: TierflowConfig, spec: PipelineSpec, dataset: str, snapshot_id: str, chosen: PipelineParams) -> str:
    """``pipeline cells demo@348ca52f sigma=1.5``: the parameters that differ from the defaults."""
    defaults = PipelineParams.from_config(config, None, spec).model_dump(mode="json")
    changed = {k: v for k, v in chosen.model_dump(mode="json").items() if defaults.get(k) != v}
    return describe_pipeline(spec.name, dataset, snapshot_id, None, changed)


def _readable(params: dict[str, Any]) -> str:
    """``sigma=1.5, threshold=otsu, block_shape=[32, 128, 128]``."""
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "none"


def _cached_result(db: Database, key: str, source: Tier) -> tuple[int, PipelineResult] | None:
    """The result of the latest completed (not itself served) run with work key ``key`` whose
    report is still on Tier 1, and that run's id."""
    with db.session() as session:
        rows = completed_runs_with_key(session, "pipeline", key)
        for row in rows:
            result = dict(row.result or {})
            if result.get("cached"):
                continue
            report = result.get("report_uri")
            if report and source.exists(source.key_of(report)):
                try:
                    return int(row.id), PipelineResult.from_record(result)
                except (KeyError, TypeError):  # not a result this version wrote
                    continue
    return None


def _adopt(db: Database, ingest_run: int | None, run_id: int) -> None:
    """The pipeline's ingest ran before the pipeline's run row existed: record it as inside it
    (so `tierflow runs list` shows the pipeline, and `--all` its ingest)."""
    if ingest_run is not None:
        with db.session() as session:
            adopt_run(session, int(ingest_run), run_id)


def _serve_cached(db: Database, recorded: dict[str, Any], served_from: int, original: PipelineResult, *,
                  ingest_run: int | None = None) -> PipelineResult:
    """Record a run served by the completed run ``served_from`` (whose result is ``original``)."""
    with recorded_run(db, "pipeline", recorded) as run_id:
        _adopt(db, ingest_run, int(run_id))
        # the runs table keeps the result with the run id of the run that computed it
        run_id.result = original.served(original.run_id, served_from).to_dict()
    get_run_logger().info("pipeline: snapshot %s with these parameters was completed by run %d: served from it",
                          recorded["snapshot"], served_from)
    return original.served(int(run_id), served_from)


def _find_snapshot(db: Database, dataset: str, snapshot: str) -> tuple[str, int]:
    """The id and primary key of ``dataset``'s one snapshot whose id starts with ``snapshot``."""
    with db.session() as session:
        matches = match_snapshots(session, dataset, str(snapshot))
        if len(matches) != 1:
            raise TierflowError(f"dataset {dataset!r} has {len(matches)} snapshot(s) matching {snapshot!r}",
                                hint="see `tierflow snapshots list`; give a longer prefix of the id")
        return matches[0].snapshot_id, int(matches[0].id)


@dataclass
class _PipelineRun:
    """One pipeline run under way: what it works on, where it records its artifacts (``written``:
    ids by tier) and how it runs a stage."""

    db: Database
    run: int
    dataset: str
    snapshot_id: str
    snapshot_pk: int
    params: PipelineParams
    spec: PipelineSpec
    tiers: Tiers
    guard: MemoryGuard
    workers: int | None
    config_dir: str | None
    written: dict[str, list[int]] = field(default_factory=lambda: {"scratch": [], "output": []})

    def artifact(self, kind: str, name: str, tier_name: str, key: str, inputs: Sequence[int] = (),
                 snapshots: Sequence[int] = ()) -> int:
        """Register ``key`` on the ``tier_name`` tier as an artifact of this run; returns its id."""
        tier = self.tiers.scratch if tier_name == "scratch" else self.tiers.output
        artifact_id = _register(self.db, self.run, kind=kind, name=name, tier_name=tier_name, tier=tier, key=key, dataset=self.dataset,
                                snapshot_pk=self.snapshot_pk, inputs=inputs, input_snapshots=snapshots)
        self.written[tier_name].append(artifact_id)
        return artifact_id

    def stage(self, name: str, op: str, jobs: Sequence[VolumeJob], tier_name: str = "scratch") -> list[StageResult]:
        """Run stage ``name`` (``op`` on every job, writing to the ``tier_name`` tier) after a
        memory check; a failure says how to resume this run."""
        self.guard.check(name, run_id=self.run)
        writes_to = (self.tiers.output if tier_name == "output" else self.tiers.scratch).uri("")
        with resume_this_run(self.run, name, writes_to):
            return op_stage(name, op, list(jobs), self.params.block_shape, self.workers, self.config_dir, self.run)


# -- the flow ----------------------------------------------------------------------------------

@flow(name="pipeline", flow_run_name=pipeline_run_name)
def pipeline(
    dataset: str,
    snapshot: str | None = None,
    raw_dir: str | None = None,
    spec: str = DEFAULT_PIPELINE,
    params: dict[str, Any] | None = None,
    workers: int | None = None,
    config_dir: str | None = None,
    force: bool = False,
    work: str | None = None,
) -> PipelineResult:
    """Run the main job on a snapshot (``snapshot``: its id or a unique prefix) or on a raw
    folder (``raw_dir``: ingested first).

    Parameters
    ----------
    dataset
        Dataset name of the snapshot.
    snapshot, raw_dir
        Exactly one: an existing snapshot id, or a raw folder to ingest.
    spec
        The pipeline: a name (``tierflow pipelines list``; default ``cells``) or the path of a
        TOML spec.
    params
        Values of the pipeline's ``[params]`` (and ``block_shape``) for this run.
    workers
        Parallel batches per operation (default ``[execution].max_workers``).
    config_dir
        A configs folder; default found upward.
    force
        Compute everything again, even if a completed run or the ledger has it: the run is not
        served from an earlier run's result and works in a new place of its own, so every block
        is computed, and its results are promoted to Tier 1 under this run (Tier 1 is
        write-once: what earlier runs promoted stays as it was; the ledger keeps their rows).
    work
        Where on the scratch and output tiers to work (a resume of a forced run continues in
        its place); default from the snapshot and parameters.

    Returns
    -------
    PipelineResult
        ``run_id``, ``snapshot_id``, ``objects``, ``tracks``, ``promoted`` (name -> Tier 1 URI),
        ``tier_usage``, ``report_uri``, ``links`` and ``cached`` (also readable as a mapping:
        ``result["run_id"]``; ``result.to_dict()`` is its JSON form).
    """
    logger = get_run_logger()
    if (snapshot is None) == (raw_dir is None):
        raise TierflowError("give exactly one of a snapshot id or a raw folder", hint="tierflow run pipeline --snapshot ID (or --raw DIR)")
    config = load_config(config_dir)
    from tierflow.storage.zarr_codecs import use_codec_pipeline  # imports zarr: only when it runs

    use_codec_pipeline(config.execution.codec_pipeline)
    pipeline_spec = find_spec(spec, config.meta.config_dir)
    chosen = PipelineParams.from_config(config, params, pipeline_spec)
    db = open_database(load_db_config(config_dir), migrate=True)
    tiers = open_tiers(config)
    guard = MemoryGuard(config.execution.memory_limit_percent)

    ingest_run = None
    if raw_dir is not None:
        guard.check("ingest")
        ingested = ingest(raw_dir, dataset, config_dir=config_dir)  # before this run's row exists: adopted below
        snapshot, ingest_run = ingested["snapshot_id"], ingested.get("run_id")
    snapshot_id, snapshot_pk = _find_snapshot(db, dataset, str(snapshot))
    name = _run_name(config, pipeline_spec, dataset, snapshot_id, chosen)
    if raw_dir is not None or name != pipeline_run_name():
        rename_flow_run(name)  # its snapshot is known now; a resume names only what differs from the defaults
    key = pipeline_key(dataset, snapshot_id, chosen)
    if force and work is None:
        work = f"{work_prefix(dataset, snapshot_id, key)}-force-{uuid.uuid4().hex[:8]}"  # nothing done there: all is computed
    recorded = {"dataset": dataset, "snapshot": snapshot_id, "pipeline": pipeline_spec.name, "spec": pipeline_spec.file,
                "spec_digest": pipeline_spec.digest, "params": chosen.model_dump(mode="json"), "workers": workers, "key": key,
                **({"force": True, "work": work} if force else {})}

    cached = None if force else _cached_result(db, key, tiers.source)
    if cached is not None:
        rename_flow_run(f"{name} (cached: run {cached[0]}'s results)")  # in the UI not a second run computing the same
        return _serve_cached(db, recorded, *cached, ingest_run=ingest_run)

    with recorded_run(db, "pipeline", recorded) as run_id, tee_run_log(config, f"pipeline-{int(run_id)}") as log_path:
        _adopt(db, ingest_run, int(run_id))
        announce_run(int(run_id), name)
        run = _PipelineRun(db, int(run_id), dataset, snapshot_id, snapshot_pk, chosen, pipeline_spec, tiers, guard, workers, config_dir)
        logger.info("pipeline %s run %d on dataset %s, snapshot %s, parameters %s (work key %s%s); log %s", pipeline_spec.name, run.run,
                    dataset, snapshot_id, _readable(recorded["params"]), key, ", forced: everything is computed again" if force else "",
                    log_path)
        result = _execute(run, config, work or work_prefix(dataset, snapshot_id, key), key, str(log_path))
        run_id.result = result.to_dict()
        logger.info("pipeline run %d: %d objects, %d tracks; report %s", run.run, result.objects, result.tracks, result.report_uri)
        return result


def _execute(run: _PipelineRun, config: TierflowConfig, work: str, key: str, log: str) -> PipelineResult:
    """Every stage of the run, its tables, promotion, retention and report."""
    plan = _plan(run, config, work, key)
    images = plan_images(plan, run.spec, run.params, run.tiers.output)  # a plan that cannot be written is refused here
    ids = _stage(run, plan)
    for stage in plan.stages:
        _run_stage(run, plan, stage, ids)
    features, feature_ids = _features(run, plan, ids)

    tracked: dict[str, Any] = {}
    if run.spec.outputs.track is not None and features:
        run.guard.check("track", run_id=run.run)
        values = dict(run.params.values)
        wanted = run.spec.outputs.track
        tracked = track([r.run_id for r in features], float(substitute(wanted.max_distance, values)),
                        frame_interval=float(substitute(wanted.frame_interval, values)), config_dir=run.config_dir, parent_run=run.run)
    _pyramids(run, plan, ids)
    written = _images(run, images, ids)

    run.guard.check("tables", run_id=run.run)
    track_run = int(tracked["run_id"]) if tracked else None
    tables = write_tables(run.db, [r.job for r in features], track_run, run.tiers.scratch, run.tiers.output, work)
    table_ids = [run.artifact("table", f"tables/{name}.csv", "output", f"{work}/tables/{name}.csv", feature_ids) for name in tables]

    usage, promoted = _promote_and_reclaim(run)
    links = neuroglancer_links(config, promoted, written)
    draft = PipelineResult(
        run_id=run.run, dataset=run.dataset, snapshot_id=run.snapshot_id, params=run.params.model_dump(mode="json"), key=key,
        volumes=len(plan.stage), objects=int(len(tables["objects"])), tracks=int(tracked.get("tracks", 0)),
        divisions=int(tracked.get("divisions", 0)), log=log, promoted=promoted, tier_usage=usage,
        links=links, finished_at=datetime.now(UTC).isoformat(), cached=False, images=image_summaries(written, promoted, links),
    )
    return _report(run, draft, work, table_ids, tables["objects"])


def _plan(run: _PipelineRun, config: TierflowConfig, work: str, key: str) -> PipelinePlan:
    """The run's jobs, from the snapshot's volumes (raw volumes on S3 fetched to Tier 4 tmp)."""
    with run.db.session() as session:
        paths = snapshot_paths(session, run.snapshot_pk)
    source = run.tiers.source
    manifest = read_manifest(source, run.dataset, run.snapshot_id)
    if manifest is None:
        raise TierflowError(f"snapshot {run.dataset}/{run.snapshot_id} has no manifest on {source.uri()}", hint="ingest it again")
    volumes = raw_volumes(paths, manifest)
    if not volumes:
        raise TierflowError(f"snapshot {run.snapshot_id} holds no volumes in tierflow's raw layout")
    tmp = Path(config.tier_root("ephemeral")) / "tmp" / f"pipeline-{key}"
    located = [locate_volume(source, manifest, volume, tmp) for volume in volumes]
    return plan_pipeline(located, run.params, run.spec, dataset=run.dataset, work=work, scratch=run.tiers.scratch,
                         output=run.tiers.output)


Ids = dict[tuple[str, str, int], int]
"""Artifact ids of a run's volumes by (reference, sample, time point): ``raw.c0``, a stage."""


def _stage(run: _PipelineRun, plan: PipelinePlan) -> Ids:
    """Raw TIFF -> zarr on scratch, every channel; the staged artifacts' ids."""
    ids: Ids = {}
    for result in run.stage("stage", "convert", plan.stage):
        job = result.job
        ids[(f"raw.c{job.channel}", job.sample, job.time_point)] = run.artifact(
            "zarr", f"staged/{job.name}.zarr", "scratch", f"{plan.work}/staged/{job.name}.zarr", snapshots=[run.snapshot_pk])
    return ids


def _run_stage(run: _PipelineRun, plan: PipelinePlan, stage: StagePlan, ids: Ids) -> None:
    """One stage of the spec on every volume; its outputs' artifacts (with their inputs)."""
    run.stage(stage.name, stage.op, stage.jobs, stage.tier)
    for job in stage.jobs:
        inputs = [ids[(ref, job.sample, job.time_point)] for ref in job.reads]
        ids[(stage.name, job.sample, job.time_point)] = run.artifact(
            "zarr", f"{stage.name}/{job.name}.zarr", stage.tier, f"{plan.work}/{stage.name}/{job.name}.zarr", inputs)


def _features(run: _PipelineRun, plan: PipelinePlan, ids: Ids) -> tuple[list[StageResult], list[int]]:
    """Per-object features of every label image over its channels; the stage's results and the
    features tables' artifact ids."""
    if not plan.features:
        return [], []
    features = run.stage("features", "features", plan.features)
    feature_ids = []
    for result in features:
        job = result.job
        inputs = [ids[(ref, job.sample, job.time_point)] for ref in job.reads]
        feature_ids.append(run.artifact("table", f"features/{job.name}.csv", "scratch", f"{plan.work}/features/{job.name}.csv", inputs))
    return features, feature_ids


def _pyramids(run: _PipelineRun, plan: PipelinePlan, ids: Ids) -> None:
    """OME-Zarr pyramids of [outputs] pyramid on the output tier."""
    if not plan.pyramid:
        return
    run.stage("pyramid", "downsample", plan.pyramid, "output")
    for job in plan.pyramid:
        run.artifact("ome-zarr", f"pyramids/{job.name}.ome.zarr", "output", f"{plan.work}/pyramids/{job.name}.ome.zarr",
                     [ids[(ref, job.sample, job.time_point)] for ref in job.reads])


def _images(run: _PipelineRun, jobs: Sequence[SampleImageJob], ids: Ids) -> list[WrittenImage]:
    """One OME-Zarr image per sample (channels, time points, labels) on the output tier."""
    if not jobs:
        return []
    run.guard.check("image", run_id=run.run)
    writes_to = run.tiers.output.uri("")
    with resume_this_run(run.run, "image", writes_to):
        written = image_stage(list(jobs), run.params.block_shape, run.params.shard_shape, run.workers, run.config_dir, run.run)
    for job in jobs:
        inputs = [ids[(f"raw.c{c}", job.sample, t)] for t in job.time_points for c in job.channels
                  if (f"raw.c{c}", job.sample, t) in ids]
        inputs += [ids[(job.label_stage, job.sample, t)] for t in job.time_points if (job.label_stage, job.sample, t) in ids]
        run.artifact("ome-zarr", job.name, "output", job.key, inputs)
    return written


def _promote_and_reclaim(run: _PipelineRun) -> tuple[TierUsage, dict[str, str]]:
    """Promote the run's outputs to Tier 1, reclaim its scratch; the tier usage and the promoted
    URIs by artifact name."""
    run.guard.check("promote", run_id=run.run)
    promoted = promote(run=str(run.run), config_dir=run.config_dir, parent_run=run.run)
    run.guard.check("retention", run_id=run.run)
    reclaimed = retention(config_dir=run.config_dir, artifact_ids=run.written["scratch"], parent_run=run.run)
    with run.db.session() as session:
        rows = artifacts_by_ids(session, run.written["scratch"] + run.written["output"])
        sizes = {tier_name: sum(r.bytes for r in rows if r.tier == tier_name) for tier_name in ("scratch", "output")}
        promoted_uris = {r.name: r.promoted_uri for r in rows if r.promoted_uri}
    usage = TierUsage(written_scratch=sizes["scratch"], written_output=sizes["output"],
                      promoted=int(sum(p["bytes"] for p in promoted["promoted"])), reclaimed=int(reclaimed["deleted_bytes"]))
    return usage, promoted_uris


def _report(run: _PipelineRun, draft: PipelineResult, work: str, table_ids: list[int], objects: pd.DataFrame) -> PipelineResult:
    """Write the report (markdown and JSON) to the output tier, promote it, show it in the
    Prefect UI; the run's result, with the report's Tier 1 URIs."""
    output = run.tiers.output
    markdown = render_report(draft, pipeline=run.spec.name, lineage=run.spec.lineage())
    output.put_bytes(f"{work}/report.md", markdown.encode())
    output.put_bytes(f"{work}/report.json", json.dumps(draft.to_dict(), indent=2, default=str).encode())
    report_ids = [run.artifact("report", "report.md", "output", f"{work}/report.md", table_ids),
                  run.artifact("report", "report.json", "output", f"{work}/report.json", table_ids)]
    final = promote(artifacts=[str(i) for i in report_ids], config_dir=run.config_dir, parent_run=run.run, stage="promote report")
    report_uri = next(p["uri"] for p in final["promoted"] if p["uri"].endswith("report.json"))
    report_md = next(p["uri"] for p in final["promoted"] if p["uri"].endswith("report.md"))
    result = replace(draft, report_uri=report_uri, promoted={**draft.promoted, "report.md": report_md, "report.json": report_uri})
    publish_artifacts(result, markdown, objects)
    return result


def resume_pipeline(run: str, *, config_dir: str | None = None) -> PipelineResult:
    """Run a failed, stopped or killed pipeline run again with its recorded snapshot and
    parameters: it works in the same place, so every operation's ledger skips the blocks that
    were done. A run still marked running whose process was killed is marked crashed first.

    Raises
    ------
    TierflowError
        If the run does not exist or is not a pipeline run.
    """
    recorded = run_to_resume(open_database(load_db_config(config_dir)), run, "pipeline")
    spec = recorded.get("spec") or DEFAULT_PIPELINE
    if recorded.get("spec_digest") and find_spec(spec, config_dir).digest != recorded["spec_digest"]:
        raise TierflowError(f"pipeline run {run} ran {spec}, which has changed since: resuming it would start over elsewhere",
                            hint=f"restore the spec as it was, or start a new run: tierflow run pipeline {spec} ...")
    return pipeline(recorded["dataset"], snapshot=recorded["snapshot"], spec=spec, params=recorded["params"],
                    workers=recorded.get("workers"), config_dir=config_dir, force=bool(recorded.get("force")), work=recorded.get("work"))
