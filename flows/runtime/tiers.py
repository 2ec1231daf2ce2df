"""Build the four storage tiers the configuration describes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tierflow.configs import TierflowConfig
from tierflow.configs.settings import TierSettings
from tierflow.storage.errors import TierflowError
from tierflow.storage.tiers import PosixTier, S3Tier, Tier, parse_s3_uri

__all__ = ["Tiers", "open_tier", "open_tiers", "s3_tier_of"]

MIB = 1024 * 1024


def _secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def open_tier(name: str, settings: TierSettings, root: str) -> Tier:
    """One tier from its settings; Tier 1 (``source``) is always write-once."""
    write_once = name == "source"
    if settings.backend == "posix":
        return PosixTier(name, root, write_once=write_once)
    return S3Tier(
        name,
        root,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=_secret(settings.access_key_id),
        secret_access_key=_secret(settings.secret_access_key),
        profile=settings.profile,
        verify=settings.verify,
        multipart_threshold=settings.multipart_threshold_mb * MIB,
        multipart_chunksize=settings.multipart_chunk_mb * MIB,
        max_concurrency=settings.max_concurrency,
        write_once=write_once,
        claim_stale_seconds=settings.claim_stale_seconds,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        max_attempts=settings.max_attempts,
        retry_mode=settings.retry_mode,
    )


@dataclass(frozen=True)
class Tiers:
    """The four tiers of one configuration."""

    source: Tier
    output: Tier
    scratch: Tier
    ephemeral: Tier

    def __iter__(self) -> Iterator[Tier]:
        return iter((self.source, self.output, self.scratch, self.ephemeral))

    def by_name(self) -> dict[str, Tier]:
        """``{"source": ..., "output": ..., "scratch": ..., "ephemeral": ...}``."""
        return {tier.name: tier for tier in self}


def open_tiers(config: TierflowConfig) -> Tiers:
    """The tiers of a configuration (nothing is contacted until used)."""
    return Tiers(
        *(open_tier(name, getattr(config.tiers, name), config.tier_root(name)) for name in ("source", "output", "scratch", "ephemeral"))
    )


def s3_tier_of(config: TierflowConfig, uri: str) -> tuple[Tier, str]:
    """The tier an ``s3://bucket/key`` URI is on, and its key there.

    The configured S3 tier whose root holds the URI (the deepest, when roots nest) is the
    answer, write-once if it is Tier 1. A URI outside every root is reached with the endpoint
    and credentials of a tier in its bucket (a tier rooted at the bucket: write-once if that is
    Tier 1's bucket), else with Tier 1's.

    Raises
    ------
    TierflowError
        If no configured tier is on S3 (tierflow would not know the endpoint).
    """
    uri = uri.rstrip("/")
    tiers = open_tiers(config)
    holding = [tier for tier in tiers if tier.uri().startswith("s3://") and uri.startswith(tier.uri() + "/")]
    if holding:
        tier = max(holding, key=lambda candidate: len(candidate.uri()))
        return tier, tier.key_of(uri)
    bucket, key = parse_s3_uri(uri)
    for name in ("source", "output", "scratch"):
        settings = getattr(config.tiers, name)
        if settings.backend == "s3" and parse_s3_uri(config.tier_root(name))[0] == bucket:
            return open_tier(name, settings, f"s3://{bucket}"), key
    if config.tiers.source.backend != "s3":
        raise TierflowError(f"{uri}: no configured tier is on S3, so tierflow does not know its endpoint",
                            hint="configure an S3 tier (endpoint_url, credentials) in configs/tierflow.user.toml")
    return open_tier("scratch", config.tiers.source, f"s3://{bucket}"), key
