"""Snapshots and their file manifests."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from tierflow.storage.db.models import Snapshot, SnapshotFile
from tierflow.storage.errors import TierflowError
from tierflow.storage.snapshots import ManifestEntry

__all__ = [
    "ManifestEntry",
    "get_snapshot",
    "list_snapshots",
    "match_snapshots",
    "record_snapshot",
    "snapshot_by_pk",
    "snapshot_files",
    "snapshot_paths",
]


def record_snapshot(
    session: Session,
    *,
    dataset: str,
    snapshot_id: str,
    uri: str,
    manifest_sha256: str,
    files: Iterable[ManifestEntry],
    run_id: int | None = None,
) -> Snapshot:
    """Record a snapshot and its files; recording the same snapshot again returns the first row.

    Raises
    ------
    TierflowError
        If ``dataset``/``snapshot_id`` exists with a different manifest.
    """
    existing = get_snapshot(session, dataset, snapshot_id)
    if existing is not None:
        if existing.manifest_sha256 != manifest_sha256:
            raise TierflowError(
                f"snapshot {dataset}/{snapshot_id} is recorded with manifest {existing.manifest_sha256[:12]}, "
                f"not {manifest_sha256[:12]}: snapshots are immutable"
            )
        return existing
    entries = list(files)
    snapshot = Snapshot(
        dataset=dataset,
        snapshot_id=snapshot_id,
        uri=uri,
        manifest_sha256=manifest_sha256,
        file_count=len(entries),
        total_bytes=sum(entry.bytes for entry in entries),
        run_id=run_id,
    )
    session.add(snapshot)
    session.flush()
    session.add_all(
        SnapshotFile(
            snapshot_pk=snapshot.id,
            relative_path=entry.relative_path,
            bytes=entry.bytes,
            sha256=entry.sha256,
            media_type=entry.media_type,
        )
        for entry in entries
    )
    session.flush()
    return snapshot


def get_snapshot(session: Session, dataset: str, snapshot_id: str) -> Snapshot | None:
    """The snapshot ``dataset/snapshot_id``, or ``None``."""
    return session.scalars(
        select(Snapshot).where(Snapshot.dataset == dataset, Snapshot.snapshot_id == snapshot_id)
    ).one_or_none()


def snapshot_by_pk(session: Session, snapshot_pk: int) -> Snapshot | None:
    """The snapshot whose row id is ``snapshot_pk``, or ``None``."""
    return session.get(Snapshot, snapshot_pk)


def match_snapshots(session: Session, dataset: str, prefix: str) -> list[Snapshot]:
    """The snapshots of ``dataset`` whose id starts with ``prefix`` (one, if the prefix is unique)."""
    return list(session.scalars(
        select(Snapshot).where(Snapshot.dataset == dataset, Snapshot.snapshot_id.startswith(prefix)).order_by(Snapshot.id)
    ))


def list_snapshots(session: Session, dataset: str | None = None) -> list[Snapshot]:
    """Snapshots, newest first, optionally of one dataset."""
    query = select(Snapshot).order_by(Snapshot.id.desc())
    if dataset is not None:
        query = query.where(Snapshot.dataset == dataset)
    return list(session.scalars(query))


def snapshot_files(session: Session, snapshot: Snapshot) -> list[SnapshotFile]:
    """The manifest rows of a snapshot, by path."""
    return list(
        session.scalars(
            select(SnapshotFile).where(SnapshotFile.snapshot_pk == snapshot.id).order_by(SnapshotFile.relative_path)
        )
    )


def snapshot_paths(session: Session, snapshot_pk: int) -> list[str]:
    """The relative paths of the files of snapshot ``snapshot_pk``, sorted."""
    return sorted(session.scalars(select(SnapshotFile.relative_path).where(SnapshotFile.snapshot_pk == snapshot_pk)))
