"""tierflow's own operations, declared once each (:class:`~tierflow.tasks.ops.spec.OpSpec`).

A map operation computes every output voxel from a neighbourhood of input voxels, so it runs
block-wise by reading each block with a halo and keeping the inner part; its declaration here is
all it takes (the CLI, ``tierflow ops list``, the ``op`` flow and the pipeline read it through
:mod:`tierflow.tasks.ops.registry`). Staged operations (connected components, pyramids,
features) are declared here too; their stage runners live in ``tierflow.flows.ops``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field, field_validator, model_validator

from tierflow.tasks.ops.filters import gaussian, gaussian_radius, threshold
from tierflow.tasks.ops.morphology import (binary_close, binary_open, distance_halo, distance_transform, fill_holes,
                                           remove_small_objects)
from tierflow.tasks.ops.params import otsu_or_number
from tierflow.tasks.ops.pyramid import downsampled_shape, pyramid_factors
from tierflow.tasks.ops.seeds import peaks
from tierflow.errors import InvalidParameterError
from tierflow.extras import require_extra
from tierflow.tasks.ops.spec import OpParams, OpSpec, finite_positive_list, grid_blocks

__all__ = ["BINARY_CLOSE", "BINARY_OPEN", "BUILTIN_OPS", "CONVERT", "DISTANCE_TRANSFORM", "DOWNSAMPLE", "FEATURES", "FILL_HOLES",
           "GAUSSIAN", "LABEL", "MASK", "PEAKS", "REMOVE_SMALL_OBJECTS", "THRESHOLD", "WATERSHED", "DistanceParams",
           "DownsampleParams", "FeaturesParams", "FillHolesParams", "GaussianParams", "LabelParams", "MorphologyParams",
           "PeaksParams", "SmallObjectsParams", "ThresholdParams", "WatershedParams"]


def _dtype_problem(value: str) -> str | None:
    """Why ``value`` is not a numpy dtype name (empty = the input's), or ``None``."""
    try:
        np.dtype(value or None)
    except TypeError:
        return "is not a numpy dtype"
    return None


def _gaussian(block: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    out = p["out_dtype"] or None
    return gaussian(block, sigma=p["sigma"], truncate=p["truncate"], mode=p["mode"], backend=p["backend"], out_dtype=out)


def _gaussian_halo(p: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return gaussian_radius(p["sigma"], ndim, truncate=p["truncate"])


def _threshold(block: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    return threshold(block, value=float(p["value"]), above=p["above"])


def _watershed(block: np.ndarray, p: Mapping[str, Any], *, markers: np.ndarray) -> np.ndarray:
    """Seeded watershed of one block with halo (seeds carry global ids, so no relabelling).

    How it can differ from a whole-volume watershed: a block sees ``halo`` voxels beyond its
    border, so a basin whose flooding path leaves that context, or a flat plateau whose ties are
    broken in visiting order, can be assigned differently near block borders. Restricting the
    flood to the foreground (``mask_above``) removes the plateaus: tested to agree 100 % on
    blob-like cells; unmasked flooding of a flat zero background agreed on 73 % of voxels.
    """
    from skimage.segmentation import watershed

    mask = block > p["mask_above"] if p["mask_above"] is not None else None
    return watershed(-block if p["invert"] else block, markers=markers, mask=mask, connectivity=1).astype(np.uint32)


def _fixed_halo(p: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return (int(p["halo"]),) * ndim


class GaussianParams(OpParams):
    sigma: float = Field(gt=0, le=1000, description="standard deviation in voxels")
    truncate: float = Field(4.0, gt=0, le=20, description="kernel radius in sigmas (SciPy's default)")
    mode: Literal["mirror", "reflect", "nearest", "constant", "wrap"] = Field(
        "reflect", description="border handling (SciPy's names and default)")
    backend: Literal["opencv", "bioimage-cpp", "scipy"] = Field("opencv", description="kernel implementation")
    out_dtype: str = Field("", description="output dtype (default: the input's)",
                           json_schema_extra={"allowed": "a numpy dtype name such as uint16 or float32, or empty for the input's"})

    @field_validator("out_dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        problem = _dtype_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("backend")
    @classmethod
    def _backend_installed(cls, value: str) -> str:
        if value == "bioimage-cpp":  # the `bioimage-cpp` extra: checked before any block is read
            require_extra("bioimage-cpp", ("bioimage_cpp",), "the gaussian's backend 'bioimage-cpp'")
        return value

    @model_validator(mode="after")
    def _backend_computes_it(self) -> GaussianParams:
        if self.backend == "bioimage-cpp" and (self.mode != "mirror" or self.truncate != 3.0):
            raise ValueError(f"backend 'bioimage-cpp' computes only mode='mirror' with truncate=3 (asked: mode={self.mode!r}, "
                             f"truncate={self.truncate:g}; the defaults are SciPy's, reflect and 4): pass mode=mirror truncate=3, "
                             "or use backend opencv or scipy")
        return self


class ThresholdParams(OpParams):
    value: str = Field("otsu", description="a number, or 'otsu' (from a histogram gathered block-wise)",
                       json_schema_extra={"allowed": "'otsu' or a finite number"})
    above: bool = Field(True, description="foreground is above the value")

    @field_validator("value", mode="before")
    @classmethod
    def _otsu_or_number(cls, value: Any) -> str:
        problem = otsu_or_number(value)
        if problem:
            raise ValueError(problem)
        return str(value)


class ConvertParams(OpParams):
    compression: Literal["lz4", "zstd", "none"] = Field("zstd", description="codec of the new array")


class WatershedParams(OpParams):
    halo: int = Field(16, ge=0, le=4096,
                      description="voxels of context around each block (basins wider than this may differ at block borders)")
    invert: bool = Field(True, description="flood from maxima (intensities) instead of minima (distances/gradients)")
    mask_above: float | None = Field(None, description="only flood voxels brighter than this")


def _int_text(value: Any) -> Any:
    """``"26"`` -> 26 (CLI text for an integer choice)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


class LabelParams(OpParams):
    connectivity: Annotated[Literal[4, 8, 6, 18, 26] | None, BeforeValidator(_int_text)] = Field(
        None, description="neighbours that connect voxels (default: 26 in 3-D, 8 in 2-D)")


class DownsampleParams(OpParams):
    levels: int = Field(3, ge=1, le=16, description="pyramid levels")
    method: Literal["auto", "mean", "mode", "nearest"] = Field("auto", description="how a level is reduced")
    voxel_size: str | None = Field(None, description="voxel size per axis, z,y,x",
                                   json_schema_extra={"allowed": "positive numbers separated by commas, e.g. 2,0.5,0.5"})
    name: str = Field("image", description="the image's name in the OME-Zarr metadata")

    @field_validator("voxel_size", mode="before")
    @classmethod
    def _voxel_size(cls, value: Any) -> str | None:
        return finite_positive_list(None if value is None else str(value))


class FeaturesParams(OpParams):
    time_point: int = Field(0, ge=0, description="time point of this volume")
    dataset: str | None = Field(None, description="dataset name recorded with the features")
    sample: str | None = Field(None, description="sample name recorded with the features")
    voxel_size: str | None = Field(None, description="voxel size per axis in µm, z,y,x (y,x in 2-D); wins over the inputs' "
                                   "metadata; adds the physical columns (volume_um3, centroid_z_um...)",
                                   json_schema_extra={"allowed": "positive numbers separated by commas, e.g. 2,0.5,0.5"})
    spacing: str | None = Field(None, description="another name for voxel_size",
                                json_schema_extra={"allowed": "positive numbers separated by commas, e.g. 2,0.5,0.5"})

    @field_validator("voxel_size", "spacing", mode="before")
    @classmethod
    def _voxel_size(cls, value: Any) -> str | None:
        return finite_positive_list(None if value is None else str(value))

    @model_validator(mode="after")
    def _one_voxel_size(self) -> FeaturesParams:
        if self.voxel_size and self.spacing and self.voxel_size != self.spacing:
            raise ValueError(f"voxel_size={self.voxel_size!r} and spacing={self.spacing!r} differ: give one of them")
        return self


class DistanceParams(OpParams):
    max_distance: float = Field(16.0, gt=0, le=4096, description="distances are exact up to this value and clipped to it "
                                "(the halo: max_distance / voxel size voxels per axis)")
    voxel_size: str | None = Field(None, description="voxel size per axis, z,y,x (distances in these units)",
                                   json_schema_extra={"allowed": "positive numbers separated by commas, e.g. 2,0.5,0.5"})

    @field_validator("voxel_size", mode="before")
    @classmethod
    def _voxel_size(cls, value: Any) -> str | None:
        return finite_positive_list(None if value is None else str(value))


def _voxel_size(p: Mapping[str, Any], ndim: int) -> tuple[float, ...] | None:
    if not p["voxel_size"]:
        return None
    sizes = tuple(float(v) for v in str(p["voxel_size"]).split(","))
    if len(sizes) != ndim:
        raise InvalidParameterError(f"distance_transform: parameter voxel_size={p['voxel_size']!r} has {len(sizes)} values, "
                                    f"the input {ndim} axes", hint=f"give {ndim} sizes, one per axis")
    return sizes


def _distance(block: np.ndarray, p: Mapping[str, Any]) -> np.ndarray:
    return distance_transform(block, max_distance=p["max_distance"], voxel_size=_voxel_size(p, block.ndim))


def _distance_halo(p: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return distance_halo(p["max_distance"], _voxel_size(p, ndim), ndim)


class PeaksParams(OpParams):
    min_distance: int = Field(3, ge=1, le=256, description="a peak is the maximum of the (2*min_distance+1) cube around it")
    threshold_abs: float = Field(0.0, description="peaks must be above this value")
    plateau: int = Field(4, ge=0, le=1024, description="extra voxels of context for seeds (connected peaks) "
                         "crossing a block border; a seed reaching further beyond a border is split there")


def _peaks(block: np.ndarray, p: Mapping[str, Any], *, origin: tuple[int, ...], volume_shape: tuple[int, ...]) -> np.ndarray:
    return peaks(block, min_distance=p["min_distance"], threshold_abs=p["threshold_abs"], origin=origin, volume_shape=volume_shape)


class MorphologyParams(OpParams):
    radius: int = Field(1, ge=1, le=256, description="radius of the ball (3-D) or disk (2-D) footprint, in voxels")


def _twice_radius(p: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return (2 * int(p["radius"]),) * ndim


class FillHolesParams(OpParams):
    halo: int = Field(16, ge=0, le=4096, description="voxels of context: holes fitting in a box this wide per axis are "
                      "filled exactly, larger ones may stay unfilled")


class SmallObjectsParams(OpParams):
    min_size: int = Field(64, ge=1, le=2**31, description="objects of fewer voxels are removed")
    connectivity: Annotated[Literal[4, 8, 6, 18, 26] | None, BeforeValidator(_int_text)] = Field(
        None, description="neighbours that connect voxels (default: 26 in 3-D, 8 in 2-D)")
    halo: int | None = Field(None, ge=0, le=4096, description="voxels of context (default min_size - 1: exact; "
                             "smaller: a small object reaching beyond it may be kept)")


def _small_objects(block: np.ndarray, p: Mapping[str, Any], *, origin: tuple[int, ...], volume_shape: tuple[int, ...]) -> np.ndarray:
    return remove_small_objects(block, min_size=p["min_size"], connectivity=p["connectivity"], origin=origin, volume_shape=volume_shape)


def _small_objects_halo(p: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    return (int(p["min_size"]) - 1 if p["halo"] is None else int(p["halo"]),) * ndim


def _mask_dtype(p: Mapping[str, Any], dtype: np.dtype) -> np.dtype:
    return np.dtype(np.uint8)


def _pyramid_blocks(shape: tuple[int, ...], block_shape: tuple[int, ...], params: Mapping[str, Any]) -> int:
    """Blocks of every level of a pyramid (ceil division: odd extents keep their last voxel)."""
    total, level_shape = 0, tuple(shape)
    for factors in pyramid_factors(shape, int(params.get("levels") or 3), factor=2):
        level_shape = downsampled_shape(level_shape, factors)
        total += grid_blocks(level_shape, tuple(min(b, s) for b, s in zip(block_shape, level_shape, strict=True)))
    return total


CONVERT = OpSpec("convert", "1", "map", ConvertParams, "copy an image into a new zarr array (re-chunked, re-compressed)",
                 kernel=lambda block, p: block)
GAUSSIAN = OpSpec("gaussian", "2", "map", GaussianParams, "gaussian smoothing", kernel=_gaussian, halo=_gaussian_halo,
                  out_dtype=lambda p, dtype: np.dtype(p["out_dtype"] or dtype))
THRESHOLD = OpSpec("threshold", "1", "map", ThresholdParams, "binary mask above (or below) a value or Otsu's threshold",
                   kernel=_threshold, out_dtype=lambda p, dtype: np.dtype(np.uint8))
MASK = OpSpec("mask", "1", "map", OpParams, "keep the voxels where --with mask=... is non-zero (0 elsewhere)",
              kernel=lambda block, p, *, mask: np.where(mask != 0, block, np.zeros((), dtype=block.dtype)), inputs=("mask",))
WATERSHED = OpSpec("watershed", "1", "map", WatershedParams, "seeded watershed; seeds (--with markers=...) keep their global ids",
                   kernel=_watershed, halo=_fixed_halo, out_dtype=lambda p, dtype: np.dtype(np.uint32), inputs=("markers",),
                   makes_labels=True)
DISTANCE_TRANSFORM = OpSpec("distance_transform", "1", "map", DistanceParams,
                            "Euclidean distance of each foreground voxel to the background, exact up to max_distance (clipped to it)",
                            kernel=_distance, halo=_distance_halo, out_dtype=lambda p, dtype: np.dtype(np.float32))
PEAKS = OpSpec("peaks", "1", "map", PeaksParams,
               "seeds: local maxima (e.g. of a distance transform), each with a global id (1 + its first voxel's linear index)",
               kernel=_peaks, halo=lambda p, ndim: (int(p["min_distance"]) + int(p["plateau"]),) * ndim,
               out_dtype=lambda p, dtype: np.dtype(np.uint32), makes_labels=True, wants_offset=True, max_voxels=2**32 - 2)
BINARY_OPEN = OpSpec("binary_open", "1", "map", MorphologyParams, "binary opening by a ball/disk (removes thin bridges and specks)",
                     kernel=lambda block, p: binary_open(block, radius=p["radius"]), halo=_twice_radius, out_dtype=_mask_dtype)
BINARY_CLOSE = OpSpec("binary_close", "1", "map", MorphologyParams, "binary closing by a ball/disk (closes small gaps and pits)",
                      kernel=lambda block, p: binary_close(block, radius=p["radius"]), halo=_twice_radius, out_dtype=_mask_dtype)
FILL_HOLES = OpSpec("fill_holes", "1", "map", FillHolesParams, "fill background enclosed by foreground (holes up to halo voxels wide)",
                    kernel=lambda block, p: fill_holes(block), halo=_fixed_halo, out_dtype=_mask_dtype)
REMOVE_SMALL_OBJECTS = OpSpec("remove_small_objects", "1", "map", SmallObjectsParams,
                              "remove objects of fewer than min_size voxels from a mask",
                              kernel=_small_objects, halo=_small_objects_halo, out_dtype=_mask_dtype, wants_offset=True)
LABEL = OpSpec("label", "1", "label", LabelParams, "connected components, merged exactly across blocks",
               block_count=lambda shape, blocks, p: 2 * grid_blocks(shape, blocks), makes_labels=True)
DOWNSAMPLE = OpSpec("downsample", "1", "pyramid", DownsampleParams, "a multiscale OME-Zarr pyramid (mean for images, mode for labels)",
                    block_count=_pyramid_blocks)
FEATURES = OpSpec("features", "1", "features", FeaturesParams,
                  "per-object features of a label image (with --with CHANNEL=image for intensities), to the database and a CSV",
                  inputs=("*",))

BUILTIN_OPS: tuple[OpSpec, ...] = (CONVERT, GAUSSIAN, THRESHOLD, MASK, WATERSHED, DISTANCE_TRANSFORM, PEAKS, BINARY_OPEN, BINARY_CLOSE,
                                   FILL_HOLES, REMOVE_SMALL_OBJECTS, LABEL, DOWNSAMPLE, FEATURES)
"""tierflow's own ops, in the order ``tierflow ops list`` shows them. A new built-in op is one
declaration here (and its kernel) and its line under ``[project.entry-points."tierflow.ops"]`` in
pyproject.toml (the registry also reads this tuple, for a checkout whose entry points are not
installed)."""
