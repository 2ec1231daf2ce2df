"""A tier in an S3 bucket: Ceph RADOS Gateway (or any S3 server) through boto3.

Path-style addressing, an explicit ``endpoint_url``, credentials from arguments or the standard
boto3 chain (never logged or shown in ``repr``), multipart uploads above a threshold with a
bounded number of parts in flight, sha256 computed on the way and stored as object metadata.

Write-once (Tier 1) on S3 takes two guards, because Ceph 16.2's RGW honours
``If-None-Match: *`` on a plain PUT but ignores it on CompleteMultipartUpload:

* single-part uploads send ``If-None-Match: *`` (the server refuses an overwrite atomically);
* multipart uploads first *claim* the key by writing a small claim object under
  ``.tierflow-claims/`` with ``If-None-Match: *``; only the writer that created the claim
  uploads. A claim whose object never appeared (a crashed upload) goes stale after
  ``claim_stale_seconds`` and may then be taken over (see :mod:`storage.tiers.s3_claims`).

Both check ``HeadObject`` first, so the usual case fails fast with a clear message.

Every request is bounded: connect and read timeouts and a bounded number of attempts (botocore's
``standard`` or ``adaptive`` retry mode) for boto3, the same for zarr's object store (obstore).
A failure the retries did not cure (a reset, a body cut short, a timeout) is a
:class:`~storage.errors.TransferError`; whole-object reads (:meth:`S3Tier.get_bytes`,
:meth:`S3Tier.sha256`) re-read a body cut short.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

from tierflow.extras import require_extra
from tierflow.storage.errors import IntegrityError, ObjectExistsError, ObjectNotFoundError, TierError, TransferError
from tierflow.storage.tiers.base import COPY_BUFFER, HashingReader, Leftover, ObjectInfo, Tier
from tierflow.storage.tiers.names import check_key
from tierflow.storage.tiers.s3_claims import CLAIMS, abort_stale_uploads, clear_leftover, find_leftovers, hold_claim, refused

__all__ = ["S3Tier", "parse_s3_uri"]

MIB = 1024 * 1024
RETRY_MODES = ("standard", "adaptive")
_T = TypeVar("_T")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into ``(bucket, prefix)`` (prefix without slashes at the ends).

    Raises
    ------
    TierError
        If the URI is not of that form.
    """
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise TierError(f"{uri!r} is not an S3 URI", hint="write it as s3://bucket/prefix")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise TierError(f"{uri!r} names no bucket", hint="write it as s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _transient(exc: BaseException) -> bool:
    """A transport failure (reset, closed, cut-short body, timeout) or a 5xx answer."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError, IncompleteReadError

    if isinstance(exc, (HTTPClientError, BotoConnectionError, IncompleteReadError, ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, Exception) and _status(exc) >= 500


class S3Tier(Tier):
    """A tier rooted at ``s3://bucket/prefix``.

    Parameters
    ----------
    name
        The tier's role.
    root
        ``s3://bucket/prefix``.
    endpoint_url
        The RADOS Gateway (or other S3 server), e.g. ``https://rgw.lab.example.org``.
    region
        Signing region (RGW accepts any; ``us-east-1`` by default).
    access_key_id, secret_access_key
        Credentials; ``None`` uses boto3's chain (environment, ``~/.aws/credentials``, profile).
    profile
        A named profile of ``~/.aws/credentials``.
    verify
        TLS verification: ``True``, ``False`` or the path of a CA bundle.
    multipart_threshold, multipart_chunksize
        Bytes above which uploads are multipart, and the part size (>= 5 MiB).
    max_concurrency
        Parts uploaded at once (bounds memory to ``max_concurrency * multipart_chunksize``).
    write_once
        Refuse to overwrite or delete existing keys.
    claim_stale_seconds
        Age after which an unfulfilled multipart claim may be taken over, and after which
        unfinished multipart uploads count as abandoned (see :mod:`storage.tiers.s3_claims`).
    connect_timeout, read_timeout
        Seconds to wait for a connection, and for the next bytes of an answer (boto3 and obstore).
    max_attempts
        Attempts per request, the first included (bounded retries).
    retry_mode
        botocore's ``standard`` or ``adaptive`` (client-side rate limiting too) retry mode.
    """

    supports_conditional_put = True

    def __init__(
        self,
        name: str,
        root: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        profile: str | None = None,
        verify: bool | str = True,
        multipart_threshold: int = 64 * MIB,
        multipart_chunksize: int = 16 * MIB,
        max_concurrency: int = 4,
        write_once: bool = False,
        claim_stale_seconds: float = 3600.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        max_attempts: int = 5,
        retry_mode: str = "standard",
    ) -> None:
        super().__init__(name, write_once=write_once)
        self.bucket, self.prefix = parse_s3_uri(root)
        # boto3 and obstore are the `s3` extra: a missing one stops the run here, before any work
        require_extra("s3", ("boto3", "obstore"), f"tier {name} ({root})")
        if multipart_chunksize < 5 * MIB:
            raise TierError(f"tier {name}: multipart_chunksize {multipart_chunksize} is below S3's 5 MiB minimum")
        self.endpoint_url = endpoint_url
        self.region = region or "us-east-1"
        self.tls_verify = verify
        self.multipart_threshold = max(multipart_threshold, 5 * MIB)
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max(1, max_concurrency)
        if retry_mode not in RETRY_MODES:
            raise TierError(f"tier {name}: retry_mode {retry_mode!r} is not one of {RETRY_MODES}")
        if min(connect_timeout, read_timeout) <= 0 or max_attempts < 1:
            raise TierError(f"tier {name}: timeouts must be positive and max_attempts at least 1")
        self.claim_stale_seconds = claim_stale_seconds
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_attempts = max_attempts
        self.retry_mode = retry_mode
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._profile = profile
        self._client: Any = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use; thread-safe for concurrent calls)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(profile_name=self._profile)
            self._client = session.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret_access_key,
                verify=self.tls_verify,
                config=Config(
                    s3={"addressing_style": "path"},
                    # RGW over HTTPS rejects aws-chunked trailing checksums (411 MissingContentLength)
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"total_max_attempts": self.max_attempts, "mode": self.retry_mode},  # the first included
                    max_pool_connections=max(10, self.max_concurrency * 2),
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                ),
            )
        return self._client

    def credentials(self) -> tuple[str | None, str | None]:
        """The access key id and secret this tier signs with (for zarr's object store)."""
        if self._access_key_id and self._secret_access_key:
            return self._access_key_id, self._secret_access_key
        import boto3

        found = boto3.session.Session(profile_name=self._profile).get_credentials()
        if found is None:
            return None, None
        frozen = found.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def _fail(self, exc: Exception, key: str, action: str, *, retried: bool = True) -> TierError:
        code, status = _error_code(exc), _status(exc)
        if code == "NoSuchBucket":
            return TierError(
                f"{action} {self.uri(key)}: bucket {self.bucket!r} does not exist at {self.endpoint_url or 'S3'}",
                hint="create the bucket, or fix the tier's root",
            )
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ObjectNotFoundError(f"no object {self.uri(key)} on tier {self.name}")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return TierError(
                f"{action} {self.uri(key)}: access denied by {self.endpoint_url or 'S3'} ({code or status})",
                hint="check the access key and secret of this tier (configs/tierflow.user.toml or the AWS_* variables)",
            )
        if _transient(exc):
            return TransferError(
                f"{action} {self.uri(key)} "
                + (f"failed after {self.max_attempts} attempt(s)" if retried else "was cut short")
                + f": {code or type(exc).__name__} {exc}",
                hint=f"the connection to {self.endpoint_url or 'S3'} failed or timed out; re-run (what is complete is kept)",
            )
        return TierError(f"{action} {self.uri(key)} failed: {code or type(exc).__name__} {exc}")

    # -- addressing -------------------------------------------------------------------------

    def uri(self, key: str = "") -> str:
        base = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"{base}/{key}" if key else base

    def key_of(self, uri: str) -> str:
        base = self.uri() + "/"
        if not uri.startswith(base):
            raise TierError(f"{uri} is not on tier {self.name} ({self.uri()})")
        return uri[len(base) :]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None  # boto3 clients do not pickle; each process makes its own
        return state

    def __repr__(self) -> str:  # never the credentials
        return f"S3Tier({self.name!r}, {self.uri()!r}, endpoint={self.endpoint_url!r}, write_once={self.write_once})"

    # -- writing ----------------------------------------------------------------------------

    def put_stream(
        self, key: str, stream: IO[bytes], *, expected_sha256: str | None = None, size_hint: int | None = None
    ) -> ObjectInfo:
        object_key = self._object_key(key)
        if self.write_once and self.exists(key):
            raise ObjectExistsError(f"{self.uri(key)} exists and tier {self.name} is write-once")
        first = stream.read(self.multipart_threshold + 1)
        if len(first) <= self.multipart_threshold:
            return self._put_single(key, object_key, first, expected_sha256)
        if expected_sha256 is None and hasattr(stream, "seekable") and stream.seekable():
            # Metadata must be sent before the parts: hash a seekable source first.
            expected_sha256 = self._prehash(stream, first)
        if not self.write_once:
            abort_stale_uploads(self, key)
            return self._put_multipart(key, object_key, first, stream, expected_sha256)
        with hold_claim(self, key):
            abort_stale_uploads(self, key)
            return self._put_multipart(key, object_key, first, stream, expected_sha256)

    def _prehash(self, stream: IO[bytes], first: bytes) -> str:
        start = stream.tell()
        digest = hashlib.sha256(first)
        while chunk := stream.read(COPY_BUFFER):
            digest.update(chunk)
        stream.seek(start)
        return digest.hexdigest()

    def _put_single(self, key: str, object_key: str, data: bytes, expected: str | None) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise IntegrityError(
                f"bytes for {self.uri(key)} hash to {digest[:16]}..., expected {expected[:16]}...",
                hint="the source changed while it was being copied; nothing was written",
            )
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Key": object_key, "Body": data, "Metadata": {"sha256": digest}}
        if self.write_once:
            arguments["IfNoneMatch"] = "*"
        try:
            self.client.put_object(**arguments)
        except Exception as exc:  # noqa: BLE001 - botocore raises ClientError and transport errors
            if refused(exc):
                raise ObjectExistsError(f"{self.uri(key)} exists and tier {self.name} is write-once") from None
            raise self._fail(exc, key, "writing") from None
        return ObjectInfo(key, len(data), datetime.now(UTC), digest)

    def _put_multipart(
        self, key: str, object_key: str, first: bytes, stream: IO[bytes], expected: str | None
    ) -> ObjectInfo:
        metadata = {"sha256": expected} if expected else {}
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key, Metadata=metadata)["UploadId"]
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "writing") from None
        digest = hashlib.sha256()
        size = 0
        parts: dict[int, str] = {}
        pending: set[Future[tuple[int, str]]] = set()

        def send(number: int, body: bytes) -> tuple[int, str]:
            answer = self.client.upload_part(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=body
            )
            return number, answer["ETag"]

        try:
            with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="s3-part") as pool:
                for number, body in enumerate(self._bodies(first, stream), start=1):
                    digest.update(body)
                    size += len(body)
                    if len(pending) >= self.max_concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        parts.update(future.result() for future in done)
                    pending.add(pool.submit(send, number, body))
                parts.update(future.result() for future in pending)
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise IntegrityError(
                    f"bytes for {self.uri(key)} hash to {actual[:16]}..., expected {expected[:16]}...",
                    hint="the source changed while it was being copied; nothing was written",
                )
            self._complete(key, object_key, upload_id, parts, size, actual)
        except BaseException as exc:
            self._abandon(exc, key, object_key, upload_id)
            raise
        return ObjectInfo(key, size, datetime.now(UTC), digest.hexdigest())

    def _bodies(self, first: bytes, stream: IO[bytes]) -> Iterator[bytes]:
        """``first`` then ``stream``, cut into parts of ``multipart_chunksize`` (the last shorter)."""
        buffer, size = first, self.multipart_chunksize
        while True:  # until the stream is exhausted
            while len(buffer) < size:
                more = stream.read(size - len(buffer))
                if not more:
                    break
                buffer += more
            body, buffer = buffer[:size], buffer[size:]
            if not body:
                return
            yield body

    def _abandon(self, exc: BaseException, key: str, object_key: str, upload_id: str) -> None:
        """Abort a multipart upload that failed with ``exc``; raises it as a tier error (returns
        only for what must propagate as it is: interrupts)."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except Exception:  # noqa: BLE001 - best effort; the original error matters
            pass
        if isinstance(exc, TierError):
            raise exc
        if isinstance(exc, Exception):
            raise self._fail(exc, key, "writing") from None

    def _complete(self, key: str, object_key: str, upload_id: str, parts: dict[int, str], size: int, sha256: str) -> None:
        """CompleteMultipartUpload; when its answer is lost and the client's retry is refused (the
        upload is gone), the object is accepted if it is there with this upload's size and sha256."""
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]},
            )
        except Exception:
            try:
                stored = self.stat(key)
            except TierError:
                stored = None
            if stored is None or stored.size != size or stored.sha256 != sha256:
                raise

    def delete(self, key: str) -> None:
        if self.write_once and self.exists(key):
            raise TierError(f"refusing to delete {self.uri(key)}: tier {self.name} is write-once")
        self.discard_unverified(key)

    def discard_unverified(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "deleting") from None

    def delete_prefix(self, prefix: str) -> tuple[int, int]:
        if self.write_once:
            return super().delete_prefix(prefix)  # refuses per object
        infos = list(self.list(prefix))
        for start in range(0, len(infos), 1000):
            batch = infos[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._object_key(i.key)} for i in batch], "Quiet": True},
            )
        return len(infos), sum(info.size for info in infos)

    # -- reading ----------------------------------------------------------------------------

    def open_read(self, key: str) -> AbstractContextManager[IO[bytes]]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "reading") from None
        return _closing(_GuardedBody(body, lambda exc: self._fail(exc, key, "reading", retried=False)))

    def _reread(self, key: str, consume: Callable[[IO[bytes]], _T]) -> _T:
        """``consume`` the whole object, reading it again (up to ``max_attempts`` times) when its
        body is cut short."""
        for attempt in range(1, self.max_attempts + 1):
            with self.open_read(key) as handle:  # a failed request was retried by the client already
                try:
                    return consume(handle)
                except TransferError:
                    if attempt == self.max_attempts:
                        raise
        raise AssertionError("unreachable")

    def get_bytes(self, key: str) -> bytes:
        return self._reread(key, lambda handle: handle.read())

    def sha256(self, key: str) -> str:
        def digest(handle: IO[bytes]) -> str:
            reader = HashingReader(handle)
            while reader.read(COPY_BUFFER):
                pass
            return reader.hexdigest()

        return self._reread(key, digest)

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, key, "reading") from None
        return ObjectInfo(key, int(head["ContentLength"]), head.get("LastModified"), head.get("Metadata", {}).get("sha256"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        stripped = prefix.strip("/")
        if stripped:
            check_key(stripped)
        full = "/".join(part for part in (self.prefix, stripped) if part)
        paginator = self.client.get_paginator("list_objects_v2")
        # a folder prefix: "a/b" lists "a/b/..." and the object "a/b" itself, never "a/bc"
        searches = [full + "/"] if full else [""]
        try:
            if stripped:
                try:
                    yield self.stat(stripped)
                except ObjectNotFoundError:
                    pass
            for search in searches:
                for page in paginator.paginate(Bucket=self.bucket, Prefix=search):
                    for item in page.get("Contents", []):
                        relative = self._relative(item["Key"])
                        if relative.startswith(CLAIMS + "/"):
                            continue
                        yield ObjectInfo(relative, int(item["Size"]), item.get("LastModified"))
        except (ObjectNotFoundError, TierError):
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._fail(exc, stripped or "", "listing") from None

    # -- debris of interrupted writes ------------------------------------------------------

    def leftovers(self, now: datetime) -> list[Leftover]:
        """Unfinished multipart uploads and claims older than ``claim_stale_seconds``."""
        return find_leftovers(self, now)

    def clear_leftover(self, leftover: Leftover) -> None:
        clear_leftover(self, leftover)

    # -- arrays -----------------------------------------------------------------------------

    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        from obstore.store import S3Store
        from zarr.storage import ObjectStore

        key = check_key(prefix.strip("/"))
        access_key, secret_key = self.credentials()
        client_options: dict[str, Any] = {
            "allow_http": True,
            "connect_timeout": timedelta(seconds=self.connect_timeout),
            "read_timeout": timedelta(seconds=self.read_timeout),
            "timeout": timedelta(seconds=self.read_timeout),
        }
        if self.tls_verify is False:
            client_options["allow_invalid_certificates"] = True
        elif isinstance(self.tls_verify, str):
            # obstore has its own TLS stack: it takes the CA bundle as PEM text
            client_options["root_certificate"] = Path(self.tls_verify).read_text()
        config: dict[str, Any] = {"region": self.region, "virtual_hosted_style_request": False}
        if self.endpoint_url:
            config["endpoint"] = self.endpoint_url
        if access_key and secret_key:
            config.update(access_key_id=access_key, secret_access_key=secret_key)
        retry_config = {"max_retries": self.max_attempts - 1, "retry_timeout": timedelta(seconds=self.max_attempts * self.read_timeout)}
        store = S3Store(self.bucket, prefix=self._object_key(key), client_options=client_options, retry_config=retry_config, **config)
        return ObjectStore(store, read_only=read_only or self.write_once)


class _GuardedBody(io.RawIOBase):
    """A response body whose transport failures (reset, cut short, timeout) become tierflow errors."""

    def __init__(self, body: Any, fail: Callable[[Exception], TierError]) -> None:
        self._body = body
        self._fail = fail

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except Exception as exc:  # noqa: BLE001 - urllib3/botocore stream errors
            raise self._fail(exc) from None

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


@contextmanager
def _closing(body: Any) -> Iterator[IO[bytes]]:
    try:
        yield body
    finally:
        body.close()
