"""What a pipeline run reports: the typed :class:`PipelineResult` the flow returns (and the
runs table keeps), its markdown report, its Neuroglancer links and its Prefect UI artifacts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from tierflow.configs import TierflowConfig
from tierflow.flows.ops.result import ResultMapping
from tierflow.flows.viewing.neuroglancer import neuroglancer_url, sample_image_state, state_url, zarr_source

__all__ = ["PipelineResult", "TierUsage", "image_summaries", "neuroglancer_links", "publish_artifacts", "render_report"]


@dataclass(frozen=True)
class TierUsage:
    """Bytes a run wrote to scratch (Tier 3) and output (Tier 2), promoted to Tier 1, and
    reclaimed from its scratch."""

    written_scratch: int
    written_output: int
    promoted: int
    reclaimed: int

    def to_dict(self) -> dict[str, int]:
        return {"written_scratch": self.written_scratch, "written_output": self.written_output, "promoted": self.promoted,
                "reclaimed": self.reclaimed}


@dataclass(frozen=True)
class PipelineResult(ResultMapping):
    """What a ``pipeline`` run returns: its run, snapshot and parameters, counts, where its
    outputs went on Tier 1 (``promoted``: name -> URI, ``report_uri``), tier usage and
    Neuroglancer ``links``; ``cached`` (with ``served_from_run``) when an earlier run with the
    same snapshot and parameters served it.

    :meth:`to_dict` is its JSON form (what ``tierflow run pipeline --json`` prints and the runs
    table keeps). For code written against the former plain dict, it is also a read-only
    mapping over that JSON form: ``result["run_id"]``, ``result.get("served_from_run")``,
    ``"report_uri" in result``, ``result.keys()``; nested values (``result["tier_usage"]``)
    are plain dicts. Fields are the typed way in (``result.tier_usage.reclaimed``).
    """

    run_id: int
    dataset: str
    snapshot_id: str
    params: dict[str, Any]
    key: str
    volumes: int
    objects: int
    tracks: int
    divisions: int
    log: str
    promoted: dict[str, str]
    tier_usage: TierUsage
    links: dict[str, str]
    finished_at: str
    cached: bool = False
    report_uri: str | None = None
    served_from_run: int | None = None
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    """One OME-Zarr image per sample: sample -> ``uri`` (Tier 1), ``shape`` (t, c, z, y, x),
    ``channels``, ``labels`` (label group names) and ``link`` (Neuroglancer)."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PipelineResult:
        """A result as :meth:`to_dict` wrote it (e.g. read back from the runs table).

        Raises
        ------
        KeyError, TypeError
            If ``record`` is not such a result.
        """
        names = [f for f in cls.__dataclass_fields__ if f != "tier_usage"]
        return cls(**{name: record[name] for name in names if name in record}, tier_usage=TierUsage(**record["tier_usage"]))

    @property
    def tracked(self) -> bool:
        """Whether the run linked objects over time (its spec has ``[outputs] track``): it has
        tracks, or its track tables are among its outputs."""
        return self.tracks > 0 or "tables/tracks.csv" in self.promoted

    def served(self, run_id: int, served_from: int) -> PipelineResult:
        """This result, computed by run ``served_from``, as served from cache to run ``run_id``."""
        return replace(self, run_id=run_id, cached=True, served_from_run=served_from)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: a completed run's keys in the order its run wrote them; a result served
        from cache in the order the runs table (PostgreSQL ``jsonb``: shortest key first) gives
        them back, with ``served_from_run`` last."""
        data: dict[str, Any] = {
            "run_id": self.run_id, "dataset": self.dataset, "snapshot_id": self.snapshot_id, "params": _copy(self.params),
            "key": self.key, "volumes": self.volumes, "objects": self.objects, "tracks": self.tracks, "divisions": self.divisions,
            "log": self.log, "promoted": dict(self.promoted), "tier_usage": self.tier_usage.to_dict(), "links": dict(self.links),
            "finished_at": self.finished_at, "cached": self.cached,
        }
        if self.images:
            data["images"] = _copy(self.images)
        if self.report_uri is not None:
            data["report_uri"] = self.report_uri
        if self.served_from_run is None:
            return data
        return {**_jsonb_order(data), "served_from_run": self.served_from_run}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _jsonb_order(value: Any) -> Any:
    """``value`` with every object's keys in PostgreSQL ``jsonb`` order (by length in bytes,
    then bytewise), as a ``jsonb`` column returns them."""
    if isinstance(value, dict):
        return {k: _jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(k.encode()), k.encode()))}
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    return value


def neuroglancer_links(config: TierflowConfig, promoted: Mapping[str, str], images: Sequence[Any] = ()) -> dict[str, str]:
    """A Neuroglancer link for every promoted OME-Zarr (name -> URL), served from Tier 1: one per
    sample image (``images``: :class:`~.sample_image.WrittenImage`; its channels and labels),
    one per other pyramid."""
    source_root = config.tier_root("source")
    s3_endpoint = config.tiers.source.endpoint_url

    def source(uri: str) -> str:
        return zarr_source(uri, data_url=config.pipeline.data_url, posix_root=source_root, s3_endpoint=s3_endpoint)

    by_name = {image.name: image for image in images}
    links = {}
    for name, uri in promoted.items():
        if name in by_name:
            image = by_name[name]
            state = sample_image_state(source(uri), image.attributes, [image.label_name] if image.label_name else [], name=image.sample)
            links[name] = state_url(config.pipeline.neuroglancer_url, state)
        elif name.endswith(".ome.zarr"):
            links[name] = neuroglancer_url(config.pipeline.neuroglancer_url, [(name, source(uri), "image")])
    return links


def image_summaries(images: Sequence[Any], promoted: Mapping[str, str], links: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """What a run's result says of each sample image (see :attr:`PipelineResult.images`)."""
    summaries = {}
    for image in images:
        channels = [c.get("label") for c in image.attributes["ome"].get("omero", {}).get("channels", [])]
        summaries[image.sample] = {"name": image.name, "uri": promoted.get(image.name), "axes": "tczyx", "shape": list(image.shape),
                                   "channels": channels, "labels": [image.label_name] if image.label_name else [],
                                   "link": links.get(image.name)}
    return summaries


def render_report(result: PipelineResult, *, pipeline: str = "cells", lineage: str | None = None) -> str:
    """The run's report in markdown: what ran (``pipeline``, its stages as ``lineage``) on what,
    counts, tier usage, lineage, where the outputs live on Tier 1 and Neuroglancer links."""
    usage = result.tier_usage
    lines = [
        f"# tierflow pipeline run {result.run_id}", "",
        f"- **pipeline** `{pipeline}`, **dataset** `{result.dataset}`, **snapshot** `{result.snapshot_id}`",
        f"- **parameters** `{json.dumps(result.params, sort_keys=True)}`",
        f"- **objects** {result.objects} in {result.volumes} volume(s)"
        + (f"; **tracks** {result.tracks} ({result.divisions} division(s))" if result.tracked else ""),
        f"- **run log** `{result.log}`", "",
        "## Tier usage", "", "| | bytes |", "|---|---:|",
        f"| written to scratch (Tier 3) | {usage.written_scratch:,} |",
        f"| written to output (Tier 2) | {usage.written_output:,} |",
        f"| promoted to Tier 1 | {usage.promoted:,} |",
        f"| reclaimed (this run's scratch) | {usage.reclaimed:,} |", "",
        "## Lineage", "",
        "raw snapshot -> stage (zarr, every channel: raw.c0, raw.c1, ...); "
        + (lineage or "the pipeline's stages") + "; then features, tracks and pyramids as its [outputs] say. "
        "Every artifact's inputs are in `artifact_lineage` (`tierflow artifacts list`).", "",
        "## Where the outputs live", "", "| output | Tier 1 |", "|---|---|",
    ]
    lines += [f"| {name} | `{uri}` |" for name, uri in sorted(result.promoted.items())]
    if result.images:
        lines += ["", "## Images", "",
                  "One OME-Zarr 0.5 image per sample (axes t, c, z, y, x; every channel and time point, a pyramid, the "
                  "segmentation under `labels/`). Serve Tier 1 first (`tierflow serve`, or `tierflow view RUN`), then open:", "",
                  "| sample | shape (t, c, z, y, x) | channels | labels | view |", "|---|---|---|---|---|"]
        for sample, image in sorted(result.images.items()):
            link = f"[Neuroglancer]({image['link']})" if image.get("link") else ""
            lines.append(f"| {sample} | {' x '.join(map(str, image['shape']))} | {', '.join(map(str, image['channels']))} | "
                         f"{', '.join(image['labels']) or '-'} | {link} |")
    others = {name: url for name, url in result.links.items() if not any(i.get("name") == name for i in result.images.values())}
    if others:
        lines += ["", "## Neuroglancer", "", "Serve Tier 1 first (`tierflow serve`), then open:", ""]
        lines += [f"- [{name}]({url})" for name, url in sorted(others.items())]
    return "\n".join(lines) + "\n"


def publish_artifacts(result: PipelineResult, markdown: str, objects: pd.DataFrame) -> None:
    """The run's report (markdown) and per-object summary (table) in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown, key="pipeline-report", description=f"pipeline run {result.run_id}")
    if objects.empty:
        return
    columns = [c for c in ("sample", "time_point", "label", "track_id", "area", "centroid_z", "centroid_y", "centroid_x") if c in objects]
    columns += [c for c in objects.columns if c.endswith("_mean")]
    shown = objects[columns].head(1000).round(3)
    rows = json.loads(shown.to_json(orient="records"))
    create_table_artifact(rows, key="pipeline-objects",
                          description=f"per-object summary, {len(shown)} of {len(objects)} objects (all in tables/objects.csv on Tier 1)")
