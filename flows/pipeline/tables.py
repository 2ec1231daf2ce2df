"""A pipeline run's tables: every object of every volume (with its track id), tracks,
kinematics and MSD, as CSV files on the output tier."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tierflow.flows.pipeline.plan import VolumeJob
from tierflow.storage.db.database import Database
from tierflow.storage.db.repo import track_rows
from tierflow.storage.tiers import Tier

__all__ = ["write_tables"]


def write_tables(db: Database, feature_jobs: Sequence[VolumeJob], track_run: int | None, scratch: Tier, output: Tier,
                 work: str) -> dict[str, pd.DataFrame]:
    """``objects`` (the features tables of ``feature_jobs`` with sample, time point and track
    id), and ``tracks``, ``kinematics`` and ``msd`` of the track run ``track_run`` (none without one: a
    spec without ``[outputs] track`` gets no empty track tables), each written to
    ``<work>/tables/<name>.csv`` on ``output``; returns them by name."""
    frames = []
    for job in feature_jobs:
        where = job.output
        data = scratch.get_bytes(scratch.key_of(where)) if where.startswith("s3://") else Path(where).read_bytes()
        table = pd.read_csv(io.BytesIO(data))
        if "time_point" not in table:
            table.insert(0, "time_point", job.params["time_point"])
        table.insert(0, "sample", job.params["sample"])
        frames.append(table)
    objects = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    with db.session() as session:
        def frame(table: str) -> pd.DataFrame:
            stored = track_rows(session, table, track_run)
            return pd.DataFrame(stored.rows, columns=list(stored.columns))

        tables = {"objects": objects}
        if track_run is not None:
            tables |= {"tracks": frame("points"), "kinematics": frame("kinematics"), "msd": frame("msd")}
    if "tracks" in tables and not tables["tracks"].empty and not objects.empty:
        ids = tables["tracks"][["sample", "time_point", "label", "track_id"]]
        tables["objects"] = objects.merge(ids, on=["sample", "time_point", "label"], how="left")
    for name, table in tables.items():
        output.put_bytes(f"{work}/tables/{name}.csv", table.to_csv(index=False).encode())
    return tables
