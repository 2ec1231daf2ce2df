"""Write-once claims and the debris of interrupted uploads on an S3 tier.

Ceph 16.2's RGW ignores ``If-None-Match: *`` on CompleteMultipartUpload, so a write-once
multipart upload first *claims* its key: a small JSON object at ``.tierflow-claims/<key>``
written with ``If-None-Match: *`` (honoured on a plain PUT). Only the claim's writer uploads. A
claim stays after the object is complete (it keeps a late concurrent writer out); one whose
upload was killed goes stale after the tier's ``claim_stale_seconds`` and may then be taken over.

Debris (:class:`~storage.tiers.base.Leftover`) is what interrupted writes leave behind without
storing an object: multipart uploads never completed nor aborted (their parts take space) and
claims older than the stale window. :func:`find_leftovers` lists it, :func:`clear_leftover`
clears one item; the retention flow does both, and a multipart upload aborts its own key's stale
uploads before it starts.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tierflow.storage.errors import KeyClaimedError, ObjectExistsError, ObjectNotFoundError
from tierflow.storage.tiers.base import Leftover

if TYPE_CHECKING:
    from tierflow.storage.tiers.s3 import S3Tier

__all__ = ["CLAIMS", "Claim", "abort_stale_uploads", "clear_leftover", "find_leftovers", "hold_claim", "refused"]

CLAIMS = ".tierflow-claims"


@dataclass(frozen=True)
class Claim:
    """One claim object as read back: who wrote it and when."""

    holder: str
    token: str
    written: datetime

    def age(self, now: datetime) -> float:
        """Seconds since it was written."""
        return (now - self.written).total_seconds()


def refused(exc: Exception) -> bool:
    """Whether an S3 error is a refused conditional write (``If-None-Match: *`` on an existing key)."""
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status in (409, 412) or response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")


def read_claim(tier: S3Tier, key: str) -> Claim | None:
    """The claim on ``key``, or ``None`` if there is none (an unreadable body counts as anonymous)."""
    try:
        answer = tier.client.get_object(Bucket=tier.bucket, Key=tier._object_key(f"{CLAIMS}/{key}"))
        body = answer["Body"].read()
    except Exception as exc:  # noqa: BLE001
        failure = tier._fail(exc, f"{CLAIMS}/{key}", "reading the claim of")
        if isinstance(failure, ObjectNotFoundError):
            return None
        raise failure from None
    try:
        document = json.loads(body)
        holder, token = f"{document['host']} pid {document['pid']}", str(document.get("token", ""))
    except (ValueError, KeyError, TypeError):
        holder, token = "an unknown writer", ""
    return Claim(holder, token, answer["LastModified"])


def _claimed_error(tier: S3Tier, key: str, claim: Claim | None) -> KeyClaimedError:
    where = tier.uri(f"{CLAIMS}/{key}")
    if claim is None:  # vanished and re-taken between our two looks
        return KeyClaimedError(f"{tier.uri(key)} is being claimed by another tierflow upload right now ({where})",
                               hint="another process writes the same key; re-run once it has finished")
    now = datetime.now(UTC)
    stale_at = claim.written + timedelta(seconds=tier.claim_stale_seconds)
    return KeyClaimedError(
        f"{tier.uri(key)} is claimed by another multipart upload: claim {where} by {claim.holder}, "
        f"{claim.age(now):.0f} s old; it goes stale at {stale_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(claim_stale_seconds = {tier.claim_stale_seconds:g}) and tier {tier.name} is write-once",
        hint="if that upload still runs, let it finish; if it was killed, re-run after the claim goes stale "
        f"(`tierflow retention` then clears it), or lower [tiers.{tier.name}].claim_stale_seconds",
    )


@contextmanager
def hold_claim(tier: S3Tier, key: str) -> Iterator[None]:
    """Hold the write-once claim on ``key`` while the body runs (see the module docstring).

    Raises
    ------
    ObjectExistsError
        If the object exists.
    KeyClaimedError
        If another upload holds a claim that is not stale yet (the message names it, its age and
        when it goes stale).
    """
    token = uuid.uuid4().hex
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time(), "token": token}).encode()
    claim_object = tier._object_key(f"{CLAIMS}/{key}")
    for attempt in range(2):
        try:
            tier.client.put_object(Bucket=tier.bucket, Key=claim_object, Body=body, IfNoneMatch="*")
            break
        except Exception as exc:  # noqa: BLE001
            if not refused(exc):
                raise tier._fail(exc, key, "claiming") from None
        if tier.exists(key):
            raise ObjectExistsError(f"{tier.uri(key)} exists and tier {tier.name} is write-once")
        claim = read_claim(tier, key)
        if claim is not None and claim.token == token:
            break  # our own claim: the first answer was lost and the client's retry was refused
        if attempt == 1 or claim is None or claim.age(datetime.now(UTC)) <= tier.claim_stale_seconds:
            raise _claimed_error(tier, key, claim)
        tier.client.delete_object(Bucket=tier.bucket, Key=claim_object)  # stale: take it over
    try:
        yield
    except BaseException:
        try:
            if not tier.exists(key):  # nothing was written: release the key for a later attempt
                tier.client.delete_object(Bucket=tier.bucket, Key=claim_object)
        except Exception:  # noqa: BLE001 - best effort (the claim then goes stale); the original error matters
            pass
        raise


def _uploads(tier: S3Tier, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = tier.client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=tier.bucket, Prefix=prefix):
        yield from page.get("Uploads", [])


def _upload_bytes(tier: S3Tier, object_key: str, upload_id: str) -> int:
    paginator = tier.client.get_paginator("list_parts")
    try:
        return sum(part["Size"] for page in paginator.paginate(Bucket=tier.bucket, Key=object_key, UploadId=upload_id)
                   for part in page.get("Parts", []))
    except Exception:  # noqa: BLE001 - finished or aborted meanwhile
        return 0


def _stale_uploads(tier: S3Tier, prefix: str, now: datetime) -> list[Leftover]:
    found = []
    for upload in _uploads(tier, prefix):
        relative = tier._relative(upload["Key"])
        age = (now - upload["Initiated"]).total_seconds()
        if relative.startswith(CLAIMS + "/") or age <= tier.claim_stale_seconds:
            continue
        found.append(Leftover(
            "multipart-upload", relative, f"{tier.uri(relative)}?uploadId={upload['UploadId']}",
            _upload_bytes(tier, upload["Key"], upload["UploadId"]), age,
            f"unfinished multipart upload started {age:.0f} s ago (stale after {tier.claim_stale_seconds:g} s): aborted",
            upload["UploadId"],
        ))
    return found


def _stale_claims(tier: S3Tier, now: datetime) -> list[Leftover]:
    found = []
    base = tier._object_key(CLAIMS) + "/"
    for page in tier.client.get_paginator("list_objects_v2").paginate(Bucket=tier.bucket, Prefix=base):
        for item in page.get("Contents", []):
            key = item["Key"][len(base):]
            age = (now - item["LastModified"]).total_seconds()
            if age <= tier.claim_stale_seconds:
                continue
            state = "its object is complete" if tier.exists(key) else "its upload never finished"
            found.append(Leftover("claim", key, tier.uri(f"{CLAIMS}/{key}"), int(item["Size"]), age,
                                  f"write-once claim {age:.0f} s old, {state}: deleted"))
    return found


def find_leftovers(tier: S3Tier, now: datetime) -> list[Leftover]:
    """Unfinished multipart uploads of this tier's keys and claims, older than the stale window."""
    prefix = f"{tier.prefix}/" if tier.prefix else ""
    try:
        return _stale_uploads(tier, prefix, now) + _stale_claims(tier, now)
    except Exception as exc:  # noqa: BLE001
        raise tier._fail(exc, "", "listing unfinished uploads of") from None


def clear_leftover(tier: S3Tier, leftover: Leftover) -> None:
    """Abort an unfinished upload or delete a claim (never a stored object)."""
    try:
        if leftover.kind == "multipart-upload":
            tier.client.abort_multipart_upload(Bucket=tier.bucket, Key=tier._object_key(leftover.key), UploadId=leftover.upload_id)
        else:
            tier.client.delete_object(Bucket=tier.bucket, Key=tier._object_key(f"{CLAIMS}/{leftover.key}"))
    except Exception as exc:  # noqa: BLE001
        failure = tier._fail(exc, leftover.key, "clearing debris of")
        if not isinstance(failure, ObjectNotFoundError):  # gone already is what we wanted
            raise failure from None


def abort_stale_uploads(tier: S3Tier, key: str) -> int:
    """Abort the unfinished multipart uploads of ``key`` older than the stale window; returns how many."""
    object_key = tier._object_key(key)
    try:
        stale = [item for item in _stale_uploads(tier, object_key, datetime.now(UTC)) if item.key == key]
    except Exception:  # noqa: BLE001 - a listing failure must not stop the upload itself
        return 0
    for item in stale:
        clear_leftover(tier, item)
    return len(stale)
