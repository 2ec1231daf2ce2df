"""Views for what people query: objects of a pipeline run, tracks, blocks per stage.

Why: the results are normalised (objects, one row per channel of intensities, track points of
a track run that names its features runs in its parameters, op runs under a pipeline run), so
"the objects of run R with their track ids and channel means" took four joins and a pivot.
These views answer it in one ``SELECT ... WHERE pipeline_run = R``, for psql, DBeaver and
pandas alike, with column names that need no quoting (``first_time_point`` rather than
``start``, ``started_at``/``ended_at`` rather than ``start``/``end``).

* ``pipeline_objects``: one row per object (label at a time point of a sample) stored by a
  ``features`` run, keyed by ``pipeline_run`` (the pipeline run the features op ran in, or the
  features run itself when it ran on its own) and ``features_run``; the track id comes from
  the newest ``track`` run (completed first) that tracked that features run (NULL when none
  did). SQL views have fixed columns, so the per-channel means are pivoted for the channels
  named ``c0`` ... ``c7`` (what a pipeline calls raw channels 0-7) into ``c0_mean`` ...
  ``c7_mean``; every channel (any name, any number) with min, max, mean and sum is in the
  ``intensities`` JSON column (``intensities -> 'c1' ->> 'sum'``).
* ``track_summary``: one row per track of a ``track`` run with its kinematics, duration,
  straightness, MSD slope and the units the run recorded.
* ``stage_blocks``: the block ledger per pipeline run, stage and op: attempts by status,
  retries, seconds, bytes and first/last times. The stage is the folder of the op's output
  (a pipeline writes stage ``s`` under ``<work>/s/``), or for blocks the pipeline run wrote
  itself (sample images, their pyramid levels) the op's name before any ``:``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL_COLUMNS = 8
"""Channels ``c0`` ... ``c7`` get a ``<channel>_mean`` column in ``pipeline_objects``."""

_CHANNEL_MEANS = ",\n           ".join(f"max(i.mean) FILTER (WHERE i.channel = 'c{n}') AS c{n}_mean" for n in range(CHANNEL_COLUMNS))

PIPELINE_OBJECTS = f"""
CREATE VIEW pipeline_objects AS
WITH track_of AS (
    -- each features run a track run names in its parameters ("runs": [...]), and the newest
    -- (completed first) such track run: one pass over the track runs' lists, no pairwise search
    SELECT DISTINCT ON (x.features_run) x.features_run, t.id AS track_run
    FROM runs t
    CROSS JOIN LATERAL (
        SELECT CASE WHEN e.value ~ '^[0-9]+$' THEN e.value::bigint END AS features_run
        FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof(t.parameters -> 'runs') = 'array' THEN t.parameters -> 'runs' END) AS e
    ) x
    WHERE t.flow_name = 'track' AND x.features_run IS NOT NULL
    ORDER BY x.features_run, (t.status = 'completed') DESC, t.id DESC
)
SELECT coalesce(fr.parent_id, fr.id) AS pipeline_run, f.run_id AS features_run, tr.track_run,
       f.id AS object_id, f.dataset, f.sample, f.time_point, f.label,
       p.track_id, p.parent_track_id,
       f.area AS voxel_count, f.volume_um3, f.area_um2,
       f.centroid_z, f.centroid_y, f.centroid_x, f.centroid_z_um, f.centroid_y_um, f.centroid_x_um,
       f.bbox_min_z, f.bbox_min_y, f.bbox_min_x, f.bbox_max_z, f.bbox_max_y, f.bbox_max_x,
       f.axis_major_length, f.axis_minor_length, f.axis_major_length_um, f.axis_minor_length_um,
       f.eccentricity, f.elongation, f.flatness, f.exposed_faces, f.surface_area_um2, f.perimeter_um,
       c.*
FROM object_features f
JOIN runs fr ON fr.id = f.run_id
LEFT JOIN track_of tr ON tr.features_run = f.run_id
LEFT JOIN track_points p
       ON p.run_id = tr.track_run AND p.sample = coalesce(f.sample, '') AND p.time_point = f.time_point AND p.label = f.label
LEFT JOIN LATERAL (
    SELECT {_CHANNEL_MEANS},
           jsonb_object_agg(i.channel, jsonb_build_object('min', i.min, 'max', i.max, 'mean', i.mean, 'sum', i.sum))
               AS intensities
    FROM object_intensities i
    WHERE i.feature_id = f.id
) c ON true
"""

TRACK_SUMMARY = """
CREATE VIEW track_summary AS
SELECT coalesce(t.parent_id, t.id) AS pipeline_run, k.run_id AS track_run,
       k.dataset, k.sample, k.track_id, p.parent_track_id, k.n_points,
       k.start AS first_time_point, k."end" AS last_time_point, k."end" - k.start AS duration_frames,
       (k."end" - k.start) * coalesce((t.result ->> 'frame_interval')::double precision, 1) AS duration,
       k.path_length, k.net_displacement, k.net_displacement / nullif(k.path_length, 0) AS straightness,
       k.mean_speed, k.max_speed, m.msd_slope, m.msd_lags,
       coalesce(t.result ->> 'length_unit', 'voxel') AS length_unit, coalesce(t.result ->> 'time_unit', 'frame') AS time_unit
FROM track_kinematics k
JOIN runs t ON t.id = k.run_id
LEFT JOIN LATERAL (
    SELECT tp.parent_track_id FROM track_points tp
    WHERE tp.run_id = k.run_id AND tp.sample = k.sample AND tp.track_id = k.track_id
    ORDER BY tp.time_point LIMIT 1
) p ON true
LEFT JOIN LATERAL (
    -- least-squares slope of MSD over lag time (length_unit^2 per time_unit): 2 x dimensions x D for free diffusion
    SELECT regr_slope(d.msd, d.lag_time) AS msd_slope, count(*) AS msd_lags FROM track_msd d
    WHERE d.run_id = k.run_id AND d.sample = k.sample AND d.track_id = k.track_id
) m ON true
"""

STAGE_BLOCKS = r"""
CREATE VIEW stage_blocks AS
SELECT coalesce(r.parent_id, r.id) AS pipeline_run,
       coalesce(substring(r.parameters ->> 'output' FROM '([^/]+)/[^/]+/?$'), split_part(b.op, ':', 1)) AS stage,
       b.op,
       count(DISTINCT b.run_id) AS op_runs,
       count(*) AS attempts,
       count(*) FILTER (WHERE b.status = 'done') AS done,
       count(*) FILTER (WHERE b.status = 'failed') AS failed,
       count(*) FILTER (WHERE b.status = 'running') AS running,
       count(*) FILTER (WHERE b.status = 'stale') AS stale,
       count(*) FILTER (WHERE b.attempt > 1) AS retries,
       sum(b.seconds) AS block_seconds,
       sum(b.bytes) AS bytes,
       min(b.started_at) AS started_at,
       max(b.finished_at) AS ended_at
FROM block_ledger b
JOIN runs r ON r.id = b.run_id
GROUP BY 1, 2, 3
"""

VIEWS = ("stage_blocks", "track_summary", "pipeline_objects")


def upgrade() -> None:
    op.execute(PIPELINE_OBJECTS)
    op.execute(TRACK_SUMMARY)
    op.execute(STAGE_BLOCKS)
    for name, what in (("pipeline_objects", "objects of a pipeline (or features) run with track ids and c0..c7 channel means; "
                                            "every channel in intensities (JSON)"),
                       ("track_summary", "tracks of a track run with kinematics, MSD slope and units"),
                       ("stage_blocks", "block ledger per pipeline run, stage and op: attempts by status and times")):
        op.execute(f"COMMENT ON VIEW {name} IS '{what}'")


def downgrade() -> None:
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
