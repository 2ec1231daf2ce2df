"""A pipeline's run-time parameters as a pydantic model built from its spec.

Each ``[params]`` entry becomes a typed field: its type from its default, and, when a stage (or
``[outputs] pyramid.levels``) uses it as a whole op parameter (``sigma = "{sigma}"``), the op's
own type, bounds and description, narrowed by the spec's own bounds (``le = 50``) and choices.
The model's JSON Schema is the run form of the pipeline's deployments in the Prefect UI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from tierflow.errors import InvalidParameterError, TierflowError
from tierflow.tasks.ops.registry import get_op
from tierflow.tasks.ops.spec import describe_field

from tierflow.flows.pipeline.spec import PipelineSpec, references, spec_error, substitute

__all__ = ["check_params", "params_model", "params_schema", "param_uses", "resolve_values", "stage_params"]

_BOUNDS = ("gt", "ge", "lt", "le")


def _int_text(value: Any) -> Any:
    """``"26"`` -> 26 (``--param`` text for an integer choice)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def param_uses(spec: PipelineSpec) -> dict[str, list[tuple[str, str, str]]]:
    """Where each parameter is used as a whole op parameter: ``(where, op, key)`` items."""
    uses: dict[str, list[tuple[str, str, str]]] = {}
    for stage in spec.stages:
        for key, value in stage.params.items():
            for name in references(value):
                uses.setdefault(name, []).append((f"stage {stage.name!r}", stage.op, key))
    if spec.outputs.pyramid is not None:
        for name in references(spec.outputs.pyramid.levels):
            uses.setdefault(name, []).append(("[outputs] pyramid", "downsample", "levels"))
    return uses


def _tighter(bound: str, a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return max(a, b) if bound in ("gt", "ge") else min(a, b)


def _field(spec: PipelineSpec, name: str) -> tuple[Any, Any]:
    decl = spec.params[name]
    op_field = None
    for _, op, key in param_uses(spec).get(name, []):
        candidate = get_op(op).params.model_fields.get(key)
        if candidate is not None:
            op_field = candidate
            break
    bounds = {b: getattr(decl, b) for b in _BOUNDS}
    extra: dict[str, Any] = {}
    validators: list[Any] = []
    annotation: Any = type(decl.default)
    description = decl.description
    if op_field is not None:
        for item in op_field.metadata:
            found = [b for b in _BOUNDS if getattr(item, b, None) is not None]
            for b in found:
                bounds[b] = _tighter(b, bounds[b], getattr(item, b))
            if not found:
                validators.append(item)
        annotation = op_field.annotation
        description = description or op_field.description or ""
        if isinstance(op_field.json_schema_extra, dict) and op_field.json_schema_extra.get("allowed"):
            extra["allowed"] = op_field.json_schema_extra["allowed"]
    if decl.choices:
        choices = tuple(decl.choices)
        annotation, validators = Literal[choices], [BeforeValidator(_int_text)]  # type: ignore[valid-type]
        words = [str(c) for c in choices]
        extra["allowed"] = ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]
    info = Field(decl.default, description=description or None, json_schema_extra=extra or None,
                 **{b: v for b, v in bounds.items() if v is not None})
    return (Annotated[annotation, *validators] if validators else annotation), info


_MODELS: dict[str, type[BaseModel]] = {}


def _model(spec: PipelineSpec) -> type[BaseModel]:
    if spec.digest in _MODELS:
        return _MODELS[spec.digest]
    fields = {name: _field(spec, name) for name in spec.params}
    title = "".join(part.title() for part in spec.name.replace("-", "_").split("_")) + "Params"
    config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, title=f"{spec.name} parameters")
    model = create_model(title, __config__=config, __doc__=spec.description or None, **fields)
    _MODELS[spec.digest] = model
    return model


def params_model(spec: PipelineSpec) -> type[BaseModel]:
    """The pydantic model of ``spec``'s ``[params]`` (cached per spec)."""
    return _model(spec)


def params_schema(spec: PipelineSpec) -> dict[str, Any]:
    """The JSON Schema of ``spec``'s parameters (titles, types, defaults, bounds, descriptions)."""
    return params_model(spec).model_json_schema()


def _allowed(spec: PipelineSpec, name: str) -> str:
    info = params_model(spec).model_fields.get(name)
    return describe_field(info) if info is not None else "see [params]"


def stage_params(spec: PipelineSpec, stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """A stage's op parameters with the run's ``values`` substituted (not yet resolved)."""
    return {key: substitute(value, values) for key, value in spec.stage(stage).params.items()}


def check_params(spec: PipelineSpec) -> None:
    """Check that the defaults are valid and every stage's parameters resolve with them.

    Raises
    ------
    PipelineSpecError
        Naming the file, the stage (or ``[params]``) and the key.
    """
    try:
        model = params_model(spec)
    except (TypeError, ValueError) as exc:
        raise spec_error(spec.file, "[params]", "?", f"cannot be typed: {exc}", "give each parameter a plain default") from None
    try:
        values = model(**{name: decl.default for name, decl in spec.params.items()}).model_dump()  # defaults checked
    except ValidationError as exc:
        error = exc.errors()[0]
        key = str(error["loc"][0]) if error["loc"] else "?"
        raise spec_error(spec.file, "[params]", key, f"default {spec.params[key].default!r} is refused: {error['msg']}",
                         f"{key} must be {_allowed(spec, key)}") from None
    _check_stages(spec, values, given=None)


def _check_stages(spec: PipelineSpec, values: dict[str, Any], given: dict[str, Any] | None) -> None:
    for stage in spec.stages:
        op = get_op(stage.op)
        substituted = stage_params(spec, stage.name, values)
        try:
            op.resolve(substituted)
        except InvalidParameterError as exc:
            key = _failing_key(exc, substituted)
            used = references(stage.params.get(key)) if key else []
            if given is not None and used and used[0] in given:
                name = used[0]
                raise InvalidParameterError(
                    f"pipeline parameter {name}={given[name]!r} (stage {stage.name!r}, {op.name} {key}): {exc.message}",
                    hint=exc.hint) from None
            raise spec_error(spec.file, f"stage {stage.name!r}", f"params.{key}" if key else "params", exc.message,
                             exc.hint or f"see `tierflow ops show {op.name}`") from None
    if spec.outputs.track is not None:
        for key in ("max_distance", "frame_interval"):
            value = substitute(getattr(spec.outputs.track, key), values)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise spec_error(spec.file, "[outputs]", f"track.{key}", f"{value!r} is not a number > 0",
                                 "give a positive number or a {parameter}")
    if spec.outputs.pyramid is not None:
        levels = substitute(spec.outputs.pyramid.levels, values)
        try:
            get_op("downsample").resolve({"levels": levels, "method": spec.outputs.pyramid.method})
        except InvalidParameterError as exc:
            raise spec_error(spec.file, "[outputs]", "pyramid", exc.message, exc.hint or "") from None


def _failing_key(exc: InvalidParameterError, params: dict[str, Any]) -> str | None:
    for key in params:
        if f"parameter {key}=" in exc.message or f"{key!r}" in exc.message or f"[{key!r}]" in exc.message:
            return key
    return None


def resolve_values(spec: PipelineSpec, given: dict[str, Any] | None = None, site: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's typed parameter values: ``[params]`` defaults, then ``site`` (``[pipeline]`` in
    configs/, for the names the spec has), then ``given`` (``--param``, text or values).

    Raises
    ------
    TierflowError
        For an unknown name (listing the known ones); InvalidParameterError naming the key, the
        value and what is allowed, or the stage whose op refuses it.
    """
    given = dict(given or {})
    unknown = sorted(set(given) - set(spec.params))
    if unknown:
        raise TierflowError(f"the pipeline {spec.name!r} has no parameter(s) {unknown}",
                            hint=f"it takes {sorted(spec.params)} (see [params] in {spec.file})")
    chosen = {k: v for k, v in (site or {}).items() if k in spec.params} | given
    try:
        values = params_model(spec)(**chosen).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = str(error["loc"][0]) if error["loc"] else "parameters"
        raise InvalidParameterError(
            f"pipeline parameter {where}={error.get('input')!r}: {error['msg'].removeprefix('Value error, ')}",
            hint=f"{where} must be {_allowed(spec, where)} (--param {where}=VALUE; defaults: [params] in {spec.file})",
        ) from None
    _check_stages(spec, values, given=chosen)
    return values
