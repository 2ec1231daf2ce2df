"""The main job: the ``pipeline`` flow, from a raw folder or a snapshot to promoted results.

Stages, each a subflow in the Prefect UI with a progress artifact (blocks done / total)::

    ingest (or an existing snapshot) -> stage (TIFF -> zarr on scratch, every channel)
    -> smooth (gaussian) -> threshold (fixed or Otsu) -> label (connected components)
    -> features (per object, every channel, into PostgreSQL) -> track (+ kinematics, MSD)
    -> pyramid (OME-Zarr on the output tier) -> tables -> promote -> retention (this run's
    scratch) -> report (markdown in the UI and on Tier 1, with Neuroglancer links)

Paths under the tiers are derived from the snapshot and the parameters
(``pipeline/<dataset>/<snapshot>/<key>``), so

* a re-run with the same snapshot and parameters is served from the completed run's result;
* a failed or killed run resumes (``tierflow resume RUN``): every operation's ledger skips the
  blocks already done, finished stages cost a query each;
* any change of parameters works in a new place and recomputes.

A memory guard checks RAM at every stage boundary; every run tees its log to Tier 4.
"""

from __future__ import annotations

import errno
import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.lifecycle.ingest import ingest
from tierflow.flows.runtime.memory_guard import MemoryGuard
from tierflow.flows.viewing.neuroglancer import neuroglancer_url, zarr_source
from tierflow.flows.ops.flow import BlockFailuresError, op_flow
from tierflow.flows.pipeline.params import PipelineParams
from tierflow.flows.runtime.progress import StageProgress
from tierflow.flows.lifecycle.promote import promote
from tierflow.flows.lifecycle.retention import retention
from tierflow.flows.runtime.run_log import tee_run_log
from tierflow.flows.runtime.runs import recorded_run, run_to_resume
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.flows.lifecycle.track import track
from tierflow.storage.arrays import array_sidecars
from tierflow.storage.db.database import Database
from tierflow.storage.db.repo import (
    add_artifact,
    artifacts_by_ids,
    completed_runs_with_key,
    get_artifact,
    match_snapshots,
    snapshot_paths,
    track_rows,
)
from tierflow.storage.errors import TierflowError
from tierflow.storage.raw_layout import parse_volume_name
from tierflow.storage.snapshots import Manifest, fetch_snapshot_path, read_manifest
from tierflow.storage.tiers import Tier

__all__ = ["PIPELINE_VERSION", "PipelineParams", "pipeline", "pipeline_key", "resume_this_run"]

PIPELINE_VERSION = "1"


def pipeline_key(dataset: str, snapshot_id: str, params: PipelineParams) -> str:
    """Identity of a pipeline result: version, dataset, snapshot and parameters."""
    text = json.dumps({"version": PIPELINE_VERSION, "dataset": dataset, "snapshot": snapshot_id, "params": params.model_dump(mode="json")},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _where(tier: Tier, key: str) -> str:
    """What ``tierflow op`` takes for ``key`` on ``tier``: a local path or an ``s3://`` URI."""
    uri = tier.uri(key)
    return str(Path(uri[len("file://"):])) if uri.startswith("file://") else uri


def _volumes(db: Database, snapshot_pk: int) -> list[dict[str, Any]]:
    """The snapshot's volumes: sample, channel, time point and relative path (a stack, or a
    folder of slices)."""
    with db.session() as session:
        paths = snapshot_paths(session, snapshot_pk)
    volumes: dict[str, dict[str, Any]] = {}
    for path in paths:
        parts = path.split("/")
        if len(parts) < 2:
            continue
        sample = parts[0]
        parsed = parse_volume_name(parts[1])
        if parsed is None:
            continue
        channel, time_point = parsed
        relative = "/".join(parts[:2])
        volumes.setdefault(relative, {"sample": sample, "channel": channel, "time_point": time_point, "path": relative,
                                      "slices": len(parts) > 2})
    return sorted(volumes.values(), key=lambda v: (v["sample"], v["time_point"], v["channel"]))


def _local_input(source: Tier, manifest: Manifest, volume: dict[str, Any], tmp: Path) -> str:
    """A local path of a raw volume on Tier 1 (S3 objects are downloaded to Tier 4 tmp and
    verified against the snapshot's manifest; a local copy is reused only if it matches)."""
    uri = source.uri(f"{manifest.prefix}/{volume['path']}")
    if uri.startswith("file://"):
        return str(Path(uri[len("file://"):]))
    return str(fetch_snapshot_path(source, manifest, volume["path"], tmp))


def _blocks(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> int:
    return int(np.prod([-(-s // b) for s, b in zip(shape, block_shape[-len(shape):], strict=True)]))


def _register(db: Database, run_id: int, *, kind: str, name: str, tier_name: str, tier: Tier, key: str, dataset: str,
              snapshot_pk: int, inputs: list[int] = (), input_snapshots: list[int] = ()) -> int:  # type: ignore[assignment]
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


@flow(name="pipeline-stage", flow_run_name="{stage}")
def op_stage(stage: str, op: str, jobs: list[dict[str, Any]], params: PipelineParams, workers: int | None, config_dir: str | None,
             parent_run: int) -> list[dict[str, Any]]:
    """One stage: ``op`` on every job (input, output, params, extra inputs), in this flow run,
    with a progress artifact over all the jobs' blocks."""
    total = sum(job["blocks"] for job in jobs)
    progress = StageProgress(stage, total)
    results, reached = [], 0
    for job in jobs:
        result = op_flow.fn(op, job["input"], job["output"], job.get("params"), block_shape=tuple(params.block_shape), workers=workers,
                           config_dir=config_dir, inputs=job.get("inputs"), progress=progress.advance, parent_run=parent_run)
        reached += job["blocks"]
        progress.reach(reached)
        results.append({"run_id": result["run_id"], "output": result["output"], "computed": result.get("computed", 0),
                        "objects": result.get("objects"), "job": {k: v for k, v in job.items() if k != "blocks"}})
    progress.finish()
    get_run_logger().info("stage %s: %d operation(s), %d block(s)", stage, len(jobs), total)
    return results


def _cached_result(db: Database, key: str, source: Tier) -> tuple[int, dict[str, Any]] | None:
    with db.session() as session:
        for row in completed_runs_with_key(session, "pipeline", key):
            result = dict(row.result or {})
            if result.get("cached"):
                continue
            report = result.get("report_uri")
            if report and source.exists(source.key_of(report)):
                return int(row.id), result
    return None


def _tables(db: Database, feature_results: list[dict[str, Any]], track_run: int, scratch: Tier, output: Tier,
            work: str) -> dict[str, pd.DataFrame]:
    """objects (every object of every volume, with its track id), tracks, kinematics and msd
    as CSV files on the output tier."""
    frames = []
    for result in feature_results:
        job = result["job"]
        where = job["output"]
        data = scratch.get_bytes(scratch.key_of(where)) if where.startswith("s3://") else Path(where).read_bytes()
        table = pd.read_csv(io.BytesIO(data))
        if "time_point" not in table:
            table.insert(0, "time_point", job["params"]["time_point"])
        table.insert(0, "sample", job["params"]["sample"])
        frames.append(table)
    objects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with db.session() as session:
        def frame(table: str) -> pd.DataFrame:
            stored = track_rows(session, table, track_run)
            return pd.DataFrame(stored.rows, columns=list(stored.columns))

        tables = {"objects": objects, "tracks": frame("points"), "kinematics": frame("kinematics"), "msd": frame("msd")}
    if not tables["tracks"].empty and not objects.empty:
        ids = tables["tracks"][["sample", "time_point", "label", "track_id"]]
        tables["objects"] = objects.merge(ids, on=["sample", "time_point", "label"], how="left")
    for name, table in tables.items():
        output.put_bytes(f"{work}/tables/{name}.csv", table.to_csv(index=False).encode())
    return tables


def _report(summary: dict[str, Any], links: dict[str, str]) -> str:
    usage = summary["tier_usage"]
    lines = [
        f"# tierflow pipeline run {summary['run_id']}", "",
        f"- **dataset** `{summary['dataset']}`, **snapshot** `{summary['snapshot_id']}`",
        f"- **parameters** `{json.dumps(summary['params'], sort_keys=True)}`",
        f"- **objects** {summary['objects']} in {summary['volumes']} volume(s); **tracks** {summary['tracks']} "
        f"({summary['divisions']} division(s))",
        f"- **run log** `{summary['log']}`", "",
        "## Tier usage", "", "| | bytes |", "|---|---:|",
        f"| written to scratch (Tier 3) | {usage['written_scratch']:,} |",
        f"| written to output (Tier 2) | {usage['written_output']:,} |",
        f"| promoted to Tier 1 | {usage['promoted']:,} |",
        f"| reclaimed (this run's scratch) | {usage['reclaimed']:,} |", "",
        "## Lineage", "",
        "raw snapshot -> stage (zarr, every channel) -> smooth -> threshold -> label -> features -> tracks; "
        "stage -> pyramid. Every artifact's inputs are in `artifact_lineage` (`tierflow artifacts list`).", "",
        "## Where the outputs live", "", "| output | Tier 1 |", "|---|---|",
    ]
    lines += [f"| {name} | `{uri}` |" for name, uri in sorted(summary["promoted"].items())]
    lines += ["", "## Neuroglancer", "",
              "Serve Tier 1 first (`tierflow serve`), then open:", ""]
    lines += [f"- [{name}]({url})" for name, url in sorted(links.items())]
    return "\n".join(lines) + "\n"


# -- the flow ----------------------------------------------------------------------------------

@flow(name="pipeline")
def pipeline(
    dataset: str,
    snapshot: str | None = None,
    raw_dir: str | None = None,
    params: dict[str, Any] | None = None,
    workers: int | None = None,
    config_dir: str | None = None,
) -> dict[str, Any]:
    """Run the main job on a snapshot (``snapshot``: its id or a unique prefix) or on a raw
    folder (``raw_dir``: ingested first).

    Parameters
    ----------
    dataset
        Dataset name of the snapshot.
    snapshot, raw_dir
        Exactly one: an existing snapshot id, or a raw folder to ingest.
    params
        Overrides of ``[pipeline]`` (see :class:`PipelineParams`).
    workers
        Parallel batches per operation (default ``[execution].max_workers``).
    config_dir
        A configs folder; default found upward.

    Returns
    -------
    dict
        ``run_id``, ``snapshot_id``, ``objects``, ``tracks``, ``promoted`` (name -> Tier 1 URI),
        ``tier_usage``, ``report_uri``, ``links`` and ``cached``.
    """
    logger = get_run_logger()
    if (snapshot is None) == (raw_dir is None):
        raise TierflowError("give exactly one of a snapshot id or a raw folder", hint="tierflow run pipeline --snapshot ID (or --raw DIR)")
    config = load_config(config_dir)
    chosen = PipelineParams.from_config(config, params)
    db = open_database(load_db_config(config_dir), migrate=True)
    tiers = open_tiers(config)
    guard = MemoryGuard(config.execution.memory_limit_percent)

    if raw_dir is not None:
        guard.check("ingest")
        snapshot = ingest(raw_dir, dataset, config_dir=config_dir)["snapshot_id"]
    with db.session() as session:
        matches = match_snapshots(session, dataset, str(snapshot))
        if len(matches) != 1:
            raise TierflowError(f"dataset {dataset!r} has {len(matches)} snapshot(s) matching {snapshot!r}",
                                hint="see `tierflow snapshots list`; give a longer prefix of the id")
        snap = matches[0]
        snapshot_id, snapshot_pk = snap.snapshot_id, int(snap.id)
    key = pipeline_key(dataset, snapshot_id, chosen)
    recorded = {"dataset": dataset, "snapshot": snapshot_id, "params": chosen.model_dump(mode="json"), "workers": workers, "key": key}

    cached = _cached_result(db, key, tiers.source)
    if cached is not None:
        served_from, result = cached
        with recorded_run(db, "pipeline", recorded) as run_id:
            run_id.result = {**result, "cached": True, "served_from_run": served_from}
        logger.info("pipeline: snapshot %s with these parameters was completed by run %d: served from it", snapshot_id, served_from)
        return {**result, "cached": True, "served_from_run": served_from, "run_id": int(run_id)}

    with recorded_run(db, "pipeline", recorded) as run_id, tee_run_log(config, f"pipeline-{int(run_id)}") as log_path:
        run = int(run_id)
        logger.info("pipeline run %d on %s/%s, parameters %s (work key %s); log %s", run, dataset, snapshot_id, recorded["params"], key, log_path)
        work = f"pipeline/{dataset}/{snapshot_id[:16]}/{key}"
        scratch, output, source = tiers.scratch, tiers.output, tiers.source
        tmp = Path(config.tier_root("ephemeral")) / "tmp" / f"pipeline-{key}"
        volumes = _volumes(db, snapshot_pk)
        if not volumes:
            raise TierflowError(f"snapshot {snapshot_id} holds no volumes in tierflow's raw layout")
        channels = sorted({v["channel"] for v in volumes})
        if chosen.segment_channel not in channels:
            raise TierflowError(f"segment_channel {chosen.segment_channel} is not among the snapshot's channels {channels}")
        manifest = read_manifest(source, dataset, snapshot_id)
        if manifest is None:
            raise TierflowError(f"snapshot {dataset}/{snapshot_id} has no manifest on {source.uri()}", hint="ingest it again")
        written: dict[str, list[int]] = {"scratch": [], "output": []}

        def artifact(kind: str, name: str, tier_name: str, key_: str, inputs: list[int] = (), snapshots: list[int] = ()) -> int:  # type: ignore[assignment]
            tier = scratch if tier_name == "scratch" else output
            artifact_id = _register(db, run, kind=kind, name=name, tier_name=tier_name, tier=tier, key=key_, dataset=dataset,
                                    snapshot_pk=snapshot_pk, inputs=list(inputs), input_snapshots=list(snapshots))
            written[tier_name].append(artifact_id)
            return artifact_id

        def stage(name: str, op: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            guard.check(name, run_id=run)
            with resume_this_run(run, name, (output if name == "pyramid" else scratch).uri("")):
                return op_stage(name, op, jobs, chosen, workers, config_dir, run)

        # stage: raw TIFF -> zarr on scratch, every channel
        from tierflow.storage.volumes import open_volume

        staged_jobs = []
        for volume in volumes:
            local = _local_input(source, manifest, volume, tmp)
            name = f"{volume['sample']}_c{volume['channel']}_t{volume['time_point']:03d}"
            shape = tuple(open_volume(local).shape)
            staged_jobs.append({"input": local, "output": _where(scratch, f"{work}/staged/{name}.zarr"), "params": {"compression": "lz4"},
                                "blocks": _blocks(shape, chosen.block_shape), "name": name, "shape": list(shape), **volume})
        staged = stage("stage", "convert", staged_jobs)
        staged_ids = {}
        for result in staged:
            job = result["job"]
            staged_ids[(job["sample"], job["channel"], job["time_point"])] = artifact(
                "zarr", f"staged/{job['name']}.zarr", "scratch", f"{work}/staged/{job['name']}.zarr", snapshots=[snapshot_pk])
        by_volume = {(r["job"]["sample"], r["job"]["channel"], r["job"]["time_point"]): r["job"] for r in staged}
        points = sorted({(v["sample"], v["time_point"]) for v in volumes})

        def chain(stage_name: str, op: str, previous: str, suffix: str, op_params: dict[str, Any]) -> dict[tuple[str, int], str]:
            jobs = []
            for sample, time_point in points:
                seg = by_volume[(sample, chosen.segment_channel, time_point)]
                name = f"{sample}_t{time_point:03d}"
                source_path = seg["output"] if previous == "staged" else _where(scratch, f"{work}/{previous}/{name}.zarr")
                jobs.append({"input": source_path, "output": _where(scratch, f"{work}/{suffix}/{name}.zarr"), "params": op_params,
                             "blocks": _blocks(tuple(seg["shape"]), chosen.block_shape),
                             "sample": sample, "time_point": time_point, "name": name})
            stage(stage_name, op, jobs)
            return {(j["sample"], j["time_point"]): j["output"] for j in jobs}

        smooth = chain("smooth", "gaussian", "staged", "smooth", {"sigma": chosen.sigma})
        mask = chain("threshold", "threshold", "smooth", "mask", {"value": chosen.threshold})
        labels = chain("label", "label", "mask", "labels", {"connectivity": chosen.connectivity})
        chain_ids: dict[tuple[str, int], int] = {}
        for sample, time_point in points:
            name = f"{sample}_t{time_point:03d}"
            seg = staged_ids[(sample, chosen.segment_channel, time_point)]
            smooth_id = artifact("zarr", f"smooth/{name}.zarr", "scratch", f"{work}/smooth/{name}.zarr", [seg])
            mask_id = artifact("zarr", f"mask/{name}.zarr", "scratch", f"{work}/mask/{name}.zarr", [smooth_id])
            chain_ids[(sample, time_point)] = artifact("zarr", f"labels/{name}.zarr", "scratch", f"{work}/labels/{name}.zarr", [mask_id])
        del smooth, mask

        feature_jobs = []
        for sample, time_point in points:
            name = f"{sample}_t{time_point:03d}"
            feature_jobs.append({
                "input": labels[(sample, time_point)], "output": _where(scratch, f"{work}/features/{name}.csv"),
                "inputs": {f"c{c}": by_volume[(sample, c, time_point)]["output"] for c in channels if (sample, c, time_point) in by_volume},
                "params": {"time_point": time_point, "dataset": dataset, "sample": sample},
                "blocks": _blocks(tuple(by_volume[(sample, chosen.segment_channel, time_point)]["shape"]), chosen.block_shape),
                "sample": sample, "time_point": time_point, "name": name,
            })
        features = stage("features", "features", feature_jobs)
        feature_ids = []
        for result in features:
            job = result["job"]
            inputs = [chain_ids[(job["sample"], job["time_point"])],
                      *(staged_ids[(job["sample"], c, job["time_point"])] for c in channels if (job["sample"], c, job["time_point"]) in staged_ids)]
            feature_ids.append(artifact("table", f"features/{job['name']}.csv", "scratch", f"{work}/features/{job['name']}.csv", inputs))

        guard.check("track", run_id=run)
        tracked = track([r["run_id"] for r in features], chosen.max_distance, frame_interval=chosen.frame_interval,
                        config_dir=config_dir, parent_run=run)

        pyramid_jobs = []
        for sample, time_point in points:
            name = f"{sample}_t{time_point:03d}"
            seg = by_volume[(sample, chosen.segment_channel, time_point)]
            pyramid_jobs.append({"input": seg["output"], "output": _where(output, f"{work}/pyramids/{name}.ome.zarr"),
                                 "params": {"levels": chosen.pyramid_levels, "method": "mean", "name": name},
                                 "blocks": int(sum(_blocks(tuple(max(1, s // 2**level) for s in seg["shape"]), chosen.block_shape)
                                                   for level in range(chosen.pyramid_levels))),
                                 "sample": sample, "time_point": time_point, "name": name})
        stage("pyramid", "downsample", pyramid_jobs)
        for job in pyramid_jobs:
            artifact("ome-zarr", f"pyramids/{job['name']}.ome.zarr", "output", f"{work}/pyramids/{job['name']}.ome.zarr",
                     [staged_ids[(job["sample"], chosen.segment_channel, job["time_point"])]])

        guard.check("tables", run_id=run)
        tables = _tables(db, features, int(tracked["run_id"]), scratch, output, work)
        table_ids = [artifact("table", f"tables/{name}.csv", "output", f"{work}/tables/{name}.csv", feature_ids) for name in tables]

        guard.check("promote", run_id=run)
        promoted = promote(run=str(run), config_dir=config_dir, parent_run=run)
        guard.check("retention", run_id=run)
        reclaimed = retention(config_dir=config_dir, artifact_ids=written["scratch"], parent_run=run)

        with db.session() as session:
            rows = artifacts_by_ids(session, written["scratch"] + written["output"])
            sizes = {tier_name: sum(r.bytes for r in rows if r.tier == tier_name) for tier_name in ("scratch", "output")}
            promoted_uris = {r.name: r.promoted_uri for r in rows if r.promoted_uri}
        source_root = config.tier_root("source")
        s3_endpoint = config.tiers.source.endpoint_url
        links = {name: neuroglancer_url(config.pipeline.neuroglancer_url,
                                        [(name, zarr_source(uri, data_url=config.pipeline.data_url, posix_root=source_root,
                                                            s3_endpoint=s3_endpoint), "image")])
                 for name, uri in promoted_uris.items() if name.endswith(".ome.zarr")}
        summary = {
            "run_id": run, "dataset": dataset, "snapshot_id": snapshot_id, "params": recorded["params"], "key": key,
            "volumes": len(volumes), "objects": int(len(tables["objects"])), "tracks": int(tracked.get("tracks", 0)),
            "divisions": int(tracked.get("divisions", 0)), "log": str(log_path), "promoted": promoted_uris,
            "tier_usage": {"written_scratch": sizes["scratch"], "written_output": sizes["output"],
                           "promoted": int(sum(p["bytes"] for p in promoted["promoted"])), "reclaimed": int(reclaimed["deleted_bytes"])},
            "links": links, "finished_at": datetime.now(UTC).isoformat(), "cached": False,
        }
        markdown = _report(summary, links)
        output.put_bytes(f"{work}/report.md", markdown.encode())
        output.put_bytes(f"{work}/report.json", json.dumps(summary, indent=2, default=str).encode())
        report_ids = [artifact("report", "report.md", "output", f"{work}/report.md", table_ids),
                      artifact("report", "report.json", "output", f"{work}/report.json", table_ids)]
        final = promote(artifacts=[str(i) for i in report_ids], config_dir=config_dir, parent_run=run)
        summary["report_uri"] = next(p["uri"] for p in final["promoted"] if p["uri"].endswith("report.json"))
        summary["promoted"].update({"report.md": next(p["uri"] for p in final["promoted"] if p["uri"].endswith("report.md")),
                                    "report.json": summary["report_uri"]})
        _publish_artifacts(summary, markdown, tables["objects"])
        run_id.result = summary
        logger.info("pipeline run %d: %d objects, %d tracks; report %s", run, summary["objects"], summary["tracks"], summary["report_uri"])
        return summary


def _publish_artifacts(summary: dict[str, Any], markdown: str, objects: pd.DataFrame) -> None:
    """The run's report (markdown) and per-object summary (table) in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown, key="pipeline-report", description=f"pipeline run {summary['run_id']}")
    if objects.empty:
        return
    columns = [c for c in ("sample", "time_point", "label", "track_id", "area", "centroid_z", "centroid_y", "centroid_x") if c in objects]
    columns += [c for c in objects.columns if c.endswith("_mean")]
    shown = objects[columns].head(1000).round(3)
    rows = json.loads(shown.to_json(orient="records"))
    create_table_artifact(rows, key="pipeline-objects",
                          description=f"per-object summary, {len(shown)} of {len(objects)} objects (all in tables/objects.csv on Tier 1)")


def resume_pipeline(run: str, *, config_dir: str | None = None) -> dict[str, Any]:
    """Run a failed, stopped or killed pipeline run again with its recorded snapshot and
    parameters: it works in the same place, so every operation's ledger skips the blocks that
    were done. A run still marked running whose process was killed is marked crashed first.

    Raises
    ------
    TierflowError
        If the run does not exist or is not a pipeline run.
    """
    recorded = run_to_resume(open_database(load_db_config(config_dir)), run, "pipeline")
    return pipeline(recorded["dataset"], snapshot=recorded["snapshot"], params=recorded["params"], workers=recorded.get("workers"),
                    config_dir=config_dir)
