"""OME-Zarr 0.5 metadata for multiscale pyramids in zarr v3 groups: build, write, read, validate.

An OME-Zarr 0.5 image is a zarr v3 group with attributes ``{"ome": {"version": "0.5",
"multiscales": [...]}}`` over arrays "0", "1", ... (full resolution first), each with zarr v3
``dimension_names`` equal to the axis names. Label pyramids live in ``<image>/labels/<name>``
(``"image-label"`` beside ``"multiscales"``); ``<image>/labels`` lists their names.

Translation convention (:func:`pyramid_transforms`): an integer array index is the *centre* of
a voxel, so level ``i`` maps index ``j`` to ``j * scale_i + translation_i``. A level made by a
window kernel (box mean, label mode) whose windows start at index 0 has voxel ``j`` centred on
the level-0 voxels ``j*F .. j*F + F - 1`` (``F`` the cumulative factor), i.e. at level-0 index
``j*F + (F - 1) / 2``; hence ``scale_i = scale_0 * F`` and ``translation_i = translation_0 +
scale_0 * (F - 1) / 2``: a half-voxel shift per halving. Levels made by picking the first
voxel of each window (``method="nearest"``) are not shifted (``window_centered=False``). Cut-off
windows at the far edge are centred slightly differently; the metadata ignores that.

Validation uses the ome-zarr-models v05 classes (see :func:`validate_ome_zarr`); every
failure is an :class:`InvalidOmeZarrError`, a ``ValueError`` with the model's message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
import zarr.storage
from ome_zarr_models.v05 import Image, ImageLabel, Labels
from ome_zarr_models.v05.image import ImageAttrs
from ome_zarr_models.v05.image_label import ImageLabelAttrs
from ome_zarr_models.v05.labels import LabelsAttrs
from pydantic import ValidationError

from tierflow.storage.errors import InvalidOmeZarrError

__all__ = [
    "SPACE_UNITS", "InvalidOmeZarrError", "image_label_attributes", "labels_group_attributes",
    "multiscales_attributes", "pyramid_transforms", "read_ome_attributes", "validate_ome_zarr",
    "write_multiscales_metadata",
]

OME_ZARR_VERSION = "0.5"

#: Space units the OME-Zarr specification allows (UDUNITS-2 names).
SPACE_UNITS = frozenset(
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer inch "
    "kilometer megameter meter micrometer mile millimeter nanometer parsec petameter picometer "
    "terameter yard yoctometer yottameter zeptometer zettameter".split()
)

_AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "t": "time", "c": "channel"}
_LABEL_DTYPES = frozenset(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"))

StoreOrPath = zarr.Group | zarr.storage.StoreLike | os.PathLike[str]


def _describe(error: BaseException) -> str:
    """One line from an exception and its causes; pydantic errors as ``location: message``."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, ValidationError):
            for item in current.errors():
                where = ".".join(str(p) for p in item["loc"])
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        else:
            parts.append(str(current))
        current = current.__cause__
    return "; caused by: ".join(p.replace("\n", " ") for p in parts if p)


def _vectors(values: Sequence[Sequence[float]], *, name: str, ndim: int, n_levels: int,
             positive: bool) -> list[list[float]]:
    if len(values) != n_levels:
        raise ValueError(f"`{name}` has {len(values)} entries but there are {n_levels} paths")
    out = []
    for level, vector in enumerate(values):
        vector = [float(v) for v in vector]
        if len(vector) != ndim:
            raise ValueError(
                f"`{name}[{level}]` {vector} has {len(vector)} values but there are {ndim} axes"
            )
        if not all(math.isfinite(v) and (v > 0 or not positive) for v in vector):
            kind = "positive and finite" if positive else "finite"
            raise ValueError(f"`{name}[{level}]` {vector} must be {kind}")
        out.append(vector)
    return out


def _multiscale(*, name: str, axes: Sequence[str], scales: Sequence[Sequence[float]],
                paths: Sequence[str], units: str | None,
                translations: Sequence[Sequence[float]] | None,
                downscaling_type: str | None) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}")
    axes = list(axes)
    unknown = [a for a in axes if a not in _AXIS_TYPES]
    if unknown:
        raise ValueError(f"`axes` {axes} holds unknown names {unknown}; use {list(_AXIS_TYPES)}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"`axes` {axes} repeats a name")
    if units is not None and units not in SPACE_UNITS:
        raise ValueError(f"`units` {units!r} is not an OME-Zarr space unit such as 'micrometer'")
    paths = list(paths)
    if not paths:
        raise ValueError("`paths` is empty; a multiscale needs at least one level")
    bad = [p for p in paths if not isinstance(p, str) or not p.strip("/") or p != p.strip("/")]
    if bad or len(set(paths)) != len(paths):
        raise ValueError(f"`paths` {paths} must be unique relative keys such as '0'")
    scale_vectors = _vectors(scales, name="scales", ndim=len(axes), n_levels=len(paths),
                             positive=True)
    shift_vectors = (None if translations is None else _vectors(
        translations, name="translations", ndim=len(axes), n_levels=len(paths), positive=False))

    axis_entries = [
        {"name": a, "type": _AXIS_TYPES[a]}
        | ({"unit": units} if units is not None and _AXIS_TYPES[a] == "space" else {})
        for a in axes
    ]
    datasets = []
    for path, scale, shift in zip(paths, scale_vectors, shift_vectors or [None] * len(paths),
                                  strict=True):
        transforms = [{"type": "scale", "scale": scale}]
        if shift is not None:
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    multiscale: dict[str, Any] = {"name": name, "axes": axis_entries, "datasets": datasets}
    if downscaling_type is not None:
        multiscale["type"] = downscaling_type
    return multiscale


def _check_attributes(attributes: Mapping[str, Any]) -> str:
    """Validate an attributes dict against the matching ome-zarr-models class; return its kind."""
    ome = attributes.get("ome") if isinstance(attributes, Mapping) else None
    if not isinstance(ome, Mapping):
        raise InvalidOmeZarrError("no 'ome' attributes (OME-Zarr 0.5 metadata lives there)")
    if ome.get("version") != OME_ZARR_VERSION:
        raise InvalidOmeZarrError(f"'ome.version' is {ome.get('version')!r}; this module "
                                  f"writes and validates OME-Zarr {OME_ZARR_VERSION} only")
    if "image-label" in ome:
        kind, model = "image-label", ImageLabelAttrs
    elif "multiscales" in ome:
        kind, model = "image", ImageAttrs
    elif "labels" in ome:
        kind, model = "labels", LabelsAttrs
    else:
        raise InvalidOmeZarrError("'ome' has none of 'multiscales', 'image-label', 'labels'")
    try:
        model.model_validate(dict(ome))
    except ValidationError as error:
        raise InvalidOmeZarrError(f"invalid OME-Zarr {kind} metadata: {_describe(error)}"
                                  ) from error
    return kind


def pyramid_transforms(
    factors: Sequence[Sequence[int]],
    *,
    base_scale: Sequence[float],
    base_translation: Sequence[float] | None = None,
    window_centered: bool = True,
) -> tuple[list[list[float]], list[list[float]]]:
    """Scales and translations of each pyramid level (module docstring: the convention).

    Parameters
    ----------
    factors : sequence of sequence of int
        Per-level factors relative to the previous level, as from
        :func:`tasks.ops.pyramid.pyramid_factors` (entry 0 all ones for level 0).
    base_scale : sequence of float
        Voxel size of the input per axis, e.g. (z, y, x) in micrometers.
    base_translation : sequence of float, optional
        Physical position of the input's voxel (0, 0, 0); default zeros.
    window_centered : bool, optional
        True (default) for window kernels (mean, mode): shift each level by half its window.
        False for first-voxel picking (``method="nearest"``): no shift.

    Returns
    -------
    scales, translations : list of list of float
        One vector per level, for :func:`multiscales_attributes`.

    Raises
    ------
    ValueError
        If a factor vector or ``base_translation`` does not match ``base_scale``.

    Examples
    --------
    >>> scales, translations = pyramid_transforms([(1, 1), (2, 2), (1, 2)], base_scale=(2, 1))
    >>> scales
    [[2.0, 1.0], [4.0, 2.0], [4.0, 4.0]]
    >>> translations
    [[0.0, 0.0], [1.0, 0.5], [1.0, 1.5]]
    """
    ndim = len(base_scale)
    origin = [0.0] * ndim if base_translation is None else [float(t) for t in base_translation]
    if len(origin) != ndim:
        raise ValueError(f"`base_translation` {origin} has {len(origin)} values but "
                         f"`base_scale` has {ndim}")
    cumulative = [1] * ndim
    scales, translations = [], []
    for level, step in enumerate(factors):
        step = tuple(step)
        if len(step) != ndim or any(isinstance(f, bool) or int(f) != f or f < 1 for f in step):
            raise ValueError(f"`factors[{level}]` {step} must be {ndim} positive integers")
        cumulative = [c * int(f) for c, f in zip(cumulative, step, strict=True)]
        scales.append([float(s) * c for s, c in zip(base_scale, cumulative, strict=True)])
        translations.append([
            t + (float(s) * (c - 1) / 2 if window_centered else 0.0)
            for t, s, c in zip(origin, base_scale, cumulative, strict=True)
        ])
    return scales, translations


def multiscales_attributes(
    *,
    name: str,
    axes: Sequence[str] = ("z", "y", "x"),
    scales: Sequence[Sequence[float]],
    paths: Sequence[str],
    units: str | None = "micrometer",
    translations: Sequence[Sequence[float]] | None = None,
    downscaling_type: str | None = None,
) -> dict[str, Any]:
    """OME-Zarr 0.5 attributes of an image pyramid: ``{"ome": {"version", "multiscales"}}``.

    Parameters
    ----------
    name : str
        Name of the multiscale image.
    axes : sequence of str, optional
        Axis names in array order, from "t", "c", "z", "y", "x"; default ("z", "y", "x").
    scales : sequence of sequence of float
        Voxel size per axis for each level, full resolution first (non-decreasing).
    paths : sequence of str
        Array key of each level inside the group, e.g. ("0", "1", "2").
    units : str or None, optional
        Unit of the space axes (an OME-Zarr space unit); default "micrometer".
    translations : sequence of sequence of float, optional
        Position of voxel index 0 per axis for each level; default none written (zero).
        Use :func:`pyramid_transforms` for the half-voxel shift of mean-downsampled levels.
    downscaling_type : str, optional
        Written as the multiscale's ``"type"`` (the downscaling method, e.g. "mean").

    Returns
    -------
    dict
        JSON-ready attributes; pass to :func:`write_multiscales_metadata`.

    Raises
    ------
    ValueError
        If an axis is unknown or repeated, a unit is not a space unit, ``scales``,
        ``translations`` and ``paths`` disagree in length, or ome-zarr-models rejects the
        result (e.g. scales that shrink from one level to the next); the message says which.

    Examples
    --------
    >>> attrs = multiscales_attributes(name="raw", scales=[[1] * 3, [2] * 3], paths=["0", "1"])
    >>> attrs["ome"]["multiscales"][0]["datasets"][1]
    {'path': '1', 'coordinateTransformations': [{'type': 'scale', 'scale': [2.0, 2.0, 2.0]}]}
    """
    attributes = {"ome": {"version": OME_ZARR_VERSION, "multiscales": [_multiscale(
        name=name, axes=axes, scales=scales, paths=paths, units=units,
        translations=translations, downscaling_type=downscaling_type)]}}
    _check_attributes(attributes)
    return attributes


def image_label_attributes(
    *,
    name: str,
    axes: Sequence[str] = ("z", "y", "x"),
    scales: Sequence[Sequence[float]],
    paths: Sequence[str],
    units: str | None = "micrometer",
    translations: Sequence[Sequence[float]] | None = None,
    downscaling_type: str | None = None,
    colors: Mapping[int, Sequence[int]] | None = None,
    properties: Mapping[int, Mapping[str, Any]] | None = None,
    source_image: str | None = "../../",
) -> dict[str, Any]:
    """OME-Zarr 0.5 attributes of a label pyramid: ``"image-label"`` plus ``"multiscales"``.

    Parameters
    ----------
    name, axes, scales, paths, units, translations, downscaling_type
        As for :func:`multiscales_attributes`. Use the image's scales and translations when
        the labels were downsampled with the same windows (``method="mode"``).
    colors : mapping of int to (r, g, b, a), optional
        Display colour (0-255 each) per label value.
    properties : mapping of int to mapping, optional
        Extra JSON properties per label value. If both are given, they must cover the same
        label values.
    source_image : str or None, optional
        Relative path from the label group to its image; default "../../" (the layout
        ``<image>/labels/<name>``). None omits the ``"source"`` entry.

    Returns
    -------
    dict
        ``{"ome": {"version": "0.5", "image-label": {...}, "multiscales": [...]}}``.

    Raises
    ------
    ValueError
        As for :func:`multiscales_attributes`, or if colours or properties are invalid.

    Examples
    --------
    >>> attrs = image_label_attributes(name="cells", scales=[[1, 1, 1]], paths=["0"],
    ...                                colors={1: (255, 0, 0, 255)})
    >>> attrs["ome"]["image-label"]["colors"]
    [{'label-value': 1, 'rgba': [255, 0, 0, 255]}]
    """
    label: dict[str, Any] = {"version": OME_ZARR_VERSION}
    if colors is not None:
        label["colors"] = [{"label-value": int(v), "rgba": [int(c) for c in rgba]}
                           for v, rgba in colors.items()]
    if properties is not None:
        label["properties"] = [{"label-value": int(v), **dict(p)} for v, p in properties.items()]
    if source_image is not None:
        label["source"] = {"image": source_image}
    attributes = {"ome": {"version": OME_ZARR_VERSION, "image-label": label, "multiscales": [
        _multiscale(name=name, axes=axes, scales=scales, paths=paths, units=units,
                    translations=translations, downscaling_type=downscaling_type)]}}
    _check_attributes(attributes)
    return attributes


def labels_group_attributes(names: Sequence[str]) -> dict[str, Any]:
    """Attributes of an image's ``labels`` group: the names of its label pyramids.

    Parameters
    ----------
    names : sequence of str
        Keys of the label groups inside ``labels``, e.g. ("cells",).

    Returns
    -------
    dict
        ``{"ome": {"version": "0.5", "labels": [...]}}``.

    Raises
    ------
    ValueError
        If ``names`` is empty, repeats a name, or holds a name with "/".

    Examples
    --------
    >>> labels_group_attributes(["cells"])
    {'ome': {'version': '0.5', 'labels': ['cells']}}
    """
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n or "/" in n]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"`names` {names} must be non-empty, unique keys without '/'")
    attributes = {"ome": {"version": OME_ZARR_VERSION, "labels": names}}
    _check_attributes(attributes)
    return attributes


def _open(store_or_path: StoreOrPath) -> zarr.Group:
    if isinstance(store_or_path, zarr.Group):
        group = store_or_path
    else:
        try:
            group = zarr.open_group(store_or_path, mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError) as error:
            raise InvalidOmeZarrError(f"no zarr v3 group at {store_or_path}: {error}") from error
    if group.metadata.zarr_format != 3:
        raise InvalidOmeZarrError(f"{group.store_path} is a zarr v{group.metadata.zarr_format} "
                                  f"group; OME-Zarr {OME_ZARR_VERSION} needs zarr v3")
    return group


def write_multiscales_metadata(group: zarr.Group, attributes: Mapping[str, Any]) -> None:
    """Write OME-Zarr attributes (image, image-label or labels) into a zarr v3 group.

    The attributes are checked against ome-zarr-models first; the arrays are not (they may
    be created or filled later; :func:`validate_ome_zarr` checks the whole group). Other
    attribute keys of the group are kept; the ``"ome"`` key is replaced.

    Parameters
    ----------
    group : zarr.Group
        A writable zarr v3 group.
    attributes : mapping
        From :func:`multiscales_attributes`, :func:`image_label_attributes` or
        :func:`labels_group_attributes`.

    Raises
    ------
    TypeError
        If ``group`` is not a zarr group.
    InvalidOmeZarrError
        If the group is not zarr v3 or the attributes are not valid OME-Zarr 0.5 metadata.

    Examples
    --------
    >>> group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> write_multiscales_metadata(group, labels_group_attributes(["cells"]))
    >>> group.attrs["ome"]["labels"]
    ['cells']
    """
    if not isinstance(group, zarr.Group):
        raise TypeError(f"`group` must be a zarr.Group; got {type(group).__name__}")
    _open(group)
    _check_attributes(attributes)
    group.update_attributes(dict(attributes))


def read_ome_attributes(store_or_path: StoreOrPath) -> dict[str, Any]:
    """Read a group's attributes (``{"ome": {...}, ...}``) as plain JSON values.

    Parameters
    ----------
    store_or_path : zarr.Group, store or path
        The group, or anything :func:`zarr.open_group` opens (opened read-only).

    Returns
    -------
    dict
        All attributes of the group, equal to what was written.

    Raises
    ------
    InvalidOmeZarrError
        If there is no zarr v3 group there, or it has no ``"ome"`` attributes.
    """
    group = _open(store_or_path)
    attributes = group.attrs.asdict()
    if "ome" not in attributes:
        raise InvalidOmeZarrError(f"{group.store_path} has no 'ome' attributes")
    return attributes


def validate_ome_zarr(store_or_path: StoreOrPath) -> None:
    """Check a group against OME-Zarr 0.5 with ome-zarr-models, arrays included.

    The kind is read from the ``"ome"`` attributes: ``"image-label"`` ->
    :class:`ome_zarr_models.v05.ImageLabel` (plus integer dtypes for every level),
    ``"multiscales"`` -> :class:`ome_zarr_models.v05.Image` (a ``labels`` sub-group is
    validated with it), ``"labels"`` -> :class:`ome_zarr_models.v05.Labels`. The models
    check that every dataset path is an array whose number of dimensions and
    ``dimension_names`` match the axes, that scales do not shrink, and more.

    Parameters
    ----------
    store_or_path : zarr.Group, store or path
        The group, or anything :func:`zarr.open_group` opens (opened read-only).

    Raises
    ------
    InvalidOmeZarrError
        A ``ValueError`` naming the group and carrying the model's message if anything is
        invalid or missing.

    Examples
    --------
    >>> group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> try:
    ...     validate_ome_zarr(group)
    ... except ValueError as error:
    ...     print(str(error).split(" ", 1)[1])
    no 'ome' attributes (OME-Zarr 0.5 metadata lives there)
    """
    group = _open(store_or_path)
    where = str(group.store_path)
    try:
        kind = _check_attributes(group.attrs.asdict())
    except InvalidOmeZarrError as error:
        raise InvalidOmeZarrError(f"{where}: {error.message}") from error
    model = {"image-label": ImageLabel, "image": Image, "labels": Labels}[kind]
    try:
        parsed = model.from_zarr(group)
    except (ValueError, RuntimeError, TypeError, KeyError) as error:
        raise InvalidOmeZarrError(
            f"{where} is not a valid OME-Zarr {OME_ZARR_VERSION} {kind}: {_describe(error)}"
        ) from error
    if kind != "image-label":
        return
    for dataset in (d.path for m in parsed.ome_attributes.multiscales for d in m.datasets):
        dtype = np.dtype(group[dataset].dtype)
        if dtype not in _LABEL_DTYPES:
            raise InvalidOmeZarrError(
                f"{where}: label level '{dataset}' has dtype {dtype}; labels must be one of "
                f"{sorted(str(d) for d in _LABEL_DTYPES)}"
            )
