"""A pipeline as data: a TOML file loaded and validated into a typed :class:`PipelineSpec`.

::

    name = "cells"
    description = "..."
    [params]                     # run-time parameters: a default, or a table with bounds
    sigma = { default = 1.0, gt = 0, le = 50, description = "smoothing, voxels" }
    threshold = "otsu"
    [[stages]]                   # each one op on every volume, in dependency order
    name = "smooth"
    op = "gaussian"
    input = "raw.c{segment_channel}"   # a channel of the snapshot, or an earlier stage
    params = { sigma = "{sigma}" }     # "{name}" is replaced by the run's value of [params] name
    with = { markers = "seeds" }       # extra inputs of the op (watershed's markers...)
    [outputs]
    features = { labels = "label", channels = "raw" }   # per-object features ("raw": every channel)
    track = { max_distance = "{max_distance}" }          # or true; needs features
    pyramid = { inputs = ["raw.c0"], levels = 3 }        # OME-Zarr pyramids of single volumes on the output tier
    image = { levels = 3 }                               # one OME-Zarr image per sample (t, c, z, y, x) with
                                                         # the segmentation under labels/ (or true)
    promote = ["label"]                                  # stage outputs kept (output tier, then Tier 1)

tierflow's own pipelines are ``configs/pipelines/*.toml`` (shipped with the package); a lab's are
in its project's ``configs/pipelines/`` (found upward like every config; a name there wins), or
any file given by path. :func:`load_spec` refuses a bad spec before anything runs, naming the
file, the stage and the key at fault. The run-time parameters are a pydantic model
(:mod:`.spec_params`).
"""

from __future__ import annotations

import hashlib
import json
import re
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tierflow.errors import InvalidParameterError, PipelineSpecError
from tierflow.tasks.ops.registry import get_op

__all__ = ["DEFAULT_PIPELINE", "FeaturesDecl", "ParamDecl", "PipelineSpec", "PipelineSpecError", "PyramidDecl", "StageDecl",
           "TrackDecl", "parse_ref", "parse_spec", "references", "spec_error", "stage_reads", "substitute", "validate"]

DEFAULT_PIPELINE = "cells"
"""The pipeline ``tierflow run pipeline`` and ``tierflow demo`` run when none is named."""

_NAME = r"^[a-z][a-z0-9_]*$"
_REF = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RAW = re.compile(r"^raw\.c(\d+)$")


def spec_error(file: str, where: str, key: str, what: str, hint: str) -> PipelineSpecError:
    """``<file>: <where>, key <key>: <what>`` (``where`` e.g. ``stage 'mask'`` or ``[params]``)."""
    return PipelineSpecError(f"{file}: {where}, key {key!r}: {what}", hint=hint)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParamDecl(_Strict):
    """One run-time parameter: its default (which gives its type), words and bounds."""

    default: bool | int | float | str
    description: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: list[bool | int | float | str] | None = None


class StageDecl(_Strict):
    """One stage: ``op`` on ``input`` (and the extra inputs ``with_``) with ``params``."""

    name: str = Field(pattern=_NAME)
    op: str
    input: str
    with_: dict[str, str] = Field(default_factory=dict, alias="with")
    params: dict[str, Any] = Field(default_factory=dict)


class FeaturesDecl(_Strict):
    """Per-object features of the label image ``labels`` over ``channels`` (``"raw"``: every
    channel of the snapshot, named ``c0``, ``c1``...; or a list of references)."""

    labels: str
    channels: str | list[str] = "raw"


class TrackDecl(_Strict):
    """Tracking of the features' objects over time."""

    max_distance: float | str = 15.0
    frame_interval: float | str = 1.0


class PyramidDecl(_Strict):
    """OME-Zarr pyramids of ``inputs`` (references) on the output tier."""

    inputs: list[str]
    levels: int | str = 3
    method: str = "auto"


class ImageDecl(_Strict):
    """One OME-Zarr image per sample (every channel and time point, a pyramid of ``levels``)
    with the label image ``labels`` (default: ``segmentation``) under ``labels/<name>``
    (default: the stage's name)."""

    levels: int | str = 3
    labels: str | None = None
    name: str | None = None


class OutputsDecl(_Strict):
    """What a run keeps and measures beyond its stages."""

    segmentation: str | None = None
    features: FeaturesDecl | None = None
    track: TrackDecl | None = None
    pyramid: PyramidDecl | None = None
    image: ImageDecl | None = None
    promote: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("features") is True:
            data["features"] = {"labels": data.get("segmentation")}
        if data.get("features") is False:
            data["features"] = None
        if data.get("track") is True:
            data["track"] = {}
        if data.get("track") is False:
            data["track"] = None
        if data.get("image") is True:
            data["image"] = {}
        if data.get("image") is False:
            data["image"] = None
        if isinstance(data.get("pyramid"), list):
            data["pyramid"] = {"inputs": data["pyramid"]}
        if isinstance(data.get("features"), dict) and "labels" not in data["features"] and data.get("segmentation"):
            data["features"] = {**data["features"], "labels": data["segmentation"]}
        return data


class PipelineSpec(_Strict):
    """A pipeline: its name, parameters, stages (in the file's order) and outputs; ``file`` is
    where it was read from (not part of its content)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    params: dict[str, ParamDecl] = Field(default_factory=dict)
    stages: list[StageDecl]
    outputs: OutputsDecl = OutputsDecl()
    file: str = Field("", exclude=True)

    @field_validator("params", mode="before")
    @classmethod
    def _plain_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, dict) else {"default": v} for k, v in value.items()}
        return value

    @property
    def digest(self) -> str:
        """The spec's content (not its comments or file): part of a run's key."""
        text = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stage(self, name: str) -> StageDecl:
        return next(s for s in self.stages if s.name == name)

    def ordered(self) -> list[StageDecl]:
        """The stages in dependency order (file order among independent ones)."""
        graph = {s.name: {r for r in stage_reads(s) if r in self._names()} for s in self.stages}
        order = list(TopologicalSorter(graph).static_order())
        return sorted(self.stages, key=lambda s: (order.index(s.name)))

    def _names(self) -> set[str]:
        return {s.name for s in self.stages}

    def lineage(self) -> str:
        """The stages as one line of text, e.g. ``raw.c0 -> smooth (gaussian) -> ...``."""
        return "; ".join(f"{', '.join(stage_reads(s))} -> {s.name} ({s.op})" for s in self.ordered())


def references(text: Any) -> list[str]:
    """The ``{name}`` references to [params] in ``text`` (none if it is not text)."""
    return _REF.findall(text) if isinstance(text, str) else []


def substitute(value: Any, values: dict[str, Any]) -> Any:
    """``value`` with its ``{name}`` references replaced: ``"{sigma}"`` alone becomes the typed
    value of ``sigma``, references inside longer text are replaced as text."""
    if not isinstance(value, str):
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return values[whole.group(1)]
    return _REF.sub(lambda m: str(values[m.group(1)]).lower() if isinstance(values[m.group(1)], bool) else str(values[m.group(1)]),
                    value)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"raw.c3"`` -> ``("raw", 3)``; ``"raw"`` -> ``("raw", None)``; a stage -> ``(name, None)``."""
    match = _RAW.match(ref)
    if match:
        return "raw", int(match.group(1))
    return ref, None


def stage_reads(stage: StageDecl) -> list[str]:
    """The references a stage reads (its input, then its extra inputs)."""
    return [stage.input, *stage.with_.values()]


def _defaults(spec: PipelineSpec) -> dict[str, Any]:
    return {name: decl.default for name, decl in spec.params.items()}


def _check_names(spec: PipelineSpec, value: Any, where: str, key: str) -> None:
    for name in references(value):
        if name not in spec.params:
            raise spec_error(spec.file, where, key, f"{{{name}}} is not a parameter of [params]",
                             f"declare it under [params] (it has {sorted(spec.params)}) or write the value")


def _check_ref(spec: PipelineSpec, ref: str, where: str, key: str, *, raw_ok: bool = False) -> None:
    _check_names(spec, ref, where, key)
    text = substitute(ref, _defaults(spec))
    base, channel = parse_ref(text)
    if base == "raw" and (channel is not None or raw_ok):
        return
    if base == "raw":
        raise spec_error(spec.file, where, key, "'raw' is every channel; a stage reads one",
                         "give one channel, e.g. \"raw.c0\"")
    if base not in spec._names():
        raise spec_error(spec.file, where, key, f"{ref!r} is neither a stage nor a channel of the snapshot",
                         f"use one of {sorted(spec._names())} or raw.cN (channel N of every volume)")


def validate(spec: PipelineSpec) -> PipelineSpec:
    """Check every op, reference and output of ``spec`` (its parameters' types and values:
    :func:`.spec_params.check_params`).

    Raises
    ------
    PipelineSpecError
        Naming the file, the stage (or section) and the key at fault.
    """
    seen: set[str] = set()
    for stage in spec.stages:
        where = f"stage {stage.name!r}"
        if stage.name in seen or stage.name == "raw":
            raise spec_error(spec.file, where, "name", "is used twice" if stage.name in seen else "'raw' names the snapshot",
                             "give every stage its own name")
        seen.add(stage.name)
        try:
            op = get_op(stage.op)
        except InvalidParameterError as exc:
            raise spec_error(spec.file, where, "op", exc.message, exc.hint or "") from None
        if op.kind not in ("map", "label"):
            raise spec_error(spec.file, where, "op", f"{op.name} is a {op.kind} op, which [outputs] runs",
                             "use [outputs] features / pyramid for it")
        _check_ref(spec, stage.input, where, "input")
        allowed = set(op.inputs)
        for name, ref in stage.with_.items():
            if name not in allowed:
                raise spec_error(spec.file, where, f"with.{name}", f"{op.name} takes no extra input {name!r}",
                                 f"{op.name} takes {sorted(allowed) or 'none'}")
            _check_ref(spec, ref, where, f"with.{name}")
        missing = allowed - set(stage.with_) - {"*"}
        if missing:
            raise spec_error(spec.file, where, "with", f"{op.name} needs the extra input(s) {sorted(missing)}",
                             f"add with = {{ {next(iter(missing))} = \"STAGE\" }}")
        for key, value in stage.params.items():
            _check_names(spec, value, where, f"params.{key}")
    try:
        spec.ordered()
    except CycleError as exc:
        cycle = list(dict.fromkeys(exc.args[1]))
        raise spec_error(spec.file, f"stage {cycle[0]!r}", "input", f"the stages {' -> '.join([*cycle, cycle[0]])} read each other",
                         "a stage can only read the snapshot or earlier stages") from None
    _check_outputs(spec)
    return spec


def _check_image(spec: PipelineSpec, image: ImageDecl | None) -> None:
    if image is None:
        return
    _check_names(spec, image.levels, "[outputs]", "image.levels")
    labels = image.labels or spec.outputs.segmentation
    if labels is None:
        return
    _check_ref(spec, labels, "[outputs]", "image.labels")
    base, _ = parse_ref(labels)
    if base == "raw" or not get_op(spec.stage(base).op).makes_labels:
        raise spec_error(spec.file, "[outputs]", "image.labels", f"{labels!r} is not a label image",
                         "name a stage whose op makes labels (label, watershed)")
    if image.name is not None and (not image.name or "/" in image.name or image.name.startswith(".")):
        raise spec_error(spec.file, "[outputs]", "image.name", f"{image.name!r} is not a group name",
                         "a name without '/' that does not start with '.', e.g. \"cells\"")


def _check_outputs(spec: PipelineSpec) -> None:
    out = spec.outputs
    if out.track is not None:
        _check_names(spec, out.track.max_distance, "[outputs]", "track.max_distance")
        _check_names(spec, out.track.frame_interval, "[outputs]", "track.frame_interval")
    if out.pyramid is not None:
        _check_names(spec, out.pyramid.levels, "[outputs]", "pyramid.levels")
    if out.segmentation is not None:
        _check_ref(spec, out.segmentation, "[outputs]", "segmentation")
    _check_image(spec, out.image)
    if out.features is not None:
        _check_ref(spec, out.features.labels, "[outputs]", "features.labels")
        base, _ = parse_ref(out.features.labels)
        if base == "raw" or not get_op(spec.stage(base).op).makes_labels:
            raise spec_error(spec.file, "[outputs]", "features.labels", f"{out.features.labels!r} is not a label image",
                             "name a stage whose op makes labels (label, watershed)")
        channels = [out.features.channels] if isinstance(out.features.channels, str) else out.features.channels
        for ref in channels:
            _check_ref(spec, ref, "[outputs]", "features.channels", raw_ok=True)
    if out.track is not None and out.features is None:
        raise spec_error(spec.file, "[outputs]", "track", "tracking links the objects of [outputs] features, and there are none",
                         "add features = { labels = \"STAGE\" } or drop track")
    if out.pyramid is not None:
        for ref in out.pyramid.inputs:
            _check_ref(spec, ref, "[outputs]", "pyramid.inputs")
    for ref in out.promote:
        if ref not in spec._names():
            raise spec_error(spec.file, "[outputs]", "promote", f"{ref!r} is not a stage",
                             f"promote stage outputs: {sorted(spec._names())}")


def _structure_error(file: str, data: dict[str, Any], exc: ValidationError) -> PipelineSpecError:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    where, key = "the pipeline", ".".join(loc) or "?"
    if loc[:1] == ["stages"] and len(loc) > 1 and loc[1].isdigit():
        stages = data.get("stages") or []
        index = int(loc[1])
        name = stages[index].get("name") if index < len(stages) and isinstance(stages[index], dict) else None
        where, key = f"stage {name or '#' + str(index + 1)!r}", ".".join(loc[2:]) or "stage"
    elif loc[:1] in (["params"], ["outputs"]):
        where, key = f"[{loc[0]}]", ".".join(loc[1:]) or loc[0]
    what = "is missing" if error["type"] == "missing" else ("is not a key of a pipeline" if error["type"] == "extra_forbidden"
                                                          else f"{error['msg']} (got {error.get('input')!r})")
    return spec_error(file, where, key, what, "see `tierflow pipelines list` and README.md (Pipelines) for the format")


def parse_spec(data: dict[str, Any], file: str) -> PipelineSpec:
    """``data`` (a parsed TOML file) as a checked :class:`PipelineSpec` read from ``file``.

    Raises
    ------
    PipelineSpecError
        Naming the file, the stage (or section) and the key at fault.
    """
    try:
        spec = PipelineSpec.model_validate({**data, "file": file})
    except ValidationError as exc:
        raise _structure_error(file, data, exc) from None
    return validate(spec)
