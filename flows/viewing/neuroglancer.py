"""Neuroglancer links for zarr outputs: the viewer state as JSON in the URL fragment (as the
seed's ``crantpy.utils.encode_url`` does for its scenes).

:func:`sample_image_state` shows one OME-Zarr sample image (:mod:`storage.sample_image`) the way
a biologist expects: one image layer per channel (its colour and display window from the
``omero`` metadata, blended additively), the labels as a segmentation layer, time as a
dimension with its slider, the physical scale from the multiscales metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

__all__ = ["neuroglancer_url", "sample_image_state", "state_url", "zarr_source"]

_NG_UNITS = {"micrometer": (1e-6, "m"), "nanometer": (1e-9, "m"), "millimeter": (1e-3, "m"), "meter": (1.0, "m"),
             "angstrom": (1e-10, "m"), "second": (1.0, "s"), "millisecond": (1e-3, "s"), "minute": (60.0, "s"),
             "hour": (3600.0, "s")}

_CHANNEL_SHADER = """#uicontrol invlerp normalized
#uicontrol vec3 color color(default="white")
void main() { emitRGB(color * normalized()); }
"""


def zarr_source(uri: str, *, data_url: str, posix_root: str | None = None, s3_endpoint: str | None = None) -> str:
    """The Neuroglancer data source of a zarr at ``uri``: a file under ``posix_root`` is
    published at ``data_url`` (``tierflow serve``); ``s3://bucket/key`` goes through the S3
    endpoint over HTTP(S)."""
    if uri.startswith("s3://") and s3_endpoint:
        return f"zarr://{s3_endpoint.rstrip('/')}/{uri[len('s3://'):]}"
    if uri.startswith("file://") and posix_root:
        path = uri[len("file://"):]
        root = posix_root.rstrip("/")
        if path.startswith(root + "/"):
            return f"zarr://{data_url.rstrip('/')}/{path[len(root) + 1:]}"
    return f"zarr://{uri}"


def state_url(app_url: str, state: Mapping[str, Any]) -> str:
    """A link to ``app_url`` opening the viewer state ``state``."""
    return f"{app_url.rstrip('/')}/#!{quote(json.dumps(state, separators=(',', ':')), safe='')}"


def neuroglancer_url(app_url: str, layers: Sequence[tuple[str, str, str]], *, voxel_size: Sequence[float] = (1, 1, 1)) -> str:
    """A link to ``app_url`` showing ``layers`` (name, source, ``image`` or ``segmentation``); ``voxel_size`` in micrometres."""
    state = {
        "dimensions": {axis: [float(size) * 1e-6, "m"] for axis, size in zip("zyx", voxel_size, strict=True)},
        "layers": [{"type": kind, "source": source, "name": name} for name, source, kind in layers],
        "layout": "4panel",
    }
    return state_url(app_url, state)


def _dimensions(multiscale: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Neuroglancer's global dimensions (every non-channel axis) from level 0's scale."""
    scale = next(t["scale"] for t in multiscale["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
    dimensions = {}
    for axis, step in zip(multiscale["axes"], scale, strict=True):
        if axis.get("type") == "channel":
            continue
        factor, unit = _NG_UNITS.get(str(axis.get("unit") or ""), (1.0, ""))
        dimensions[axis["name"]] = [float(step) * factor, unit]
    return dimensions


def sample_image_state(source: str, attributes: Mapping[str, Any], labels: Sequence[str] = (), *,
                       name: str | None = None) -> dict[str, Any]:
    """The viewer state of a sample image at ``source`` (``zarr://...``) from its group's
    ``attributes``: a layer per channel (``localPosition`` picks the channel on Neuroglancer's
    channel dimension ``c'``), a segmentation layer per name in ``labels``."""
    ome = attributes["ome"]
    multiscale = ome["multiscales"][0]
    title = name or str(multiscale.get("name") or "image")
    layers: list[dict[str, Any]] = []
    for index, channel in enumerate((ome.get("omero") or {}).get("channels") or [{}]):
        window = channel.get("window") or {}
        layer: dict[str, Any] = {"type": "image", "source": source, "name": f"{title} {channel.get('label') or f'c{index}'}",
                                 "localPosition": [index], "blend": "additive", "shader": _CHANNEL_SHADER,
                                 "shaderControls": {"color": f"#{str(channel.get('color') or 'FFFFFF').lower()}"}}
        if "start" in window and "end" in window:
            layer["shaderControls"]["normalized"] = {"range": [window["start"], window["end"]]}
        layers.append(layer)
    for label in labels:
        layers.append({"type": "segmentation", "source": f"{source.rstrip('/')}/labels/{label}", "name": f"{title} {label}"})
    return {"dimensions": _dimensions(multiscale), "layers": layers,
            "selectedLayer": {"layer": layers[0]["name"], "visible": True}, "layout": "4panel"}
