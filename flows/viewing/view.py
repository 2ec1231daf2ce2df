"""``tierflow view PATH-or-RUN``: publish a folder of OME-Zarr images over HTTP (with CORS and
byte ranges, :mod:`.serve`) and make a Neuroglancer link per image: its channels as image layers,
its labels as segmentation layers, time as a dimension (:func:`.neuroglancer.sample_image_state`).

A PATH is an OME-Zarr image (its folder is published) or any folder holding some (it is
published); a RUN is a pipeline run's id: its sample images on Tier 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.errors import TierflowError
from tierflow.flows.viewing.neuroglancer import sample_image_state, state_url
from tierflow.flows.viewing.serve import TierHTTPServer

__all__ = ["ViewPlan", "find_images", "image_attributes", "plan_view", "view_server"]


@dataclass(frozen=True)
class ViewPlan:
    """What ``view`` publishes (``root``) and its images' links (path relative to root -> URL)."""

    root: Path
    links: dict[str, str]


def image_attributes(path: Path) -> dict[str, Any] | None:
    """A zarr group's OME attributes as ``{"ome": {...}}`` (0.5, or 0.4 lifted under ``ome``),
    or None when it is not an OME-Zarr image."""
    v3, v2 = path / "zarr.json", path / ".zattrs"
    try:
        if v3.is_file():
            attributes = json.loads(v3.read_text()).get("attributes") or {}
        elif v2.is_file():
            attributes = json.loads(v2.read_text())
        else:
            return None
    except (OSError, ValueError):
        return None
    ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else attributes
    if not isinstance(ome, dict) or not ome.get("multiscales") or "image-label" in ome:
        return None
    return {**attributes, "ome": ome}


def _label_names(image: Path) -> list[str]:
    labels = image / "labels"
    for meta in (labels / "zarr.json", labels / ".zattrs"):
        if meta.is_file():
            data = json.loads(meta.read_text())
            attributes = data.get("attributes", data) if meta.name == "zarr.json" else data
            names = (attributes.get("ome") or attributes).get("labels") or []
            return [str(n) for n in names if (labels / str(n)).is_dir()]
    return []


def find_images(path: Path, *, max_depth: int = 6) -> list[Path]:
    """``path`` if it is an OME-Zarr image, else the images under it (not those inside another)."""
    if image_attributes(path) is not None:
        return [path]
    found: list[Path] = []
    if max_depth <= 0 or not path.is_dir():
        return found
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_images(child, max_depth=max_depth - 1)
    return found


def _layers_state(source: str, attributes: Mapping[str, Any], labels: list[str], name: str) -> dict[str, Any]:
    state = sample_image_state(source, attributes, labels, name=name)
    axes = [a.get("type") for a in attributes["ome"]["multiscales"][0]["axes"]]
    if "channel" not in axes:  # no channel axis: nothing for localPosition to pick
        for layer in state["layers"]:
            layer.pop("localPosition", None)
    return state


def plan_view(path: Path, *, data_url: str, app_url: str) -> ViewPlan:
    """The folder to publish for ``path`` and a link per OME-Zarr image in it.

    Raises
    ------
    TierflowError
        If ``path`` does not exist or holds no OME-Zarr image.
    """
    path = path.resolve()
    if not path.exists():
        raise TierflowError(f"{path} does not exist", hint="give an OME-Zarr image, a folder of them, or a pipeline run id")
    images = find_images(path)
    if not images:
        raise TierflowError(f"{path} holds no OME-Zarr image (a zarr group with multiscales metadata)",
                            hint="give the .ome.zarr folder a pipeline wrote (images/<sample>.ome.zarr) or a run id")
    root = path.parent if images == [path] else path
    links = {}
    for image in images:
        relative = image.relative_to(root).as_posix()
        attributes = image_attributes(image) or {}
        source = f"zarr://{data_url.rstrip('/')}/{relative}"
        links[relative] = state_url(app_url, _layers_state(source, attributes, _label_names(image), image.name.removesuffix(".ome.zarr")))
    return ViewPlan(root, links)


def view_server(root: Path, port: int) -> TierHTTPServer:
    """A read-only server of ``root`` on ``127.0.0.1:port`` (not started).

    Raises
    ------
    TierflowError
        If the port is taken.
    """
    try:
        return TierHTTPServer(("127.0.0.1", port), root.resolve(), ())
    except OSError as exc:
        raise TierflowError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                            hint="choose another port with --port, or stop what uses it") from None
