"""The raw layout: shape diagnosis, per-file classification, task discovery, header reads.

Every test builds a real raw folder of small TIFFs in ``tmp_path`` with ``tifffile``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tierflow.storage.errors import InvalidNameError, RawLayoutError, TierflowError
from tierflow.storage.raw_layout import (
    RAW_LAYOUT_PICTURE,
    RawFile,
    classify_raw_files,
    diagnose_raw_layout,
    discover_tasks,
    parse_volume_name,
    read_stack_header,
)

SHAPE = (8, 32, 32)


def write_stack(path: Path, shape: tuple[int, ...] = SHAPE, dtype: str = "uint16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.arange(np.prod(shape), dtype=dtype).reshape(shape))
    return path


def write_slices(
    folder: Path, n: int = 5, yx: tuple[int, int] = (32, 24), dtype: str = "uint8"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for z in range(n):
        tifffile.imwrite(folder / f"z{z:04d}.tif", np.full(yx, z, dtype=dtype))
    return folder


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """Two samples, two channels, two time points; stacks and slice folders, junk beside them."""
    root = tmp_path / "raw"
    for sample in ("s1", "s2"):
        for c in (0, 1):
            for t in (0, 1):
                write_stack(root / sample / f"{sample}_c{c}_t{t}.tif")
    # s3: the other token order, upper case, '-' separators, no prefix, a slice folder
    write_stack(root / "s3" / "emb-T0-C0.ome.tif")
    write_slices(root / "s3" / "C1_T0")
    for junk in ("Thumbs.db", ".DS_Store", "desktop.ini"):
        (root / "s1" / junk).write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / "s2" / ".partial.tif").write_bytes(b"")
    return root


# -- diagnose_raw_layout ------------------------------------------------------------------------


def test_diagnose_good_folder_returns_samples(raw: Path) -> None:
    assert diagnose_raw_layout(raw) == ["s1", "s2", "s3"]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"x"), "is a file, not a folder"),
        (lambda p: p.mkdir(), "is empty"),
    ],
    ids=["missing", "file", "empty"],
)
def test_diagnose_unusable_path(tmp_path: Path, make, expected: str) -> None:
    target = tmp_path / "raw"
    make(target)
    with pytest.raises(RawLayoutError) as info:
        diagnose_raw_layout(target)
    message = str(info.value)
    assert str(target) in message and expected in message
    assert RAW_LAYOUT_PICTURE in message


def test_diagnose_lists_every_problem_in_one_error(raw: Path) -> None:
    write_stack(raw / "loose_c0_t0.tif")
    (raw / "notes.txt").write_text("x")
    (raw / "empty_sample").mkdir()
    (raw / "no_tiffs").mkdir()
    (raw / "no_tiffs" / "readme.txt").write_text("x")
    (raw / "bad..name").mkdir()
    with pytest.raises(RawLayoutError) as info:
        diagnose_raw_layout(raw)
    message = str(info.value)
    assert "(4 problem(s))" in message
    assert "loose file(s) at the top level" in message
    assert "loose_c0_t0.tif" in message and "notes.txt" in message
    assert "sample folder empty_sample/ is empty" in message
    assert "sample folder no_tiffs/ is empty" in message
    assert "bad..name" in message and "'..'" in message
    assert message.rstrip().endswith(RAW_LAYOUT_PICTURE.splitlines()[-1])
    assert "s1" not in message.split("Expected layout")[0].replace(str(raw), "")


def test_diagnose_caps_the_loose_file_list(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    for i in range(13):
        (root / f"f{i:02d}.tif").write_bytes(b"")
    with pytest.raises(RawLayoutError) as info:
        diagnose_raw_layout(root)
    message = str(info.value)
    assert "13 loose file(s)" in message
    assert "f09.tif" in message and "f10.tif" not in message
    assert "and 3 more" in message


# -- classify_raw_files -------------------------------------------------------------------------


def test_parse_volume_name_orders_cases_and_separators() -> None:
    assert parse_volume_name("emb_c2_t10.tif") == (2, 10)
    assert parse_volume_name("emb-T10-C2.OME.TIF") == (2, 10)
    assert parse_volume_name("c0_t0") == (0, 0)
    assert parse_volume_name("x_c3_c1_t2.tiff") == (1, 2)
    for bad in ("emb_c1.tif", "emb_ch1_t2.tif", "emb_c1_t2_z3.tif", "c-1_t2.tif"):
        assert parse_volume_name(bad) is None, bad


def test_classify_parses_stacks_and_slice_folders(raw: Path) -> None:
    result = classify_raw_files(raw)
    assert result.warnings == []
    keys = [(f.sample, f.channel, f.time_point, f.kind) for f in result.files]
    assert keys == sorted(keys)
    assert len(keys) == 2 * 2 * 2 + 2
    assert ("s3", 0, 0, "stack") in keys and ("s3", 1, 0, "slices") in keys
    slices = next(f for f in result.files if f.kind == "slices")
    assert slices == RawFile("s3", 1, 0, raw / "s3" / "C1_T0", "slices", 5)
    stack = result.files[0]
    assert stack.path == raw / "s1" / "s1_c0_t0.tif" and stack.n_files == 1


def test_classify_warns_once_per_bad_entry(raw: Path) -> None:
    s1 = raw / "s1"
    write_stack(s1 / "s1_ch3_time4.tif")  # name not parseable
    (s1 / "s1_c5_t0.png").write_bytes(b"png")  # not a TIFF
    (s1 / "c6_t0").mkdir()  # slice folder without TIFFs
    write_slices(s1 / "c7_t0", n=2)
    (s1 / "c7_t0" / "log.txt").write_text("x")  # mixed slice folder: kept, warned
    (s1 / "s1_c8_t0.tif").write_bytes(np.random.default_rng(0).bytes(512))  # corrupt
    write_slices(s1 / "random_folder", n=1)  # folder name not parseable
    (raw / "top.txt").write_text("x")  # loose top-level file
    (raw / "bad name").mkdir()  # disallowed sample name
    (raw / "s4").mkdir()  # empty sample
    result = classify_raw_files(raw)
    text = "\n".join(result.warnings)
    expected = {
        "s1/s1_ch3_time4.tif": "not parseable",
        "s1/s1_c5_t0.png": "not a TIFF",
        "s1/c6_t0/": "no TIFF slices",
        "s1/c7_t0/": "log.txt",
        "s1/s1_c8_t0.tif": "cannot be opened as TIFF",
        "s1/random_folder/": "not parseable",
        "top.txt": "loose file",
        "bad name/": "not allowed",
        "s4/": "no TIFF stacks",
    }
    assert len(result.warnings) == len(expected), text
    for name, why in expected.items():
        assert any(w.startswith(name) and why in w for w in result.warnings), (name, text)
    assert "e.g. embryo1_c0_t12.tif" in text
    kept = {(f.sample, f.channel) for f in result.files}
    assert ("s1", 7) in kept
    assert not kept & {("s1", 3), ("s1", 5), ("s1", 6), ("s1", 8)}


def test_classify_keeps_first_duplicate_by_path_and_warns(raw: Path) -> None:
    write_slices(raw / "s2" / "s2_c0_t0", n=3)  # same volume as s2_c0_t0.tif, sorts first
    write_stack(raw / "s2" / "other_T0_C0.tif")
    result = classify_raw_files(raw)
    kept = [f for f in result.files if (f.sample, f.channel, f.time_point) == ("s2", 0, 0)]
    assert len(kept) == 1 and kept[0].path == raw / "s2" / "other_T0_C0.tif"
    dups = [w for w in result.warnings if "duplicate" in w]
    assert len(dups) == 2
    assert all("kept s2/other_T0_C0.tif" in w for w in dups)
    assert any(w.startswith("s2/s2_c0_t0:") for w in dups)
    assert any(w.startswith("s2/s2_c0_t0.tif:") for w in dups)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_classify_never_raises_on_an_unusable_dir(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "raw"
    if kind == "file":
        target.write_text("x")
    result = classify_raw_files(target)
    assert result.files == []
    assert len(result.warnings) == 1 and str(target) in result.warnings[0]


# -- discover_tasks -----------------------------------------------------------------------------


def test_discover_everything_by_default(raw: Path) -> None:
    found = discover_tasks(raw)
    assert found.requested == found.present
    assert found.present == {
        "samples": ["s1", "s2", "s3"], "channels": [0, 1], "time_points": [0, 1]
    }
    assert len(found.tasks) == 10
    # s3 has only t0: its t1 volumes are reported as gaps
    gap = "not present in RAW_DIR"
    assert sorted(found.skipped) == [("s3 c0 t1", gap), ("s3 c1 t1", gap)]


def test_discover_filters_with_reasons(raw: Path) -> None:
    found = discover_tasks(raw, samples=["s1", "s9"], channels=[1, 4], time_points=[1])
    assert [(f.sample, f.channel, f.time_point) for f in found.tasks] == [("s1", 1, 1)]
    assert found.requested == {"samples": ["s1", "s9"], "channels": [1, 4], "time_points": [1]}
    skipped = dict(found.skipped)
    assert skipped["sample s9"] == "requested but not present in RAW_DIR"
    assert skipped["channel 4"] == "requested but not present in RAW_DIR"
    assert skipped["s1 c0 t1"] == "channel 0 not requested"
    assert skipped["s1 c1 t0"] == "time point 0 not requested"
    assert skipped["s2 c0 t0"] == (
        "sample s2 not requested; channel 0 not requested; time point 0 not requested"
    )
    assert skipped["s3 c1 t0"] == "sample s3 not requested; time point 0 not requested"
    assert len(found.tasks) + sum(" not requested" in why for why in skipped.values()) == 10
    summary = found.summary()
    assert "requested: 2 samples, 2 channels, 1 time points" in summary
    assert "present:   3 samples, 2 channels, 2 time points" in summary
    assert "to run:    1 volume(s)" in summary
    assert f"skipped:   {len(found.skipped)}" in summary
    assert "sample s9: requested but not present in RAW_DIR" in summary


def test_discover_passes_classification_warnings_and_checks_requests(raw: Path) -> None:
    (raw / "s1" / "s1_c9_t0.txt").write_text("x")
    found = discover_tasks(raw, samples="s1")
    assert found.requested["samples"] == ["s1"]
    assert len(found.warnings) == 1 and "s1_c9_t0.txt" in found.warnings[0]
    assert "warnings:  1" in found.summary()
    with pytest.raises(InvalidNameError, match=r"\.\./s1"):
        discover_tasks(raw, samples=["../s1"])
    with pytest.raises(TierflowError, match="`channels` holds -1"):
        discover_tasks(raw, channels=[0, -1])


# -- read_stack_header --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_read_stack_header_stack(tmp_path: Path, dtype: str) -> None:
    path = write_stack(tmp_path / "a_c0_t0.tif", shape=(7, 20, 30), dtype=dtype)
    assert read_stack_header(path) == ((7, 20, 30), np.dtype(dtype))


def test_read_stack_header_single_page_and_slice_folder(tmp_path: Path) -> None:
    page = write_stack(tmp_path / "one.tif", shape=(20, 30))
    assert read_stack_header(page) == ((1, 20, 30), np.dtype("uint16"))
    folder = write_slices(tmp_path / "c0_t0", n=6, yx=(32, 24), dtype="uint8")
    (folder / "Thumbs.db").write_bytes(b"junk")
    assert read_stack_header(folder) == ((6, 32, 24), np.dtype("uint8"))


def test_read_stack_header_errors_name_the_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.tif"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(RawLayoutError, match="bad.tif cannot be opened as TIFF"):
        read_stack_header(corrupt)
    with pytest.raises(RawLayoutError, match="nowhere.tif does not exist"):
        read_stack_header(tmp_path / "nowhere.tif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RawLayoutError, match="empty holds no TIFF slices"):
        read_stack_header(tmp_path / "empty")
    rgb = write_stack(tmp_path / "rgb.tif", shape=(4, 16, 16, 3), dtype="uint8")
    with pytest.raises(RawLayoutError, match=r"rgb.tif has shape \(4, 16, 16, 3\)"):
        read_stack_header(rgb)
