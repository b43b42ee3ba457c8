"""A local rate-limited upstream for tests, examples, benchmarks and the demo.

:class:`LocalUpstream` is a small HTTP/1.1 server (standard library only) on 127.0.0.1 that
enforces its own fixed-window limit, says so in rate-limit headers and answers 429 with a
``Retry-After`` when the limit is exceeded::

    with LocalUpstream(limit=10, window=1.0) as upstream:
        httpx.get(upstream.url + "/anything")
        print(upstream.stats())
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

__all__ = ["HeaderStyle", "LocalUpstream", "UpstreamStats"]

#: Which rate-limit headers the upstream sends: IETF draft ``RateLimit-*`` (with a decimal reset
#: and ``RateLimit-Policy``), ``X-RateLimit-*`` (``Reset-After`` in decimal seconds, as Discord),
#: GitHub's ``X-RateLimit-*`` (``Used``, ``Resource`` and ``Reset`` in epoch seconds), the IETF
#: structured fields of draft -08 and later (``RateLimit: "default";r=..;t=..`` with
#: ``RateLimit-Policy: "default";q=..;w=..``), or none.
HeaderStyle = Literal["ietf", "x-ratelimit", "github", "ietf-structured", "none"]


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when 50 clients connect at once.
    request_queue_size = 256


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """What the upstream has seen since it started (or ``reset()``)."""

    #: Requests answered 2xx.
    accepted: int
    #: Requests answered 429.
    rejected: int
    #: The most requests accepted in any one of its windows.
    max_per_window: int
    #: Windows in which at least one request was refused.
    windows_with_429: int
    #: The most requests refused in any one of its windows.
    max_429_per_window: int
    #: Seconds from the first to the last accepted request.
    span: float
    #: Most requests in flight at once.
    max_in_flight: int

    @property
    def rate(self) -> float:
        """Accepted requests per second over the span (0 with fewer than two)."""
        return (self.accepted - 1) / self.span if self.accepted > 1 and self.span > 0 else 0.0


class LocalUpstream:
    """A fixed-window rate-limited HTTP server on 127.0.0.1 (a free port unless ``port`` is given).

    ``limit`` requests per ``window`` seconds (``None``: no limit), windows aligned to multiples of
    ``window`` on this process's monotonic clock. ``delay`` holds each response that long (to
    make requests overlap). Every path answers ``200 ok``; a request over the limit gets 429.
    """

    def __init__(
        self,
        limit: int | None = 10,
        window: float = 1.0,
        *,
        headers: HeaderStyle = "ietf",
        retry_after: bool = True,
        delay: float = 0.0,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.header_style = headers
        self.retry_after = retry_after
        self.delay = delay
        self._clock = clock
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the upstream is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the upstream is not started")
        return int(self._server.server_address[1])

    def start(self) -> LocalUpstream:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self._port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LocalUpstream:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- accounting ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget what was counted (the current window's count too)."""
        with self._lock:
            self._window_start = -math.inf
            self._count = 0
            self._accepted = 0
            self._rejected = 0
            self._per_window: dict[float, int] = {}
            self._rejected_windows: dict[float, int] = {}
            self._first: float | None = None
            self._last: float | None = None
            self._in_flight = 0
            self._max_in_flight = 0

    def stats(self) -> UpstreamStats:
        with self._lock:
            span = (self._last - self._first) if self._first is not None and self._last is not None else 0.0
            return UpstreamStats(
                accepted=self._accepted,
                rejected=self._rejected,
                max_per_window=max(self._per_window.values(), default=0),
                windows_with_429=len(self._rejected_windows),
                max_429_per_window=max(self._rejected_windows.values(), default=0),
                span=span,
                max_in_flight=self._max_in_flight,
            )

    def _admit(self) -> tuple[bool, dict[str, str]]:
        with self._lock:
            now = self._clock()
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            if self.limit is None:
                self._accepted += 1
                return True, {}
            start = math.floor(now / self.window) * self.window
            if start != self._window_start:
                self._window_start, self._count = start, 0
            reset = start + self.window - now
            allowed = self._count < self.limit
            if allowed:
                self._count += 1
                self._accepted += 1
                self._per_window[start] = self._per_window.get(start, 0) + 1
                self._first = now if self._first is None else self._first
                self._last = now
            else:
                self._rejected += 1
                self._rejected_windows[start] = self._rejected_windows.get(start, 0) + 1
            remaining = self.limit - self._count
        headers: dict[str, str] = {}
        # Rounded up, so a client that trusts the reset never comes back early.
        reset_text = f"{math.ceil(reset * 1000) / 1000:.3f}"
        if self.header_style == "ietf":
            headers["RateLimit-Limit"] = str(self.limit)
            headers["RateLimit-Remaining"] = str(remaining)
            headers["RateLimit-Reset"] = reset_text
            headers["RateLimit-Policy"] = f"{self.limit};w={self.window:g}"
        elif self.header_style == "x-ratelimit":
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(remaining)
            headers["X-RateLimit-Reset-After"] = reset_text
        elif self.header_style == "github":
            # Epoch seconds, rounded up: the wall clock, whatever clock counts the windows.
            headers["X-RateLimit-Limit"] = str(self.limit)
            headers["X-RateLimit-Remaining"] = str(remaining)
            headers["X-RateLimit-Used"] = str(self.limit - remaining)
            headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + reset))
            headers["X-RateLimit-Resource"] = "core"
        elif self.header_style == "ietf-structured":
            headers["RateLimit-Policy"] = f'"default";q={self.limit};w={math.ceil(self.window)}'
            headers["RateLimit"] = f'"default";r={remaining};t={math.ceil(reset)}'
        if not allowed and self.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(reset)))
        return allowed, headers

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Small responses on a keep-alive connection: without this, delayed ACKs stall them.
            disable_nagle_algorithm = True
            timeout = 30

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                allowed, headers = upstream._admit()
                try:
                    if upstream.delay > 0:
                        time.sleep(upstream.delay)
                    body = b"ok\n" if allowed else b"rate limited\n"
                    self.send_response(200 if allowed else 429)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                finally:
                    upstream._done()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
