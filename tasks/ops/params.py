"""Checks of parameter values that ops and the pipeline share (an op's parameters are a pydantic
model: see :mod:`tierflow.tasks.ops.spec`)."""

from __future__ import annotations

import math
from typing import Any


__all__ = ["otsu_or_number"]



def otsu_or_number(value: Any) -> str | None:
    """Why ``value`` is not ``otsu`` or a finite number, or ``None`` (a threshold's check)."""
    if str(value).strip().lower() == "otsu":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "is neither 'otsu' nor a number"
    return None if math.isfinite(number) else "is not finite"
