"""One OME-Zarr 0.5 image per sample: its layout, arrays and metadata, built with ome-zarr-models.

Layout (``<sample>.ome.zarr``)::

    zarr.json             ome: multiscales (axes t, c, z, y, x), omero (channels); tierflow: tables
    0/ 1/ ...             levels: (T, C, Z, Y, X), only z, y, x downsampled
    labels/zarr.json      ome: labels = [<name>]
    labels/<name>/0 ...   image-label (colours, source ../../), axes t, c, z, y, x with c = 1

``t`` and ``c`` are always there (extent 1 when a sample has one time point or channel): one
shape for every sample image, which viewers (Neuroglancer, napari) show with a time slider and
one layer per channel. The labels keep the image's axes (``c`` of extent 1), so they overlay
it voxel for voxel at every level.

Levels may be sharded (zarr v3 ``sharding_indexed``: many chunks per stored object, for object
stores); a writer must then own whole shards (:func:`check_shard_alignment`).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ome_zarr_models.common.omero import Channel, Omero, Window
from ome_zarr_models.v05.axes import Axis
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabelAttrs
from ome_zarr_models.v05.image_label_types import Color, Label, Source
from ome_zarr_models.v05.labels import LabelsAttrs
from ome_zarr_models.v05.multiscales import Dataset, Multiscale

from tierflow.storage.errors import TierflowError
from tierflow.storage.geometry import inner_chunks
from tierflow.storage.image_meta import ImageMetadata

__all__ = [
    "IMAGE_AXES", "ChannelDisplay", "PhysicalScale", "check_shard_alignment", "channel_color", "create_level",
    "image_attributes", "inner_chunks", "label_attributes", "label_color", "labels_attributes",
]

IMAGE_AXES = ("t", "c", "z", "y", "x")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_CHANNEL_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FFFFFF")

_UNITS = {"µm": "micrometer", "μm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
          "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter",
          "m": "meter", "meter": "meter", "Å": "angstrom", "angstrom": "angstrom",
          "s": "second", "sec": "second", "second": "second", "ms": "millisecond", "millisecond": "millisecond",
          "min": "minute", "minute": "minute", "h": "hour", "hour": "hour"}


@dataclass(frozen=True)
class PhysicalScale:
    """A sample's physical grid: voxel size (z, y, x) in ``space_unit``, time between time
    points in ``time_unit`` (UDUNITS-2 names, as OME-Zarr wants them)."""

    voxel: tuple[float, float, float] = (1.0, 1.0, 1.0)
    space_unit: str = "micrometer"
    time_interval: float = 1.0
    time_unit: str | None = None

    @classmethod
    def from_metadata(cls, metadata: ImageMetadata) -> PhysicalScale:
        """The scale a reader found in the file (voxel sizes and their unit, time increment);
        1 micrometer per voxel and 1 per time point where the file says nothing."""
        voxel = tuple(float(v) if v else 1.0 for v in metadata.voxel_size("zyx"))
        unit = next((_UNITS.get(metadata.units[a]) for a in "xyz" if a in metadata.units), None) or "micrometer"
        interval = metadata.time_interval
        time_unit = _UNITS.get(metadata.units.get("t", "")) if interval else None
        return cls((voxel[0], voxel[1], voxel[2]), unit, float(interval) if interval else 1.0, time_unit)

    def base(self) -> list[float]:
        """Level 0's scale along t, c, z, y, x."""
        return [self.time_interval, 1.0, *self.voxel]

    def axes(self) -> list[Axis]:
        units = {"t": self.time_unit, "z": self.space_unit, "y": self.space_unit, "x": self.space_unit}
        return [Axis(name=a, type=_AXIS_TYPES[a], unit=units.get(a)) for a in IMAGE_AXES]


@dataclass(frozen=True)
class ChannelDisplay:
    """How a viewer first shows a channel: its name, colour (RRGGBB) and display window
    (``start``..``end`` within the data range ``min``..``max``)."""

    label: str
    color: str
    min: float
    max: float
    start: float
    end: float

    def to_omero(self) -> Channel:
        return Channel(color=self.color, window=Window(min=self.min, max=self.max, start=self.start, end=self.end),
                       label=self.label, active=True, coefficient=1.0, family="linear", inverted=False)


def channel_color(index: int) -> str:
    """The default colour of channel ``index`` (green, magenta, cyan, yellow, red, blue, white)."""
    return _CHANNEL_COLORS[index % len(_CHANNEL_COLORS)]


def label_color(value: int) -> tuple[int, int, int, int]:
    """A stable, well-spread opaque colour for label ``value`` (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255), 255


def _multiscale(name: str, scale: PhysicalScale, scales: Sequence[Sequence[float]], translations: Sequence[Sequence[float]],
                method: str) -> Multiscale:
    return Multiscale(
        axes=scale.axes(), name=name, type=method,
        datasets=tuple(Dataset.build(path=str(level), scale=list(s), translation=list(t))
                       for level, (s, t) in enumerate(zip(scales, translations, strict=True))),
    )


def image_attributes(name: str, scale: PhysicalScale, scales: Sequence[Sequence[float]], translations: Sequence[Sequence[float]],
                     channels: Sequence[ChannelDisplay], *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The image group's attributes: ``ome`` (multiscales over t, c, z, y, x and omero
    channels, built and checked by ome-zarr-models' v0.5 models) and ``extra`` keys beside it."""
    omero = Omero(channels=[c.to_omero() for c in channels], rdefs={"model": "color", "defaultT": 0, "defaultZ": 0})
    attrs = ImageAttrs(version="0.5", multiscales=[_multiscale(name, scale, scales, translations, "mean")],
                       omero=omero.model_dump(mode="json", by_alias=True, exclude_none=True))
    return {"ome": attrs.model_dump(mode="json", by_alias=True, exclude_none=True), **dict(extra or {})}


def label_attributes(name: str, scale: PhysicalScale, scales: Sequence[Sequence[float]], translations: Sequence[Sequence[float]],
                     values: Sequence[int], *, method: str = "mode", source: str = "../../") -> dict[str, Any]:
    """A label group's attributes: ``image-label`` (a colour per label value, the image it
    labels as ``source``) and its multiscales, built with ome-zarr-models."""
    label = Label(version="0.5", source=Source(image=source),
                  colors=tuple(Color(**{"label-value": int(v), "rgba": label_color(int(v))}) for v in values) or None)
    attrs = ImageLabelAttrs(version="0.5", multiscales=[_multiscale(name, scale, scales, translations, method)],
                            **{"image-label": label})
    return {"ome": attrs.model_dump(mode="json", by_alias=True, exclude_none=True)}


def labels_attributes(names: Sequence[str]) -> dict[str, Any]:
    """The ``labels`` group's attributes: the names of the image's label groups."""
    return {"ome": LabelsAttrs(version="0.5", labels=list(names)).model_dump(mode="json", by_alias=True, exclude_none=True)}


def check_shard_alignment(array: str, shape: Sequence[int], block_shape: Sequence[int], shard_shape: Sequence[int] | None) -> None:
    """Refuse a plan whose blocks would split a shard between two writers: along every axis the
    block is a whole number of shards, or the whole array.

    Raises
    ------
    TierflowError
        Naming the array, its shard shape and the block shape.
    """
    if shard_shape is None:
        return
    bad = [axis for axis, (n, b, s) in enumerate(zip(shape, block_shape, shard_shape, strict=True)) if b % s and b < n]
    if bad:
        raise TierflowError(
            f"{array}: block shape {tuple(block_shape)} is not aligned to its shard shape {tuple(shard_shape)} "
            f"(array shape {tuple(shape)}, axes {bad}): two blocks would write the same shard object",
            hint="make block_shape a multiple of shard_shape along z, y, x (--param block_shape=... or "
                 "[pipeline] block_shape / shard_shape in configs/)")


def create_level(tier: Any, key: str, *, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                 shards: Sequence[int] | None = None, dimension_names: Sequence[str] = IMAGE_AXES) -> Any:
    """Create one level (or reuse one of the same shape, dtype, chunks and shards: a resumed
    run writes into it); blosc-lz4 chunks, inside shards when ``shards`` is given.

    Raises
    ------
    TierflowError
        If an array of another geometry is already there.
    """
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    shards = None if shards is None else tuple(int(s) for s in shards)
    if tier.exists(f"{key}/zarr.json"):
        array = zarr.open_array(store=tier.zarr_store(key), mode="r+")
        same = (tuple(array.shape), np.dtype(array.dtype), tuple(array.chunks), array.shards) == (
            tuple(shape), np.dtype(dtype), tuple(chunks), None if shards is None else tuple(shards))
        if not same:
            raise TierflowError(f"{tier.uri(key)} exists as {array.shape} {array.dtype} chunks {array.chunks} shards {array.shards}, "
                                f"not {tuple(shape)} {np.dtype(dtype)} chunks {tuple(chunks)} shards {shards}",
                                hint="this run's outputs were written with other settings: delete them, or run with the old ones")
        return array
    return zarr.create_array(store=tier.zarr_store(key), shape=tuple(shape), chunks=tuple(chunks), shards=shards,
                             dtype=np.dtype(dtype), fill_value=0, dimension_names=tuple(dimension_names),
                             compressors=[BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.bitshuffle)])
