"""zarr arrays (v2 and v3) and OME-Zarr images (0.4 and 0.5) as volumes.

A zarr array is read as it is; its axes come from tierflow's own attributes, zarr v3
``dimension_names`` or zarr v2's ``_ARRAY_DIMENSIONS`` when they name ``t``, ``c``, ``z``,
``y``, ``x``, else from its number of axes (``yx``, ``zyx``, ``czyx``, ``tczyx``). An OME-Zarr
image (a group with ``multiscales``) is read at full resolution (``datasets[0]``) with the
axes, scale and units of its metadata, the channel names of its ``omero`` block, and whether
it is a label image (``image-label``).
"""

from __future__ import annotations

import itertools
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.storage.errors import InvalidInputError, TierflowError
from tierflow.storage.geometry import Roi
from tierflow.storage.image_meta import ImageMetadata, default_axes, valid_axes

__all__ = ["ZarrVolume", "array_axes", "damaged_chunks", "is_zarr_path", "open_zarr_path"]

_DECODE_ERRORS = (RuntimeError, ValueError, EOFError, zlib.error)
"""What codecs raise for damaged bytes (not ``OSError``: an unreachable store is not a damaged chunk)."""


def array_axes(array: Any) -> str:
    """The axes of a zarr array (see the module docstring)."""
    attrs = dict(getattr(array, "attrs", {}) or {})
    named = (attrs.get("tierflow") or {}).get("axes") if isinstance(attrs.get("tierflow"), dict) else None
    candidates = [named, getattr(array.metadata, "dimension_names", None), attrs.get("_ARRAY_DIMENSIONS")]
    for names in candidates:
        if names and all(isinstance(n, str) for n in names):
            axes = "".join(names).lower() if not isinstance(names, str) else names.lower()
            if len(axes) == len(array.shape) and valid_axes(axes):
                return axes
    return default_axes(len(array.shape))


@dataclass
class ZarrVolume:
    """A zarr array (v2 or v3)."""

    array: Any
    uri: str
    axes: str = ""
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        self.axes = self.axes or array_axes(self.array)
        if self.metadata == ImageMetadata():  # an op's output keeps its input's physical metadata
            made = (dict(getattr(self.array, "attrs", {}) or {}).get("tierflow") or {})
            if isinstance(made, dict) and made.get("metadata"):
                self.metadata = ImageMetadata.from_dict(made["metadata"])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        shards = getattr(self.array, "shards", None)
        return tuple(shards or self.array.chunks)

    def read(self, roi: Roi, *, cache: Any = None, cache_key: Any = None) -> np.ndarray:
        """The voxels of ``roi``; with a :class:`storage.chunk_cache.ChunkCache`, chunk by chunk
        through it (for halo reads shared between neighbouring batches)."""
        try:
            if cache is not None:
                from tierflow.storage.chunk_cache import read_through_cache

                return read_through_cache(self.array, roi, cache, (cache_key, self.uri))
            return np.asarray(self.array[roi.slices])
        except (*_DECODE_ERRORS, OSError) as exc:
            from tierflow.storage.zarr_codecs import decodes_with_zarrs  # imports zarrs (and zarr): not at start-up

            if isinstance(exc, OSError) and not decodes_with_zarrs(self.array):
                raise  # an unreachable store (zarrs reports damaged chunks as OSError too: damaged_chunks tells)
            bad = damaged_chunks(self.array, roi)
            if not bad:
                raise
            raise InvalidInputError(
                f"input {self.uri}: chunk(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} cannot be decoded "
                f"({type(exc).__name__}: {exc}): the input is damaged, repair or re-create it",
                hint=f"the input array is damaged: repair or re-create {self.uri} (chunk {bad[0]}), then run again",
            ) from None


def damaged_chunks(array: Any, roi: Roi) -> list[str]:
    """The store keys of the chunks (shards) of a zarr ``array`` under ``roi`` that cannot be
    decoded (by zarr-python's codecs, whose errors tell damage from I/O, see :func:`with_zarr_python`)."""
    from tierflow.storage.zarr_codecs import with_zarr_python

    array = with_zarr_python(array)
    grid = tuple(getattr(array, "shards", None) or array.chunks)
    bad = []
    for index in itertools.product(*(range(o // c, (e - 1) // c + 1) for o, e, c in zip(roi.offset, roi.end, grid, strict=True))):
        try:
            array[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, grid, strict=True))]
        except _DECODE_ERRORS:
            bad.append(array.metadata.encode_chunk_key(index))
    return bad


def is_zarr_path(path: str) -> bool:
    """A local zarr v2 or v3 array or group."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name)) for name in ("zarr.json", ".zarray", ".zgroup"))


def open_zarr_path(path: str) -> ZarrVolume:
    """A local zarr array, or an OME-Zarr image's full-resolution level.

    Raises
    ------
    TierflowError
        For a zarr group that is not an OME-Zarr image (naming its members).
    """
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return ZarrVolume(node, Path(path).resolve().as_uri())
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs  # 0.5 nests under "ome", 0.4 does not
    multiscales = ome.get("multiscales")
    if not multiscales:
        members = sorted(name for name, _ in node.members())[:10]
        raise TierflowError(f"{path} is a zarr group, not an array nor an OME-Zarr image (no multiscales in its attributes)",
                            hint=f"give one of its arrays, e.g. {path}/{members[0]}" if members else "give a zarr array")
    return _ome_level0(path, node, ome, multiscales[0])


def _ome_level0(path: str, group: Any, ome: dict[str, Any], multiscale: dict[str, Any]) -> ZarrVolume:
    """Level 0 of an OME-Zarr multiscale, with its axes, scale, units and channel names."""
    dataset = multiscale["datasets"][0]
    array = group[dataset["path"]]
    axes_meta = multiscale.get("axes") or []
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
    axes = "".join(names).lower()
    if len(axes) != len(array.shape) or not valid_axes(axes):
        raise InvalidInputError(f"{path}: OME-Zarr axes {names} are not a subset of t, c, z, y, x (one letter each, in that order) "
                                f"for an array of shape {tuple(array.shape)}",
                                hint="tierflow reads OME-Zarr images whose axes are t, c, z, y, x")
    scale, units = {}, {}
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale":
            scale = {axis: float(v) for axis, v in zip(axes, transform["scale"], strict=False)}
    for axis, meta in zip(axes, axes_meta, strict=True):
        if isinstance(meta, dict) and meta.get("unit"):
            units[axis] = str(meta["unit"])
    channels = tuple(str(c.get("label", "")) for c in ((ome.get("omero") or {}).get("channels") or []))
    metadata = ImageMetadata({a: s for a, s in scale.items() if a != "c"}, units, channels if any(channels) else (),
                             labels="image-label" in ome)
    return ZarrVolume(array, (Path(path) / dataset["path"]).resolve().as_uri(), axes, metadata)
