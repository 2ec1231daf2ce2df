"""``tierflow serve`` publishes Tier 1/2 files only: real HTTP requests against the real server.

Issue 11, point 8: ``serve --tier ephemeral`` published the embedded database's superuser
password with ``Access-Control-Allow-Origin: *`` and listed the data folder.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TIERFLOW, run_cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with ``target`` sent as it is (no client-side normalisation of ``..``)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@contextmanager
def _serve(project: Path) -> Iterator[int]:
    """``tierflow serve`` running in ``project``; yields its port once it accepts connections."""
    port = _free_port()
    process = subprocess.Popen([TIERFLOW, "serve", "--port", str(port)], cwd=project, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start: {process.communicate()}") from None
                time.sleep(0.1)  # polling for the port, not a fixed wait
        yield port
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, str]]:
    """A project with a real embedded database (so a real superuser password on Tier 4), a
    small published tree on Tier 1 with traps in it, and ``tierflow serve`` running on it."""
    project = tmp_path_factory.mktemp("serve") / "project"
    shutil.copytree(REPO_ROOT / "configs", project / "configs", ignore=lambda _, names: [n for n in names if not n.endswith(".def.toml")])
    run_cli("db", "upgrade", cwd=project)
    password_file = project / "var" / "tier4-ephemeral" / "state" / "postgres" / "superuser.password"
    password = password_file.read_text().strip()
    assert len(password) >= 16
    tier1 = project / "var" / "tier1-source"
    array = tier1 / "promoted" / "demo" / "abc" / "run-1" / "image.zarr"
    array.mkdir(parents=True)
    (array / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (array / ".zattrs").write_text("{}")  # zarr v2 metadata stays readable
    (tier1 / ".env").write_text(f"PASSWORD={password}")  # a dot-file
    (tier1 / "promoted" / ".git").mkdir()
    (tier1 / "promoted" / ".git" / "config").write_text(password)
    (tier1 / "password").symlink_to(password_file)  # symbolic links out of the tier
    (tier1 / "state").symlink_to(password_file.parents[1], target_is_directory=True)
    (tier1 / "etc").symlink_to("/etc", target_is_directory=True)
    try:
        with _serve(project) as port:
            yield project, port, password
    finally:
        run_cli("db", "stop", cwd=project, check=False)


def test_serve_publishes_tier1_files_with_cors(serving: tuple[Path, int, str]) -> None:
    project, port, _ = serving
    array = project / "var" / "tier1-source" / "promoted" / "demo" / "abc" / "run-1" / "image.zarr"
    status, headers, body = _get(port, "/promoted/demo/abc/run-1/image.zarr/zarr.json")
    assert (status, body) == (200, (array / "zarr.json").read_bytes())
    assert headers["access-control-allow-origin"] == "*"
    assert _get(port, "/promoted/demo/abc/run-1/image.zarr/.zattrs")[0] == 200
    assert _get(port, "/promoted/demo/abc/run-1/image.zarr/zarr.json", "HEAD")[0] == 200


@pytest.mark.parametrize("target", [
    "/password",                                                    # symlink to the password file
    "/state/postgres/superuser.password",                           # symlinked folder out of the tier
    "/../tier4-ephemeral/state/postgres/superuser.password",        # traversal
    "/%2e%2e/tier4-ephemeral/state/postgres/superuser.password",    # escaped traversal
    "/..%2ftier4-ephemeral%2fstate%2fpostgres%2fsuperuser.password",
    "/promoted/../../tier4-ephemeral/state/postgres/superuser.password",
    "//etc/passwd",
    "/etc/passwd",                                                  # symlink to /etc
    "/.env",                                                        # dot-files
    "/%2eenv",
    "/promoted/.git/config",
    "/",                                                            # folder listings
    "/promoted/",
    "/promoted",
    "/promoted/demo/abc/run-1/image.zarr/",
    "/state/postgres/",
])
def test_serve_refuses_secrets_traversal_and_listings(serving: tuple[Path, int, str], target: str) -> None:
    _, port, password = serving
    status, _, body = _get(port, target)
    assert status == 404, (target, status, body[:200])
    assert password.encode() not in body
    assert b"superuser" not in body and b"<a href" not in body


def test_serve_is_read_only(serving: tuple[Path, int, str]) -> None:
    project, port, _ = serving
    for method in ("PUT", "POST", "DELETE"):
        assert _get(port, "/promoted/demo/abc/run-1/image.zarr/zarr.json", method)[0] in (405, 501)
    assert (project / "var" / "tier1-source" / "promoted" / "demo" / "abc" / "run-1" / "image.zarr" / "zarr.json").is_file()


@pytest.mark.parametrize("tier", ["ephemeral", "scratch", "state", "../tier4-ephemeral"])
def test_serve_refuses_tiers_not_meant_to_be_read(project: Path, tier: str) -> None:
    port = _free_port()
    done = run_cli("serve", "--tier", tier, "--port", str(port), cwd=project, check=False)
    assert done.returncode == 1
    assert f"tier {tier!r} is not published" in done.stderr and "hint:" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # nothing listens


@pytest.mark.parametrize("layout", ['[tiers.source]\nroot = "var/tier4-ephemeral/published"\n',
                                    '[tiers.ephemeral]\nroot = "var/tier1-source/ephemeral"\n'],
                         ids=["tier1-inside-tier4", "tier4-inside-tier1"])
def test_serve_refuses_tiers_that_overlap_the_ephemeral_tier(project: Path, layout: str) -> None:
    """Tier 4 (the database password) inside a served tier, or a served tier inside Tier 4: the
    configuration is refused before anything listens, so nothing of Tier 4 can be published."""
    (project / "configs" / "tierflow.user.toml").write_text(layout)
    done = run_cli("serve", "--port", str(_free_port()), cwd=project, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "overlap" in done.stderr and "tiers.ephemeral" in done.stderr and "tiers.source" in done.stderr and "hint:" in done.stderr


def test_serve_with_no_options_answers_ranges_and_preflights(project: Path) -> None:
    """``tierflow serve`` as the README shows it (no options): Tier 1 on [pipeline].data_url's
    port; a byte range gets 206 with those bytes, an OPTIONS preflight the CORS headers."""
    port = _free_port()
    (project / "configs" / "tierflow.user.toml").write_text(f'[pipeline]\ndata_url = "http://127.0.0.1:{port}"\n')
    shard = project / "var" / "tier1-source" / "promoted" / "img.zarr" / "c" / "0"
    shard.parent.mkdir(parents=True)
    payload = bytes(range(256)) * 40
    shard.write_bytes(payload)
    process = subprocess.Popen([TIERFLOW, "serve"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start: {process.communicate()}") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/promoted/img.zarr/c/0"
        for header, (start, stop) in (("bytes=100-1099", (100, 1100)), ("bytes=10000-", (10000, 10240)), ("bytes=-16", (10224, 10240))):
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": header}), timeout=30) as response:
                assert response.status == 206
                assert response.read() == payload[start:stop]
                assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{len(payload)}"
                assert response.headers["Access-Control-Allow-Origin"] == "*"
                assert "Content-Range" in response.headers["Access-Control-Expose-Headers"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=20000-"}), timeout=30)
        assert refused.value.code == 416 and refused.value.headers["Content-Range"] == f"bytes */{len(payload)}"
        preflight = urllib.request.Request(url, method="OPTIONS", headers={
            "Origin": "https://neuroglancer-demo.appspot.com", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range"})
        with urllib.request.urlopen(preflight, timeout=30) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert "GET" in response.headers["Access-Control-Allow-Methods"]
            assert "range" in response.headers["Access-Control-Allow-Headers"].lower()
        with urllib.request.urlopen(url, timeout=30) as response:  # and a whole file, as before
            assert (response.status, response.read()) == (200, payload)
    finally:
        process.terminate()
        process.wait(timeout=60)
