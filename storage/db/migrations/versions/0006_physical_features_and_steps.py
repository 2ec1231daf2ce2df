"""Features in physical units and shape descriptors; per-time-point steps of tracks.

Why: labs report volumes in µm³, centroids in µm and shape (axis lengths, eccentricity,
elongation, surface area); the features op computes them exactly across blocks from the
voxel size (parameter or the inputs' metadata), so object_features keeps them next to the
voxel columns (NULL where unknown or not applicable). track_points gains each point's
displacement from the track's previous time point and the speed of that step.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FEATURE_FLOATS = ('volume_um3', 'area_um2', 'centroid_z_um', 'centroid_y_um', 'centroid_x_um', 'axis_major_length',
                   'axis_minor_length', 'axis_major_length_um', 'axis_minor_length_um', 'eccentricity', 'elongation', 'flatness')
_FEATURE_AFTER = ('surface_area_um2', 'perimeter_um')


def upgrade() -> None:
    for name in _FEATURE_FLOATS:
        op.add_column('object_features', sa.Column(name, sa.Float(), nullable=True))
    op.add_column('object_features', sa.Column('exposed_faces', sa.BigInteger(), nullable=True))
    for name in _FEATURE_AFTER:
        op.add_column('object_features', sa.Column(name, sa.Float(), nullable=True))
    op.add_column('track_points', sa.Column('displacement', sa.Float(), nullable=True))
    op.add_column('track_points', sa.Column('speed', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('track_points', 'speed')
    op.drop_column('track_points', 'displacement')
    for name in (*_FEATURE_FLOATS, 'exposed_faces', *_FEATURE_AFTER):
        op.drop_column('object_features', name)
