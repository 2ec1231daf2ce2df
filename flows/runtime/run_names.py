"""Flow-run names that say what runs: ``gaussian raw.zarr→smooth.zarr``, ``pipeline cells
demo@348ca52f sigma=1.0``, ``ingest embryo1``, ``retention (dry run)``...

Each ``*_run_name`` is a Prefect ``flow_run_name`` callable: Prefect calls it as the run
starts, and it reads the run's parameters from :data:`prefect.runtime.flow_run.parameters`.
The ``describe_*`` functions make the same text from plain values (tests and the CLI use them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

__all__ = ["basename", "describe_op", "describe_pipeline", "ingest_run_name", "op_run_name", "pipeline_run_name", "promote_run_name",
           "rename_flow_run", "retention_run_name", "stage_run_name", "track_run_name"]


def _parameters() -> dict[str, Any]:
    from prefect.runtime import flow_run

    return dict(flow_run.parameters or {})


def basename(where: str | None) -> str:
    """The last part of a path or URI (``s3://b/x/raw.zarr/`` -> ``raw.zarr``)."""
    text = str(where or "").rstrip("/")
    return PurePosixPath(text).name or text


def _given(params: Mapping[str, Any] | None) -> str:
    """``k=v`` of the parameters a user set (those not set keep their defaults)."""
    return " ".join(f"{k}={v}" for k, v in sorted((params or {}).items()))


def describe_op(op: str, input: str, output: str, params: Mapping[str, Any] | None = None) -> str:
    """``gaussian raw.zarr→smooth.zarr sigma=2``: the op, input and output names, parameters set."""
    return " ".join(part for part in (f"{op} {basename(input)}→{basename(output)}", _given(params)) if part)


def describe_pipeline(spec: str | None, dataset: str, snapshot: str | None, raw_dir: str | None, params: Mapping[str, Any] | None) -> str:
    """``pipeline cells demo@348ca52f sigma=1.0`` (or ``... demo from raw/`` before its snapshot is known)."""
    name = PurePosixPath(str(spec)).stem if spec else "cells"
    where = f"{dataset}@{str(snapshot)[:8]}" if snapshot else f"{dataset} from {basename(raw_dir)}/"
    return " ".join(part for part in ("pipeline", name, where, _given(params)) if part)


def op_run_name() -> str:
    p = _parameters()
    return describe_op(str(p.get("op")), str(p.get("input")), str(p.get("output")), p.get("params"))


def pipeline_run_name() -> str:
    p = _parameters()
    return describe_pipeline(p.get("spec"), str(p.get("dataset")), p.get("snapshot"), p.get("raw_dir"), p.get("params"))


def stage_run_name() -> str:
    """``smooth: gaussian, 4 volumes`` (a pipeline stage's subflow)."""
    p = _parameters()
    jobs = p.get("jobs") or []
    return f"{p.get('stage')}: {p.get('op')}, {len(jobs)} volume{'s' if len(jobs) != 1 else ''}"


def ingest_run_name() -> str:
    p = _parameters()
    return f"ingest {p.get('dataset')} from {basename(p.get('raw_dir'))}/"


def retention_run_name() -> str:
    p = _parameters()
    scope = f" of run {p['parent_run']}'s scratch" if p.get("parent_run") is not None and p.get("artifact_ids") is not None else ""
    return f"retention{scope}" + (" (dry run)" if p.get("dry_run") else "")


def promote_run_name() -> str:
    p = _parameters()
    artifacts: Sequence[Any] = p.get("artifacts") or []
    if artifacts:
        return f"promote artifact{'s' if len(artifacts) > 1 else ''} {', '.join(map(str, artifacts[:5]))}" + (
            f" (+{len(artifacts) - 5})" if len(artifacts) > 5 else "")
    return f"promote run {p.get('run')}"


def track_run_name() -> str:
    p = _parameters()
    runs = [int(r) for r in p.get("runs") or []]
    which = f"run {runs[0]}" if len(runs) == 1 else f"{len(runs)} features runs ({min(runs)}..{max(runs)})" if runs else "no runs"
    return f"track {which}, max distance {p.get('max_distance')}"


def rename_flow_run(name: str) -> None:
    """Rename the current flow run (a pipeline from a raw folder, once its snapshot is known);
    outside a flow run, or if the API refuses, nothing changes."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    try:
        context.client.set_flow_run_name(flow_run_id=context.flow_run.id, name=name)
    except Exception:  # noqa: BLE001 - a name is a courtesy: the run goes on without it
        return
