"""Physical-unit and shape features, merged across blocks, against regionprops on the whole
volume (``spacing=``) and a numpy count of exposed voxel faces."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from skimage.measure import regionprops_table

from tierflow.tasks.ops.features import (
    PartialFeatures,
    features_table,
    inertia_eigvals,
    merge_partials,
    parse_voxel_size,
    partial_features,
)

from test_ops_features import make_labels


def block_partials(labels: np.ndarray, block: tuple[int, ...]) -> list[PartialFeatures]:
    """Partials of every block with the one-voxel context the engine reads."""
    parts = []
    for start in itertools.product(*(range(0, s, b) for s, b in zip(labels.shape, block, strict=True))):
        stop = [min(a + b, s) for a, b, s in zip(start, block, labels.shape, strict=True)]
        lo = [max(a - 1, 0) for a in start]
        hi = [min(e + 1, s) for e, s in zip(stop, labels.shape, strict=True)]
        core = labels[tuple(slice(a, e) for a, e in zip(start, stop, strict=True))]
        ctx = labels[tuple(slice(a, e) for a, e in zip(lo, hi, strict=True))]
        parts.append(partial_features(core, offset=start, context=ctx, context_offset=lo))
    return parts


def exposed_faces(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Reference: per label, faces per axis between it and anything else (outside included)."""
    padded = np.pad(labels.astype(np.int64), 1, constant_values=-1)
    core = padded[(slice(1, -1),) * labels.ndim]
    out: dict[int, np.ndarray] = {}
    for lab in np.unique(labels[labels > 0]):
        mask = core == lab
        per_axis = []
        for axis in range(labels.ndim):
            n = 0
            for shift in (0, 2):
                sl = tuple(slice(shift, shift + labels.shape[axis]) if a == axis else slice(1, -1)
                           for a in range(labels.ndim))
                n += int(((padded[sl] != lab) & mask).sum())
            per_axis.append(n)
        out[int(lab)] = np.array(per_axis)
    return out


def physical_faces(faces: dict[int, np.ndarray], spacing: tuple[float, ...]) -> np.ndarray:
    areas = [np.prod([s for j, s in enumerate(spacing) if j != k]) for k in range(len(spacing))]
    return np.array([float(np.dot(f, areas)) for _, f in sorted(faces.items())])


def regionprops_ref(labels: np.ndarray, spacing: tuple[float, ...] | None, props: tuple[str, ...]) -> pd.DataFrame:
    kwargs = {} if spacing is None else {"spacing": spacing}
    return pd.DataFrame(regionprops_table(labels, properties=("label", *props), **kwargs))


@pytest.mark.parametrize("block", [(16, 32, 32), (10, 45, 23)])
def test_3d_physical_and_shape_features_match_regionprops(block: tuple[int, ...]) -> None:
    labels = make_labels((37, 101, 77), 50, seed=11)
    spacing = (2.0, 0.65, 0.5)
    merged = merge_partials(block_partials(labels, block))
    table = features_table(merged, voxel_size=spacing)

    ref = regionprops_ref(labels, None, ("area", "centroid", "axis_major_length", "axis_minor_length",
                                         "inertia_tensor_eigvals"))
    assert table["label"].tolist() == ref["label"].tolist()
    np.testing.assert_allclose(table["axis_major_length"], ref["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["axis_minor_length"], np.nan_to_num(ref["axis_minor_length"]), rtol=1e-9, atol=1e-6)
    eig = inertia_eigvals(merged)
    for k in range(3):
        np.testing.assert_allclose(eig[:, k], ref[f"inertia_tensor_eigvals-{k}"], rtol=1e-9, atol=1e-9)

    phys = regionprops_ref(labels, spacing, ("area", "centroid", "axis_major_length", "axis_minor_length",
                                             "inertia_tensor_eigvals"))
    np.testing.assert_allclose(table["volume_um3"], phys["area"], rtol=1e-12)
    for i, ax in enumerate("zyx"):
        np.testing.assert_allclose(table[f"centroid_{ax}_um"], phys[f"centroid-{i}"], rtol=1e-12)
        np.testing.assert_allclose(table[f"centroid_{ax}"], ref[f"centroid-{i}"], rtol=1e-12)
    np.testing.assert_allclose(table["axis_major_length_um"], phys["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["axis_minor_length_um"], np.nan_to_num(phys["axis_minor_length"]), rtol=1e-9, atol=1e-6)
    eig_um = inertia_eigvals(merged, spacing)
    for k in range(3):
        np.testing.assert_allclose(eig_um[:, k], phys[f"inertia_tensor_eigvals-{k}"], rtol=1e-9, atol=1e-9)

    # elongation / flatness: sqrt of ratios of the covariance eigenvalues in physical space
    for row, lab in zip(table.itertuples(), table["label"], strict=True):
        zz, yy, xx = np.nonzero(labels == lab)
        pts = np.stack([zz * spacing[0], yy * spacing[1], xx * spacing[2]], axis=1)
        lam = np.sort(np.linalg.eigvalsh(np.cov(pts.T, bias=True)))[::-1] if len(pts) > 1 else np.zeros(3)
        lam = np.clip(lam, 0, None)
        expected = np.sqrt(lam[0] / lam[1]) if lam[1] > 1e-12 else np.nan
        if np.isfinite(expected):
            assert row.elongation == pytest.approx(expected, rel=1e-9)

    faces = exposed_faces(labels)
    np.testing.assert_array_equal(table["exposed_faces"], [int(f.sum()) for _, f in sorted(faces.items())])
    np.testing.assert_allclose(table["surface_area_um2"], physical_faces(faces, spacing), rtol=1e-12)

    # the whole volume as one block gives the same table
    whole = features_table(partial_features(labels), voxel_size=spacing)
    pd.testing.assert_frame_equal(whole, table, check_exact=False, rtol=1e-12)


def test_2d_eccentricity_and_perimeter_match() -> None:
    labels = make_labels((101, 77), 25, seed=12)
    spacing = (0.4, 0.3)
    merged = merge_partials(block_partials(labels, (32, 23)))
    table = features_table(merged, voxel_size=spacing, time_point=2)
    props = ("area", "centroid", "axis_major_length", "axis_minor_length", "eccentricity")
    ref, phys = regionprops_ref(labels, None, props), regionprops_ref(labels, spacing, props)
    assert table["label"].tolist() == ref["label"].tolist()
    np.testing.assert_allclose(table["area_um2"], phys["area"], rtol=1e-12)
    np.testing.assert_allclose(table["axis_major_length"], ref["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["axis_minor_length"], ref["axis_minor_length"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(table["axis_major_length_um"], phys["axis_major_length"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table["axis_minor_length_um"], phys["axis_minor_length"], rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(table["eccentricity"], phys["eccentricity"], rtol=1e-9, atol=1e-7)
    # without a voxel size: voxel-space eccentricity, no physical columns
    plain = features_table(merged)
    np.testing.assert_allclose(plain["eccentricity"], ref["eccentricity"], rtol=1e-9, atol=1e-7)
    assert not [c for c in plain.columns if c.endswith(("_um", "_um2", "_um3"))]
    faces = exposed_faces(labels)
    np.testing.assert_allclose(table["perimeter_um"], physical_faces(faces, spacing), rtol=1e-12)


@pytest.mark.parametrize("far", [(2**20, 2**21, 2**21), (2**30, 2**31, 2**31)])
def test_moments_stay_exact_for_far_coordinates(far: tuple[int, int, int]) -> None:
    """Far coordinates: float64 raw moments would cancel; the integer ones (int64, or Python ints
    beyond int64) do not."""
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, 1:3, 0:4] = 5
    part = merge_partials([partial_features(labels[:, :, :2], offset=far),
                           partial_features(labels[:, :, 2:], offset=(far[0], far[1], far[2] + 2))])
    near = features_table(partial_features(labels))
    table = features_table(part)
    for col in ("axis_major_length", "axis_minor_length", "elongation"):
        assert table[col].tolist() == near[col].tolist()


def test_bad_voxel_size_and_context_are_named() -> None:
    with pytest.raises(ValueError, match="3 positive numbers"):
        parse_voxel_size("1,2", 3)
    with pytest.raises(ValueError, match="positive"):
        parse_voxel_size("1,0,2", 3)
    labels = np.ones((4, 4), np.int32)
    with pytest.raises(ValueError, match="one voxel of margin"):
        partial_features(labels[2:4], offset=(2, 0), context=labels, context_offset=(0, 0))
    assert parse_voxel_size([1, 2], 2) == (1.0, 2.0)
