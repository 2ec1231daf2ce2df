"""Storage tiers: one interface (:class:`Tier`), a POSIX and an S3 backend.

>>> from storage.tiers import PosixTier, S3Tier, Tier     # doctest: +SKIP
"""

from tierflow.storage.tiers.base import HashingReader, Leftover, ObjectInfo, Tier
from tierflow.storage.tiers.download import download_verified
from tierflow.storage.tiers.names import check_key, check_name
from tierflow.storage.tiers.posix import PosixTier
from tierflow.storage.tiers.s3 import S3Tier, parse_s3_uri

__all__ = [
    "HashingReader",
    "Leftover",
    "ObjectInfo",
    "PosixTier",
    "S3Tier",
    "Tier",
    "check_key",
    "check_name",
    "download_verified",
    "parse_s3_uri",
]
