"""A synthetic time-lapse in tierflow's raw layout, with its ground truth.

Cells are soft-edged ellipsoids that move (constant velocity plus jitter, bouncing off the
borders); some divide (a mother becomes two daughters moving apart), some pairs travel side by
side a few voxels apart (touching after smoothing if the gap were smaller), on a background with
a gentle gradient and Gaussian noise. Channel 0 is a nuclear stain (bright, compact), channel 1
a fainter, wider cytoplasmic signal. The ground truth gives every cell's centre per time point
and, for daughters, their mother, so tracking can be scored against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["SyntheticSpec", "linking_accuracy", "write_synthetic_raw"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and content of a synthetic dataset (defaults: the demo's)."""

    samples: int = 2
    channels: int = 2
    time_points: int = 10
    shape: tuple[int, int, int] = (32, 256, 256)
    cells: int = 8
    divisions: int = 2
    touching_pairs: int = 1
    radius: tuple[float, float, float] = (4.0, 9.0, 9.0)
    speed: float = 3.0
    noise: float = 25.0
    seed: int = 0


def _ellipsoid(out: np.ndarray, centre: np.ndarray, radius: np.ndarray, amplitude: float) -> None:
    """Add a soft-edged ellipsoid (flat top, ~1.5 voxel ramp) to ``out`` in place."""
    lo = np.maximum(np.floor(centre - 1.6 * radius).astype(int), 0)
    hi = np.minimum(np.ceil(centre + 1.6 * radius).astype(int) + 1, out.shape)
    if np.any(hi <= lo):
        return
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius, strict=True)))
    profile = np.clip((1.25 - distance) * 4.0, 0.0, 1.0)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] += amplitude * profile


def _trajectories(spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    """Cell centres per time point: columns cell_id, parent_id, time_point, z, y, x."""
    shape = np.asarray(spec.shape, dtype=float)
    radius = np.asarray(spec.radius)
    margin = radius * 1.6 + 2
    rows: list[dict] = []
    # start positions on a jittered grid so that cells begin apart
    side = int(np.ceil(np.sqrt(spec.cells)))
    cells: list[dict] = []
    for index in range(spec.cells):
        gy, gx = divmod(index, side)
        position = np.array([
            shape[0] / 2 + rng.uniform(-2, 2),
            margin[1] + (gy + 0.5) * (shape[1] - 2 * margin[1]) / side + rng.uniform(-4, 4),
            margin[2] + (gx + 0.5) * (shape[2] - 2 * margin[2]) / side + rng.uniform(-4, 4),
        ])
        angle = rng.uniform(0, 2 * np.pi)
        velocity = np.array([rng.uniform(-0.3, 0.3), spec.speed * np.sin(angle), spec.speed * np.cos(angle)])
        cells.append({"id": index + 1, "parent": 0, "pos": position, "vel": velocity, "born": 0})
    touching = []
    for pair in range(min(spec.touching_pairs, len(cells) // 2)):
        # the last cells travel next to a partner: same velocity, edges 3 voxels apart in x
        follower, leader = cells[-1 - 2 * pair], cells[-2 - 2 * pair]
        follower["pos"] = leader["pos"] + np.array([0.0, 0.0, 2 * 1.25 * radius[2] + 3.0])
        follower["vel"] = leader["vel"].copy()
        touching.append((leader["id"], follower["id"]))
    dividing = [c["id"] for c in cells[: spec.divisions]]
    division_time = max(1, spec.time_points // 2)
    next_id = spec.cells + 1
    for time_point in range(spec.time_points):
        if time_point == division_time:
            for mother in [c for c in cells if c["id"] in dividing]:
                cells.remove(mother)
                axis = np.array([0.0, *rng.normal(size=2)])
                axis /= np.linalg.norm(axis) or 1.0
                for sign in (-1, 1):
                    cells.append({"id": next_id, "parent": mother["id"], "pos": mother["pos"] + sign * axis * radius[1] * 1.4,
                                  "vel": mother["vel"] + sign * axis * 2.0, "born": time_point})
                    next_id += 1
        for cell in cells:
            if time_point > cell["born"]:
                cell["pos"] = cell["pos"] + cell["vel"] + rng.normal(0, 0.3, 3) * np.array([0.2, 1, 1])
            for axis in range(3):  # bounce off the borders
                if cell["pos"][axis] < margin[axis] or cell["pos"][axis] > shape[axis] - 1 - margin[axis]:
                    cell["vel"][axis] *= -1
                    cell["pos"][axis] = np.clip(cell["pos"][axis], margin[axis], shape[axis] - 1 - margin[axis])
            rows.append({"cell_id": cell["id"], "parent_id": cell["parent"], "time_point": time_point,
                         "z": cell["pos"][0], "y": cell["pos"][1], "x": cell["pos"][2]})
    truth = pd.DataFrame(rows)
    truth.attrs["touching_pairs"] = touching
    return truth


def _render(spec: SyntheticSpec, cells: pd.DataFrame, channel: int, rng: np.random.Generator) -> np.ndarray:
    shape = spec.shape
    image = np.zeros(shape, dtype=np.float32)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    image += 90 + 20 * (y / shape[1]) + 10 * (x / shape[2]) + 0 * z  # background gradient
    radius = np.asarray(spec.radius)
    for row in cells.itertuples():
        centre = np.array([row.z, row.y, row.x])
        if channel == 0:
            _ellipsoid(image, centre, radius, 900.0 + 15 * (row.cell_id % 7))
        else:
            _ellipsoid(image, centre, radius * 1.3, 250.0 + 40 * (row.cell_id % 5))
    image += rng.normal(0, spec.noise, shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def write_synthetic_raw(folder: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> pd.DataFrame:
    """Write ``spec`` as TIFF stacks in tierflow's raw layout under ``folder``
    (``<folder>/sample<N>/sample<N>_c<C>_t<TTT>.tif``) and return the ground truth
    (columns sample, cell_id, parent_id, time_point, z, y, x). Synthetic stacks of an earlier,
    larger spec in that layout are removed first (the folder is ingested whole: they would be
    taken for this spec's)."""
    import tifffile

    root = Path(folder)
    for stale in root.glob("sample*/sample*_c*_t*.tif"):
        stale.unlink()
    truths = []
    for sample_index in range(spec.samples):
        sample = f"sample{sample_index + 1}"
        rng = np.random.default_rng([spec.seed, sample_index])
        truth = _trajectories(spec, rng)
        truth.insert(0, "sample", sample)
        truths.append(truth)
        (root / sample).mkdir(parents=True, exist_ok=True)
        for time_point in range(spec.time_points):
            cells = truth[truth.time_point == time_point]
            for channel in range(spec.channels):
                image = _render(spec, cells, channel, rng)
                tifffile.imwrite(root / sample / f"{sample}_c{channel}_t{time_point:03d}.tif", image)
    return pd.concat(truths, ignore_index=True)


def linking_accuracy(truth: pd.DataFrame, points: pd.DataFrame, *, match_distance: float = 4.0) -> dict[str, float]:
    """Score tracks against the ground truth.

    Every true cell at every time point is matched to the detected object (``points``: sample,
    time_point, track_id, parent_track_id, centroid_z/y/x) nearest to its centre, within
    ``match_distance`` voxels. A true link (a cell from t to t+1, or a mother at t to a daughter
    at t+1) is correct when the matched objects are on the same track, or the daughter's track
    has the mother's track as parent.

    Returns
    -------
    dict
        ``links`` (true links), ``correct``, ``accuracy`` (correct / links), ``detected``
        (fraction of true cells matched).
    """
    from scipy.spatial import cKDTree

    matched: dict[tuple[str, int, int], tuple[int, int | None]] = {}
    total_cells = 0
    for (sample, time_point), cells in truth.groupby(["sample", "time_point"]):
        total_cells += len(cells)
        found = points[(points["sample"] == sample) & (points["time_point"] == time_point)]
        if found.empty:
            continue
        tree = cKDTree(found[["centroid_z", "centroid_y", "centroid_x"]].to_numpy())
        distance, index = tree.query(cells[["z", "y", "x"]].to_numpy())
        for cell_id, d, i in zip(cells["cell_id"], distance, index, strict=True):
            if d <= match_distance:
                row = found.iloc[int(i)]
                parent = row["parent_track_id"]
                matched[(sample, time_point, int(cell_id))] = (int(row["track_id"]), None if pd.isna(parent) else int(parent))
    existing = {(str(s_), int(t), int(c)) for s_, t, c in zip(truth["sample"], truth["time_point"], truth["cell_id"], strict=True)}
    links = correct = 0
    for row in truth.itertuples():
        if row.time_point == 0:
            continue
        before = (row.sample, row.time_point - 1, row.cell_id)
        division = before not in existing
        if division:
            if not row.parent_id:
                continue
            before = (row.sample, row.time_point - 1, row.parent_id)
        links += 1
        now, earlier = matched.get((row.sample, row.time_point, row.cell_id)), matched.get(before)
        if now is None or earlier is None:
            continue
        if now[0] == earlier[0] or (division and now[1] == earlier[0]):
            correct += 1
    return {"links": links, "correct": correct, "accuracy": correct / links if links else 1.0,
            "detected": len(matched) / total_cells if total_cells else 1.0}

