"""Storage layer of tierflow: bytes, layout, metadata and database rows.

Nothing here imports Prefect or reads configuration; callers pass explicit values.
"""

from tierflow.storage.errors import TierflowError

__all__ = ["TierflowError"]
