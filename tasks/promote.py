"""Task of the promote flow: copy one artifact to Tier 1 and verify it by reading it back."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from tierflow.storage.promotion import AfterCopyHook, PromotionResult, promote_tree
from tierflow.storage.tiers import Tier
from tierflow.tasks.retry import retry_transient

__all__ = ["promote_artifact"]


@task(name="promote-artifact", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NONE)
def promote_artifact(
    source: Tier,
    key: str,
    target: Tier,
    target_key: str,
    expected_sha256: str | None,
    after_copy: AfterCopyHook | None = None,
) -> PromotionResult:
    """See :func:`storage.promotion.promote_tree`."""
    return promote_tree(source, key, target, target_key, expected_sha256=expected_sha256, after_copy=after_copy)
