"""The pipeline's plan (its jobs, as data) and its typed result, without running anything: the
cells pipeline's jobs chain stage -> smooth -> threshold -> label -> features on the
segmentation channel, and a
:class:`PipelineResult` reads and serialises as the plain dict it replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tierflow.flows.pipeline.library import find_spec
from tierflow.flows.pipeline.params import PipelineParams
from tierflow.flows.pipeline.plan import LocatedVolume, pipeline_key, plan_pipeline, raw_volumes, work_prefix
from tierflow.flows.pipeline.report import PipelineResult, TierUsage, render_report
from tierflow.flows.pipeline.sample_image import plan_images
from tierflow.errors import TierflowError
from tierflow.storage.tiers import PosixTier


def test_raw_volumes_are_read_from_the_layout_in_sample_time_channel_order():
    paths = ["s2/s2_c0_t000.tif", "s1/s1_c1_t001.tif", "s1/s1_c0_t001.tif", "s1/slices_c0_t000/z000.tif",
             "s1/slices_c0_t000/z001.tif", "README.txt", "s1/notes.txt"]
    volumes = raw_volumes(paths)
    assert [(v.sample, v.channel, v.time_point, v.slices) for v in volumes] == [
        ("s1", 0, 0, True), ("s1", 0, 1, False), ("s1", 1, 1, False), ("s2", 0, 0, False)]


def test_the_plan_chains_every_stage_on_the_segmentation_channel(tmp_path: Path):
    scratch, output = PosixTier("scratch", tmp_path / "t3"), PosixTier("output", tmp_path / "t2")
    cells = find_spec("cells")
    defaults = PipelineParams(values={name: decl.default for name, decl in cells.params.items()}, spec_digest=cells.digest)
    params = PipelineParams(values={**defaults.values, "segment_channel": 1, "pyramid_levels": 2}, block_shape=(16, 64, 64),
                            spec_digest=cells.digest)
    paths = [f"s1/s1_c{c}_t{t:03d}.tif" for c in (0, 1) for t in (0, 1)]
    located = [LocatedVolume(v, f"/raw/{v.path}", (20, 100, 64)) for v in raw_volumes(paths)]
    work = work_prefix("emb", "0123456789abcdef0123", pipeline_key("emb", "0123456789abcdef0123", params))
    plan = plan_pipeline(located, params, cells, dataset="emb", work=work, scratch=scratch, output=output)

    assert work.startswith("pipeline/emb/0123456789abcdef/") and plan.channels == (0, 1) and plan.points == [("s1", 0), ("s1", 1)]
    assert [job.name for job in plan.stage] == ["s1_c0_t000", "s1_c1_t000", "s1_c0_t001", "s1_c1_t001"]
    assert {job.blocks for job in plan.stage} == {2 * 2 * 1}
    seg = plan.staged("s1", 1, 1)
    assert seg.channel == 1 and seg.output == str(tmp_path / "t3" / work / "staged" / "s1_c1_t001.zarr")
    assert [stage.name for stage in plan.stages] == ["smooth", "threshold", "label"]
    smooth, mask, label, features = plan.of("smooth").jobs[1], plan.of("threshold").jobs[1], plan.of("label").jobs[1], plan.features[1]
    assert (smooth.input, mask.input, label.input, features.input) == (seg.output, smooth.output, mask.output, label.output)
    assert (smooth.params, mask.params, label.params) == ({"sigma": 1.0}, {"value": "otsu"}, {"connectivity": 26})
    assert features.inputs == {"c0": plan.staged("s1", 0, 1).output, "c1": seg.output}
    assert features.params == {"time_point": 1, "dataset": "emb", "sample": "s1"}
    # cells writes one OME-Zarr image per sample (every channel and time point, the labels), no per-volume pyramids
    assert plan.pyramid == ()
    (image,) = plan_images(plan, cells, params, output)
    assert image.key == f"{work}/images/s1.ome.zarr" and image.shape == (2, 2, 20, 100, 64) and image.label_name == "cells"
    assert image.sources == {f"{t},{c}": plan.staged("s1", c, t).output for t in (0, 1) for c in (0, 1)}
    assert image.labels == {f"{t},0": plan.of("label").jobs[t].output for t in (0, 1)}
    assert image.shapes()[0] == [(2, 2, 20, 100, 64), (2, 2, 10, 50, 32)]
    assert image.shapes(1)[0][1] == (2, 1, 10, 50, 32)
    assert plan.staged("s2", 0, 0) is None
    with pytest.raises(KeyError):
        plan.of("watershed")
    # the key names the pipeline's content: another spec (or another default) works elsewhere
    assert pipeline_key("emb", "0123456789abcdef0123", params) != pipeline_key("emb", "0123456789abcdef0123", defaults)


def test_a_block_shape_that_splits_the_image_shards_is_refused_at_planning(tmp_path: Path):
    cells = find_spec("cells")
    values = {name: decl.default for name, decl in cells.params.items()}
    paths = [f"s1/s1_c0_t{t:03d}.tif" for t in (0, 1)]
    located = [LocatedVolume(v, f"/raw/{v.path}", (20, 100, 64)) for v in raw_volumes(paths)]
    scratch, output = PosixTier("scratch", tmp_path / "t3"), PosixTier("output", tmp_path / "t2")
    aligned = PipelineParams(values=values, block_shape=(16, 64, 64), shard_shape=(8, 32, 32), spec_digest=cells.digest)
    plan = plan_pipeline(located, aligned, cells, dataset="emb", work="w", scratch=scratch, output=output)
    assert len(plan_images(plan, cells, aligned, output)) == 1
    split = PipelineParams(values=values, block_shape=(16, 48, 64), shard_shape=(8, 32, 32), spec_digest=cells.digest)
    plan = plan_pipeline(located, split, cells, dataset="emb", work="w", scratch=scratch, output=output)
    with pytest.raises(TierflowError, match=r"images/s1.ome.zarr/0: block shape \(1, 1, 16, 48, 64\) .* shard shape \(1, 1, 8, 32, 32\)"):
        plan_images(plan, cells, split, output)


def _result(**changes) -> PipelineResult:
    fields = dict(run_id=7, dataset="emb", snapshot_id="abc", params={"sigma": 1.0, "block_shape": [16, 128, 128]}, key="k1",
                  volumes=4, objects=12, tracks=3, divisions=1, log="/logs/pipeline-7.log",
                  promoted={"tables/objects.csv": "file:///t1/objects.csv"},
                  tier_usage=TierUsage(written_scratch=10, written_output=5, promoted=5, reclaimed=10), links={},
                  finished_at="2025-01-01T00:00:00+00:00", report_uri="file:///t1/report.json")
    return PipelineResult(**{**fields, **changes})


def test_a_result_serialises_and_reads_as_the_dict_it_replaced():
    result = _result()
    assert list(result.to_dict()) == ["run_id", "dataset", "snapshot_id", "params", "key", "volumes", "objects", "tracks",
                                      "divisions", "log", "promoted", "tier_usage", "links", "finished_at", "cached", "report_uri"]
    assert result["run_id"] == 7 and result["tier_usage"]["reclaimed"] == 10 and result.get("served_from_run") is None
    assert "report_uri" in result and "linking" not in result and dict(result) == result.to_dict()
    assert "report_uri" not in _result(report_uri=None)
    assert PipelineResult.from_record(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(TypeError):
        result["objects"] = 0  # type: ignore[index]


def test_a_served_result_keeps_the_key_order_the_runs_table_gives_back():
    served = _result().served(9, 7)
    data = served.to_dict()
    assert data["run_id"] == 9 and data["cached"] is True and list(data)[-1] == "served_from_run" and data["served_from_run"] == 7
    keys = list(data)[:-1]
    assert keys == sorted(keys, key=lambda k: (len(k), k))  # PostgreSQL jsonb: shortest key first
    assert list(data["tier_usage"]) == ["promoted", "reclaimed", "written_output", "written_scratch"]


def test_the_report_names_the_run_its_counts_and_its_outputs():
    markdown = render_report(_result())
    assert markdown.startswith("# tierflow pipeline run 7\n") and "**objects** 12 in 4 volume(s)" in markdown
    assert "| tables/objects.csv | `file:///t1/objects.csv` |" in markdown and "| reclaimed (this run's scratch) | 10 |" in markdown
    assert "**tracks** 3 (1 division(s))" in markdown
    assert "**tracks**" not in render_report(_result(tracks=0, divisions=0))  # a spec without [outputs] track tracks nothing
