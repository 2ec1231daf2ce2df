"""The ``ingest`` flow: a raw folder becomes an immutable, content-addressed snapshot on Tier 1.

1. check the raw layout and every TIFF whole (one clear message listing every problem);
2. hash every file (batched tasks) -> manifest (with, per image file, the volumes inside it:
   sample, position, channel, time point, shape, dtype, voxel size, channel name) ->
   ``snapshot_id`` from the content;
3. upload the files to ``snapshots/<dataset>/<snapshot_id>/`` (write-once; identical copies
   already there are kept, different ones refused);
4. write ``manifest.json`` last (the commit marker);
5. record the snapshot, its files and the run in PostgreSQL.

Ingesting the same files again finds the committed manifest and uploads nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped

from tierflow.configs import load_config, load_db_config
from tierflow.flows.execution.batching import split_batches
from tierflow.flows.runtime.database import open_database
from tierflow.flows.runtime.progress import StageProgress
from tierflow.flows.runtime.run_names import ingest_run_name
from tierflow.flows.runtime.runs import recorded_run
from tierflow.flows.runtime.tiers import open_tiers
from tierflow.storage.db.repo import record_snapshot
from tierflow.storage.raw_layout import check_raw_folder
from tierflow.storage.raw_report import volume_records
from tierflow.storage.snapshots import Manifest, commit_manifest, list_raw_files, read_manifest
from tierflow.storage.tiers import check_name
from tierflow.tasks.ingest import hash_raw_files, upload_snapshot_files

__all__ = ["ingest"]

MAX_BATCHES = 32


@flow(name="ingest", log_prints=False, flow_run_name=ingest_run_name)
def ingest(raw_dir: str, dataset: str, config_dir: str | None = None, parent_run: int | None = None) -> dict[str, Any]:
    """Snapshot ``raw_dir`` as dataset ``dataset`` on Tier 1.

    Parameters
    ----------
    raw_dir
        A folder in tierflow's raw layout (see ``storage.raw_layout``).
    dataset
        Dataset name: letters, digits, ``.``, ``_``, ``-``.
    config_dir
        A configs folder; default: found upward from the working directory.

    Returns
    -------
    dict
        ``snapshot_id``, ``uri``, ``files``, ``bytes``, ``uploaded``, ``present``, ``new``.
    """
    logger = get_run_logger()
    check_name(dataset, "dataset")
    raw = Path(raw_dir).expanduser().resolve()
    check_raw_folder(raw)
    config = load_config(config_dir)
    from tierflow.storage.zarr_codecs import use_codec_pipeline  # imports zarr: only when it runs

    use_codec_pipeline(config.execution.codec_pipeline)
    source = open_tiers(config).source
    db = open_database(load_db_config(config_dir), migrate=True)
    with recorded_run(db, "ingest", {"raw_dir": str(raw), "dataset": dataset}, parent_id=parent_run) as run_id:
        paths = list_raw_files(raw)
        hashing = StageProgress("ingest-hash", len(paths), run=int(run_id), unit="files")
        hashed = []
        for future in hash_raw_files.map(unmapped(str(raw)), unmapped(dataset), split_batches(paths, MAX_BATCHES, min_batch=8)):
            hashed.append(future.result())
            hashing.advance(len(hashed[-1]))
        hashing.finish()
        records = volume_records(raw)
        manifest = Manifest(dataset, tuple(replace(entry, volumes=records.get(entry.relative_path, ()))
                                           for batch in hashed for entry in batch))
        logger.info(
            "dataset %s: %d files, %d bytes -> snapshot %s", dataset, len(manifest.files), manifest.total_bytes, manifest.snapshot_id
        )

        committed = read_manifest(source, dataset, manifest.snapshot_id)
        totals = {"uploaded": 0, "present": len(manifest.files) if committed else 0, "bytes": 0}
        if committed is None:
            batches = split_batches(list(manifest.files), MAX_BATCHES, min_batch=4)
            uploading = StageProgress("ingest-upload", len(manifest.files), run=int(run_id), unit="files")
            futures = upload_snapshot_files.map(unmapped(source), unmapped(manifest), unmapped(str(raw)), batches)
            for future, batch in zip(futures, batches, strict=True):
                counts = future.result()
                uploading.advance(len(batch))
                for key in totals:
                    totals[key] += counts[key]
            uploading.finish()
        manifest_sha256, new = commit_manifest(source, manifest)
        with db.session() as session:
            record_snapshot(
                session,
                dataset=dataset,
                snapshot_id=manifest.snapshot_id,
                uri=source.uri(manifest.prefix),
                manifest_sha256=manifest_sha256,
                files=manifest.files,
                run_id=run_id,
            )
        logger.info("snapshot %s: %d uploaded, %d already present", manifest.snapshot_id, totals["uploaded"], totals["present"])
        return {
            "snapshot_id": manifest.snapshot_id,
            "dataset": dataset,
            "uri": source.uri(manifest.prefix),
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "uploaded": totals["uploaded"],
            "present": totals["present"],
            "new": new,
            "run_id": run_id,
        }
