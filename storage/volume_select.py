"""One volume inside a multi-dimensional file: the ``#series=N&t=T&c=C`` selector.

A path may end in a selector that picks one position (series, scene), time point and channel of
a file: ``embryo.ome.tif#t=1&c=0``, ``plate.tif#series=2&c=1``, ``run.czi#series=0&t=4&c=1``. Keys
are ``series``, ``t`` and ``c`` (non-negative integers, each at most once, any order, joined by
``&``). Every loader understands it (:func:`storage.volumes.open_volume` opens the file's series,
then :class:`SelectedVolume` fixes its ``t`` and ``c``): the selected volume has the remaining
axes (``zyx`` or ``yx``), and a read of a region reads only the pages of that time point and
channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tierflow.storage.errors import InvalidInputError
from tierflow.storage.geometry import Roi
from tierflow.storage.image_meta import ImageMetadata

__all__ = ["SelectedVolume", "VolumeSelector", "split_selector"]

_SELECTOR = re.compile(r"^(?P<path>.+?)#(?P<selector>(?:series|t|c)=\d+(?:&(?:series|t|c)=\d+)*)$")


@dataclass(frozen=True)
class VolumeSelector:
    """Which position (``series``), time point (``t``) and channel (``c``) of a file; None: all."""

    series: int | None = None
    t: int | None = None
    c: int | None = None

    @property
    def text(self) -> str:
        """``"series=2&t=1&c=0"`` (only the keys set; ``""`` for none)."""
        return "&".join(f"{key}={value}" for key, value in (("series", self.series), ("t", self.t), ("c", self.c))
                        if value is not None)

    @property
    def fixes_axes(self) -> bool:
        """Whether it picks a time point or a channel (not only a series)."""
        return self.t is not None or self.c is not None

    def suffix(self) -> str:
        """``"#series=2&t=1"``, or ``""``."""
        return f"#{self.text}" if self.text else ""


def split_selector(text: str) -> tuple[str, VolumeSelector]:
    """``("a.ome.tif", VolumeSelector(t=1, c=0))`` from ``"a.ome.tif#t=1&c=0"``.

    Raises
    ------
    InvalidInputError
        If a key appears twice (``#t=1&t=2``).
    """
    match = _SELECTOR.match(text)
    if match is None:
        return text, VolumeSelector()
    values: dict[str, int] = {}
    for part in match["selector"].split("&"):
        key, value = part.split("=")
        if key in values:
            raise InvalidInputError(f"{text}: the selector names {key!r} twice", hint="give each of series, t, c at most once")
        values[key] = int(value)
    return match["path"], VolumeSelector(**values)


@dataclass
class SelectedVolume:
    """One time point and/or channel of a volume: those axes fixed, the rest read through it."""

    inner: Any
    selector: VolumeSelector
    path: str
    uri: str = ""
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        inner_axes = self.inner.axes
        self.fixed: dict[str, int] = {}
        for axis, index, what in (("t", self.selector.t, "time point"), ("c", self.selector.c, "channel")):
            if index is None:
                continue
            if axis in inner_axes:
                n = self.inner.shape[inner_axes.index(axis)]
                if index >= n:
                    raise InvalidInputError(f"{self.path} has {n} {what}(s) (0 to {n - 1}); #{axis}={index} is out of range",
                                            hint=f"give {axis}=0 to {axis}={n - 1}")
                self.fixed[axis] = index
            elif index != 0:
                raise InvalidInputError(f"{self.path} has no {what} axis (its axes are {inner_axes!r}); #{axis}={index} is out of range",
                                        hint=f"leave {axis} out, or give {axis}=0")
        keep = [i for i, axis in enumerate(inner_axes) if axis not in self.fixed]
        self.axes = "".join(inner_axes[i] for i in keep)
        self.shape = tuple(int(self.inner.shape[i]) for i in keep)
        self.chunks = tuple(int(self.inner.chunks[i]) for i in keep)
        self.dtype = np.dtype(self.inner.dtype)
        self.uri = self.uri or f"{self.inner.uri.split('#')[0]}{self.selector.suffix()}"
        meta: ImageMetadata = self.inner.metadata
        names = meta.channel_names
        if "c" in self.fixed and names:
            names = (names[self.fixed["c"]],) if self.fixed["c"] < len(names) else ()
        self.metadata = ImageMetadata(dict(meta.scale), dict(meta.units), names, meta.labels)

    def full_roi(self, roi: Roi) -> Roi:
        """``roi`` (over this volume's axes) as a region of the inner volume."""
        where = dict(zip(self.axes, zip(roi.offset, roi.shape, strict=True), strict=True))
        offset = tuple(self.fixed[a] if a in self.fixed else where[a][0] for a in self.inner.axes)
        shape = tuple(1 if a in self.fixed else where[a][1] for a in self.inner.axes)
        return Roi(offset, shape)

    def read(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi``: only the inner volume's pages of the fixed time point and channel."""
        return np.ascontiguousarray(self.inner.read(self.full_roi(roi)).reshape(roi.shape))
