"""Ingest with Tier 1 on S3 (SeaweedFS over HTTPS with a private CA): same id twice, no new
objects, zarr readable straight from Tier 1, and the S3 secret reaches no output, no Prefect
log or parameter, and no database row."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import text

from tierflow.configs import load_config, load_db_config
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.tiers import open_tiers

from conftest import run_cli


def _listing(client, bucket):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"]: (item["ETag"], item["LastModified"]) for page in pages for item in page.get("Contents", [])}


def _prefect_texts(api_url: str, flow_run_ids: list[str]) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def collect() -> str:
        async with get_client() as client:
            texts = []
            for run_id in flow_run_ids:
                run = await client.read_flow_run(run_id)
                texts.append(json.dumps(run.parameters, default=str))
                logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0)
                texts.extend(log.message for log in logs)
            return "\n".join(texts)

    return asyncio.run(collect())


def test_ingest_to_an_s3_tier_1(project, raw_folder, seaweedfs_https, prefect_api):
    bucket = seaweedfs_https.new_bucket()
    secret = seaweedfs_https.secret_key
    (project / "configs" / "tierflow.user.toml").write_text(
        f'[tiers.source]\nbackend = "s3"\nroot = "s3://{bucket}/lab"\nendpoint_url = "{seaweedfs_https.endpoint_url}"\n'
        f'access_key_id = "{seaweedfs_https.access_key}"\nsecret_access_key = "{secret}"\nverify = "{seaweedfs_https.verify}"\n'
        "multipart_threshold_mb = 5\nmultipart_chunk_mb = 5\n"
    )
    env = {"PREFECT_API_URL": prefect_api}
    first = run_cli("ingest", str(raw_folder), "--dataset", "embryo", "--json", cwd=project, env=env)
    result = json.loads(first.stdout)
    assert result["uri"] == f"s3://{bucket}/lab/snapshots/embryo/{result['snapshot_id']}" and result["uploaded"] == 8
    client = seaweedfs_https.boto3_client()
    before = _listing(client, bucket)
    assert f"lab/snapshots/embryo/{result['snapshot_id']}/manifest.json" in before
    assert len(before) == 9

    second = run_cli("ingest", str(raw_folder), "--dataset", "embryo", "--json", cwd=project, env=env)
    assert json.loads(second.stdout)["snapshot_id"] == result["snapshot_id"]
    assert _listing(client, bucket) == before  # not one object written or rewritten

    # every object verifies against the manifest, read back through the tier
    source = open_tiers(load_config(project / "configs")).source
    manifest = json.loads(source.get_bytes(f"snapshots/embryo/{result['snapshot_id']}/manifest.json"))
    for entry in manifest["files"]:
        assert source.sha256(f"snapshots/embryo/{result['snapshot_id']}/{entry['relative_path']}") == entry["sha256"]

    # the secret is nowhere a person or another program could see it
    outputs = [first, second, run_cli("config", cwd=project), run_cli("config", "--json", cwd=project),
               run_cli("tiers", cwd=project, env=env)]
    for done in outputs:
        assert secret not in done.stdout + done.stderr
    db = open_database(load_db_config(project / "configs"))
    with db.engine.connect() as connection:
        dump = "\n".join(str(row) for table in ("runs", "snapshots", "snapshot_files")
                         for row in connection.execute(text(f"SELECT * FROM {table}")))
        flow_run_ids = [str(r) for r in connection.execute(text("SELECT flow_run_id FROM runs")).scalars()]
    db.dispose()
    assert secret not in dump and len(flow_run_ids) == 2
    seen_by_prefect = _prefect_texts(prefect_api, flow_run_ids)
    assert result["snapshot_id"] in seen_by_prefect  # the logs did reach Prefect...
    assert secret not in seen_by_prefect  # ...and the secret did not
