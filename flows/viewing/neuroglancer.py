"""Neuroglancer links for zarr outputs: the viewer state as JSON in the URL fragment (as the
seed's ``crantpy.utils.encode_url`` does for its scenes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from urllib.parse import quote

__all__ = ["neuroglancer_url", "zarr_source"]


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


def neuroglancer_url(app_url: str, layers: Sequence[tuple[str, str, str]], *, voxel_size: Sequence[float] = (1, 1, 1)) -> str:
    """A link to ``app_url`` showing ``layers`` (name, source, ``image`` or ``segmentation``); ``voxel_size`` in micrometres."""
    state = {
        "dimensions": {axis: [float(size) * 1e-6, "m"] for axis, size in zip("zyx", voxel_size, strict=True)},
        "layers": [{"type": kind, "source": source, "name": name} for name, source, kind in layers],
        "layout": "4panel",
    }
    return f"{app_url.rstrip('/')}/#!{quote(json.dumps(state, separators=(',', ':')), safe='')}"
