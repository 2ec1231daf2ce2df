"""The demo's synthetic raw folder: written again with a smaller spec, it holds only that spec's
stacks (the folder is ingested whole)."""

from __future__ import annotations

from pathlib import Path

import tifffile

from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw


def test_a_smaller_spec_leaves_no_stacks_of_the_earlier_one(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SyntheticSpec(samples=2, time_points=3, shape=(8, 32, 32)))
    (raw / "notes.txt").write_text("a user's file stays")
    truth = write_synthetic_raw(raw, SyntheticSpec(samples=1, time_points=2, shape=(8, 32, 32)))
    stacks = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.tif"))
    channels = SyntheticSpec().channels
    assert stacks == sorted(f"sample1/sample1_c{c}_t{t:03d}.tif" for c in range(channels) for t in range(2))
    assert set(truth["sample"]) == {"sample1"} and (raw / "notes.txt").exists()
    assert tifffile.imread(raw / stacks[0]).shape == (8, 32, 32)
