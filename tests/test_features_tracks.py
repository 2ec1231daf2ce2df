"""Features block-wise equal scikit-image's regionprops on the whole volume and land in
PostgreSQL; tracking recovers generated trajectories and stores tracks, kinematics and MSD."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage
from skimage.measure import regionprops_table
from sqlalchemy import select

from tierflow.configs import load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.storage.db.models import ObjectFeature, ObjectIntensity, TrackKinematics, TrackMsd, TrackPoint

SHAPE, BLOCKS = (37, 101, 77), (16, 32, 32)


def write(path, data, chunks=BLOCKS):
    array = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[:] = data
    return str(path)


def test_features_equal_regionprops_and_are_stored(project, tmp_path, prefect_api):
    from tierflow.flows.ops.flow import run_op

    rng = np.random.default_rng(4)
    smooth = ndimage.gaussian_filter(rng.random(SHAPE), 1.5)
    labels, count = ndimage.label(smooth > np.quantile(smooth, 0.85))
    labels = labels.astype(np.uint32)
    image = rng.integers(0, 60000, SHAPE, dtype=np.uint16)
    result = run_op("features", write(tmp_path / "labels.zarr", labels), str(tmp_path / "features.csv"),
                    {"time_point": 3, "dataset": "d", "sample": "s1"}, block_shape=BLOCKS, workers=2,
                    config_dir=str(project / "configs"), inputs={"c0": write(tmp_path / "c0.zarr", image)})
    assert result["objects"] == count > 20
    reference = pd.DataFrame(regionprops_table(labels, intensity_image=image, properties=(
        "label", "area", "centroid", "bbox", "intensity_min", "intensity_max", "intensity_mean")))
    table = pd.read_csv(tmp_path / "features.csv")
    np.testing.assert_array_equal(table["label"], reference["label"])
    np.testing.assert_array_equal(table["area"], reference["area"])
    for axis, name in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{name}"], reference[f"centroid-{axis}"], rtol=1e-12)
        np.testing.assert_array_equal(table[f"bbox_min_{name}"], reference[f"bbox-{axis}"])
        np.testing.assert_array_equal(table[f"bbox_max_{name}"], reference[f"bbox-{axis + 3}"])
    np.testing.assert_array_equal(table["c0_min"], reference["intensity_min"])
    np.testing.assert_array_equal(table["c0_max"], reference["intensity_max"])
    np.testing.assert_allclose(table["c0_mean"], reference["intensity_mean"], rtol=1e-12)

    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        stored = session.execute(select(ObjectFeature.label, ObjectFeature.area, ObjectFeature.time_point, ObjectFeature.sample)
                                 .where(ObjectFeature.run_id == result["run_id"]).order_by(ObjectFeature.label)).all()
        means = session.scalars(select(ObjectIntensity.mean).join(ObjectFeature).where(ObjectFeature.run_id == result["run_id"])
                                .order_by(ObjectFeature.label)).all()
    db.dispose()
    assert [(r.label, r.area) for r in stored] == list(zip(reference["label"], reference["area"], strict=True))
    assert {(r.time_point, r.sample) for r in stored} == {(3, "s1")}
    np.testing.assert_allclose(means, reference["intensity_mean"], rtol=1e-12)


def moving_objects(n_frames=8, seed=0):
    """Spheres moving with constant velocities; ground-truth ids per frame."""
    rng = np.random.default_rng(seed)
    starts = np.array([[8, 20, 20], [8, 20, 55], [8, 70, 20], [8, 70, 55], [24, 45, 38]], dtype=float)
    velocity = rng.uniform(-1.5, 1.5, starts.shape)
    velocity[:, 0] = 0
    zz, yy, xx = np.ogrid[:32, :96, :80]
    frames = []
    for t in range(n_frames):
        frame = np.zeros((32, 96, 80), dtype=np.uint32)
        for i, (z, y, x) in enumerate(starts + t * velocity):
            frame[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 16] = i + 1
        frames.append(frame)
    return frames, velocity


def test_tracks_recover_generated_trajectories_and_msd_is_stored(project, tmp_path, prefect_api):
    from tierflow.flows.ops.flow import run_op
    from tierflow.flows.lifecycle.track import track

    frames, velocity = moving_objects()
    runs = []
    for t, frame in enumerate(frames):
        runs.append(run_op("features", write(tmp_path / f"labels{t}.zarr", frame, (16, 32, 32)), str(tmp_path / f"f{t}.csv"),
                           {"time_point": t, "dataset": "d", "sample": "s1"}, block_shape=(16, 32, 32), workers=2,
                           config_dir=str(project / "configs"))["run_id"])
    result = track(runs=runs, max_distance=4.0, config_dir=str(project / "configs"))
    assert (result["tracks"], result["points"], result["divisions"]) == (5, 5 * len(frames), 0)
    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        points = session.execute(select(TrackPoint.track_id, TrackPoint.label).where(TrackPoint.run_id == result["run_id"])).all()
        speeds = session.execute(
            select(TrackKinematics.track_id, TrackKinematics.mean_speed).where(TrackKinematics.run_id == result["run_id"])
        ).all()
        msd = session.execute(select(TrackMsd.track_id, TrackMsd.lag, TrackMsd.msd).where(TrackMsd.run_id == result["run_id"])).all()
    db.dispose()
    # linking accuracy: every track holds one ground-truth object (label = generator id)
    by_track = pd.DataFrame(points, columns=["track_id", "label"]).groupby("track_id")["label"].nunique()
    assert (by_track == 1).all()
    label_of_track = dict(pd.DataFrame(points, columns=["track_id", "label"]).drop_duplicates("track_id").values)
    for track_id, mean_speed in speeds:
        expected = np.linalg.norm(velocity[label_of_track[track_id] - 1])
        assert mean_speed == pytest.approx(expected, abs=0.2)  # centroids of voxelised spheres jitter
    lag3 = {track_id: value for track_id, lag, value in msd if lag == 3}
    for track_id, value in lag3.items():
        assert value == pytest.approx((3 * np.linalg.norm(velocity[label_of_track[track_id] - 1])) ** 2, rel=0.25, abs=1.0)
