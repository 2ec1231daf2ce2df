"""The S3 tier passes the same conformance suite as the POSIX tier, against real S3 servers on
loopback: SeaweedFS over HTTP and HTTPS (self-signed CA), and a real Ceph RADOS Gateway."""

from __future__ import annotations

import json
import time

import pytest

from tierflow.storage.errors import KeyClaimedError, TierError
from tierflow.storage.tiers import PosixTier, S3Tier
from tierflow.storage.tier_conformance import MULTIPART_SIZE, TierConformance

MIB = 1024 * 1024


def s3_tier(endpoint, *, write_once: bool = False, **options) -> S3Tier:
    """A tier on a fresh bucket, with the smallest multipart sizes S3 allows."""
    bucket = endpoint.new_bucket()
    return S3Tier(
        "source" if write_once else "scratch",
        f"s3://{bucket}/tierflow",
        endpoint_url=endpoint.endpoint_url,
        region=endpoint.region,
        access_key_id=endpoint.access_key,
        secret_access_key=endpoint.secret_key,
        verify=endpoint.verify,
        multipart_threshold=5 * MIB,
        multipart_chunksize=5 * MIB,
        write_once=write_once,
        **options,
    )


class _S3Conformance(TierConformance):
    endpoint_fixture = ""

    @pytest.fixture
    def endpoint(self, request):
        return request.getfixturevalue(self.endpoint_fixture)

    @pytest.fixture
    def make_tier(self, endpoint):
        return lambda write_once: s3_tier(endpoint, write_once=write_once)

    @pytest.fixture
    def other_tier(self, tmp_path):
        return PosixTier("output", tmp_path / "other")

    def test_wrong_secret_is_a_clear_error_without_the_secret(self, endpoint):
        bucket = endpoint.new_bucket()
        wrong = "not-the-right-secret-value"
        tier = S3Tier("source", f"s3://{bucket}/x", endpoint_url=endpoint.endpoint_url, access_key_id=endpoint.access_key,
                      secret_access_key=wrong, verify=endpoint.verify, region=endpoint.region)
        with pytest.raises(TierError, match="access denied") as info:
            tier.put_bytes("a", b"1")
        assert wrong not in str(info.value) and wrong not in repr(tier)

    def test_a_missing_bucket_is_named(self, endpoint):
        tier = S3Tier("source", "s3://no-such-bucket-tierflow/x", endpoint_url=endpoint.endpoint_url,
                      access_key_id=endpoint.access_key, secret_access_key=endpoint.secret_key, verify=endpoint.verify)
        with pytest.raises(TierError, match="bucket 'no-such-bucket-tierflow' does not exist"):
            list(tier.list("a"))

    def test_multipart_claim_blocks_a_concurrent_writer_and_goes_stale(self, endpoint):
        tier = s3_tier(endpoint, write_once=True)
        # another tierflow process is (or was) uploading this key: its claim is there, the object is not
        claim = "tierflow/.tierflow-claims/big.bin"
        tier.client.put_object(Bucket=tier.bucket, Key=claim, Body=json.dumps({"at": time.time()}).encode())
        data = b"x" * MULTIPART_SIZE
        with pytest.raises(KeyClaimedError, match="claimed by another multipart upload"):
            tier.put_bytes("big.bin", data)
        assert not tier.exists("big.bin")
        tier.claim_stale_seconds = 0  # a crashed writer's claim may be taken over once stale
        time.sleep(1.1)
        assert tier.put_bytes("big.bin", data).size == len(data)
        assert [info.key for info in tier.list("")] == ["big.bin"]  # claims never show in listings


class TestSeaweedfsHttp(_S3Conformance):
    endpoint_fixture = "seaweedfs_http"


class TestSeaweedfsHttps(_S3Conformance):
    endpoint_fixture = "seaweedfs_https"


@pytest.mark.ceph
class TestCephRadosGateway(_S3Conformance):
    endpoint_fixture = "ceph_rgw"
