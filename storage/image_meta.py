"""What a volume's axes mean and its physical metadata: axis names, voxel sizes and units,
time interval, channel names.

Every :class:`~tierflow.storage.volumes.Volume` names its axes with a subset of ``tczyx`` in
that order (``"yx"`` for a 2-D image, ``"zyx"`` for a stack, ``"tczyx"`` for a hyperstack):
readers reorder what a file stores (ImageJ's ``TZCYX``, an RGB page's samples) into it. The
spatial axes (``z``, ``y``, ``x``) are always the last ones; block-wise map ops run over them
only (see :func:`spatial_ndim`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AXIS_ORDER", "SPATIAL_AXES", "ImageMetadata", "default_axes", "leading_axes", "spatial_ndim", "valid_axes"]

AXIS_ORDER = "tczyx"
SPATIAL_AXES = "zyx"


def default_axes(ndim: int) -> str:
    """The axes of an array that names none: the last ``ndim`` of ``tczyx`` (``yx``, ``zyx``,
    ``czyx``, ``tczyx``)."""
    if not 1 <= ndim <= len(AXIS_ORDER):
        return "".join(f"d{i}" for i in range(ndim))  # never a valid axes string: readers refuse such arrays
    return AXIS_ORDER[-ndim:]


def spatial_ndim(axes: str) -> int:
    """How many trailing axes are spatial (``z``, ``y``, ``x``)."""
    count = 0
    for axis in reversed(axes):
        if axis not in SPATIAL_AXES:
            break
        count += 1
    return count


def leading_axes(axes: str) -> int:
    """How many leading axes are not spatial (time, channel)."""
    return len(axes) - spatial_ndim(axes)


def valid_axes(axes: str) -> bool:
    """``axes`` is an ordered subset of ``tczyx`` with at least one spatial axis."""
    return bool(axes) and len(set(axes)) == len(axes) and all(a in AXIS_ORDER for a in axes) and \
        "".join(sorted(axes, key=AXIS_ORDER.index)) == axes and spatial_ndim(axes) > 0


@dataclass(frozen=True)
class ImageMetadata:
    """Physical metadata read from the file (OME-XML, ImageJ, OME-Zarr); empty when it says none.

    ``scale`` maps an axis to its physical step (``{"z": 0.3, "y": 0.1, "x": 0.1}``, ``"t"``: the
    time interval), ``units`` an axis to its unit (``"µm"``, ``"s"``).
    """

    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()
    labels: bool = False
    """The file says it holds labels (an OME-Zarr ``image-label``)."""

    @property
    def time_interval(self) -> float | None:
        return self.scale.get("t")

    def voxel_size(self, axes: str = SPATIAL_AXES) -> tuple[float | None, ...]:
        """The physical step along each of ``axes`` (None where unknown)."""
        return tuple(self.scale.get(axis) for axis in axes)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": dict(self.scale), "units": dict(self.units), "channel_names": list(self.channel_names),
                "labels": self.labels}

    @property
    def physical(self) -> dict[str, Any]:
        """What an op's output keeps of its input's metadata (scale, units, channel names), or ``{}``."""
        kept = {"scale": dict(self.scale), "units": dict(self.units), "channel_names": list(self.channel_names)}
        return {k: v for k, v in kept.items() if v}

    @classmethod
    def from_dict(cls, data: Any) -> ImageMetadata:
        """The metadata :meth:`to_dict` or :attr:`physical` wrote (unknown or malformed parts are dropped)."""
        if not isinstance(data, dict):
            return cls()
        scale = {str(k): float(v) for k, v in (data.get("scale") or {}).items() if isinstance(v, (int, float))}
        units = {str(k): str(v) for k, v in (data.get("units") or {}).items()}
        names = tuple(str(n) for n in (data.get("channel_names") or ()))
        return cls(scale=scale, units=units, channel_names=names, labels=bool(data.get("labels", False)))
