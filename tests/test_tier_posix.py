"""The POSIX tier (local disk / CephFS mount) passes the tier conformance suite."""

from __future__ import annotations

import itertools

import pytest

from tierflow.storage.tiers import PosixTier
from tierflow.storage.tier_conformance import TierConformance

_counter = itertools.count()


class TestPosixTier(TierConformance):
    @pytest.fixture
    def make_tier(self, tmp_path):
        def make(write_once: bool) -> PosixTier:
            return PosixTier("source" if write_once else "scratch", tmp_path / f"tier{next(_counter)}", write_once=write_once)

        return make

    @pytest.fixture
    def other_tier(self, tmp_path):
        return PosixTier("output", tmp_path / "other")
