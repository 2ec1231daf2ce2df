"""The conformance suite every :class:`~storage.tiers.Tier` backend must pass.

Subclass :class:`TierConformance` in a test module and provide two fixtures:

``make_tier(write_once: bool) -> Tier``
    a factory returning a fresh, empty tier of the backend under test (multipart threshold
    and part size as small as the backend allows, so multipart paths run on small data);
``other_tier``
    a fresh tier of any backend, the target of cross-tier copies.

Needs pytest and numpy/zarr (the ``dev`` extra).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tierflow.storage.errors import IntegrityError, InvalidNameError, KeyClaimedError, ObjectExistsError, ObjectNotFoundError, TierError
from tierflow.storage.promotion import promote_tree
from tierflow.storage.tiers.base import Tier

__all__ = ["MULTIPART_SIZE", "TierConformance"]

MULTIPART_SIZE = 12 * 1024 * 1024 + 123  # above a 5 MiB threshold: three parts of 5 MiB parts


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _folder_digest(objects: dict[str, bytes]) -> str:
    """The recorded digest of a folder artifact, from its bytes: sha256 over sorted
    ``relative-key NUL sha256 LF`` lines (written out here, independently of tierflow's code)."""
    lines = "".join(f"{key}\0{hashlib.sha256(data).hexdigest()}\n" for key, data in sorted(objects.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _corrupt(tier: Tier, key: str) -> None:
    """Fault injection (the only fake): replace a fresh, not yet verified copy with other bytes
    of the same size, as a bad disk or network would, before promotion reads it back."""
    data = bytearray(tier.get_bytes(key))
    data[len(data) // 2] ^= 0xFF
    tier.discard_unverified(key)
    tier.put_bytes(key, bytes(data))


PROMOTED = "promoted/embryo/3f9c0a1b2d4e5f60/run-7"


class TierConformance:
    """Behaviour every tier backend shares (subclass it; see the module docstring)."""

    @pytest.fixture
    def tier(self, make_tier: Callable[..., Tier]) -> Tier:
        return make_tier(write_once=False)

    @pytest.fixture
    def once(self, make_tier: Callable[..., Tier]) -> Tier:
        return make_tier(write_once=True)

    def test_put_and_get_bytes_round_trip(self, tier: Tier) -> None:
        data = _payload(1000)
        info = tier.put_bytes("a/b/c.bin", data)
        assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == 1000
        assert tier.get_bytes("a/b/c.bin") == data
        assert tier.stat("a/b/c.bin").size == 1000
        assert tier.exists("a/b/c.bin") and not tier.exists("a/b/missing.bin")

    def test_empty_object(self, tier: Tier) -> None:
        info = tier.put_bytes("empty", b"")
        assert info.size == 0 and tier.get_bytes("empty") == b""

    def test_put_file_streams_a_multipart_sized_file(self, tier: Tier, tmp_path: Path) -> None:
        data = _payload(MULTIPART_SIZE, seed=1)
        source = tmp_path / "big.bin"
        source.write_bytes(data)
        info = tier.put_file("big/big.bin", source)
        expected = hashlib.sha256(data).hexdigest()
        assert info.sha256 == expected and info.size == len(data)
        assert tier.stat("big/big.bin").size == len(data)
        assert tier.sha256("big/big.bin") == expected
        downloaded = tier.download("big/big.bin", tmp_path / "back.bin")
        assert downloaded.sha256 == expected and (tmp_path / "back.bin").read_bytes() == data

    @pytest.mark.parametrize("size", [100, MULTIPART_SIZE])
    def test_expected_sha256_mismatch_writes_nothing(self, tier: Tier, size: int) -> None:
        with pytest.raises(IntegrityError, match="expected"):
            tier.put_bytes("bad.bin", _payload(size), expected_sha256="0" * 64)
        assert not tier.exists("bad.bin")
        assert [info.key for info in tier.list("")] == []

    def test_list_is_by_folder_prefix(self, tier: Tier) -> None:
        for key in ("x/1", "x/2/deep", "xy/3", "z"):
            tier.put_bytes(key, key.encode())
        assert sorted(info.key for info in tier.list("x")) == ["x/1", "x/2/deep"]
        assert sorted(info.key for info in tier.list("x/")) == ["x/1", "x/2/deep"]
        assert sorted(info.key for info in tier.list("")) == ["x/1", "x/2/deep", "xy/3", "z"]
        assert [info.key for info in tier.list("nothing")] == []
        assert {info.key: info.size for info in tier.list("x")} == {"x/1": 3, "x/2/deep": 8}
        assert tier.usage("x") == 11

    def test_missing_objects(self, tier: Tier) -> None:
        with pytest.raises(ObjectNotFoundError):
            tier.stat("nope")
        with pytest.raises(ObjectNotFoundError):
            tier.get_bytes("nope")
        tier.delete("nope")  # deleting what is not there is not an error

    def test_copy_within_and_across_tiers(self, tier: Tier, other_tier: Tier) -> None:
        data = _payload(5000, seed=2)
        tier.put_bytes("src.bin", data)
        assert tier.copy("src.bin", "copy/dst.bin").sha256 == hashlib.sha256(data).hexdigest()
        assert tier.get_bytes("copy/dst.bin") == data
        info = tier.copy_to("src.bin", other_tier, "elsewhere/src.bin", expected_sha256=hashlib.sha256(data).hexdigest())
        assert info.size == 5000 and other_tier.get_bytes("elsewhere/src.bin") == data
        other_tier.put_bytes("back.bin", data[::-1])
        other_tier.copy_to("back.bin", tier, "back.bin")
        assert tier.get_bytes("back.bin") == data[::-1]

    def test_delete_and_delete_prefix(self, tier: Tier) -> None:
        for key in ("d/1", "d/2", "d/sub/3", "keep"):
            tier.put_bytes(key, b"12345")
        tier.delete("d/1")
        assert not tier.exists("d/1")
        assert tier.delete_prefix("d") == (2, 10)
        assert [info.key for info in tier.list("")] == ["keep"]

    def test_overwrite_on_a_normal_tier_replaces(self, tier: Tier) -> None:
        tier.put_bytes("k", b"one")
        tier.put_bytes("k", b"two")
        assert tier.get_bytes("k") == b"two"

    @pytest.mark.parametrize("size", [100, MULTIPART_SIZE])
    def test_write_once_refuses_overwrite(self, once: Tier, size: int) -> None:
        original = _payload(size, seed=3)
        once.put_bytes("t1/object.bin", original)
        with pytest.raises(ObjectExistsError, match="write-once"):
            once.put_bytes("t1/object.bin", _payload(size, seed=4))
        assert once.sha256("t1/object.bin") == hashlib.sha256(original).hexdigest()
        with pytest.raises(TierError, match="write-once"):
            once.delete("t1/object.bin")
        assert once.exists("t1/object.bin")

    @pytest.mark.parametrize("size", [100, MULTIPART_SIZE])
    def test_write_once_race_has_exactly_one_winner(self, once: Tier, size: int) -> None:
        results: list[str] = []
        barrier = threading.Barrier(3)

        def writer(seed: int) -> None:
            data = _payload(size, seed=seed)
            barrier.wait()
            try:
                once.put_bytes("race.bin", data)
                results.append(hashlib.sha256(data).hexdigest())
            except (ObjectExistsError, KeyClaimedError):  # the key exists, or its claim is held by the winner
                results.append("refused")

        threads = [threading.Thread(target=writer, args=(seed,)) for seed in (10, 11, 12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [result for result in results if result != "refused"]
        assert len(winners) == 1, results
        assert once.sha256("race.bin") == winners[0]

    def test_discard_unverified_removes_even_on_write_once(self, once: Tier) -> None:
        once.put_bytes("unverified.bin", b"x")
        once.discard_unverified("unverified.bin")
        assert not once.exists("unverified.bin")
        once.put_bytes("unverified.bin", b"y")  # the key is free again
        assert once.get_bytes("unverified.bin") == b"y"

    @pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", "a/../b", "tab\there", "back\\slash", ""])
    def test_unsafe_keys_are_refused(self, tier: Tier, key: str) -> None:
        with pytest.raises(InvalidNameError):
            tier.put_bytes(key, b"x")

    def test_uri_and_key_round_trip(self, tier: Tier) -> None:
        tier.put_bytes("p/q.txt", b"1")
        assert tier.key_of(tier.uri("p/q.txt")) == "p/q.txt"
        with pytest.raises(TierError):
            tier.key_of("s3://some-other-bucket/p/q.txt" if tier.uri().startswith("file:") else "file:///etc/passwd")

    def test_zarr_array_round_trip(self, tier: Tier) -> None:
        import zarr

        data = np.arange(5 * 7 * 9, dtype=np.uint16).reshape(5, 7, 9)
        array = zarr.create_array(store=tier.zarr_store("arrays/a.zarr"), shape=data.shape, chunks=(2, 4, 4), dtype="uint16")
        array[:] = data
        reopened = zarr.open_array(store=tier.zarr_store("arrays/a.zarr", read_only=True))
        np.testing.assert_array_equal(reopened[:], data)
        keys = {info.key for info in tier.list("arrays/a.zarr")}
        assert "arrays/a.zarr/zarr.json" in keys and len(keys) == 1 + 3 * 2 * 3

    def test_write_once_zarr_store_is_read_only(self, once: Tier) -> None:
        import zarr

        with pytest.raises(Exception):  # noqa: B017 - zarr raises its own read-only error types
            zarr.create_array(store=once.zarr_store("arrays/b.zarr"), shape=(2,), dtype="uint8")

    def test_no_temporary_leftovers(self, tier: Tier) -> None:
        with pytest.raises(IntegrityError):
            tier.put_bytes("left.bin", b"abc", expected_sha256="f" * 64)
        tier.put_bytes("ok.bin", b"abc")
        assert [info.key for info in tier.list("")] == ["ok.bin"]
        if hasattr(tier, "root") and isinstance(tier.root, Path):
            assert sorted(os.listdir(tier.root)) == ["ok.bin"]

    # -- promotion to a write-once tier, and reading it back -----------------------------------

    def test_verify_rereads_and_refuses_other_bytes(self, once: Tier) -> None:
        data = _payload(3000, seed=20)
        once.put_bytes("v/object.bin", data)
        once.verify("v/object.bin", hashlib.sha256(data).hexdigest())
        with pytest.raises(IntegrityError, match="v/object.bin"):
            once.verify("v/object.bin", hashlib.sha256(data + b"x").hexdigest())

    @pytest.mark.parametrize("size", [1000, MULTIPART_SIZE])
    def test_promote_an_object_reads_back_equal(self, tier: Tier, once: Tier, size: int) -> None:
        data = _payload(size, seed=21)
        recorded = hashlib.sha256(data).hexdigest()
        tier.put_bytes("run-7/features.csv", data)
        result = promote_tree(tier, "run-7/features.csv", once, f"{PROMOTED}/features.csv", expected_sha256=recorded)
        assert (result.uri, result.sha256, result.bytes, result.objects) == (once.uri(f"{PROMOTED}/features.csv"), recorded, size, 1)
        assert once.get_bytes(f"{PROMOTED}/features.csv") == data
        assert once.sha256(once.key_of(result.uri)) == recorded
        with pytest.raises(TierError, match="write-once"):
            once.delete(f"{PROMOTED}/features.csv")

    def test_promote_a_zarr_folder_reads_back_equal(self, tier: Tier, once: Tier) -> None:
        import zarr

        data = np.arange(6 * 10 * 7, dtype=np.uint16).reshape(6, 10, 7)
        zarr.create_array(store=tier.zarr_store("run-7/labels.zarr"), shape=data.shape, chunks=(4, 4, 4), dtype="uint16")[:] = data
        objects = {info.key[len("run-7/labels.zarr/"):]: tier.get_bytes(info.key) for info in tier.list("run-7/labels.zarr")}
        recorded = _folder_digest(objects)
        result = promote_tree(tier, "run-7/labels.zarr", once, f"{PROMOTED}/labels.zarr", expected_sha256=recorded)
        assert (result.sha256, result.objects, result.bytes) == (recorded, len(objects), sum(map(len, objects.values())))
        back = {info.key[len(f"{PROMOTED}/labels.zarr/"):]: once.get_bytes(info.key) for info in once.list(f"{PROMOTED}/labels.zarr")}
        assert back == objects
        np.testing.assert_array_equal(zarr.open_array(store=once.zarr_store(f"{PROMOTED}/labels.zarr", read_only=True))[:], data)

    def test_promoting_again_accepts_only_the_same_bytes(self, tier: Tier, once: Tier) -> None:
        data = _payload(2000, seed=22)
        tier.put_bytes("run-7/t.csv", data)
        promote_tree(tier, "run-7/t.csv", once, f"{PROMOTED}/t.csv")
        again = promote_tree(tier, "run-7/t.csv", once, f"{PROMOTED}/t.csv", expected_sha256=hashlib.sha256(data).hexdigest())
        assert again.already_present == 1 and once.get_bytes(f"{PROMOTED}/t.csv") == data
        tier.put_bytes("run-7/other.csv", _payload(2000, seed=23))
        with pytest.raises(IntegrityError):
            promote_tree(tier, "run-7/other.csv", once, f"{PROMOTED}/t.csv")
        assert once.get_bytes(f"{PROMOTED}/t.csv") == data  # what was promoted stays

    def test_a_source_changed_since_it_was_recorded_leaves_nothing(self, tier: Tier, once: Tier) -> None:
        tier.put_bytes("run-7/f/a.bin", b"one")
        tier.put_bytes("run-7/f/b.bin", b"two")
        recorded = _folder_digest({"a.bin": b"one", "b.bin": b"TWO"})
        with pytest.raises(IntegrityError, match="recorded as"):
            promote_tree(tier, "run-7/f", once, f"{PROMOTED}/f", expected_sha256=recorded)
        assert list(once.list("promoted")) == []

    @pytest.mark.parametrize("artifact", ["object", "folder"])
    def test_a_corrupted_copy_is_refused_and_discarded(self, tier: Tier, once: Tier, artifact: str) -> None:
        keys = ["run-7/x.bin"] if artifact == "object" else ["run-7/x/0", "run-7/x/1/2", "run-7/x/zarr.json"]
        for number, key in enumerate(keys):
            tier.put_bytes(key, _payload(1500, seed=30 + number))
        victim = f"{PROMOTED}/x" if artifact == "object" else f"{PROMOTED}/x/1/2"

        def corrupt_one(target: Tier, key: str) -> None:
            if key == victim:
                _corrupt(target, key)

        with pytest.raises(IntegrityError, match=r"run-7/x.* hashes to"):
            promote_tree(tier, "run-7/x" if artifact == "folder" else "run-7/x.bin", once,
                         f"{PROMOTED}/x", after_copy=corrupt_one)
        assert list(once.list("promoted")) == []  # every object of the bad copy was discarded
        result = promote_tree(tier, "run-7/x" if artifact == "folder" else "run-7/x.bin", once, f"{PROMOTED}/x")
        assert result.already_present == 0 and result.objects == len(keys)  # the keys are free again
