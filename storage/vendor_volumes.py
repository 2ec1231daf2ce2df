"""Vendor microscope files (Zeiss CZI, Nikon ND2, Leica LIF) through bioio, an optional extra.

``pip install 'tierflow[formats]'`` installs bioio and its readers. A file is read lazily through
``BioImage.get_image_dask_data("TCZYX")``: a region's read computes only the dask chunks (planes)
under it. Axes of length 1 among ``t``, ``c``, ``z`` are dropped (a single-channel stack is
``zyx``); ``file.czi#series=N`` picks scene ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tierflow.storage.errors import TierflowError
from tierflow.storage.geometry import Roi
from tierflow.storage.image_meta import ImageMetadata

__all__ = ["VENDOR_SUFFIXES", "VendorVolume", "open_vendor"]

VENDOR_SUFFIXES = (".czi", ".nd2", ".lif")
_INSTALL = "pip install 'tierflow[formats]'"


def _bioio() -> Any:
    try:
        import bioio
    except ImportError:
        raise TierflowError("reading CZI, ND2 and LIF files needs the formats extra (bioio), which is not installed",
                            hint=f"run {_INSTALL}") from None
    return bioio


@dataclass
class VendorVolume:
    """One scene of a vendor file, read lazily through bioio."""

    path: Path
    uri: str
    scene: int | None = None
    metadata: ImageMetadata = field(default_factory=ImageMetadata)

    def __post_init__(self) -> None:
        bioio = _bioio()
        try:
            image = bioio.BioImage(self.path)
            if self.scene is not None:
                image.set_scene(image.scenes[self.scene])
            data = image.get_image_dask_data("TCZYX")
        except IndexError:
            raise TierflowError(f"{self.path} has no scene {self.scene}", hint="give file#series=N with N a scene index") from None
        except Exception as exc:  # noqa: BLE001 - bioio's readers raise many types
            raise TierflowError(f"{self.path} cannot be read by bioio ({type(exc).__name__}: {exc})",
                                hint=f"check the file, and that {_INSTALL} installed the reader for it") from None
        self._data = data
        self.dtype = np.dtype(data.dtype)
        full = dict(zip("tczyx", data.shape, strict=True))
        self.axes = "".join(a for a in "tczyx" if full[a] > 1 or a in "yx")
        self.shape = tuple(full[a] for a in self.axes)
        chunks = dict(zip("tczyx", (c[0] for c in data.chunks), strict=True))
        self.chunks = tuple(chunks[a] for a in self.axes)
        sizes = image.physical_pixel_sizes
        scale = {a: float(v) for a, v in zip("zyx", (sizes.Z, sizes.Y, sizes.X), strict=True) if v}
        self.metadata = ImageMetadata(scale, {a: "µm" for a in scale}, tuple(map(str, image.channel_names or ())))

    def read(self, roi: Roi) -> np.ndarray:
        where = dict(zip(self.axes, roi.slices, strict=True))
        selection = tuple(where.get(a, slice(0, 1)) for a in "tczyx")
        return np.asarray(self._data[selection].compute()).reshape(roi.shape)


def open_vendor(text: str) -> VendorVolume:
    """Open ``file.czi`` (or ``file.czi#series=N``)."""
    from tierflow.storage.tiff_volumes import split_series

    path, scene = split_series(text)
    return VendorVolume(Path(path), Path(path).resolve().as_uri(), scene)
