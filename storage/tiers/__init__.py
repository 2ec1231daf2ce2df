"""Storage tiers: one interface (:class:`Tier`), a POSIX and an S3 backend.

>>> from storage.tiers import PosixTier, S3Tier, Tier     # doctest: +SKIP
"""

from storage.tiers.base import HashingReader, Leftover, ObjectInfo, Tier, tree_sha256
from storage.tiers.download import download_verified
from storage.tiers.names import check_key, check_name
from storage.tiers.posix import PosixTier
from storage.tiers.s3 import S3Tier, parse_s3_uri

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
    "tree_sha256",
]
