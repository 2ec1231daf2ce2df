"""Retention never deletes what is neither promoted nor fully consumed (unless expired by age
and unpinned), never touches Tier 1, and a dry run lists exactly what the real run deletes."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from tierflow.storage.db.models import Artifact, Base, RetentionEvent
from tierflow.storage.db.repo import add_artifact, mark_promoted, record_snapshot
from tierflow.storage.promotion import promote_tree
from tierflow.storage.retention import RetentionRules, apply_retention, plan_retention
from tierflow.storage.tiers import PosixTier

# -- a history is a list of steps ------------------------------------------------------------
derive = st.tuples(st.just("derive"), st.sampled_from(["scratch", "output"]), st.lists(st.integers(0, 30), max_size=3), st.booleans())
promote = st.tuples(st.just("promote"), st.integers(0, 30))
advance = st.tuples(st.just("advance"), st.sampled_from([1, 5, 8, 20, 40]))
retention = st.tuples(st.just("retention"))
histories = st.lists(st.one_of(derive, derive, promote, advance, retention), min_size=1, max_size=25)
rules_strategy = st.builds(
    RetentionRules,
    scratch_max_age_days=st.sampled_from([None, 30.0]),
    output_grace_days=st.sampled_from([0.0, 7.0]),
    ephemeral_max_age_days=st.just(None),
)


class Model:
    """The test's own bookkeeping of what retention may delete (independent of storage.retention)."""

    def __init__(self) -> None:
        self.artifacts: dict[int, dict] = {}

    def consumed(self, artifact_id: int, seen: frozenset = frozenset()) -> bool:
        artifact = self.artifacts[artifact_id]
        if artifact["promoted_at"] is not None:
            return True
        children = [i for i, a in self.artifacts.items() if artifact_id in a["inputs"]]
        if not children or artifact_id in seen:
            return False
        return all(self.consumed(child, seen | {artifact_id}) for child in children)

    def expected_deletions(self, rules: RetentionRules, now: datetime) -> set[int]:
        expected = set()
        for artifact_id, a in self.artifacts.items():
            if a["deleted"] or a["pinned"]:
                continue
            if a["tier"] == "scratch":
                aged = rules.scratch_max_age_days is not None and now - a["created_at"] > timedelta(days=rules.scratch_max_age_days)
                if self.consumed(artifact_id) or aged:
                    expected.add(artifact_id)
            elif a["promoted_at"] is not None and now - a["promoted_at"] > timedelta(days=rules.output_grace_days):
                expected.add(artifact_id)
        return expected


@pytest.fixture
def tiers(tmp_path):
    return {
        "source": PosixTier("source", tmp_path / "t1", write_once=True),
        "output": PosixTier("output", tmp_path / "t2"),
        "scratch": PosixTier("scratch", tmp_path / "t3"),
    }


def _reset(db, tiers) -> None:
    with db.engine.begin() as connection:
        names = ", ".join(table.name for table in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    for tier in tiers.values():
        shutil.rmtree(tier.root, ignore_errors=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories, rules=rules_strategy)
def test_retention_property_over_generated_histories(db, tiers, history, rules):
    _reset(db, tiers)
    model = Model()
    now = datetime.now(UTC)
    managed = {name: tier for name, tier in tiers.items() if name != "source"}
    with db.session() as session:
        snapshot = record_snapshot(session, dataset="d", snapshot_id="s", uri="u", manifest_sha256="m" * 64, files=[])
        snapshot_pk = snapshot.id
    for step in history:
        if step[0] == "derive":
            _, tier_name, picks, pinned = step
            live = sorted(model.artifacts)
            inputs = sorted({live[p % len(live)] for p in picks}) if live else []
            index = len(model.artifacts)
            key = f"a{index}/data.bin"
            info = tiers[tier_name].put_bytes(key, os.urandom(64 + index))
            with db.session() as session:
                artifact = add_artifact(
                    session, kind="blob", name=f"a{index}", tier=tier_name, uri=tiers[tier_name].uri(f"a{index}"),
                    bytes=info.size, sha256=None, dataset="d", snapshot_pk=snapshot_pk,
                    inputs=inputs, input_snapshots=[] if inputs else [snapshot_pk],
                )
                artifact.created_at = now
                artifact.pinned = pinned
                model.artifacts[artifact.id] = {"tier": tier_name, "inputs": set(inputs), "pinned": pinned,
                                                "promoted_at": None, "created_at": now, "deleted": False}
        elif step[0] == "promote" and model.artifacts:
            artifact_id = sorted(model.artifacts)[step[1] % len(model.artifacts)]
            a = model.artifacts[artifact_id]
            if a["deleted"] or a["promoted_at"] is not None:
                continue
            tier = tiers[a["tier"]]
            result = promote_tree(tier, f"a{artifact_id - 1}", tiers["source"], f"promoted/a{artifact_id - 1}")
            with db.session() as session:
                mark_promoted(session, session.get(Artifact, artifact_id), result.uri, at=now)
            a["promoted_at"] = now
        elif step[0] == "advance":
            now += timedelta(days=step[1])
        elif step[0] == "retention":
            tier1_before = sorted((i.key, i.size) for i in tiers["source"].list(""))
            expected = model.expected_deletions(rules, now)
            with db.session() as session:
                dry = plan_retention(session, managed, rules, now)
            assert {item.artifact_id for item in dry} == expected
            with db.session() as session:
                real_plan = plan_retention(session, managed, rules, now)
                done = apply_retention(session, managed, real_plan, run_id=None, now=now)
            assert [(i.uri, i.bytes) for i in done] == [(i.uri, i.bytes) for i in dry]
            for item in done:
                model.artifacts[item.artifact_id]["deleted"] = True
                assert not tiers[item.tier].exists(f"{tiers[item.tier].key_of(item.uri)}/data.bin")
            # every artifact still present on disk is one the model says is live
            for artifact_id, a in model.artifacts.items():
                assert tiers[a["tier"]].exists(f"a{artifact_id - 1}/data.bin") == (not a["deleted"])
            assert sorted((i.key, i.size) for i in tiers["source"].list("")) == tier1_before
    with db.session() as session:
        events = session.scalars(select(RetentionEvent)).all()
        assert len(events) == sum(a["deleted"] for a in model.artifacts.values())


def test_ephemeral_logs_rotate_by_age_and_state_is_never_touched(db, tmp_path):
    ephemeral = PosixTier("ephemeral", tmp_path / "t4")
    for key in ("logs/old.log", "logs/new.log", "tmp/old.tmp", "state/postgres/old.conf"):
        ephemeral.put_bytes(key, b"12345")
    old = time.time() - 30 * 86400
    for key in ("logs/old.log", "tmp/old.tmp", "state/postgres/old.conf"):
        os.utime(ephemeral.root / key, (old, old))
    rules = RetentionRules(scratch_max_age_days=None, output_grace_days=7, ephemeral_max_age_days=14)
    with db.session() as session:
        plan = plan_retention(session, {"ephemeral": ephemeral}, rules, datetime.now(UTC))
        assert sorted(item.key for item in plan) == ["logs/old.log", "tmp/old.tmp"]
        assert {item.action for item in plan} == {"rotated"}
        apply_retention(session, {"ephemeral": ephemeral}, plan, run_id=None, now=datetime.now(UTC))
    assert sorted(i.key for i in ephemeral.list("")) == ["logs/new.log", "state/postgres/old.conf"]


def test_retention_refuses_a_plan_that_names_tier_1(db, tmp_path):
    from tierflow.storage.errors import TierError
    from tierflow.storage.retention import PlannedDeletion

    source = PosixTier("source", tmp_path / "t1", write_once=True)
    source.put_bytes("snapshots/x", b"1")
    with db.session() as session, pytest.raises(TierError, match="write-once"):
        apply_retention(
            session,
            {"source": source},
            [PlannedDeletion("source", "snapshots/x", source.uri("snapshots/x"), 1, "?")],
            run_id=None,
            now=datetime.now(UTC),
        )
    assert source.exists("snapshots/x")


@pytest.mark.parametrize("backend", ["posix", "s3"])
def test_label_merge_state_is_counted_and_reclaimed_with_its_array(backend, project, prefect_api, request):
    """A label output's merge state (``labels.zarr.tierflow-label/``) is reclaimed with the array."""
    import json

    import numpy as np
    import zarr

    from tierflow.configs import load_config, load_db_config
    from tierflow.flows.runtime.database import open_database
    from tierflow.flows.runtime.tiers import open_tiers
    from tierflow.storage.db.repo import start_run

    from conftest import run_cli

    if backend == "s3":
        s3 = request.getfixturevalue("seaweedfs_http")
        bucket = s3.new_bucket()
        (project / "configs" / "tierflow.user.toml").write_text(
            f'[tiers.scratch]\nbackend = "s3"\nroot = "s3://{bucket}/scratch"\nendpoint_url = "{s3.endpoint_url}"\n'
            f'access_key_id = "{s3.access_key}"\nsecret_access_key = "{s3.secret_key}"\n'
        )
    blobs = (np.random.default_rng(3).random((16, 64, 64)) > 0.7).astype(np.uint8)
    zarr.create_array(str(project / "blobs.zarr"), shape=blobs.shape, chunks=(8, 32, 32), dtype="uint8")[:] = blobs
    tiers = open_tiers(load_config(project / "configs"))
    scratch, key = tiers.scratch, "run-1/labels.zarr"
    env = {"PREFECT_API_URL": prefect_api}
    output = scratch.uri(key) if backend == "s3" else scratch.uri(key)[len("file://") :]
    run_cli("op", "label", "-i", "blobs.zarr", "-o", output, "--block-shape", "8,16,16", "--json", cwd=project, env=env)
    array_bytes, state_bytes = scratch.usage(key), scratch.usage(f"{key}.tierflow-label")
    assert array_bytes > 0 and state_bytes > 0

    db = open_database(load_db_config(project / "configs"))
    with db.session() as session:
        run = start_run(session, flow_name="pipeline")
        artifact = add_artifact(
            session, kind="zarr", name="labels.zarr", tier="scratch", uri=scratch.uri(key), bytes=array_bytes, run_id=run.id
        )
        mark_promoted(session, artifact, promoted_uri="file:///tier1/labels.zarr")
    db.dispose()
    dry = json.loads(run_cli("retention", "--dry-run", "--json", cwd=project, env=env).stdout)
    assert [(item["uri"], item["bytes"]) for item in dry["plan"]] == [(scratch.uri(key), array_bytes + state_bytes)]
    assert dry["accounting"]["scratch"]["reclaimable"] == array_bytes + state_bytes
    run_cli("retention", "--json", cwd=project, env=env)
    assert list(scratch.list("run-1")) == []  # the array and its merge state
