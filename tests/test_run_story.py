"""Runs that tell their story: flow-run names that say what runs, progress artifacts of one run
each, table artifacts of what retention and promotion did, the terminal's progress (a line per
stage without a TTY), ``status`` of a pipeline from its child runs, ``runs list`` of top-level
runs, and ``--force`` recomputing every block. One small pipeline run (real PostgreSQL, the
session's real Prefect server, the installed ``tierflow`` command) serves most checks."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from sqlalchemy import text

from conftest import REPO_ROOT, run_cli

STAGES = ("stage", "smooth", "threshold", "label", "features", "image")


def _db(root: Path):
    from tierflow.configs import load_db_config
    from tierflow.flows.runtime.database import open_database

    return open_database(load_db_config(root / "configs"))


def _flow_run_names(flow_run_ids: list[str]) -> dict[str, str]:
    from prefect.client.orchestration import get_client

    async def read() -> dict[str, str]:
        async with get_client() as client:
            return {str(i): (await client.read_flow_run(i)).name for i in flow_run_ids}

    return asyncio.run(read())


def _artifacts(key: str, limit: int = 5) -> list[dict]:
    """Artifacts of ``key``, newest first (the REST filter, as tests/test_pipeline.py reads them)."""
    from prefect.client.orchestration import get_client

    async def read() -> list[dict]:
        async with get_client() as client:
            response = await client._client.post(
                "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "limit": limit, "sort": "CREATED_DESC"})
            response.raise_for_status()
            return response.json()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def story(tmp_path_factory, prefect_api):
    """``tierflow run pipeline`` without a TTY and without --json, on a tiny raw folder."""
    from tierflow.storage.db.embedded import EmbeddedPostgres
    from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw

    root = tmp_path_factory.mktemp("story")
    (root / "configs").mkdir()
    for default in (REPO_ROOT / "configs").glob("*.def.toml"):
        shutil.copy(default, root / "configs" / default.name)
    write_synthetic_raw(root / "raw", SyntheticSpec(samples=1, time_points=2, shape=(16, 64, 64), cells=3, divisions=0, touching_pairs=0))
    env = {"PREFECT_API_URL": prefect_api}
    done = run_cli("run", "pipeline", "--dataset", "story", "--raw", str(root / "raw"), "--param", "sigma=1.5", cwd=root, env=env)
    db = _db(root)
    with db.session() as session:
        run_id, snapshot, flow_run_id = session.execute(text(
            "SELECT id, parameters->>'snapshot', flow_run_id FROM runs WHERE flow_name = 'pipeline'")).one()
    yield {"root": root, "env": env, "out": done, "run": run_id, "snapshot": snapshot, "flow_run_id": str(flow_run_id), "db": db}
    db.dispose()
    EmbeddedPostgres(root / "var" / "tier4-ephemeral" / "state" / "postgres").stop()


def test_without_a_tty_the_pipeline_prints_where_to_watch_it_and_a_line_per_stage(story, prefect_api):
    stderr = story["out"].stderr
    lines = stderr.splitlines()
    for stage in STAGES:
        assert any(line.startswith(f"{stage}: ") and " blocks in " in line for line in lines), (stage, stderr)
    # promotion of the results, then of the report, and the reclaiming of scratch: one line each
    for stage, unit in (("promote", "artifacts"), ("promote report", "artifacts"), ("retention", "items deleted")):
        said = [line for line in lines if line.startswith(f"{stage}: ")]
        assert len(said) == 1 and f" {unit} in " in said[0], (stage, stderr)
    assert f"run {story['run']}: pipeline cells story@{story['snapshot'][:8]} sigma=1.5" in stderr
    ui = prefect_api.removesuffix("/api")
    assert f"Prefect UI: {ui}/runs/flow-run/{story['flow_run_id']}" in stderr
    assert "Traceback" not in stderr and f"pipeline run {story['run']}" in story["out"].stdout


def test_flow_run_names_say_what_runs(story, prefect_api):
    with story["db"].session() as session:
        children = session.execute(text(
            "SELECT flow_name, parameters->>'stage', flow_run_id FROM runs WHERE parent_id = :r AND flow_run_id IS NOT NULL"),
            {"r": story["run"]}).all()
        ingest = session.execute(text("SELECT flow_run_id FROM runs WHERE flow_name = 'ingest'")).scalar_one()
    names = _flow_run_names([story["flow_run_id"], str(ingest), *(str(c[2]) for c in children)])
    assert names[story["flow_run_id"]] == f"pipeline cells story@{story['snapshot'][:8]} sigma=1.5"
    assert names[str(ingest)] == "ingest story from raw/"
    named = {names[str(flow_run)] for _, _, flow_run in children}
    assert {"stage: convert, 4 volumes", "smooth: gaussian, 2 volumes", "threshold: threshold, 2 volumes", "label: label, 2 volumes",
            "features: features, 2 volumes", f"promote run {story['run']}", f"retention of run {story['run']}'s scratch"} <= named, named
    assert any(name.startswith("track 2 features runs (") and name.endswith("max distance 15.0") for name in named), named


def _key(run: int, stage: str, flow_run: str) -> str:
    from tierflow.flows.runtime.progress import progress_key

    return progress_key(run, stage, flow_run)


def test_progress_artifacts_belong_to_their_run(story, prefect_api):
    for stage in STAGES:
        progress = _artifacts(_key(story["run"], stage, story["flow_run_id"]))
        assert len(progress) == 1 and float(progress[0]["data"]) == 100.0, stage
    with story["db"].session() as session:
        track_run = session.execute(text("SELECT id FROM runs WHERE flow_name = 'track' AND parent_id = :r"),
                                    {"r": story["run"]}).scalar_one()
    assert float(_artifacts(_key(track_run, "track", story["flow_run_id"]))[0]["data"]) == 100.0
    promoted = _artifacts("promotion")
    assert promoted and any(r["tier1_uri"].endswith("report.json") for r in json.loads(promoted[0]["data"]))


def test_status_of_a_pipeline_lists_its_stages_with_the_ledger_counts(story):
    status = json.loads(run_cli("status", str(story["run"]), "--json", cwd=story["root"], env=story["env"]).stdout)
    with story["db"].session() as session:
        ledger = dict(session.execute(text(
            "SELECT coalesce(r.parameters->>'stage' || ': ', '') || b.op, count(DISTINCT (b.array_uri, b.block_id)) "
            "FROM block_ledger b JOIN runs r ON r.id = b.run_id WHERE (r.id = :r OR r.parent_id = :r) AND b.status = 'done' "
            "GROUP BY 1"), {"r": story["run"]}).all())
    assert {name: figures["done"] for name, figures in status["stages"].items()} == ledger
    assert {"stage: convert", "smooth: gaussian", "threshold: threshold", "label: label:relabel", "features: features"} <= set(ledger)


def test_runs_list_shows_top_level_runs_unless_all(story):
    top = json.loads(run_cli("runs", "list", "--json", cwd=story["root"]).stdout)
    everything = json.loads(run_cli("runs", "list", "--all", "--limit", "1000", "--json", cwd=story["root"]).stdout)
    assert all(r["parent"] is None for r in top) and story["run"] in {r["id"] for r in top}
    children = [r for r in everything if r["parent"] == story["run"]]
    assert {r["flow"] for r in children} == {"ingest", "op", "track", "promote", "retention"}  # its ingest ran before its row: adopted
    assert len(everything) == len(top) + len(children)
    # the table says how many there are beyond what it shows
    shown = run_cli("runs", "list", "--all", "--limit", "3", cwd=story["root"]).stdout
    assert f"3 of {len(everything)} runs (`--limit N` for more)" in " ".join(shown.split())
    shown = run_cli("runs", "list", cwd=story["root"]).stdout
    assert f"{len(top)} of {len(top)} top-level runs (`--all` for the runs inside them)" in " ".join(shown.split())


def test_runs_show_folds_deleted_scratch_and_prints_text(story):
    shown = run_cli("runs", "show", str(story["run"]), cwd=story["root"]).stdout
    with story["db"].session() as session:
        deleted = session.execute(text("SELECT count(*) FROM artifacts WHERE run_id = :r AND tier = 'scratch' AND deleted_at IS NOT NULL"),
                                  {"r": story["run"]}).scalar_one()
    assert deleted > 0 and f"{deleted} scratch artifact(s) deleted" in shown
    assert "{'" not in shown and "sigma=1.5" in shown and "dataset=story" in shown


def test_a_retention_dry_run_ends_with_a_table_of_what_it_would_delete(story, prefect_api):
    env = {**story["env"], "TIERFLOW_RETENTION__OUTPUT_GRACE_DAYS": "0"}  # promoted outputs become reclaimable
    dry = json.loads(run_cli("retention", "--dry-run", "--json", cwd=story["root"], env=env).stdout)
    assert dry["plan"]
    table = json.loads(_artifacts("retention-dry-run")[0]["data"])
    assert [(r["uri"], r["bytes"], r["reason"]) for r in table] == [(i["uri"], i["bytes"], i["reason"]) for i in dry["plan"]]
    assert {r["action"] for r in table} == {"would be deleted"}


def test_a_cached_pipeline_run_says_so_in_its_name(story, prefect_api):
    again = json.loads(run_cli("run", "pipeline", "--dataset", "story", "--snapshot", story["snapshot"], "--param", "sigma=1.5",
                               "--json", cwd=story["root"], env=story["env"]).stdout)
    assert again["cached"] is True and again["served_from_run"] == story["run"]
    with story["db"].session() as session:
        flow_run = session.execute(text("SELECT flow_run_id FROM runs WHERE id = :r"), {"r": again["run_id"]}).scalar_one()
    name = _flow_run_names([str(flow_run)])[str(flow_run)]
    assert name == f"pipeline cells story@{story['snapshot'][:8]} sigma=1.5 (cached: run {story['run']}'s results)"


def test_force_recomputes_every_block_to_the_same_results(story, prefect_api):
    root, env = story["root"], story["env"]
    with story["db"].session() as session:
        first = session.execute(text("SELECT result FROM runs WHERE id = :r"), {"r": story["run"]}).scalar_one()
    forced = json.loads(run_cli("run", "pipeline", "--dataset", "story", "--snapshot", story["snapshot"], "--param", "sigma=1.5",
                                "--force", "--json", cwd=root, env=env).stdout)
    assert forced["cached"] is False and forced["run_id"] != story["run"]  # without --force it was served from the first run
    with story["db"].session() as session:
        rows = session.execute(text(
            "SELECT r.parameters->>'stage', (r.result->>'blocks')::int, (r.result->>'computed')::int FROM runs r "
            "WHERE r.parent_id = :r AND r.flow_name = 'op'"), {"r": forced["run_id"]}).all()
        kept = session.execute(text("SELECT count(*) FROM block_ledger b JOIN runs r ON r.id = b.run_id WHERE r.parent_id = :r"),
                               {"r": story["run"]}).scalar_one()
    assert rows and all(blocks == computed for _, blocks, computed in rows), rows
    assert kept > 0  # the first run's ledger rows stay as history
    objects = {run: pd.read_csv(Path(result["promoted"]["tables/objects.csv"][len("file://"):]))
               for run, result in (("first", first), ("forced", forced))}
    pd.testing.assert_frame_equal(objects["forced"], objects["first"])
    assert f"/run-{forced['run_id']}/" in forced["promoted"]["report.json"]  # Tier 1: a new place; the first results stay
    assert Path(first["promoted"]["report.json"][len("file://"):]).is_file()
    forced_flow_run = json.loads(run_cli("runs", "show", str(forced["run_id"]), "--json", cwd=story["root"], env=story["env"]).stdout)[
        "flow_run_id"]
    for stage in ("smooth", "label"):  # two runs, two progress artifacts: neither updates the other's
        assert float(_artifacts(_key(forced["run_id"], stage, forced_flow_run))[0]["data"]) == 100.0
        assert len(_artifacts(_key(story["run"], stage, story["flow_run_id"]))) == 1


def test_op_force_recomputes_every_block_and_names_its_run(project, prefect_api):
    env = {"PREFECT_API_URL": prefect_api}
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, size=(8, 32, 32), dtype=np.uint16)
    zarr.create_array(str(project / "vol.zarr"), shape=data.shape, chunks=(4, 16, 16), dtype=data.dtype)[:] = data
    args = ("op", "threshold", "-i", "vol.zarr", "-o", "mask.zarr", "-p", "value=2000", "--block-shape", "4,16,16", "--json")
    first = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    again = json.loads(run_cli(*args, cwd=project, env=env).stdout)
    forced = json.loads(run_cli(*args, "--force", cwd=project, env=env).stdout)
    assert (first["computed"], again["computed"], forced["computed"]) == (8, 0, 8) and forced["blocks"] == 8
    assert np.array_equal(zarr.open_array(str(project / "mask.zarr"))[:], (data > 2000).astype(np.uint8))
    db = _db(project)
    try:
        with db.session() as session:
            flow_run = session.execute(text("SELECT flow_run_id FROM runs WHERE id = :r"), {"r": forced["run_id"]}).scalar_one()
            done = dict(session.execute(text("SELECT run_id, count(*) FROM block_ledger WHERE status = 'done' GROUP BY run_id")).all())
    finally:
        db.dispose()
    assert done == {first["run_id"]: 8, forced["run_id"]: 8}
    assert _flow_run_names([str(flow_run)])[str(flow_run)] == "threshold vol.zarr→mask.zarr value=2000"
