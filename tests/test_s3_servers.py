"""Self-test of the S3 server fixtures (``tests/s3_servers.py``) against the real servers.

Also records, as assertions, how each server treats ``If-None-Match: *``: the storage layer's
write-once guarantee depends on it, and ``S3Endpoint.honours_if_none_match_on_multipart`` is
backed by :func:`test_if_none_match_on_multipart_complete`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

import botocore.exceptions
import obstore
import pytest

if TYPE_CHECKING:  # the fixtures come from the s3_servers plugin that conftest.py registers
    from s3_servers import S3Client, S3Endpoint

PART_SIZE = 5 * 1024 * 1024
DENIED_CODES = {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"}

ENDPOINTS = [
    pytest.param("seaweedfs_http", id="seaweedfs-http"),
    pytest.param("seaweedfs_https", id="seaweedfs-https"),
    pytest.param("ceph_rgw", id="ceph-rgw", marks=pytest.mark.ceph),
]


@pytest.fixture(params=ENDPOINTS)
def endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    """Return each of the three S3 endpoints in turn."""
    endpoint: S3Endpoint = request.getfixturevalue(request.param)
    return endpoint


def error_of(excinfo: pytest.ExceptionInfo[botocore.exceptions.ClientError]) -> tuple[int, str]:
    """Return the HTTP status and S3 error code of a boto3 client error."""
    response = excinfo.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def body_of(client: S3Client, bucket: str, key: str) -> bytes:
    """Read a whole object."""
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def complete_multipart(
    client: S3Client, bucket: str, key: str, parts: list[bytes], **extra: str
) -> None:
    """Upload ``parts`` as one multipart upload and complete it (aborting it if that fails)."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        done.append({"PartNumber": number, "ETag": part["ETag"]})
    try:
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}, **extra
        )
    except botocore.exceptions.ClientError:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def test_endpoint_describes_its_server(endpoint: S3Endpoint) -> None:
    assert endpoint.endpoint_url.startswith(("http://127.0.0.1:", "https://127.0.0.1:"))
    assert endpoint.name.endswith("https") == endpoint.endpoint_url.startswith("https://")
    assert isinstance(endpoint.verify, str) == endpoint.endpoint_url.startswith("https://")
    with pytest.raises(dataclasses.FrozenInstanceError):
        endpoint.name = "other"  # type: ignore[misc]


def test_object_put_get_list_delete(endpoint: S3Endpoint) -> None:
    client = endpoint.boto3_client()
    bucket = endpoint.new_bucket()
    assert bucket != endpoint.new_bucket()
    client.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"alpha")
    client.put_object(Bucket=bucket, Key="dir/b.txt", Body=b"beta")
    assert body_of(client, bucket, "dir/a.txt") == b"alpha"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [
        ("dir/a.txt", 5),
        ("dir/b.txt", 4),
    ]
    client.delete_object(Bucket=bucket, Key="dir/a.txt")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.head_object(Bucket=bucket, Key="dir/a.txt")
    assert error_of(excinfo)[0] == 404
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == ["dir/b.txt"]


def test_multipart_upload_of_two_5_mib_parts(endpoint: S3Endpoint) -> None:
    client = endpoint.boto3_client()
    bucket = endpoint.new_bucket()
    parts = [b"\x01" * PART_SIZE, b"\x02" * PART_SIZE]
    complete_multipart(client, bucket, "big.bin", parts)
    # Read the ETag from HEAD: Ceph 16.2 answers CompleteMultipartUpload with an empty <ETag>.
    head = client.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-2")
    assert head["ContentLength"] == 2 * PART_SIZE
    data = body_of(client, bucket, "big.bin")
    assert hashlib.sha256(data).digest() == hashlib.sha256(b"".join(parts)).digest()


def test_wrong_credentials_are_denied(endpoint: S3Endpoint) -> None:
    bucket = endpoint.new_bucket()
    wrong_secret = dataclasses.replace(endpoint, secret_key=endpoint.secret_key + "x")
    wrong_key = dataclasses.replace(endpoint, access_key="nobody")
    for client in (wrong_secret.boto3_client(), wrong_key.boto3_client()):
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            client.put_object(Bucket=bucket, Key="intruder", Body=b"x")
        status, code = error_of(excinfo)
        assert status == 403 and code in DENIED_CODES
        with pytest.raises(botocore.exceptions.ClientError) as excinfo:
            client.list_objects_v2(Bucket=bucket)
        assert error_of(excinfo)[0] == 403
    assert endpoint.boto3_client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_non_empty_bucket_cannot_be_deleted(endpoint: S3Endpoint) -> None:
    client = endpoint.boto3_client()
    bucket = endpoint.new_bucket()
    client.put_object(Bucket=bucket, Key="keep", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.delete_bucket(Bucket=bucket)
    assert error_of(excinfo) == (409, "BucketNotEmpty")
    assert body_of(client, bucket, "keep") == b"x"


def test_if_none_match_on_put_refuses_overwrite(endpoint: S3Endpoint) -> None:
    """Every server here honours ``If-None-Match: *`` on a single-part PUT."""
    client = endpoint.boto3_client()
    bucket = endpoint.new_bucket()
    client.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert error_of(excinfo) == (412, "PreconditionFailed")
    assert body_of(client, bucket, "once") == b"first"


def test_if_none_match_on_multipart_complete(endpoint: S3Endpoint) -> None:
    """Observe whether CompleteMultipartUpload with ``If-None-Match: *`` refuses an overwrite.

    SeaweedFS answers 412; Ceph 16.2 ignores the header and silently replaces the object.
    """
    client = endpoint.boto3_client()
    bucket = endpoint.new_bucket()
    complete_multipart(client, bucket, "fresh", [b"new"], IfNoneMatch="*")
    assert body_of(client, bucket, "fresh") == b"new"

    client.put_object(Bucket=bucket, Key="taken", Body=b"original")
    try:
        complete_multipart(client, bucket, "taken", [b"replacement"], IfNoneMatch="*")
    except botocore.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "PreconditionFailed"
        honoured = True
    else:
        honoured = False
    assert body_of(client, bucket, "taken") == (b"original" if honoured else b"replacement")
    assert honoured is endpoint.honours_if_none_match_on_multipart


def test_obstore_put_get_and_create_mode(endpoint: S3Endpoint) -> None:
    """Use obstore (zarr's ObjectStore backend) over HTTP and HTTPS.

    Its ``mode="create"`` sends ``If-None-Match: *`` and so refuses to overwrite.
    """
    store = endpoint.obstore_store(endpoint.new_bucket())
    obstore.put(store, "zarr.json", b'{"zarr_format": 3}')
    assert obstore.get(store, "zarr.json").bytes().to_bytes() == b'{"zarr_format": 3}'
    with pytest.raises(obstore.exceptions.AlreadyExistsError):
        obstore.put(store, "zarr.json", b"{}", mode="create")
    assert [m["path"] for m in obstore.list(store).collect()] == ["zarr.json"]


def test_https_certificate_is_checked(seaweedfs_https: S3Endpoint) -> None:
    """The HTTPS endpoint is trusted only through the session CA, not the system roots."""
    system_roots = dataclasses.replace(seaweedfs_https, verify=True)
    with pytest.raises(botocore.exceptions.SSLError):
        system_roots.boto3_client(retries={"max_attempts": 1}).list_buckets()
    listed = seaweedfs_https.boto3_client().list_buckets()
    assert listed["ResponseMetadata"]["HTTPStatusCode"] == 200
