"""OME-Zarr 0.5 metadata: a pyramid on local disk validates, broken ones fail by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr_models.v05 import Image, ImageLabel

from tierflow.storage.ome_zarr import (
    InvalidOmeZarrError,
    image_label_attributes,
    labels_group_attributes,
    multiscales_attributes,
    pyramid_transforms,
    read_ome_attributes,
    validate_ome_zarr,
    write_multiscales_metadata,
)
from tierflow.tasks.ops.pyramid import downsample_labels, downsample_mean, pyramid_factors

AXES = ("z", "y", "x")
VOXEL = (2.0, 0.5, 0.5)  # micrometer


def write_levels(group: zarr.Group, levels: list[np.ndarray], *, dimension_names=AXES) -> list[str]:
    paths = []
    for index, level in enumerate(levels):
        array = group.create_array(str(index), shape=level.shape, dtype=level.dtype,
                                   chunks=(8, 16, 16), dimension_names=dimension_names)
        array[...] = level
        paths.append(str(index))
    return paths


def pyramid(image: np.ndarray, factors, kernel) -> list[np.ndarray]:
    levels = [image]
    for f in factors[1:]:
        levels.append(kernel(levels[-1], f))
    return levels


@pytest.fixture
def image_data() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 4096, size=(9, 40, 33), dtype=np.uint16)


@pytest.fixture
def factors(image_data):
    return pyramid_factors(image_data.shape, 3, min_size=(4, 1, 1))


@pytest.fixture
def image_group(tmp_path: Path, image_data, factors) -> tuple[Path, dict]:
    path = tmp_path / "volume.ome.zarr"
    group = zarr.open_group(path, mode="w")
    paths = write_levels(group, pyramid(image_data, factors, downsample_mean))
    scales, translations = pyramid_transforms(factors, base_scale=VOXEL)
    attributes = multiscales_attributes(name="raw", scales=scales, paths=paths,
                                        translations=translations, downscaling_type="mean")
    write_multiscales_metadata(group, attributes)
    return path, attributes


def test_three_level_pyramid_validates_and_round_trips(image_group, factors):
    path, attributes = image_group
    assert factors == [(1, 1, 1), (2, 2, 2), (1, 2, 2)]  # z stops at 4 planes
    validate_ome_zarr(path)
    validate_ome_zarr(zarr.open_group(path, mode="r"))

    assert read_ome_attributes(path) == attributes
    assert zarr.open_group(path, mode="r").attrs.asdict() == attributes  # plain JSON on disk
    model = Image.from_zarr(zarr.open_group(path, mode="r"))
    datasets = model.ome_attributes.multiscales[0].datasets
    assert [d.path for d in datasets] == ["0", "1", "2"]
    assert [d.coordinateTransformations[0].scale for d in datasets] == [
        [2.0, 0.5, 0.5], [4.0, 1.0, 1.0], [4.0, 2.0, 2.0]
    ]
    assert [d.coordinateTransformations[1].translation for d in datasets] == [
        [0.0, 0.0, 0.0], [1.0, 0.25, 0.25], [1.0, 0.75, 0.75]
    ]
    axes = attributes["ome"]["multiscales"][0]["axes"]
    assert axes[0] == {"name": "z", "type": "space", "unit": "micrometer"}
    assert zarr.open_group(path, mode="r")["2"].shape == (5, 10, 9)


def test_translation_puts_each_voxel_at_its_window_centre():
    factors = [(1, 1), (2, 3), (2, 2)]
    scales, translations = pyramid_transforms(factors, base_scale=(0.5, 0.2),
                                              base_translation=(10.0, -1.0))
    cumulative = np.cumprod(np.array(factors), axis=0)
    for level, total in enumerate(cumulative):
        for j in range(4):
            centre = j * np.asarray(scales[level]) + np.asarray(translations[level])
            for axis in range(2):  # mean physical position of the level-0 voxels it averages
                members = j * total[axis] + np.arange(total[axis])
                expected = (members * [0.5, 0.2][axis] + [10.0, -1.0][axis]).mean()
                assert centre[axis] == pytest.approx(expected)
    _, unshifted = pyramid_transforms(factors, base_scale=(0.5, 0.2), window_centered=False)
    assert unshifted == [[0.0, 0.0]] * 3


def test_wrong_number_of_axes_fails_with_the_models_message(tmp_path, image_data, factors):
    group = zarr.open_group(tmp_path / "bad.zarr", mode="w")
    paths = write_levels(group, pyramid(image_data, factors, downsample_mean))
    write_multiscales_metadata(group, multiscales_attributes(
        name="raw", axes=("y", "x"), scales=[[1, 1], [2, 2], [4, 4]], paths=paths))
    with pytest.raises(ValueError, match=r"bad\.zarr is not a valid OME-Zarr 0\.5 image: .*"
                                         r"2 axes .* at path '0' \(3\)"):
        validate_ome_zarr(tmp_path / "bad.zarr")


def test_missing_path_fails(image_group):
    path, attributes = image_group
    group = zarr.open_group(path, mode="r+")
    write_multiscales_metadata(group, multiscales_attributes(
        name="raw", scales=[[1, 1, 1], [2, 2, 2], [4, 4, 4], [8, 8, 8]],
        paths=["0", "1", "2", "3"]))
    with pytest.raises(InvalidOmeZarrError, match="array at 3, but no array was found there"):
        validate_ome_zarr(path)


def test_missing_dimension_names_fail(tmp_path, image_data):
    group = zarr.open_group(tmp_path / "nodims.zarr", mode="w")
    write_levels(group, [image_data], dimension_names=None)
    write_multiscales_metadata(group, multiscales_attributes(name="raw", scales=[[1, 1, 1]],
                                                             paths=["0"]))
    with pytest.raises(InvalidOmeZarrError, match="'0' has no dimension_names"):
        validate_ome_zarr(group)


def test_label_pyramid_validates_with_its_image(image_group, image_data, factors):
    path, _ = image_group
    image = zarr.open_group(path, mode="r+")
    labels = image.create_group("labels")
    write_multiscales_metadata(labels, labels_group_attributes(["cells"]))
    cells = labels.create_group("cells")
    data = (image_data // 1024).astype(np.uint32)  # 0..3, plenty of background
    paths = write_levels(cells, pyramid(data, factors, downsample_labels))
    scales, translations = pyramid_transforms(factors, base_scale=VOXEL)
    attributes = image_label_attributes(
        name="cells", scales=scales, paths=paths, translations=translations,
        downscaling_type="mode", colors={1: (255, 0, 0, 255), 2: (0, 255, 0, 128)},
        properties={1: {"class": "nucleus"}, 2: {"class": "cytoplasm"}})
    write_multiscales_metadata(cells, attributes)

    validate_ome_zarr(path)  # Image validates labels/ through Labels and ImageLabel
    validate_ome_zarr(path / "labels")
    validate_ome_zarr(path / "labels" / "cells")
    assert read_ome_attributes(path / "labels" / "cells") == attributes
    model = ImageLabel.from_zarr(zarr.open_group(path / "labels" / "cells", mode="r"))
    assert [c.label_value for c in model.ome_attributes.image_label.colors] == [1, 2]
    assert model.ome_attributes.image_label.source.image == "../../"


def test_float_labels_and_mismatched_levels_fail(image_group, image_data, factors):
    path, _ = image_group
    image = zarr.open_group(path, mode="r+")
    labels = image.create_group("labels")
    write_multiscales_metadata(labels, labels_group_attributes(["cells"]))
    cells = labels.create_group("cells")
    levels = pyramid(image_data.astype(np.float32), factors, downsample_mean)
    paths = write_levels(cells, levels)
    scales, _ = pyramid_transforms(factors, base_scale=VOXEL)
    write_multiscales_metadata(cells, image_label_attributes(name="cells", scales=scales,
                                                             paths=paths))
    with pytest.raises(InvalidOmeZarrError, match="label level '0' has dtype float32"):
        validate_ome_zarr(path / "labels" / "cells")
    with pytest.raises(InvalidOmeZarrError, match="'cells/0' is not valid. Got float32"):
        validate_ome_zarr(path)

    write_multiscales_metadata(cells, image_label_attributes(name="cells", scales=scales[:2],
                                                             paths=paths[:2]))
    for key in paths:
        del cells[key]
    write_levels(cells, [lv.astype(np.uint16) for lv in levels[:2]])
    with pytest.raises(InvalidOmeZarrError, match=r"label multiscale levels \(2\) doesn't "
                                                  r"match .* image multiscale levels \(3\)"):
        validate_ome_zarr(path)


def test_attribute_builders_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"Dataset 0 has a lower resolution"):
        multiscales_attributes(name="raw", scales=[[2, 2, 2], [1, 1, 1]], paths=["0", "1"])
    with pytest.raises(ValueError, match=r"`scales\[1\]` \[1.0, 1.0\] has 2 values but there "
                                         r"are 3 axes"):
        multiscales_attributes(name="raw", scales=[[1, 1, 1], [1, 1]], paths=["0", "1"])
    with pytest.raises(ValueError, match="`translations` has 1 entries but there are 2 paths"):
        multiscales_attributes(name="raw", scales=[[1, 1, 1]] * 2, paths=["0", "1"],
                               translations=[[0, 0, 0]])
    with pytest.raises(ValueError, match="'microns' is not an OME-Zarr space unit"):
        multiscales_attributes(name="raw", scales=[[1, 1, 1]], paths=["0"], units="microns")
    with pytest.raises(ValueError, match=r"unknown names \['q'\]"):
        multiscales_attributes(name="raw", axes=("q", "y", "x"), scales=[[1, 1, 1]], paths=["0"])
    with pytest.raises(ValueError, match=r"Length of axes \(1\) not valid"):
        multiscales_attributes(name="raw", axes=("x",), scales=[[1]], paths=["0"])
    with pytest.raises(ValueError, match="must be positive and finite"):
        multiscales_attributes(name="raw", scales=[[0, 1, 1]], paths=["0"])
    with pytest.raises(ValueError, match="Inconsistent `label_value`"):
        image_label_attributes(name="c", scales=[[1, 1, 1]], paths=["0"],
                               colors={1: (1, 2, 3, 4)}, properties={2: {}})
    with pytest.raises(ValueError, match="must be non-empty, unique keys"):
        labels_group_attributes([])
    two_d = multiscales_attributes(name="slice", axes=("y", "x"), scales=[[0.5, 0.5]],
                                   paths=["0"], units=None)
    assert two_d["ome"]["multiscales"][0]["axes"] == [{"name": "y", "type": "space"},
                                                      {"name": "x", "type": "space"}]


def test_write_checks_attributes_and_keeps_other_keys(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.update_attributes({"tierflow": {"run": 3}})
    with pytest.raises(InvalidOmeZarrError, match="'ome.version' is '0.4'"):
        write_multiscales_metadata(group, {"ome": {"version": "0.4", "labels": ["a"]}})
    with pytest.raises(InvalidOmeZarrError, match="no 'ome' attributes"):
        write_multiscales_metadata(group, {"multiscales": []})
    with pytest.raises(TypeError, match="zarr.Group"):
        write_multiscales_metadata(str(tmp_path), labels_group_attributes(["a"]))
    write_multiscales_metadata(group, labels_group_attributes(["a"]))
    assert read_ome_attributes(tmp_path / "g.zarr") == {
        "tierflow": {"run": 3}, "ome": {"version": "0.5", "labels": ["a"]}
    }


def test_validate_names_missing_and_foreign_groups(tmp_path):
    with pytest.raises(InvalidOmeZarrError, match="no zarr v3 group at .*absent.zarr"):
        validate_ome_zarr(tmp_path / "absent.zarr")
    v2 = zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    with pytest.raises(InvalidOmeZarrError, match="is a zarr v2 group"):
        validate_ome_zarr(v2)
    plain = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(InvalidOmeZarrError, match="plain.zarr: no 'ome' attributes"):
        validate_ome_zarr(plain)
    plain.update_attributes({"ome": {"version": "0.5", "something": 1}})
    with pytest.raises(InvalidOmeZarrError, match="none of 'multiscales', 'image-label'"):
        validate_ome_zarr(tmp_path / "plain.zarr")
