"""The pipeline's parameters (``[pipeline]`` in ``configs/`` with ``--param`` overrides on top),
validated on their own so that the CLI refuses a bad one before any flow starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tierflow.configs import TierflowConfig
from tierflow.storage.errors import InvalidParameterError, TierflowError
from tierflow.storage.geometry import parse_block_shape
from tierflow.tasks.ops.params import otsu_or_number

__all__ = ["PipelineParams"]

_ALLOWED = {"threshold": "'otsu' or a finite number", "block_shape": "3 positive integers z,y,x, e.g. 16,128,128",
            "connectivity": "6, 18 or 26"}


class PipelineParams(BaseModel):
    """The pipeline's parameters; defaults come from ``[pipeline]`` in ``configs/``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    segment_channel: int = Field(0, ge=0)
    sigma: float = Field(1.0, gt=0, le=50)
    threshold: str = "otsu"
    connectivity: Literal[6, 18, 26] = 26
    max_distance: float = Field(15.0, gt=0)
    frame_interval: float = Field(1.0, gt=0)
    pyramid_levels: int = Field(3, ge=1, le=10)
    block_shape: tuple[int, int, int] = (16, 128, 128)

    @field_validator("threshold")
    @classmethod
    def _otsu_or_number(cls, value: str) -> str:
        if problem := otsu_or_number(value):
            raise ValueError(f"{value!r} {problem}; give 'otsu' or a finite number")
        return "otsu" if str(value).strip().lower() == "otsu" else str(value)

    @field_validator("block_shape", mode="before")
    @classmethod
    def _block_shape_from_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_block_shape(value, key="block_shape", ndim=3)
        except InvalidParameterError as exc:
            raise ValueError(exc.message) from None

    @classmethod
    def allowed(cls, name: str) -> str:
        """The range of parameter ``name`` in words (from its field's bounds), e.g. ``> 0, <= 50``."""
        field = cls.model_fields.get(name)
        if field is None:
            return "see [pipeline]"
        signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
        bounds = [f"{sign} {getattr(m, attr)}" for m in field.metadata for attr, sign in signs.items() if hasattr(m, attr)]
        if bounds:
            return ("a finite number " if field.annotation is float else "an integer ") + " and ".join(bounds)
        return _ALLOWED.get(name, f"a {getattr(field.annotation, '__name__', field.annotation)}")

    @classmethod
    def from_config(cls, config: TierflowConfig, overrides: dict[str, Any] | None = None) -> PipelineParams:
        """``[pipeline]`` defaults with ``overrides`` (e.g. from ``--param``) on top.

        Raises
        ------
        TierflowError
            Naming the parameter at fault and the accepted ones.
        """
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise TierflowError(f"the pipeline has no parameter(s) {unknown}", hint=f"it takes {sorted(cls.model_fields)}")
        base = config.pipeline.model_dump(include=set(cls.model_fields))
        try:
            return cls(**{**base, **overrides})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = str(first["loc"][0]) if first["loc"] else "parameters"
            raise InvalidParameterError(
                f"pipeline parameter {where}={first.get('input')!r}: {first['msg'].removeprefix('Value error, ')}",
                hint=f"{where} must be {cls.allowed(where)} (--param {where}=VALUE; defaults: [pipeline] in configs/tierflow.def.toml)",
            ) from None
