"""Linking objects across time points recovers known trajectories; kinematics are exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tierflow.tasks.ops.tracking import kinematics, link_tracks

AXES3 = ["centroid_z", "centroid_y", "centroid_x"]


def ground_truth(seed: int = 0, noise: float = 0.1) -> pd.DataFrame:
    """6 objects on a 40-voxel grid, constant velocities (< 2 voxels per step) over 10 time
    points; object 5 divides at t=5 into daughters 6 and 7, 3 voxels either side of it."""
    rng = np.random.default_rng(seed)
    starts = np.array([[10, 20 + 40 * i, 20 + 40 * j] for i in range(2) for j in range(3)], float)
    velocity = rng.uniform(-1, 1, (6, 3))
    rows = []
    for t in range(10):
        for obj in range(6):
            pos = starts[obj] + velocity[obj] * t
            if obj == 5 and t >= 5:
                for daughter, side in ((6, 1), (7, -1)):
                    offset = np.array([0, 3 + 0.5 * (t - 5), 0]) * side
                    rows.append((t, daughter, *(pos + offset + rng.normal(0, noise, 3))))
                continue
            rows.append((t, obj, *(pos + rng.normal(0, noise, 3))))
    df = pd.DataFrame(rows, columns=["time_point", "truth", *AXES3])
    df["label"] = df.groupby("time_point").cumcount() + 1
    return df


def link_accuracy(tracks: pd.DataFrame) -> float:
    """Fraction of true links (same object at t and t+1) that share a predicted track id."""
    by_key = tracks.set_index(["truth", "time_point"])["track_id"]
    correct = total = 0
    for (truth, t), track in by_key.items():
        if (truth, t + 1) in by_key.index:
            total += 1
            correct += int(by_key[(truth, t + 1)] == track)
    return correct / total


def test_linking_recovers_ground_truth_with_division() -> None:
    truth = ground_truth()
    shuffled = truth.sample(frac=1, random_state=1).set_axis(np.arange(len(truth)) * 10 + 5)
    tracks = link_tracks(shuffled, max_distance=6.0)

    pd.testing.assert_frame_equal(tracks[shuffled.columns], shuffled)  # rows and index kept
    assert tracks["track_id"].dtype == np.int64 and tracks["track_id"].min() == 1
    assert tracks["parent_track_id"].dtype == "Int64"
    accuracy = link_accuracy(tracks)
    print(f"link accuracy: {accuracy:.3f}")
    assert accuracy == 1.0
    # Tracks and true objects correspond one to one (the mother ends at the division).
    pairs = tracks[["truth", "track_id"]].drop_duplicates()
    assert len(pairs) == 8 and pairs["truth"].is_unique and pairs["track_id"].is_unique
    track_of = dict(zip(pairs["truth"], pairs["track_id"], strict=False))
    parents = tracks.drop_duplicates("track_id").set_index("truth")["parent_track_id"]
    assert parents[6] == track_of[5] and parents[7] == track_of[5]
    assert parents.drop([6, 7]).isna().all()
    # Ids are numbered by first time point, then row order.
    first = tracks.sort_values(["time_point"], kind="stable").drop_duplicates("track_id")
    assert sorted(first["track_id"]) == list(range(1, 9))
    assert (first.sort_values("track_id")["time_point"].diff().dropna() >= 0).all()


def test_linking_without_splits_keeps_one_daughter_on_the_mother_track() -> None:
    tracks = link_tracks(ground_truth(), max_distance=6.0, allow_splits=False)
    assert tracks["parent_track_id"].isna().all()
    assert tracks["track_id"].nunique() == 7
    mother = tracks.loc[tracks["truth"] == 5, "track_id"].unique()
    daughters = tracks.loc[tracks["truth"].isin([6, 7]), "track_id"].unique()
    assert len(mother) == 1 and mother[0] in daughters and len(daughters) == 2


def test_linking_2d_with_spacing_and_gaps() -> None:
    # Two objects moving 3 voxels per step in x; x voxels are 0.5 units wide.
    t = np.repeat(np.arange(6), 2)
    df = pd.DataFrame(
        {
            "time_point": t,
            "label": np.tile([1, 2], 6),
            "centroid_y": np.tile([0.0, 100.0], 6),
            "centroid_x": 3.0 * t,
        }
    )
    assert link_tracks(df, max_distance=2.0)["track_id"].nunique() == 12
    linked = link_tracks(df, max_distance=2.0, spacing=(1.0, 0.5))
    assert linked["track_id"].tolist() == [1, 2] * 6
    # Object 1 missing at t=3: two tracks without gap closing, one with max_gap=1.
    gap = df.drop(index=6)
    assert link_tracks(gap, max_distance=2.0, spacing=(1, 0.5))["track_id"].nunique() == 3
    closed = link_tracks(gap, max_distance=3.0, spacing=(1, 0.5), max_gap=1)
    assert closed["track_id"].tolist() == [1, 2] * 3 + [2] + [1, 2] * 2


def test_linking_degenerate_inputs() -> None:
    single = pd.DataFrame({"time_point": [3, 3], "label": [1, 2], "centroid_y": [0.0, 9.0],
                           "centroid_x": [0.0, 0.0]})  # fmt: skip
    assert link_tracks(single, max_distance=5)["track_id"].tolist() == [1, 2]
    # A time point without any objects: bridged only with gap closing.
    hole = pd.DataFrame({"time_point": [0, 1, 3, 4], "label": 1, "centroid_y": [0.0, 1, 3, 4],
                         "centroid_x": 0.0})  # fmt: skip
    assert link_tracks(hole, max_distance=2.5)["track_id"].tolist() == [1, 1, 2, 2]
    assert link_tracks(hole, max_distance=2.5, max_gap=1)["track_id"].tolist() == [1] * 4
    empty = link_tracks(single.iloc[:0], max_distance=5)
    assert empty.empty and empty["track_id"].dtype == np.int64


def test_linking_rejects_bad_input() -> None:
    df = ground_truth()
    with pytest.raises(ValueError, match="centroid_x"):
        link_tracks(df.drop(columns="centroid_x"), max_distance=5)
    with pytest.raises(ValueError, match="time_point"):
        link_tracks(df.assign(time_point=df["time_point"] + 0.5), max_distance=5)
    with pytest.raises(ValueError, match="max_distance"):
        link_tracks(df, max_distance=0)
    with pytest.raises(ValueError, match="spacing"):
        link_tracks(df, max_distance=5, spacing=(1, 1))


def naive_msd(tracks: pd.DataFrame, axes: list[str]) -> dict[tuple[int, int], tuple[float, int]]:
    """Reference: every pair of points of a track, grouped by their time difference."""
    acc: dict[tuple[int, int], list[float]] = {}
    for track_id, group in tracks.groupby("track_id"):
        times = group["time_point"].to_list()
        pos = group[axes].to_numpy()
        for a in range(len(times)):
            for b in range(len(times)):
                if times[b] > times[a]:
                    sq = float(((pos[b] - pos[a]) ** 2).sum())
                    acc.setdefault((track_id, times[b] - times[a]), []).append(sq)
    return {key: (float(np.mean(v)), len(v)) for key, v in acc.items()}


def test_msd_of_constant_velocity() -> None:
    v = np.array([0.5, -1.0, 2.0])
    t = np.arange(12)
    pos = 5.0 + t[:, None] * v
    tracks = pd.DataFrame(pos, columns=AXES3).assign(track_id=7, time_point=t)
    per_track, msd = kinematics(tracks, frame_interval=2.0)
    speed = np.linalg.norm(v)
    np.testing.assert_allclose(msd["msd"], (speed * msd["lag"]) ** 2, rtol=1e-12)
    assert msd["lag"].tolist() == list(range(1, 12))
    assert msd["n_pairs"].tolist() == list(range(11, 0, -1))
    np.testing.assert_allclose(msd["lag_time"], 2.0 * msd["lag"])
    row = per_track.iloc[0]
    np.testing.assert_allclose(row["path_length"], 11 * speed, rtol=1e-12)
    np.testing.assert_allclose(row["net_displacement"], 11 * speed, rtol=1e-12)
    np.testing.assert_allclose([row["mean_speed"], row["max_speed"]], speed / 2.0, rtol=1e-12)


def test_msd_matches_double_loop_on_tracks_with_gaps() -> None:
    rng = np.random.default_rng(11)
    frames = []
    for track_id in range(1, 9):
        times = np.sort(rng.choice(30, size=rng.integers(1, 20), replace=False))
        steps = rng.normal(0, 1.5, (times.size, 3)).cumsum(axis=0)
        frames.append(pd.DataFrame(steps, columns=AXES3).assign(track_id=track_id * 3,
                                                                time_point=times))  # fmt: skip
    tracks = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=2)
    spacing = (2.0, 0.5, 0.5)
    _, msd = kinematics(tracks, spacing=spacing)
    scaled = tracks.assign(**{ax: tracks[ax] * s for ax, s in zip(AXES3, spacing, strict=False)})
    ref = naive_msd(scaled, AXES3)
    got = {(int(r.track_id), int(r.lag)): (r.msd, int(r.n_pairs)) for r in msd.itertuples()}
    assert got.keys() == ref.keys()
    for key, (value, n_pairs) in ref.items():
        assert got[key][1] == n_pairs
        np.testing.assert_allclose(got[key][0], value, rtol=1e-12)
    _, short = kinematics(tracks, spacing=spacing, max_lag=3)
    assert set(short["lag"]) == {1, 2, 3}
    assert len(short) == sum(1 for key in ref if key[1] <= 3)


def test_path_length_and_speeds_by_hand() -> None:
    # Track 1: (0,0) -> (3,4) in one step, then -> (3,10) across a gap of two steps.
    tracks = pd.DataFrame(
        {
            "track_id": [1, 1, 1, 2],
            "time_point": [0, 1, 3, 4],
            "centroid_y": [0.0, 3.0, 3.0, 1.0],
            "centroid_x": [0.0, 4.0, 10.0, 1.0],
        }
    )
    per_track, msd = kinematics(tracks, frame_interval=0.5)
    one, two = per_track.iloc[0], per_track.iloc[1]
    assert (one["n_points"], one["start"], one["end"]) == (3, 0, 3)
    assert one["path_length"] == 11.0 and one["net_displacement"] == np.hypot(3, 10)
    assert one["max_speed"] == 5.0 / 0.5  # 5 units in one interval; the gap step is 6 / 1.0
    assert one["mean_speed"] == 11.0 / 1.5
    assert two["n_points"] == 1 and two["path_length"] == 0.0
    assert np.isnan(two["mean_speed"]) and np.isnan(two["max_speed"])
    assert msd.loc[msd["track_id"] == 1, "msd"].tolist() == [25.0, 36.0, 109.0]
    assert (msd["track_id"] == 1).all()
    # Anisotropic spacing scales each axis before measuring.
    scaled, _ = kinematics(tracks, spacing=(2.0, 1.0))
    assert scaled.loc[0, "path_length"] == np.hypot(6.0, 4.0) + 6.0


def test_kinematics_rejects_bad_input() -> None:
    tracks = pd.DataFrame({"track_id": [1, 1], "time_point": [2, 2], "centroid_y": [0.0, 1.0],
                           "centroid_x": [0.0, 1.0]})  # fmt: skip
    with pytest.raises(ValueError, match="more than one row at time point 2"):
        kinematics(tracks)
    with pytest.raises(ValueError, match="frame_interval"):
        kinematics(tracks, frame_interval=0)
    with pytest.raises(ValueError, match="max_lag"):
        kinematics(tracks, max_lag=0)
    with pytest.raises(ValueError, match="track_id"):
        kinematics(tracks.drop(columns="track_id"))


def test_point_steps_match_a_loop_in_micrometres_and_seconds() -> None:
    """Displacement from the previous time point and speed = displacement / dt, on shuffled
    synthetic tracks with gaps, anisotropic voxels and a frame interval, against a plain loop."""
    from tierflow.tasks.ops.tracking import point_steps

    rng = np.random.default_rng(21)
    rows = []
    for track in range(1, 9):
        times = np.sort(rng.choice(20, size=int(rng.integers(1, 12)), replace=False))
        pos = rng.uniform(0, 100, 3) + np.cumsum(rng.normal(0, 2, (times.size, 3)), axis=0)
        rows += [(track, int(t), *p) for t, p in zip(times, pos, strict=True)]
    tracks = pd.DataFrame(rows, columns=["track_id", "time_point", "centroid_z", "centroid_y", "centroid_x"])
    tracks = tracks.sample(frac=1.0, random_state=3).set_index(np.arange(len(tracks)) * 7)
    spacing, dt = (2.0, 0.65, 0.65), 30.0
    steps = point_steps(tracks, spacing=spacing, frame_interval=dt)
    assert steps.index.equals(tracks.index)
    for index, row in tracks.iterrows():
        earlier = tracks[(tracks.track_id == row.track_id) & (tracks.time_point < row.time_point)]
        if earlier.empty:
            assert np.isnan(steps.loc[index, "displacement"]) and np.isnan(steps.loc[index, "speed"])
            continue
        prev = earlier.loc[earlier.time_point.idxmax()]
        delta = (row[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)
                 - prev[["centroid_z", "centroid_y", "centroid_x"]].to_numpy(float)) * spacing
        expected = float(np.sqrt((delta**2).sum()))
        assert steps.loc[index, "displacement"] == pytest.approx(expected, rel=1e-12)
        assert steps.loc[index, "speed"] == pytest.approx(expected / ((row.time_point - prev.time_point) * dt), rel=1e-12)
    # per-track path length from kinematics is the sum of the steps
    per_track, _ = kinematics(tracks, spacing=spacing, frame_interval=dt)
    summed = steps.assign(track_id=tracks.track_id).groupby("track_id")["displacement"].sum()
    np.testing.assert_allclose(per_track.set_index("track_id")["path_length"], summed, rtol=1e-12)
    with pytest.raises(ValueError, match="frame_interval"):
        point_steps(tracks, frame_interval=0)
