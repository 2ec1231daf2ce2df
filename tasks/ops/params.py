"""Operation parameters: their type, default, allowed range, and the validation of given values.

Values arrive as text from the CLI (``-p sigma=2``) or as numbers from Python; :func:`resolve_params`
converts and checks every one against its :class:`ParamSpec` before any work starts, and refuses
with an :class:`~tierflow.errors.InvalidParameterError` that names the operation, the key, the
value given and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tierflow.errors import InvalidParameterError

__all__ = ["ParamSpec", "otsu_or_number", "resolve_params"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its type, default (``...`` = required), what it means and what is allowed.

    ``gt``/``ge``/``le`` bound numbers (which must also be finite); ``choices`` lists the allowed
    values; ``check(value)`` returns why a value is refused, or ``None``.
    """

    kind: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    check: Callable[[Any], str | None] | None = None
    allowed: str = ""
    """What is allowed, in words, when ``check`` decides it."""

    def describe(self) -> str:
        """The allowed values in words, e.g. ``a finite number > 0 and <= 1000``."""
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        if self.allowed:
            return self.allowed
        bounds = [f"{sign} {bound:g}" for sign, bound in ((">", self.gt), (">=", self.ge), ("<=", self.le)) if bound is not None]
        what = {bool: "true or false", int: "an integer", float: "a finite number"}.get(self.kind, f"a {self.kind.__name__}")
        return f"{what} {' and '.join(bounds)}" if bounds else what


def otsu_or_number(value: Any) -> str | None:
    """Why ``value`` is not ``otsu`` or a finite number, or ``None`` (a threshold's check)."""
    if str(value).strip().lower() == "otsu":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "is neither 'otsu' nor a number"
    return None if math.isfinite(number) else "is not finite"


def _convert(spec: ParamSpec, value: Any) -> Any:
    """``value`` as ``spec.kind``; raises ``ValueError`` if it is not one."""
    if spec.kind is bool and isinstance(value, str):
        text = value.strip().lower()
        if text not in _TRUE + _FALSE:
            raise ValueError(value)
        return text in _TRUE
    if spec.kind is int and isinstance(value, float | str) and not isinstance(value, bool):
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    return value if isinstance(value, spec.kind) else spec.kind(value)


def _problem(spec: ParamSpec, value: Any) -> str | None:
    """Why a converted ``value`` is not allowed, or ``None``."""
    if spec.choices and value not in spec.choices:
        return "is not allowed"
    if spec.check is not None:
        return spec.check(value)
    if spec.kind in (int, float):
        if not math.isfinite(value):
            return "is not finite"
        if (spec.gt is not None and not value > spec.gt) or (spec.ge is not None and not value >= spec.ge) or (
            spec.le is not None and not value <= spec.le
        ):
            return "is out of range"
    return None


def resolve_params(op: str, specs: Mapping[str, ParamSpec], given: Mapping[str, Any]) -> dict[str, Any]:
    """Convert and check ``given`` against ``specs``; complete it with the defaults.

    Parameters
    ----------
    op
        The operation's name (for messages).
    specs
        Its parameters.
    given
        The values given (text from the CLI, or Python values).

    Returns
    -------
    dict
        Every parameter of ``specs``, converted.

    Raises
    ------
    InvalidParameterError
        For an unknown or missing key, or a value of the wrong type or out of range; the message
        names the operation, the key and the value, the hint what is allowed.
    """
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise InvalidParameterError(f"{op} has no parameter(s) {unknown}", hint=f"{op} takes {sorted(specs)}")
    resolved: dict[str, Any] = {}
    for name, spec in specs.items():
        value = given.get(name, spec.default)
        if value is ...:
            raise InvalidParameterError(f"{op} needs the parameter {name!r} ({spec.help})",
                                        hint=f"give it as -p {name}=VALUE: {spec.describe()}")
        if value is None and spec.default is None:
            resolved[name] = None
            continue
        try:
            resolved[name] = _convert(spec, value)
            problem = _problem(spec, resolved[name])
        except (TypeError, ValueError, OverflowError):
            problem = f"is not {spec.describe()}"
        if problem:
            raise InvalidParameterError(f"{op}: parameter {name}={value!r} {problem}",
                                        hint=f"{name} ({spec.help}) must be {spec.describe()}")
    return resolved
