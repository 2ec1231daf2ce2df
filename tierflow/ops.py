"""Write your own block op in your own package (see README, "Your own ops")::

    from pydantic import BaseModel, Field
    from tierflow.ops import block_op

    class TophatParams(BaseModel):
        radius: int = Field(3, ge=1, le=50, description="radius of the ball, in voxels")

    @block_op(name="tophat", version="1", params=TophatParams, halo=lambda p, ndim: (2 * p.radius,) * ndim)
    def tophat(block, params):
        ...

and register it in your package's ``pyproject.toml``::

    [project.entry-points."tierflow.ops"]
    tophat = "labops.ops:tophat"

Importing this module is cheap: NumPy and pydantic, never Prefect, zarr or the database.
"""

from __future__ import annotations

from tierflow.tasks.ops.declare import RESOURCE_KEYS, block_op
from tierflow.tasks.ops.spec import OpParams, OpSpec

__all__ = ["RESOURCE_KEYS", "OpParams", "OpSpec", "block_op"]
