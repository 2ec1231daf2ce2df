"""Physical units of image metadata, converted to the ones tierflow's tables use (µm, s)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["seconds", "to_micrometres"]

_LENGTH_IN_UM = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "å": 1e-4, "angstrom": 1e-4,
}
_TIME_IN_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "millisecond": 1e-3, "µs": 1e-6,
              "microsecond": 1e-6, "min": 60.0, "minute": 60.0, "minutes": 60.0, "h": 3600.0, "hour": 3600.0, "hours": 3600.0}


def to_micrometres(sizes: Sequence[float | None], units: Sequence[str | None]) -> tuple[float, ...] | None:
    """Voxel sizes in µm, or None if a size is unknown or a unit is not a length (``pixel``).

    A missing unit is taken as µm (what OME and ImageJ default to).

    Examples
    --------
    >>> to_micrometres([0.3, 100, 100], ["micrometer", "nm", "nanometer"])
    (0.3, 0.1, 0.1)
    >>> to_micrometres([1.0, 1.0], ["pixel", "pixel"]) is None
    True
    """
    out = []
    for size, unit in zip(sizes, units, strict=True):
        factor = _LENGTH_IN_UM.get((unit or "µm").strip().lower().replace("\u00b5", "µ"))
        if size is None or factor is None or not size > 0:
            return None
        out.append(float(size) * factor)
    return tuple(out)


def seconds(interval: float | None, unit: str | None) -> float | None:
    """A time interval in seconds (a missing unit is taken as seconds), None if unknown.

    Examples
    --------
    >>> seconds(2.5, "min")
    150.0
    """
    factor = _TIME_IN_S.get((unit or "s").strip().lower())
    if interval is None or factor is None or not interval > 0:
        return None
    return float(interval) * factor
