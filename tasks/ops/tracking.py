"""Linking objects across time points into tracks, and the kinematics of the tracks.

:func:`link_tracks` takes one row per object and time point (the output of
:func:`tasks.ops.features.features_table` with ``time_point``) and adds a ``track_id``, using
the linear assignment tracker of ``laptrack`` (Jaqaman et al. 2008): frame-to-frame linking,
optional gap closing and splitting (cell division). :func:`kinematics` derives per-track path
lengths and speeds and the mean squared displacement per time lag, vectorised over tracks;
:func:`point_steps` the displacement and speed of each point from the track's previous one.

Coordinates are the ``centroid_z``, ``centroid_y``, ``centroid_x`` columns (no ``_z`` in 2-D),
in voxels; ``spacing`` gives the physical size of a voxel per axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from laptrack import LapTrack
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["kinematics", "link_tracks", "point_steps"]

def _coordinate_columns(df: pd.DataFrame, what: str) -> list[str]:
    cols = ["centroid_z", "centroid_y", "centroid_x"]
    if "centroid_z" not in df.columns:
        cols = cols[1:]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"`{what}` lacks column(s) {missing}; has {list(df.columns)}")
    return cols


def _positions(
    df: pd.DataFrame, cols: list[str], spacing: Sequence[float] | None, what: str
) -> np.ndarray:
    """Coordinates scaled by ``spacing`` as a float64 (n, ndim) array."""
    pos = df[cols].to_numpy(dtype=np.float64)
    if not np.isfinite(pos).all():
        raise ValueError(f"`{what}` has non-finite values in {cols}")
    if spacing is not None:
        sp = np.asarray(spacing, dtype=np.float64)
        if sp.shape != (len(cols),) or not (np.isfinite(sp).all() and (sp > 0).all()):
            raise ValueError(
                f"`spacing` {tuple(np.ravel(sp).tolist())} must be {len(cols)} positive "
                f"numbers, one per axis of {cols}"
            )
        pos = pos * sp
    return pos


def _time_points(df: pd.DataFrame, what: str) -> np.ndarray:
    if "time_point" not in df.columns:
        raise ValueError(f"`{what}` lacks column 'time_point'; has {list(df.columns)}")
    t = df["time_point"].to_numpy()
    if t.dtype.kind == "f" and np.isfinite(t).all() and (t == np.round(t)).all():
        t = t.astype(np.int64)
    if t.dtype.kind not in "iu":
        raise ValueError(f"`{what}['time_point']` must hold integers, got dtype {t.dtype}")
    return t.astype(np.int64)


def link_tracks(
    objects: pd.DataFrame,
    *,
    max_distance: float,
    allow_splits: bool = True,
    spacing: Sequence[float] | None = None,
    max_gap: int = 0,
) -> pd.DataFrame:
    """Link objects across time points into tracks.

    Parameters
    ----------
    objects : pandas.DataFrame
        One row per object and time point, with columns ``time_point`` (integer),
        ``label`` and ``centroid_z`` (3-D only), ``centroid_y``, ``centroid_x``.
    max_distance : float
        Largest distance (in `spacing` units) an object may move between linked time points;
        also the largest distance between a dividing cell and a daughter.
    allow_splits : bool, optional
        Let a track split into two (cell division). The mother's track ends at the division;
        both daughters start new tracks whose ``parent_track_id`` is the mother's.
    spacing : sequence of float, optional
        Physical voxel size per axis (z, y, x) or (y, x); default 1.
    max_gap : int, optional
        Number of consecutive time points an object may be missing from a track (gap closing);
        0 (default) links consecutive time points only.

    Returns
    -------
    pandas.DataFrame
        `objects` (same index and row order) plus ``track_id`` (int64, from 1, numbered by
        first time point then row order) and ``parent_track_id`` (nullable Int64).

    Raises
    ------
    ValueError
        If columns are missing, time points are not integers, coordinates are not finite, or
        `max_distance`, `spacing` or `max_gap` are out of range.

    Examples
    --------
    >>> objs = pd.DataFrame({"time_point": [0, 0, 1, 1], "label": [1, 2, 1, 2],
    ...                      "centroid_y": [0.0, 50.0, 1.0, 51.0], "centroid_x": [0.0] * 4})
    >>> link_tracks(objs, max_distance=5)["track_id"].tolist()
    [1, 2, 1, 2]
    """
    if not isinstance(objects, pd.DataFrame):
        raise ValueError(f"`objects` must be a pandas DataFrame, got {type(objects).__name__}")
    if not (np.isfinite(max_distance) and max_distance > 0):
        raise ValueError(f"`max_distance` must be a positive finite number, got {max_distance!r}")
    if not isinstance(max_gap, (int, np.integer)) or max_gap < 0:
        raise ValueError(f"`max_gap` must be a non-negative integer, got {max_gap!r}")
    for col in ("track_id", "parent_track_id"):
        if col in objects.columns:
            raise ValueError(f"`objects` already has a {col!r} column")
    cols = _coordinate_columns(objects, "objects")
    t = _time_points(objects, "objects")
    pos = _positions(objects, cols, spacing, "objects")
    out = objects.copy()
    if len(objects) == 0:
        out["track_id"] = np.empty(0, np.int64)
        out["parent_track_id"] = pd.array([], dtype="Int64")
        return out

    # `dist < cutoff` inside laptrack; nextafter makes exactly `max_distance` still link.
    cutoff = float(np.nextafter(max_distance**2, np.inf))
    tracker = LapTrack(
        metric="sqeuclidean",
        cutoff=cutoff,
        gap_closing_metric="sqeuclidean",
        gap_closing_cutoff=cutoff if max_gap > 0 else False,
        gap_closing_max_frame_count=int(max_gap) + 1,
        splitting_metric="sqeuclidean",
        splitting_cutoff=cutoff if allow_splits else False,
        merging_cutoff=False,
    )
    # One coordinate array per frame (empty where a time point has no objects); row
    # ``rows[starts[f] + i]`` of `objects` is node (f, i) of laptrack's graph.
    frames = t - t.min()
    rows = np.lexsort((np.arange(t.size), frames))
    starts = np.searchsorted(frames[rows], np.arange(frames.max() + 2))
    coords = [pos[rows[a:b]] for a, b in zip(starts[:-1], starts[1:], strict=False)]
    graph = tracker.predict(coords)
    edges = np.array(list(graph.edges()), dtype=np.int64).reshape(-1, 4)
    source = rows[starts[edges[:, 0]] + edges[:, 1]]
    target = rows[starts[edges[:, 2]] + edges[:, 3]]
    track_id, parent = _tracks_from_edges(t, source, target)
    out["track_id"] = track_id
    out["parent_track_id"] = parent
    return out


def _tracks_from_edges(
    t: np.ndarray, source: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, pd.arrays.IntegerArray]:
    """Track ids and parent track ids per row from directed links between rows.

    A row with more than one successor divides: its outgoing links are cut, so its track ends
    there, and each successor starts a new track whose parent is the divider's track. The
    remaining links form chains; each chain is a track. Ids count from 1 in order of the
    tracks' first time point, then row.
    """
    n = t.size
    divides = np.bincount(source, minlength=n) > 1
    cut = divides[source]
    graph = coo_matrix((np.ones(int((~cut).sum())), (source[~cut], target[~cut])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), t))
    _, first = np.unique(component[order], return_index=True)
    renumber = np.empty(first.size, np.int64)
    renumber[component[order][np.sort(first)]] = np.arange(1, first.size + 1)
    track_id = renumber[component]
    parent_of = np.zeros(first.size + 1, np.int64)  # 0: no parent
    parent_of[track_id[target[cut]]] = track_id[source[cut]]
    parent = parent_of[track_id]
    return track_id, pd.arrays.IntegerArray(parent, mask=parent == 0)


def kinematics(
    tracks: pd.DataFrame,
    *,
    spacing: Sequence[float] | None = None,
    frame_interval: float = 1.0,
    max_lag: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-track path length and speeds, and mean squared displacement per time lag.

    Time points missing from a track (gaps) are handled in time units: a step across a gap
    spans several frame intervals, and a lag pairs only time points that both exist.

    Parameters
    ----------
    tracks : pandas.DataFrame
        Columns ``track_id``, ``time_point`` (integer) and ``centroid_z`` (3-D only),
        ``centroid_y``, ``centroid_x``; at most one row per track and time point.
    spacing : sequence of float, optional
        Physical voxel size per axis (z, y, x) or (y, x); default 1.
    frame_interval : float, optional
        Time between consecutive time points; default 1.
    max_lag : int, optional
        Largest lag, in time points, for the MSD; default: the longest track's duration.

    Returns
    -------
    per_track : pandas.DataFrame
        One row per track, sorted by ``track_id``: ``track_id``, ``n_points``, ``start`` and
        ``end`` (first and last time point), ``path_length`` (sum of step lengths),
        ``net_displacement`` (first to last position), ``mean_speed`` (path length over
        duration) and ``max_speed`` (largest step length over step duration); the speeds are
        NaN for single-point tracks.
    msd : pandas.DataFrame
        One row per track and lag with at least one pair, sorted by ``track_id`` and ``lag``:
        ``track_id``, ``lag`` (time points), ``lag_time`` (lag times `frame_interval`),
        ``msd`` (mean squared displacement over the pairs) and ``n_pairs``.

    Raises
    ------
    ValueError
        If columns are missing, a track has two rows for one time point, coordinates are not
        finite, or `spacing`, `frame_interval` or `max_lag` are out of range.

    Examples
    --------
    >>> tr = pd.DataFrame({"track_id": [1, 1, 1], "time_point": [0, 1, 3],
    ...                    "centroid_y": [0.0, 3.0, 3.0], "centroid_x": [0.0, 4.0, 10.0]})
    >>> per_track, msd = kinematics(tr)
    >>> per_track[["path_length", "max_speed"]].values.tolist()
    [[11.0, 5.0]]
    >>> msd["lag"].tolist(), msd["n_pairs"].tolist()
    ([1, 2, 3], [1, 1, 1])
    """
    if not isinstance(tracks, pd.DataFrame):
        raise ValueError(f"`tracks` must be a pandas DataFrame, got {type(tracks).__name__}")
    if not (np.isfinite(frame_interval) and frame_interval > 0):
        raise ValueError(
            f"`frame_interval` must be a positive finite number, got {frame_interval!r}"
        )
    if max_lag is not None and (not isinstance(max_lag, (int, np.integer)) or max_lag < 1):
        raise ValueError(f"`max_lag` must be a positive integer or None, got {max_lag!r}")
    if "track_id" not in tracks.columns:
        raise ValueError(f"`tracks` lacks column 'track_id'; has {list(tracks.columns)}")
    cols = _coordinate_columns(tracks, "tracks")
    t = _time_points(tracks, "tracks")
    pos = _positions(tracks, cols, spacing, "tracks")
    ids = tracks["track_id"].to_numpy()

    uniq, code = np.unique(ids, return_inverse=True)
    order = np.lexsort((t, code))
    code, t, pos = code[order], t[order], pos[order]
    dup = (code[1:] == code[:-1]) & (t[1:] == t[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"track {uniq[code[i]]!r} has more than one row at time point {t[i]}")
    n = uniq.size
    n_points = np.bincount(code, minlength=n)
    last = np.cumsum(n_points) - 1
    first = last - n_points + 1

    same = code[1:] == code[:-1]
    step = np.linalg.norm(pos[1:] - pos[:-1], axis=1)[same]
    step_speed = step / ((t[1:] - t[:-1])[same] * frame_interval)
    step_track = code[:-1][same]
    path_length = np.bincount(step_track, weights=step, minlength=n)
    max_speed = np.full(n, np.nan)
    np.fmax.at(max_speed, step_track, step_speed)
    duration = (t[last] - t[first]) * frame_interval
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_speed = np.where(duration > 0, path_length / duration, np.nan)
    per_track = pd.DataFrame(
        {
            "track_id": uniq,
            "n_points": n_points.astype(np.int64),
            "start": t[first],
            "end": t[last],
            "path_length": path_length,
            "net_displacement": np.linalg.norm(pos[last] - pos[first], axis=1),
            "mean_speed": mean_speed,
            "max_speed": max_speed,
        }
    )

    # MSD: key = track * stride + time, so "same track, lag later" is one searchsorted per lag.
    longest = int((t[last] - t[first]).max()) if n else 0
    lags = min(longest, max_lag) if max_lag is not None else longest
    span = int(t.max() - t.min()) if n else 0
    stride = span + lags + 1
    key = code.astype(np.int64) * stride + (t - (t.min() if n else 0))
    pieces = []
    for lag in range(1, lags + 1):
        j = np.searchsorted(key, key + lag)
        ok = j < key.size
        ok[ok] = key[j[ok]] == key[ok] + lag
        i, j = np.flatnonzero(ok), j[ok]
        if i.size == 0:
            continue
        sq = ((pos[j] - pos[i]) ** 2).sum(axis=1)
        n_pairs = np.bincount(code[i], minlength=n)
        total = np.bincount(code[i], weights=sq, minlength=n)
        has = np.flatnonzero(n_pairs)
        pieces.append(
            pd.DataFrame(
                {
                    "track_id": uniq[has],
                    "lag": np.int64(lag),
                    "lag_time": lag * frame_interval,
                    "msd": total[has] / n_pairs[has],
                    "n_pairs": n_pairs[has].astype(np.int64),
                }
            )
        )
    if pieces:
        msd = pd.concat(pieces, ignore_index=True)
        msd = msd.sort_values(["track_id", "lag"], ignore_index=True)
    else:
        msd = pd.DataFrame(
            {
                "track_id": uniq[:0],
                "lag": np.empty(0, np.int64),
                "lag_time": np.empty(0),
                "msd": np.empty(0),
                "n_pairs": np.empty(0, np.int64),
            }
        )
    return per_track, msd


def point_steps(
    tracks: pd.DataFrame,
    *,
    spacing: Sequence[float] | None = None,
    frame_interval: float = 1.0,
) -> pd.DataFrame:
    """Per point: distance from the same track's previous time point and the speed of that step.

    Parameters
    ----------
    tracks : pandas.DataFrame
        Columns ``track_id``, ``time_point`` (integer) and ``centroid_z`` (3-D only),
        ``centroid_y``, ``centroid_x``; at most one row per track and time point.
    spacing : sequence of float, optional
        Physical voxel size per axis (z, y, x) or (y, x); default 1.
    frame_interval : float, optional
        Time between consecutive time points; default 1.

    Returns
    -------
    pandas.DataFrame
        Same index and row order as `tracks`: ``displacement`` (in `spacing` units) and
        ``speed`` (displacement over the time since the previous point, which spans several
        frame intervals across a gap); both NaN at a track's first point.

    Raises
    ------
    ValueError
        As :func:`kinematics`.

    Examples
    --------
    >>> tr = pd.DataFrame({"track_id": [1, 1, 1], "time_point": [0, 1, 3],
    ...                    "centroid_y": [0.0, 3.0, 3.0], "centroid_x": [0.0, 4.0, 10.0]})
    >>> point_steps(tr, frame_interval=2.0).values.tolist()
    [[nan, nan], [5.0, 2.5], [6.0, 1.5]]
    """
    if not isinstance(tracks, pd.DataFrame):
        raise ValueError(f"`tracks` must be a pandas DataFrame, got {type(tracks).__name__}")
    if not (np.isfinite(frame_interval) and frame_interval > 0):
        raise ValueError(f"`frame_interval` must be a positive finite number, got {frame_interval!r}")
    if "track_id" not in tracks.columns:
        raise ValueError(f"`tracks` lacks column 'track_id'; has {list(tracks.columns)}")
    cols = _coordinate_columns(tracks, "tracks")
    t = _time_points(tracks, "tracks")
    pos = _positions(tracks, cols, spacing, "tracks")
    _, code = np.unique(tracks["track_id"].to_numpy(), return_inverse=True)
    order = np.lexsort((t, code))
    c, ts, p = code[order], t[order], pos[order]
    dup = (c[1:] == c[:-1]) & (ts[1:] == ts[:-1])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"track {tracks['track_id'].to_numpy()[order][i]!r} has more than one row at time point {ts[i]}")
    displacement = np.full(t.size, np.nan)
    speed = np.full(t.size, np.nan)
    same = np.flatnonzero(c[1:] == c[:-1]) + 1
    step = np.linalg.norm(p[same] - p[same - 1], axis=1)
    displacement[order[same]] = step
    speed[order[same]] = step / ((ts[same] - ts[same - 1]) * frame_interval)
    return pd.DataFrame({"displacement": displacement, "speed": speed}, index=tracks.index)
