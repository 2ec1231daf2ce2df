"""Publishing a tier read-only over HTTP (``tierflow serve``), for Neuroglancer in the browser.

Only the tiers meant to be read are published: Tier 1 (source) and Tier 2 (output). Tier 3
(scratch) and Tier 4 (ephemeral: logs, worker state, the embedded database and its superuser
password) never are, nor is anything of theirs that lies inside a published root. A request is
answered only with a regular file that really lies under the published root (after resolving
``..``, percent-escapes and symbolic links), whose path has no dot-file segment (zarr v2's
metadata names excepted); everything else is ``404``, and no folder is ever listed.
"""

from __future__ import annotations

import http.server
import os
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tierflow.configs import DatabaseConfig, TierflowConfig
from tierflow.storage.errors import TierflowError

__all__ = ["SERVABLE_TIERS", "TierHTTPServer", "byte_range", "published_file", "serve_roots", "tier_server"]

SERVABLE_TIERS = ("source", "output")
ZARR_V2_METADATA = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def serve_roots(config: TierflowConfig, db_config: DatabaseConfig, tier: str) -> tuple[Path, tuple[Path, ...]]:
    """The folder to publish for ``tier`` and the folders never to publish (resolved).

    Raises
    ------
    TierflowError
        If ``tier`` is not Tier 1 or 2, is on S3, or lies inside a folder never published.
    """
    if tier not in SERVABLE_TIERS:
        raise TierflowError(
            f"tier {tier!r} is not published over HTTP: only source (Tier 1) and output (Tier 2) are",
            hint="run `tierflow serve --tier source` (or --tier output); scratch and ephemeral (logs, the database's "
                 "state and password) are never served",
        )
    root = config.tier_root(tier)
    if root.startswith("s3://"):
        raise TierflowError(f"tier {tier} is on S3 ({root}): nothing to serve",
                            hint="Neuroglancer reads it through the S3 endpoint directly")
    hidden = [Path(db_config.data_path)]
    hidden += [Path(config.tier_root(name)) for name in ("scratch", "ephemeral") if not config.tier_root(name).startswith("s3://")]
    published, never = Path(root).resolve(), tuple(path.resolve() for path in hidden)
    for folder in never:
        if published.is_relative_to(folder):
            raise TierflowError(f"tier {tier} ({published}) lies inside {folder}, which is never published",
                                hint="give Tier 1/2 a root of their own in configs/tierflow.user.toml")
    return published, never


def published_file(root: Path, url: str, never: tuple[Path, ...] = ()) -> Path | None:
    """The file a request for ``url`` may be answered with, or ``None`` (answer ``404``).

    Parameters
    ----------
    root
        The published folder (resolved).
    url
        The request target, e.g. ``/promoted/demo/x.zarr/zarr.json?x=1``.
    never
        Folders never published, even when inside ``root`` (resolved).
    """
    segments = [part for part in unquote(urlsplit(url).path).split("/") if part]
    if any(part.startswith(".") and part not in ZARR_V2_METADATA for part in segments):
        return None  # dot-files, '.' and '..'
    if any("\\" in part or "\0" in part for part in segments):
        return None
    target = Path(os.path.realpath(root.joinpath(*segments)))
    if not target.is_relative_to(root) or any(target.is_relative_to(folder) for folder in never):
        return None  # outside the root (a symbolic link out), or a hidden tier inside it
    if any(part.startswith(".") and part not in ZARR_V2_METADATA for part in target.relative_to(root).parts):
        return None  # a link whose real name is a dot-file
    return target if target.is_file() else None


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``(start, stop)`` of a single ``Range: bytes=...`` header over a file of ``size``
    bytes (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``), or None when it is not satisfiable."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            count = int(last)
            return (max(0, size - count), size) if count > 0 and size else None
        start = int(first)
        stop = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return (start, stop) if 0 <= start < stop else None


class _Handler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of published files (single byte ranges: ``206``) with CORS, and CORS
    preflights (OPTIONS); every other request is refused."""

    server: TierHTTPServer
    _range: tuple[int, int] | None = None

    def send_head(self) -> Any:
        self._target, self._range = published_file(self.server.root, self.path, self.server.never), None
        if self._target is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not published")
            return None
        header = self.headers.get("Range")
        if header is None:
            return super().send_head()
        size = self._target.stat().st_size
        wanted = byte_range(header, size)
        if wanted is None:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        file = open(self._target, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        file.seek(wanted[0])
        self._range = wanted
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(self._target)))
        self.send_header("Content-Range", f"bytes {wanted[0]}-{wanted[1] - 1}/{size}")
        self.send_header("Content-Length", str(wanted[1] - wanted[0]))
        self.end_headers()
        return file

    def copyfile(self, source: Any, outputfile: Any) -> None:
        if self._range is None:
            super().copyfile(source, outputfile)
            return
        left = self._range[1] - self._range[0]
        while left > 0:
            chunk = source.read(min(left, 1 << 20))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)

    def do_OPTIONS(self) -> None:  # noqa: N802 - http.server's naming
        """A CORS preflight: which methods and request headers a browser may use."""
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Range, If-None-Match, If-Modified-Since, Content-Type")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def translate_path(self, path: str) -> str:
        return str(self._target)

    def list_directory(self, path: Any) -> None:
        self.send_error(HTTPStatus.NOT_FOUND, "not published")

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges, ETag")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def do_PUT(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    do_POST = do_DELETE = do_PATCH = do_PUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


class TierHTTPServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server publishing ``root`` (never the folders in ``never``)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path, never: tuple[Path, ...]) -> None:
        self.root, self.never = root, never
        super().__init__(address, _Handler)


def tier_server(config: TierflowConfig, db_config: DatabaseConfig, tier: str, port: int) -> TierHTTPServer:
    """A server publishing ``tier`` on ``127.0.0.1:port`` (not started: call ``serve_forever``).

    Raises
    ------
    TierflowError
        If the tier may not be published (see :func:`serve_roots`) or the port is taken.
    """
    root, never = serve_roots(config, db_config, tier)
    try:
        return TierHTTPServer(("127.0.0.1", port), root, never)
    except OSError as exc:
        raise TierflowError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}",
                            hint="choose another port with --port, or stop what uses it") from None
