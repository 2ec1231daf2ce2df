"""A fault-injecting HTTP proxy on loopback, in front of a real S3 server (SeaweedFS).

This is the test suite's one fault injector for S3 networking: a real network that resets,
truncates or stalls on demand cannot otherwise be had. Everything behind it is real. Per request,
with probability ``rate`` (drawn from a ``random.Random(seed)``), one of these faults happens:

``reset``
    the connection is reset (RST) before the request reaches the server;
``reset_after``
    the request reaches the server and is carried out, then the client's connection is reset
    before it hears the answer (the hard case: did it happen?);
``truncate``
    the server's answer is sent with its full ``Content-Length`` but only half its body, then the
    connection is closed;
``close_after_continue``
    a request with ``Expect: 100-continue`` gets ``100 Continue`` and then the connection is
    closed (the botocore hang of issue 11);
``latency``
    the request is held 0.2-1.5 s before it is forwarded;
``stall``
    the request is never answered (the connection stays open until the proxy stops).

The proxy answers ``Expect: 100-continue`` itself and sends each request to the server on a
connection of its own. ``counts`` tallies requests and faults by mode.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from typing import IO

__all__ = ["MODES", "FaultProxy"]

MODES = ("reset", "reset_after", "truncate", "close_after_continue", "latency")
ALL_MODES = (*MODES, "stall")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _reset(connection: socket.socket) -> None:
    """Close with a TCP RST (linger 0) instead of a FIN."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        connection.close()


def _read_head(reader: IO[bytes]) -> bytes | None:
    """A request's or response's head, up to and including the blank line; ``None`` at EOF."""
    lines = []
    while True:
        line = reader.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> dict[str, str]:
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name:
            fields[name.strip().lower()] = value.strip()
    return fields


def _read_body(reader: IO[bytes], headers: dict[str, str], *, until_close: bool) -> bytes:
    """The body as framed on the wire (chunked framing kept)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = reader.readline()
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := reader.readline()) not in (b"\r\n", b"\n", b""):
                    parts.append(trailer)
                parts.append(b"\r\n")
                return b"".join(parts)
            parts.append(reader.read(size + 2))
    if "content-length" in headers:
        return reader.read(int(headers["content-length"]))
    return reader.read() if until_close else b""


class FaultProxy:
    """The proxy (see the module docstring).

    Parameters
    ----------
    upstream
        ``host:port`` of the S3 server.
    rate
        Share of requests that get a fault.
    seed
        Seed of the fault draws.
    modes
        Faults to draw from (a request no mode applies to passes unharmed).
    limit
        Most faults to inject; ``None``: no limit.
    match
        Only requests whose request line (``PUT /bucket/key?query HTTP/1.1``) contains all of
        these may get a fault; ``()``: any request.
    """

    def __init__(
        self, upstream: str, *, rate: float = 0.1, seed: int = 0, modes: tuple[str, ...] = MODES, limit: int | None = None,
        match: tuple[bytes, ...] = (),
    ) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rate = rate
        self.modes = modes
        self.limit = limit
        self.match = match
        self.counts: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting and close every open connection."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.close()
                except OSError:
                    pass

    @property
    def faults(self) -> int:
        """Faults injected so far."""
        return sum(count for mode, count in self.counts.items() if mode in ALL_MODES)

    def _draw(self, request_line: bytes, expects_continue: bool) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if not all(part in request_line for part in self.match):
                return None
            if self._random.random() >= self.rate or (self.limit is not None and self.faults >= self.limit):
                return None
            choices = [m for m in self.modes if m != "close_after_continue" or expects_continue]
            if not choices:
                return None
            mode = self._random.choice(choices)
            self.counts[mode] += 1
            return mode

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            reader = client.makefile("rb")
            while not self._stopped.is_set() and self._one_request(client, reader):
                pass
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(client)
            try:
                client.close()
            except OSError:
                pass

    def _one_request(self, client: socket.socket, reader: IO[bytes]) -> bool:
        """Relay one request (or fault it); returns whether the connection stays open."""
        head = _read_head(reader)
        if head is None:
            return False
        headers = _headers(head)
        expects = headers.get("expect", "").lower() == "100-continue"
        fault = self._draw(head.split(b"\r\n", 1)[0], expects)
        if fault == "reset":
            _reset(client)
            return False
        if expects:
            client.sendall(CONTINUE)
            if fault == "close_after_continue":
                client.close()
                return False
        body = _read_body(reader, headers, until_close=False)
        if fault == "stall":
            self._stopped.wait()
            return False
        if fault == "latency":
            time.sleep(self._random.uniform(0.2, 1.5))
        forwarded = b"".join(line + b"\r\n" for line in head.split(b"\r\n")[:-2] if not line.lower().startswith(b"expect:"))
        answer_head, answer_body = self._forward(forwarded + b"\r\n" + body, head.split(b" ", 1)[0])
        if fault == "reset_after" or (fault == "truncate" and len(answer_body) < 2):
            _reset(client)
            return False
        if fault == "truncate":
            client.sendall(answer_head + answer_body[: len(answer_body) // 2])
            client.close()
            return False
        client.sendall(answer_head + answer_body)
        return "close" not in _headers(answer_head).get("connection", "").lower()

    def _forward(self, request: bytes, method: bytes) -> tuple[bytes, bytes]:
        """Send one request to the server on a fresh connection; its answer's head and body."""
        with socket.create_connection(self.upstream, timeout=300) as upstream:
            upstream.sendall(request)
            reader = upstream.makefile("rb")
            while True:
                head = _read_head(reader)
                if head is None:
                    raise ConnectionError("the S3 server closed the connection without an answer")
                status = int(head.split(b" ", 2)[1])
                if status >= 200:
                    break
            headers = _headers(head)
            if method == b"HEAD" or status in (204, 304):
                return head, b""
            return head, _read_body(reader, headers, until_close=True)
