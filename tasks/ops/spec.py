"""What an operation is: one :class:`OpSpec` per op, map ops and staged ops alike.

An op declares its name, version, kind (how it runs: ``map`` voxel-wise with a halo, or a staged
op — ``label``, ``pyramid``, ``features`` — with its own stage runner), its parameters as a
pydantic model (types, defaults, bounds and help; JSON Schema for forms and ``--help``), its
halo, output dtype, extra inputs and how many blocks it writes. The CLI's op list, help, hints
and progress totals, the ``op`` flow's dispatch and the pipeline all read it
(:mod:`tierflow.tasks.ops.registry`).

Parameter values arrive as text from the CLI (``-p sigma=2``) or as Python values; pydantic
converts them, and a refusal becomes an :class:`~tierflow.errors.InvalidParameterError` naming
the op, the key, the value given and what is allowed, before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from tierflow.errors import InvalidParameterError, KernelOutputError

__all__ = ["OpKind", "OpParams", "OpSpec", "describe_field", "finite_positive_list", "grid_blocks", "literal_choices", "no_halo",
           "same_dtype"]

OpKind = Literal["map", "label", "pyramid", "features"]
"""How an op runs: ``map`` (each output voxel from a neighbourhood: blocks with a halo), or the
stage runner of a staged op."""


class OpParams(BaseModel):
    """Base of every op's parameters: unknown keys and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


def no_halo(params: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    """No context around a block (voxel-wise ops)."""
    return (0,) * ndim


def same_dtype(params: Mapping[str, Any], dtype: np.dtype) -> np.dtype:
    """The output keeps the input's dtype."""
    return np.dtype(dtype)


def grid_blocks(shape: tuple[int, ...], block_shape: tuple[int, ...]) -> int:
    """How many blocks of ``block_shape`` cover ``shape`` (the last block along an axis may be
    smaller). Kept here, pure, so op declarations need no storage layer."""
    return math.prod(-(-int(s) // int(b)) for s, b in zip(shape, block_shape[-len(shape):], strict=True))


def _block_count(shape: tuple[int, ...], block_shape: tuple[int, ...], params: Mapping[str, Any]) -> int:
    return grid_blocks(shape, block_shape)


@dataclass(frozen=True)
class OpSpec:
    """One operation, as every part of tierflow sees it."""

    name: str
    version: str
    """Part of the cache key: a change of what the op computes needs a new version."""
    kind: OpKind
    params: type[BaseModel]
    summary: str
    """One line for ``tierflow ops list`` and ``tierflow op --help``."""
    kernel: Callable[..., np.ndarray] | None = None
    """Map ops: ``kernel(block, params, **extra_blocks) -> block`` (params as a dict)."""
    halo: Callable[[Mapping[str, Any], int], tuple[int, ...]] = no_halo
    out_dtype: Callable[[Mapping[str, Any], np.dtype], np.dtype] = same_dtype
    inputs: tuple[str, ...] = ()
    """Names of extra input arrays (``--with NAME=PATH``), passed to the kernel as keyword blocks;
    ``("*",)``: any names (a feature table's intensity channels)."""
    block_count: Callable[[tuple[int, ...], tuple[int, ...], Mapping[str, Any]], int] = _block_count
    """Blocks the op writes in all (progress totals), from the input shape, block shape and params."""
    makes_labels: bool = False
    """The output is a label image (downsampled with ``mode``, shown as labels)."""
    resources: Mapping[str, Any] = field(default_factory=dict)
    """Per-op resource hints, e.g. ``{"gpu": 1, "memory": "8G"}`` (``threads``/``gpu`` cap the
    batches running at once; on SLURM ``memory`` and ``gpu`` are requested per worker job)."""
    package: str = "tierflow"
    """The distribution that gives the op (``tierflow`` for the built-ins)."""
    entry_point: str = ""
    """Where a plugin op comes from: ``NAME = module:attribute`` of group ``tierflow.ops``."""
    wants_offset: bool = False
    """Map ops: the kernel also gets ``origin=`` (its block's read ROI offset in the volume) and
    ``volume_shape=``, for results that depend on where the block lies (global ids, the volume's
    border)."""
    max_voxels: int | None = None
    """The largest input (in voxels) the op takes; a larger one is refused before any work."""

    @property
    def origin(self) -> str:
        """``tierflow`` or ``plugin DIST (entry point NAME = module:attribute)``: for messages."""
        if not self.entry_point or self.package == "tierflow":
            return self.package
        return f"plugin {self.package} (entry point {self.entry_point})"

    def check_block(self, result: Any, expected: tuple[int, ...], block_id: str) -> np.ndarray:
        """``result`` if the kernel returned an array of its block's shape (read ROI).

        Raises
        ------
        KernelOutputError
            Naming the op, its origin, the block and the shapes.
        """
        shape = getattr(result, "shape", None)
        if not isinstance(result, np.ndarray) or tuple(shape) != tuple(expected):
            got = f"shape {tuple(shape)}" if shape is not None else f"a {type(result).__name__}"
            raise KernelOutputError(f"op {self.name} ({self.origin}): its kernel returned {got} for block {block_id}, "
                                    f"expected an array of shape {tuple(expected)} (the block with its halo)",
                                    hint="the kernel must return an array of the shape of the block it is given")
        return result

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and complete parameters (text from the CLI is converted).

        Raises
        ------
        InvalidParameterError
            For an unknown or missing key, or a value of the wrong type or out of range; the
            message names the op, the key and the value, the hint what is allowed.
        """
        fields = self.params.model_fields
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise InvalidParameterError(f"{self.name} has no parameter(s) {unknown}", hint=f"{self.name} takes {sorted(fields)}")
        try:
            return self.params.model_validate(dict(given)).model_dump()
        except ValidationError as exc:
            raise self._refusal(exc, given) from None

    def _refusal(self, exc: ValidationError, given: Mapping[str, Any]) -> InvalidParameterError:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        info = self.params.model_fields.get(name)
        if info is None:  # a model-level check
            return InvalidParameterError(f"{self.name}: {error['msg']}", hint=f"see `tierflow ops show {self.name}`")
        if error["type"] == "missing":
            return InvalidParameterError(f"{self.name} needs the parameter {name!r} ({info.description})",
                                         hint=f"give it as -p {name}=VALUE: {describe_field(info)}")
        value = given.get(name)
        problem = _problem(error, value)
        return InvalidParameterError(f"{self.name}: parameter {name}={value!r} {problem}",
                                     hint=f"{name} ({info.description}) must be {describe_field(info)}")

    def halo_over(self, params: Mapping[str, Any], ndim: int, axes: str = "") -> tuple[int, ...]:
        """The halo over an array with ``axes``: the op's halo on the spatial axes, none on
        time and channel (a map op runs on each time point's and channel's spatial block)."""
        lead = len(axes) - len(axes.lstrip("tc")) if axes else 0  # time and channel lead the spatial axes
        return (0,) * lead + tuple(self.halo(params, ndim - lead))

    def defaults(self) -> dict[str, Any]:
        """Each parameter's default (``...`` for a required one)."""
        return {name: (... if info.is_required() else info.default) for name, info in self.params.model_fields.items()}

    def schema(self) -> dict[str, Any]:
        """The parameters' JSON Schema (forms, ``tierflow ops list --json``)."""
        return self.params.model_json_schema()

    def describe(self) -> dict[str, Any]:
        """What ``tierflow ops list --json`` prints of this op."""
        return {"name": self.name, "version": self.version, "kind": self.kind, "summary": self.summary,
                "package": self.package, "entry_point": self.entry_point,
                "inputs": list(self.inputs), "makes_labels": self.makes_labels, "resources": dict(self.resources),
                "params": {name: {"default": None if info.is_required() else info.default, "required": info.is_required(),
                                  "help": info.description or "", "allowed": describe_field(info)}
                           for name, info in self.params.model_fields.items()},
                "halo": self.default_halo(), "schema": self.schema()}

    def default_halo(self) -> dict[str, list[int]] | None:
        """The halo with the default parameters, per dimensionality (``{"3-D": [...], "2-D": [...]}``);
        ``None`` for a staged op or when a parameter has no default (the halo depends on it)."""
        if self.kind != "map":
            return None
        try:
            params = self.resolve({})
            return {f"{ndim}-D": [int(h) for h in self.halo(params, ndim)] for ndim in (3, 2)}
        except Exception:  # noqa: BLE001 - a required parameter, or a halo rule that needs one
            return None


def _problem(error: Mapping[str, Any], value: Any) -> str:
    """Why ``value`` was refused, in the words tierflow's messages use."""
    kind = error["type"]
    if kind == "finite_number" or (isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf")):
        return "is not finite"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "is out of range"
    if kind in ("literal_error", "enum"):
        return "is not allowed"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    return f"is not valid ({error['msg']})"


def describe_field(info: Any) -> str:
    """The allowed values of a parameter in words, e.g. ``a finite number > 0 and <= 1000``."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("allowed"):
        return str(extra["allowed"])
    annotation = info.annotation
    choices = literal_choices(annotation)
    if choices:
        return f"one of {', '.join(map(str, choices))}"
    bounds = []
    for item in info.metadata:
        for sign, attribute in ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le")):
            bound = getattr(item, attribute, None)
            if bound is not None:
                bounds.append(f"{sign} {bound:g}")
    base = _base_type(annotation)
    what = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}.get(base, str(annotation))
    return f"{what} {' and '.join(bounds)}" if bounds else what


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) annotation allows, or ``()``."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def _base_type(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args and get_origin(annotation) is not Literal else annotation


def finite_positive_list(text: str | None) -> str | None:
    """``"2,0.5,0.5"`` unchanged if every item is a positive finite number; raises ``ValueError``."""
    if text is None:
        return None
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError("is not positive numbers separated by commas") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError("is not positive numbers separated by commas")
    return str(text)
