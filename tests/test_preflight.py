"""Preflight: headers read without pixels, the documented estimate, and the three levels.

Real TIFF stacks, slice folders and zarr v3 arrays in ``tmp_path``; the available RAM and disk
are passed explicitly so that each level is hit exactly.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from tierflow.storage.errors import InsufficientDiskError, InsufficientMemoryError, TierflowError
from tierflow.storage.preflight import (
    ArrayHeader,
    PreflightWarning,
    estimate_resources,
    format_bytes,
    preflight_check,
    read_header,
)


def make_zarr(
    path: Path, shape=(8, 32, 32), chunks=(4, 16, 16), dtype="uint16", **kwargs
) -> zarr.Array:
    array = zarr.create_array(store=path, shape=shape, chunks=chunks, dtype=dtype, **kwargs)
    array[...] = np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    return array


# -- read_header --------------------------------------------------------------------------------


def test_read_header_tiff_stack_and_slice_folder(tmp_path: Path) -> None:
    stack = tmp_path / "e_c0_t0.tif"
    tifffile.imwrite(stack, np.zeros((8, 32, 32), dtype="uint16"))
    assert read_header(stack) == ArrayHeader((8, 32, 32), np.dtype("uint16"), None, str(stack))
    folder = tmp_path / "e_c1_t0"
    folder.mkdir()
    for z in range(5):
        tifffile.imwrite(folder / f"z{z:03d}.tif", np.zeros((20, 24), dtype="float32"))
    header = read_header(str(folder))
    assert (header.shape, header.dtype, header.chunks) == ((5, 20, 24), np.dtype("float32"), None)


def test_read_header_zarr_path_and_open_array(tmp_path: Path) -> None:
    array = make_zarr(tmp_path / "a.zarr", shape=(9, 30, 31), chunks=(4, 16, 16), dtype="float32")
    header = read_header(tmp_path / "a.zarr")
    expected = ArrayHeader((9, 30, 31), np.dtype("float32"), (4, 16, 16), str(tmp_path / "a.zarr"))
    assert header == expected
    assert header.nbytes == 9 * 30 * 31 * 4
    opened = read_header(array)
    assert (opened.shape, opened.dtype) == (expected.shape, expected.dtype)
    assert opened.chunks == (4, 16, 16)
    sharded = make_zarr(tmp_path / "s.zarr", chunks=(2, 8, 8), shards=(4, 16, 16))
    assert read_header(sharded).chunks == (4, 16, 16)


def test_read_header_reads_no_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.zarr"
    make_zarr(path, shape=(8, 32, 32), dtype="uint16")
    assert any((path / "c").rglob("*"))
    shutil.rmtree(path / "c")  # every chunk gone: only zarr.json is left
    assert [p.name for p in path.iterdir()] == ["zarr.json"]
    header = read_header(path)
    assert (header.shape, header.dtype) == ((8, 32, 32), np.dtype("uint16"))
    report = preflight_check(path, block_shape=(4, 16, 16), scratch_dir=tmp_path / "scratch")
    assert report.estimate.disk_bytes == 8 * 32 * 32 * 2


def test_read_header_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(TierflowError, match="nothing.zarr does not exist"):
        read_header(tmp_path / "nothing.zarr")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(TierflowError, match="notes.txt is neither a zarr array"):
        read_header(tmp_path / "notes.txt")
    zarr.create_group(store=tmp_path / "g.zarr")
    with pytest.raises(TierflowError, match="g.zarr is not a zarr array"):
        read_header(tmp_path / "g.zarr")


# -- estimate_resources -------------------------------------------------------------------------


def test_estimate_matches_the_documented_model_by_hand() -> None:
    big = ArrayHeader((40, 100, 120), "uint16", (16, 64, 64), "big")
    small = ArrayHeader((10, 50, 50), "uint8", None, "small")  # smaller than a block: clipped
    est = estimate_resources(
        [small, big], block_shape=(16, 64, 64), halo=4, workers=3,
        output_dtype="float32", n_outputs=2, copies_in_flight=3,
    )
    # big: block (16, 64, 64), read with halo (24, 72, 72)
    input_block = 24 * 72 * 72 * 2  # uint16 input
    working = 24 * 72 * 72 * 4  # float32 working copy
    output_block = 16 * 64 * 64 * 4 * 2  # two float32 outputs
    per_worker = (input_block + working + output_block) * 3
    assert per_worker == 3_812_352
    assert est.peak_ram_bytes == 3 * per_worker == 11_437_056
    assert est.disk_bytes == (40 * 100 * 120 + 10 * 50 * 50) * 4 * 2 == 4_040_000
    assert est.breakdown["input_block_bytes"] == input_block
    assert est.breakdown["working_block_bytes"] == working
    assert est.breakdown["output_block_bytes"] == output_block
    assert est.breakdown["per_worker_bytes"] == per_worker
    # the small array alone: every block and halo clipped to (10, 50, 50)
    alone = estimate_resources([small], block_shape=(16, 64, 64), halo=4)
    assert alone.peak_ram_bytes == (10 * 50 * 50 * (1 + 4 + 1)) * 3


def test_estimate_refuses_mismatched_arguments() -> None:
    header = ArrayHeader((8, 32, 32), "uint16", None, "a.tif")
    axes = r"`block_shape` \(64, 64\) has 2 axes but the array a.tif has 3"
    with pytest.raises(TierflowError, match=axes):
        estimate_resources([header], block_shape=(64, 64))
    with pytest.raises(TierflowError, match="`halo`"):
        estimate_resources([header], block_shape=(4, 4, 4), halo=(1, -1, 1))
    with pytest.raises(TierflowError, match="`workers` is 0"):
        estimate_resources([header], block_shape=(4, 4, 4), workers=0)
    with pytest.raises(TierflowError, match="at least one array header"):
        estimate_resources([], block_shape=(4, 4, 4))


# -- preflight_check ----------------------------------------------------------------------------

HEADER = ArrayHeader((64, 512, 512), "uint16", None, "raw/e1/e1_c0_t0.tif")
PLAN = {"block_shape": (32, 256, 256), "halo": 8, "workers": 4}


@pytest.fixture
def estimate():
    return estimate_resources([HEADER], **PLAN)


def check(tmp_path: Path, ram: float, disk: float, estimate, **kwargs):
    """Run preflight with RAM and disk sized so the estimate is ``ram`` and ``disk`` of them."""
    return preflight_check(
        HEADER, **PLAN, scratch_dir=tmp_path,
        available_ram=math.ceil(estimate.peak_ram_bytes / ram),
        available_disk=math.ceil(estimate.disk_bytes / disk), **kwargs,
    )


def test_at_half_of_available_it_is_silent(tmp_path: Path, estimate) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = check(tmp_path, 0.5, 0.5, estimate)
    assert caught == []
    assert report.ok and (report.ram_level, report.disk_level) == ("ok", "ok")
    assert report.ram_ratio == pytest.approx(0.5) and report.disk_ratio == pytest.approx(0.5)
    text = str(report)
    assert 2 <= len(text.splitlines()) <= 4
    assert format_bytes(estimate.peak_ram_bytes) in text and "(50%, ok)" in text


def test_at_ninety_percent_it_warns_with_figures(tmp_path: Path, estimate) -> None:
    with pytest.warns(PreflightWarning) as record:
        report = check(tmp_path, 0.9, 0.5, estimate)
    assert len(record) == 1 and issubclass(PreflightWarning, ResourceWarning)
    message = str(record[0].message)
    assert format_bytes(estimate.peak_ram_bytes) in message
    assert format_bytes(report.available_ram) in message and "90%" in message
    assert report.ram_level == "warn" and report.disk_level == "ok"
    disk = format_bytes(estimate.disk_bytes)
    with pytest.warns(PreflightWarning, match=rf"output {disk}") as record:
        report = check(tmp_path, 0.5, 0.9, estimate)
    assert len(record) == 1 and report.disk_level == "warn"


def test_over_ram_raises_memory_error_with_figures_and_advice(tmp_path: Path, estimate) -> None:
    with pytest.raises(MemoryError) as info:
        check(tmp_path, 1.5, 0.5, estimate)
    assert isinstance(info.value, InsufficientMemoryError) and isinstance(info.value, TierflowError)
    message = str(info.value)
    available = math.ceil(estimate.peak_ram_bytes / 1.5)
    assert format_bytes(estimate.peak_ram_bytes) in message and format_bytes(available) in message
    assert "150%" in message and "4 worker(s)" in message
    assert "smaller block_shape" in message and "fewer workers" in message


def test_over_disk_raises_os_error_with_figures_and_advice(tmp_path: Path, estimate) -> None:
    with pytest.raises(OSError) as info:
        check(tmp_path, 0.5, 1.5, estimate)
    assert isinstance(info.value, InsufficientDiskError)
    message = str(info.value)
    assert format_bytes(estimate.disk_bytes) in message
    assert format_bytes(math.ceil(estimate.disk_bytes / 1.5)) in message
    assert str(tmp_path) in message and "another scratch root" in message


def test_force_over_budget_warns_instead(tmp_path: Path, estimate) -> None:
    with pytest.warns(PreflightWarning, match="force=True") as record:
        report = check(tmp_path, 1.5, 1.5, estimate, force=True)
    assert len(record) == 2
    assert (report.ram_level, report.disk_level) == ("over", "over") and report.forced
    assert "running anyway because force=True" in str(report)


def test_sources_and_default_availability(tmp_path: Path) -> None:
    stack = tmp_path / "e_c0_t0.tif"
    tifffile.imwrite(stack, np.zeros((8, 32, 32), dtype="uint16"))
    array = make_zarr(tmp_path / "a.zarr")
    scratch = tmp_path / "not" / "yet" / "scratch"
    report = preflight_check([stack, array], block_shape=(4, 16, 16), scratch_dir=scratch)
    assert report.scratch_dir == tmp_path and not scratch.exists()
    assert 0 < report.available_disk <= shutil.disk_usage(tmp_path).total
    assert report.available_ram > 0 and report.ok
    assert report.estimate.disk_bytes == 2 * 8 * 32 * 32 * 2


def test_force_within_budget_is_not_reported_as_forced(tmp_path: Path, estimate) -> None:
    report = check(tmp_path, 0.5, 0.5, estimate, force=True)
    assert not report.forced and "force=True" not in str(report)
