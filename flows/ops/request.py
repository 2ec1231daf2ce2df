"""An op run's request: where its inputs and output are, its cache key, and the context every
stage runner is given (:class:`OpContext`).

``op_key`` = sha256 of (op name, op version, resolved parameters, identity of the inputs): the
ledger remembers which blocks of which op key are done in which output.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tierflow.configs import TierflowConfig
from tierflow.flows.runtime.tiers import s3_tier_of
from tierflow.storage.arrays import ArrayLocation, check_writable, output_layout
from tierflow.storage.db.database import Database
from tierflow.storage.image_meta import leading_axes
from tierflow.storage.local_copy import local_copy
from tierflow.storage.tiers import PosixTier
from tierflow.tasks.blockwise import FaultHook, SourceRef, source_fingerprint
from tierflow.tasks.ops.spec import OpSpec

__all__ = ["OpContext", "content_id", "inputs_identity", "layout_identity", "locate_input", "op_key", "output_location", "resolve_location",
           "sharded_output", "with_shard_outputs"]


def resolve_location(config: TierflowConfig, where: str) -> ArrayLocation:
    """A zarr array location for a local path or an ``s3://bucket/key`` URI."""
    if where.startswith("s3://"):
        return ArrayLocation(*s3_tier_of(config, where))
    path = Path(where).expanduser().resolve()
    return ArrayLocation(PosixTier("scratch", path.parent), path.name)


def output_location(config: TierflowConfig, where: str) -> ArrayLocation:
    """Where an operation writes ``where``; refused before any work if its tier takes no writes.

    Raises
    ------
    TierError
        If the output is on a read-only or write-once tier (see :func:`check_writable`).
    """
    location = resolve_location(config, where)
    check_writable(location)
    return location


def locate_input(config: TierflowConfig, where: str) -> SourceRef:
    """An input as the block engine takes it: an absolute local path, a zarr array on S3, or,
    for a TIFF stack or slice folder on S3, the path of its verified copy in Tier 4 tmp."""
    if not where.startswith("s3://"):
        return str(Path(where).expanduser().resolve())
    location = resolve_location(config, where)
    if location.exists():
        return location
    folder = config.tmp_dir / "s3-inputs" / location.tier.uri()[len("s3://"):]
    return str(local_copy(location.tier, location.key, folder))


def content_id(source: SourceRef) -> str:
    """The whole-input content id the staged ops (label, downsample, features) key on: the
    input's identity and a fingerprint of every stored piece of it."""
    fingerprint = source_fingerprint(source)
    return f"{fingerprint.identity}@{fingerprint.whole()}"


def inputs_identity(source: SourceRef, extras: dict[str, SourceRef], mask: SourceRef | None) -> str:
    """What a map op's key names of its inputs: each input's identity (its content id when
    known, else its location). What the inputs hold is checked per block (see
    :mod:`storage.fingerprints`): a changed chunk recomputes only the blocks that read it."""
    return "|".join([source_fingerprint(source).identity, *(f"{n}={source_fingerprint(r).identity}" for n, r in sorted(extras.items())),
                     f"mask={source_fingerprint(mask).identity}" if mask else ""])


def sharded_output(config: TierflowConfig | None, spec: OpSpec) -> bool:
    """Whether ``spec``'s output is written as shards (``[execution].shard_outputs``): map ops and
    label; downsample writes its levels unsharded (a sharded pyramid: a pipeline's
    ``shard_shape``)."""
    return config is not None and config.execution.shard_outputs and spec.kind in ("map", "label")


def with_shard_outputs(config: TierflowConfig, shard_outputs: bool | None) -> TierflowConfig:
    """``config`` with ``[execution].shard_outputs`` set to ``shard_outputs`` (None: as it is),
    for a run that names its layout (a resume writes the layout its run was started with)."""
    if shard_outputs is None or config.execution.shard_outputs == shard_outputs:
        return config
    return config.model_copy(update={"execution": config.execution.model_copy(update={"shard_outputs": shard_outputs})})


def layout_identity(config: TierflowConfig | None, spec: OpSpec) -> str:
    """What the op key adds for a sharded output (nothing otherwise: unsharded keys are unchanged),
    so that a cached unsharded output never answers a sharded request."""
    return "|sharded" if sharded_output(config, spec) else ""


def op_key(op: str, version: str, params: dict[str, Any], content: str) -> str:
    """The cache key of an operation on an input."""
    text = json.dumps({"op": op, "version": version, "params": params, "input": content}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class OpContext:
    """What every stage runner (map, label, pyramid, features) is run with: the op, its resolved
    parameters and key, its inputs and output, and how to run batches."""

    spec: OpSpec
    db: Database
    run_id: int
    op_key: str
    source: SourceRef
    target: ArrayLocation
    shape: tuple[int, ...]
    dtype: Any
    block_shape: tuple[int, ...]
    params: dict[str, Any]
    workers: int
    max_batches: int
    config: TierflowConfig | None = None
    input: str = ""
    """The input as the user gave it (recorded in the output's attributes)."""
    extras: dict[str, SourceRef] = field(default_factory=dict)
    mask: SourceRef | None = None
    fault: FaultHook | None = None
    progress: Any = None
    """``progress(n)``: told as batches finish how many blocks they completed (or None)."""
    new_runner: Any = None
    """``new_runner(extra_threads=0, memory_factor=1.0)``: a fresh task runner of the configured
    backend (:func:`flows.execution.runners.block_task_runner`); default Prefect's thread pool."""
    slurm_scheduler: Any = None
    """Test-only: answers how a lost batch's SLURM job ended (default: SLURM's own tools)."""
    axes: str = ""
    """The input's axes (``yx``, ``zyx``, ``tczyx``...; '' = all spatial)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The input's physical metadata (scale, units, channel names) that outputs keep."""
    force: bool = False
    """Compute every block, even those the ledger has done (``--force``)."""

    @property
    def sharded(self) -> bool:
        """The output is written as shards of the block shape (``[execution].shard_outputs``;
        map ops and label)."""
        return sharded_output(self.config, self.spec)

    @property
    def output_layout(self) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """``(chunks, shards)`` of the output (:func:`storage.arrays.output_layout`)."""
        return output_layout(self.block_shape, sharded=self.sharded)

    @property
    def leading(self) -> int:
        """Leading axes of the input that are not spatial (time, channel)."""
        return leading_axes(self.axes) if self.axes else 0

    @property
    def source_uri(self) -> str:
        return self.source.uri if isinstance(self.source, ArrayLocation) else Path(self.source).as_uri()

    def runner(self, extra_threads: int = 0, memory_factor: float = 1.0) -> Any:
        if self.new_runner is not None:
            return self.new_runner(extra_threads=extra_threads, memory_factor=memory_factor)
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=self.workers + extra_threads)
