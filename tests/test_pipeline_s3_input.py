"""The pipeline with Tier 1 on S3 (SeaweedFS) never reuses a broken download (issue 11, point 5).

Issue 11: a raw TIFF whose download was cut mid-stream left a 32-byte file in Tier 4 tmp that
every later run and resume reused. Here that file is put where the pipeline downloads to; the run
must fetch the volume again, leave a copy matching the snapshot manifest, and complete.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture
def small_raw(tmp_path):
    from tierflow.tasks.synthetic import SyntheticSpec, write_synthetic_raw

    raw = tmp_path / "raw"
    write_synthetic_raw(raw, SyntheticSpec(samples=1, time_points=2, shape=(16, 64, 64), cells=3, divisions=0, touching_pairs=0))
    return raw


def test_a_truncated_download_in_tier_4_tmp_is_fetched_again(project, small_raw, seaweedfs_http, prefect_api):
    from tierflow.configs import load_config
    from tierflow.flows.pipeline.flow import PipelineParams, pipeline_key

    bucket = seaweedfs_http.new_bucket()
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{seaweedfs_http.endpoint_url}"\n'
        f'access_key_id = "{seaweedfs_http.access_key}"\nsecret_access_key = "{seaweedfs_http.secret_key}"\nverify = false\n'
    )
    env = {"PREFECT_API_URL": prefect_api}
    snapshot = json.loads(run_cli("ingest", str(small_raw), "--dataset", "embryo", "--json", cwd=project, env=env).stdout)
    config = load_config(project / "configs")
    key = pipeline_key("embryo", snapshot["snapshot_id"], PipelineParams.from_config(config))
    client = seaweedfs_http.boto3_client()
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=f"lab/snapshots/embryo/{snapshot['snapshot_id']}/manifest.json")["Body"].read()
    )
    first = manifest["files"][0]
    broken = Path(config.tier_root("ephemeral")) / "tmp" / f"pipeline-{key}" / first["relative_path"]
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"II*\0" + b"\0" * 28)  # the 32 bytes a cut-off download left behind

    result = json.loads(
        run_cli("run", "pipeline", "--dataset", "embryo", "--snapshot", snapshot["snapshot_id"], "--json", cwd=project, env=env).stdout
    )
    assert hashlib.sha256(broken.read_bytes()).hexdigest() == first["sha256"] and broken.stat().st_size == first["bytes"]
    assert result["objects"] > 0
