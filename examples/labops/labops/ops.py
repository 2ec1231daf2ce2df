# labops/ops.py, in the lab's package
import numpy as np
from pydantic import BaseModel, Field
from tierflow.ops import block_op

class TophatParams(BaseModel):
    radius: int = Field(3, ge=1, le=50, description="radius of the ball, in voxels")

@block_op(name="tophat", version="1", params=TophatParams,
          halo=lambda p, ndim: (2 * p.radius,) * ndim)      # an opening reaches 2 radii
def tophat(block: np.ndarray, params: TophatParams) -> np.ndarray:
    from skimage.morphology import ball, disk, white_tophat
    fp = ball(params.radius) if block.ndim == 3 else disk(params.radius)
    return white_tophat(block, footprint=fp)
