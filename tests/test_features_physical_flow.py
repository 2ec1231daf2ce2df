"""The features op in physical units (voxel size from the input's metadata or a parameter) into
the CSV and PostgreSQL, and tracks' kinematics and per-point steps in µm and seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.measure import regionprops_table
from sqlalchemy import select
from test_features_tracks import moving_objects, write
from test_ops_features import make_labels

from tierflow.configs import load_db_config
from tierflow.errors import InvalidParameterError
from tierflow.flows.runtime.database import open_database
from tierflow.storage.db.models import ObjectFeature, TrackKinematics, TrackPoint
from tierflow.storage.db.repo import SHAPE_COLUMNS

BLOCKS = (16, 32, 32)
PROPS = ("label", "area", "centroid", "axis_major_length", "axis_minor_length")


def test_features_in_micrometres_from_metadata_and_parameter(project, tmp_path, prefect_api):
    from tierflow.flows.ops.flow import run_op

    labels = make_labels((37, 101, 77), 40, seed=31)
    tif = tmp_path / "labels.ome.tif"
    tifffile.imwrite(tif, labels, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm", "PhysicalSizeY": 650.0, "PhysicalSizeYUnit": "nm",
        "PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm"})
    configs = str(project / "configs")
    result = run_op("features", str(tif), str(tmp_path / "meta.csv"), {"dataset": "d"}, block_shape=BLOCKS, workers=2,
                    config_dir=configs)
    assert result["voxel_size"] == [2.0, 0.65, 0.65] and result["length_unit"] == "µm"
    assert "metadata of labels" in result["voxel_size_from"]
    table = pd.read_csv(tmp_path / "meta.csv")
    ref = pd.DataFrame(regionprops_table(labels, properties=PROPS, spacing=(2.0, 0.65, 0.65)))
    np.testing.assert_array_equal(table["label"], ref["label"])
    np.testing.assert_allclose(table["volume_um3"], ref["area"], rtol=1e-12)
    for i, ax in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{ax}_um"], ref[f"centroid-{i}"], rtol=1e-12)
    np.testing.assert_allclose(table["axis_major_length_um"], ref["axis_major_length"], rtol=1e-9)
    np.testing.assert_allclose(table["axis_minor_length_um"], np.nan_to_num(ref["axis_minor_length"]), rtol=1e-9, atol=1e-6)

    # the parameter wins over the metadata; the DB holds what the CSV holds
    result = run_op("features", write(tmp_path / "labels.zarr", labels), str(tmp_path / "param.csv"), {"spacing": "1,0.5,0.25"},
                    block_shape=BLOCKS, workers=2, config_dir=configs)
    assert result["voxel_size"] == [1.0, 0.5, 0.25] and result["voxel_size_from"] == "parameter spacing"
    table = pd.read_csv(tmp_path / "param.csv")
    np.testing.assert_allclose(table["volume_um3"], table["area"] * 0.125, rtol=1e-12)
    db = open_database(load_db_config(configs))
    with db.session() as session:
        columns = [getattr(ObjectFeature, c) for c in ("label", *SHAPE_COLUMNS, "exposed_faces")]
        stored = pd.DataFrame(session.execute(select(*columns).where(ObjectFeature.run_id == result["run_id"])
                                              .order_by(ObjectFeature.label)).all())
    db.dispose()
    for column in stored.columns:
        if column in table:
            np.testing.assert_allclose(stored[column].astype(float), table[column], rtol=1e-12, err_msg=column)
        else:  # the 2-D columns stay NULL for a 3-D image
            assert stored[column].isna().all(), column

    with pytest.raises(InvalidParameterError, match="voxel_size"):
        run_op("features", str(tif), str(tmp_path / "bad.csv"), {"voxel_size": "1,2"}, block_shape=BLOCKS, config_dir=configs)
    assert not (tmp_path / "bad.csv").exists()


def test_track_kinematics_and_steps_in_micrometres_and_seconds(project, tmp_path, prefect_api):
    from tierflow.flows.lifecycle.track import track
    from tierflow.flows.ops.flow import run_op

    frames, velocity = moving_objects(n_frames=5)
    spacing, dt = (2.0, 0.5, 0.5), 30.0
    configs = str(project / "configs")
    runs = [run_op("features", write(tmp_path / f"l{t}.zarr", frame, BLOCKS), str(tmp_path / f"f{t}.csv"),
                   {"time_point": t, "dataset": "d", "voxel_size": "2,0.5,0.5"}, block_shape=BLOCKS, workers=2,
                   config_dir=configs)["run_id"] for t, frame in enumerate(frames)]
    # linking in voxels (no --spacing), kinematics in the recorded voxel size, seconds from frame_interval
    result = track(runs=runs, max_distance=4.0, frame_interval=dt, config_dir=configs)
    assert (result["tracks"], result["length_unit"], result["time_unit"]) == (5, "µm", "s")
    db = open_database(load_db_config(configs))
    with db.session() as session:
        points = pd.DataFrame(session.execute(select(
            TrackPoint.track_id, TrackPoint.time_point, TrackPoint.label, TrackPoint.centroid_z, TrackPoint.centroid_y,
            TrackPoint.centroid_x, TrackPoint.displacement, TrackPoint.speed).where(TrackPoint.run_id == result["run_id"])).all())
        speeds = dict(session.execute(select(TrackKinematics.track_id, TrackKinematics.mean_speed)
                                      .where(TrackKinematics.run_id == result["run_id"])).all())
    db.dispose()
    for _, track_points in points.groupby("track_id"):
        track_points = track_points.sort_values("time_point")
        xyz = track_points[["centroid_z", "centroid_y", "centroid_x"]].to_numpy() * spacing
        steps = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
        assert track_points["displacement"].iloc[0] is None or np.isnan(track_points["displacement"].iloc[0])
        np.testing.assert_allclose(track_points["displacement"].iloc[1:].astype(float), steps, rtol=1e-12)
        np.testing.assert_allclose(track_points["speed"].iloc[1:].astype(float),
                                   steps / (np.diff(track_points["time_point"]) * dt), rtol=1e-12)
        truth = np.linalg.norm(velocity[track_points["label"].iloc[0] - 1] * spacing) / dt
        assert speeds[track_points["track_id"].iloc[0]] == pytest.approx(truth, abs=0.2 * 0.5 / dt)
