"""An HTTP proxy on loopback in front of the test S3 server that makes storage slow or unreliable, on purpose.

    with S3Proxy(moto.endpoint_url, delay_s=0.5, delay_methods=("PUT",)) as proxy:
        ... AWS_ENDPOINT_URL=proxy.endpoint_url ...          # every PUT now takes ≥ 0.5 s longer
    with S3Proxy(moto.endpoint_url, fault_rate=0.2, seed=1) as proxy:
        ...                                                   # one request in five: 503 SlowDown, 500 or a reset

Requests are forwarded unchanged (method, path, headers — the SigV4 signature names the proxy's host, which the
forwarded Host header keeps — and body) over keep-alive connections; answers come back unchanged. Counters say what
the proxy did, so a test can relate its timings and retries to it.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own; everything else travels as it came.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
FAULTS = ("slowdown", "internal", "reset")
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)


class S3Proxy:
    """A threaded proxy on 127.0.0.1 in front of `upstream` (an http:// endpoint).

    Args:
        delay_s: added before forwarding each request whose method is in `delay_methods`.
        fault_rate: the share of requests (of `fault_methods`) answered with a fault instead of being forwarded,
            drawn from a generator seeded with `seed`; the kinds in `faults` take turns.
    Counters (read after the work): `requests`, `delayed`, `delayed_s`, `faults` (a Counter by kind).
    """

    def __init__(
        self,
        upstream: str,
        *,
        delay_s: float = 0.0,
        delay_methods: tuple[str, ...] = ("GET", "PUT", "POST", "DELETE", "HEAD"),
        fault_rate: float = 0.0,
        fault_methods: tuple[str, ...] = ("GET", "PUT", "POST", "DELETE", "HEAD"),
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"the upstream must be http://host:port, not {upstream!r}")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.upstream = (parts.hostname, parts.port)
        self.delay_s, self.delay_methods = delay_s, delay_methods
        self.fault_rate, self.fault_methods, self.fault_kinds = fault_rate, fault_methods, faults
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.delayed = 0
        self.delayed_s = 0.0
        self.faults: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _decide(self, method: str) -> tuple[float, str | None]:
        """(delay, fault or None) for one request, counted."""
        with self._lock:
            self.requests += 1
            if method in self.fault_methods and self.fault_rate and self._random.random() < self.fault_rate:
                kind = self.fault_kinds[sum(self.faults.values()) % len(self.fault_kinds)]
                self.faults[kind] += 1
                return 0.0, kind
            if method in self.delay_methods and self.delay_s:
                self.delayed += 1
                self.delayed_s += self.delay_s
                return self.delay_s, None
            return 0.0, None


def _handler(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    local = threading.local()  # one upstream connection per proxy thread (keep-alive)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # quiet: tests read the counters

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            delay, fault = proxy._decide(self.command)
            if fault == "reset":
                # RST instead of FIN: the client sees "connection reset by peer" mid-request.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()
                return
            if fault is not None:
                status, payload = (503, SLOW_DOWN) if fault == "slowdown" else (500, INTERNAL)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if delay:
                time.sleep(delay)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            response = self._upstream(self.command, self.path, body, headers)
            payload = response.read()
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(payload)))
            else:
                self.send_header("Content-Length", response.getheader("Content-Length", "0"))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _upstream(self, method: str, path: str, body: bytes, headers: dict[str, str]):
            for attempt in (1, 2):  # a kept-alive upstream connection may have been closed by the server
                connection = getattr(local, "connection", None)
                if connection is None:
                    connection = local.connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    connection.request(method, path, body=body, headers=headers)
                    return connection.getresponse()
                except (ConnectionError, http.client.HTTPException):
                    connection.close()
                    local.connection = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - http.server's names

    return Handler
