"""A synthetic volume of touching nuclei with its ground-truth instance labels.

Nuclei are ellipsoids placed in small clusters: each nucleus after a cluster's first sits against
an earlier one of its cluster, centres 1.5-1.8 mean radii apart, so the two overlap and their
union has a neck (Otsu + connected components merges them; a distance-transform watershed can
split them). A voxel covered by several nuclei belongs, in the ground truth, to the one whose
scaled distance (1 on the surface) is smallest. The image is the mask, blurred (sigma 1) and
scaled to a nuclear stain's brightness, over a background with Gaussian noise. Deterministic from
``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NucleiSpec", "touching_nuclei"]


@dataclass(frozen=True)
class NucleiSpec:
    """Size and content of a synthetic nuclei volume."""

    shape: tuple[int, ...] = (64, 256, 256)
    clusters: int = 30
    per_cluster: tuple[int, int] = (1, 4)
    """Nuclei per cluster, lowest and highest."""
    radius: tuple[float, float] = (7.0, 10.0)
    """Mean radius range in voxels (each axis then scaled by 0.85-1.15)."""
    noise: float = 40.0
    seed: int = 0


def _place(spec: NucleiSpec, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(centre, radii) of every nucleus."""
    shape = np.asarray(spec.shape, dtype=float)
    nuclei: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(spec.clusters):
        for _attempt in range(50):
            size = rng.uniform(*spec.radius)
            radii = size * rng.uniform(0.85, 1.15, len(shape))
            cluster = [(rng.uniform(radii, shape - radii), radii)]
            for _ in range(int(rng.integers(spec.per_cluster[0], spec.per_cluster[1] + 1)) - 1):
                anchor_centre, anchor_radii = cluster[int(rng.integers(len(cluster)))]
                size = rng.uniform(*spec.radius)
                radii = size * rng.uniform(0.85, 1.15, len(shape))
                direction = rng.normal(size=len(shape))
                direction /= np.linalg.norm(direction)
                gap = rng.uniform(1.5, 1.8) * (anchor_radii.mean() + radii.mean()) / 2
                cluster.append((anchor_centre + direction * gap, radii))
            inside = all(np.all(c - r >= 0) and np.all(c + r <= shape - 1) for c, r in cluster)
            apart = all(np.linalg.norm(c - d) > (r.mean() + s.mean()) * 1.15 for c, r in cluster for d, s in nuclei)
            close = all(np.linalg.norm(a - b) > 1.3 * (r.mean() + s.mean()) / 2
                        for i, (a, r) in enumerate(cluster) for b, s in cluster[i + 1:])
            if inside and apart and close:
                nuclei.extend(cluster)
                break
    return nuclei


def touching_nuclei(spec: NucleiSpec = NucleiSpec()) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint16) and its ground-truth labels (uint32, 1..n, 0 background)."""
    rng = np.random.default_rng(spec.seed)
    nuclei = _place(spec, rng)
    scaled = np.full(spec.shape, np.inf, dtype=np.float32)
    labels = np.zeros(spec.shape, dtype=np.uint32)
    for index, (centre, radii) in enumerate(nuclei, start=1):
        lo = np.maximum(np.floor(centre - radii).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, spec.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grids = np.ogrid[box]
        distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))).astype(np.float32)
        closer = (distance <= 1.0) & (distance < scaled[box])
        scaled[box] = np.where(closer, distance, scaled[box])
        labels[box] = np.where(closer, np.uint32(index), labels[box])
    image = ndimage.gaussian_filter((labels > 0).astype(np.float32), 1.0) * 800.0 + 100.0
    image += rng.normal(0, spec.noise, spec.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16), labels
