"""Requests per second through ratesync_http against plain clients, to the same local server.

Memory store, a host rule whose limit is never reached, learning on (the defaults). The upstream
runs in a process of its own and answers either without rate-limit headers or with realistic
ones (GitHub's ``X-RateLimit-*``, the IETF ``RateLimit`` / ``RateLimit-Policy`` structured fields,
the older IETF ``RateLimit-*``), which the rate-limited clients read and learn from as they do
for any upstream: with the default ``learn_interval`` (0.05 s) a quota as far from exhausted as
this upstream's (10**9) has one response read per interval; ``--learn-interval 0`` reads every one.

The machine this runs on is usually busy, so every comparison is made of interleaved rounds (the
baseline and the rate-limited client alternate, in alternating order) and reports the median of
each; next to the wall-clock rate it reports the client's CPU time per request
(``time.process_time()`` of this process, the server being another one), which load disturbs far
less. Ratios are rate-sync over plain: for CPU, plain CPU per request over rate-sync's, so that
both read "fraction of plain throughput" (target: >= 0.95x).

A second table measures the same without any network (``httpx.MockTransport``): what parsing a
response's headers and the transport add per request, in microseconds of CPU.

    python bench/bench_http.py [--requests 1000] [--async-requests 300] [--rounds 9]
                               [--styles none,github,ietf-structured] [--offline-only]
                               [--learn-interval SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import httpx
import requests

import ratesync
from ratesync_http import RateLimitedSession, RateLimitedTransport, parse_rate_limit_headers
from ratesync_http._headers import parse_lines, rate_limit_lines, rate_limit_lines_raw
from ratesync_http.testing import HeaderStyle, LocalUpstream

if importlib.util.find_spec("sniffio") is None:
    # httpcore imports sniffio on every async request; when it is not installed each failed import
    # searches the whole sys.path, milliseconds per request, which would swamp both clients alike.
    # A None entry makes the import fail at once (httpcore then assumes asyncio, as it would anyway).
    sys.modules["sniffio"] = None  # type: ignore[assignment]

RULE = {"127.0.0.1": {"rate_per_second": 1_000_000, "burst": 1_000}}
#: Options of every rate-limited client (``--learn-interval`` sets one).
OPTIONS: dict[str, Any] = {}
TASKS = 50
LABELS: dict[str, str] = {
    "none": "no rate-limit headers",
    "github": "GitHub X-RateLimit-*",
    "ietf-structured": "IETF RateLimit + RateLimit-Policy",
    "ietf": "IETF RateLimit-* (older drafts)",
    "x-ratelimit": "X-RateLimit-* with Reset-After",
}


@dataclass(frozen=True)
class Sample:
    """One timed round: requests per second (wall clock) and client CPU microseconds per request."""

    rate: float
    cpu_us: float


class Timer:
    """Wall-clock and CPU time of a block of ``n`` requests."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sample = Sample(0.0, 0.0)

    def __enter__(self) -> Timer:
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        self.sample = Sample(self.n / wall, cpu / self.n * 1e6)


def limited_transport(inner: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> RateLimitedTransport:
    return RateLimitedTransport(inner, hosts=RULE, registry=ratesync.Registry(), **OPTIONS)


# -- the clients -------------------------------------------------------------------------------


def httpx_sync(url: str, n: int, limited: bool) -> Sample:
    with httpx.Client(transport=limited_transport() if limited else None) as client:
        for _ in range(20):  # connect, and let the transport hear from the host
            client.get(url)
        with Timer(n) as timer:
            for _ in range(n):
                client.get(url)
    return timer.sample


def httpx_async(url: str, n: int, limited: bool) -> Sample:
    per_task = max(1, n // TASKS)

    async def main() -> Sample:
        limits = httpx.Limits(max_connections=TASKS, max_keepalive_connections=TASKS)
        # A client given a transport ignores ``limits``: the inner transport gets the same pool.
        transport = limited_transport(httpx.AsyncHTTPTransport(limits=limits)) if limited else None
        async with httpx.AsyncClient(transport=transport, limits=limits) as client:
            await asyncio.gather(*(client.get(url) for _ in range(TASKS)))  # open the connections

            async def work() -> None:
                for _ in range(per_task):
                    await client.get(url)

            with Timer(per_task * TASKS) as timer:
                await asyncio.gather(*(work() for _ in range(TASKS)))
        return timer.sample

    return asyncio.run(main())


def requests_session(url: str, n: int, limited: bool) -> Sample:
    session = RateLimitedSession(hosts=RULE, registry=ratesync.Registry(), **OPTIONS) if limited else requests.Session()
    with session:
        for _ in range(20):
            session.get(url)
        with Timer(n) as timer:
            for _ in range(n):
                session.get(url)
    return timer.sample


CLIENTS: list[tuple[str, Callable[[str, int, bool], Sample]]] = [
    ("httpx.Client", httpx_sync),
    (f"httpx.AsyncClient x{TASKS} tasks", httpx_async),
    ("requests.Session", requests_session),
]


# -- the upstream ------------------------------------------------------------------------------


@contextlib.contextmanager
def upstream_process(style: str) -> Iterator[str]:
    """The server in a process of its own, so its threads do not share the clients' GIL or CPU clock."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", style], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def serve(style: HeaderStyle) -> None:
    # Fifty handler threads: hand the GIL over quickly, or each request waits out a 5 ms slice.
    sys.setswitchinterval(0.0002)
    # A limit far above what the benchmark reaches: with headers, they are parsed and learned
    # from on every response; nothing ever waits.
    limit = 10**9 if style != "none" else None
    with LocalUpstream(limit=limit, window=3600.0, headers=style) as upstream:
        print(upstream.url, flush=True)
        sys.stdin.read()


# -- comparisons -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    plain: list[Sample]
    limited: list[Sample]

    def rate(self, which: list[Sample]) -> float:
        return statistics.median(s.rate for s in which)

    def cpu(self, which: list[Sample]) -> float:
        return statistics.median(s.cpu_us for s in which)

    @property
    def wall_ratio(self) -> float:
        return self.rate(self.limited) / self.rate(self.plain)

    @property
    def best_ratio(self) -> float:
        return max(s.rate for s in self.limited) / max(s.rate for s in self.plain)

    @property
    def cpu_ratio(self) -> float:
        return self.cpu(self.plain) / self.cpu(self.limited)

    @property
    def best_cpu_ratio(self) -> float:
        # Load only ever adds CPU time (caches, a busy sibling core): the least is the cleanest.
        return min(s.cpu_us for s in self.plain) / min(s.cpu_us for s in self.limited)


def compare(name: str, rounds: int, run: Callable[[bool], Sample]) -> Row:
    plain: list[Sample] = []
    limited: list[Sample] = []
    for i in range(rounds):
        # Alternate the order too, so a drift in the machine's load favours neither.
        for is_limited in (False, True) if i % 2 == 0 else (True, False):
            (limited if is_limited else plain).append(run(is_limited))
    return Row(name, plain, limited)


def network_rows(styles: list[str], n: int, n_async: int, rounds: int) -> list[Row]:
    rows: list[Row] = []
    for style in styles:
        with upstream_process(style) as base_url:
            url = base_url + "/bench"
            for client_name, client in CLIENTS:
                print(f"  {client_name}, {LABELS[style]} ...", file=sys.stderr, flush=True)
                count = n_async if client is httpx_async else n
                rows.append(compare(f"{client_name}, {LABELS[style]}", rounds, functools.partial(client, url, count)))
    return rows


# -- without a network ---------------------------------------------------------------------------


def sample_headers(style: str) -> dict[str, str]:
    """What the upstream sends in ``style`` (taken from a live LocalUpstream, so they never drift apart)."""
    with LocalUpstream(limit=10**9, window=3600.0, headers=style) as upstream, httpx.Client() as client:  # type: ignore[arg-type]
        return dict(client.get(upstream.url).headers)


def cpu_us(fn: Callable[[], object], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - started) / n * 1e6


@dataclass(frozen=True)
class OfflineRow:
    """CPU microseconds per call, best of the rounds."""

    parse: float  # parse_rate_limit_headers(response.headers): the public function
    read: float  # what the transport does: the rate-limit lines from the raw headers, then their parse
    plain: float  # a MockTransport request
    limited: float  # the same through RateLimitedTransport


def offline_row(style: str, n: int, rounds: int) -> OfflineRow:
    headers = sample_headers(style)
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok\n", headers=headers))
    limited = RateLimitedTransport(mock, hosts=RULE, registry=ratesync.Registry(), **OPTIONS)
    request = httpx.Request("GET", "http://127.0.0.1:8000/bench")
    response_headers = mock.handle_request(request).headers
    for _ in range(20):
        limited.handle_request(request)

    def read() -> object:
        lines = rate_limit_lines_raw(response_headers.raw)
        return parse_lines(lines if lines is not None else rate_limit_lines(response_headers))

    samples: dict[str, list[float]] = {"parse": [], "read": [], "plain": [], "limited": []}
    for _ in range(rounds):
        samples["parse"].append(cpu_us(lambda: parse_rate_limit_headers(response_headers), n))
        samples["read"].append(cpu_us(read, n))
        samples["plain"].append(cpu_us(lambda: mock.handle_request(request), n))
        samples["limited"].append(cpu_us(lambda: limited.handle_request(request), n))
    return OfflineRow(**{name: min(values) for name, values in samples.items()})


def offline_async(style: str, n: int, rounds: int) -> tuple[float, float]:
    """Plain and rate-limited CPU microseconds per async MockTransport request (best rounds)."""
    headers = sample_headers(style)
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok\n", headers=headers))
    limited = RateLimitedTransport(mock, hosts=RULE, registry=ratesync.Registry(), **OPTIONS)
    request = httpx.Request("GET", "http://127.0.0.1:8000/bench")

    async def cpu(transport: httpx.AsyncBaseTransport, count: int) -> float:
        started = time.process_time()
        for _ in range(count):
            await transport.handle_async_request(request)
        return (time.process_time() - started) / count * 1e6

    async def main() -> tuple[float, float]:
        await cpu(limited, 20)
        plain, through = [], []
        for _ in range(rounds):
            plain.append(await cpu(mock, n))
            through.append(await cpu(limited, n))
        return min(plain), min(through)

    return asyncio.run(main())


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per round, sync clients (default 1000)")
    parser.add_argument(
        "--async-requests",
        type=int,
        default=300,
        help=f"requests per round of the {TASKS} async tasks (default 300; httpx's pool is slow with {TASKS})",
    )
    # Many short rounds rather than a few long ones: the load of a shared machine swings within
    # seconds, and the median of many interleaved rounds follows it best.
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each client (default 9)")
    parser.add_argument("--styles", default="none,github,ietf-structured", help="upstream header styles")
    parser.add_argument("--offline-only", action="store_true", help="only the table without network")
    parser.add_argument(
        "--learn-interval", type=float, default=None, help="the clients' learn_interval (default: the library's)"
    )
    parser.add_argument("--serve", choices=get_args(HeaderStyle), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.learn_interval is not None:
        OPTIONS["learn_interval"] = args.learn_interval
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    for style in styles:
        if style not in get_args(HeaderStyle):
            parser.error(f"unknown style {style!r}; choose from {', '.join(get_args(HeaderStyle))}")
    n, rounds = args.requests, args.rounds

    if not args.offline_only:
        rows = network_rows(styles, n, args.async_requests, rounds)
        print(
            f"\nratesync_http against plain clients, same local server: {n} requests ({args.async_requests} async)"
            f" x {rounds} interleaved rounds (medians), memory store, limit never reached\n"
        )
        header = (
            f"{'client, upstream headers':<60} {'plain/s':>8} {'rs/s':>8} {'wall':>6} {'best':>6}"
            f" {'plain CPU':>10} {'rs CPU':>8} {'CPU':>6} {'best':>6}"
        )
        print(header)
        print(
            f"{'':<60} {'':>8} {'':>8} {'ratio':>6} {'ratio':>6} {'us/req':>10} {'us/req':>8} {'ratio':>6} {'CPU':>6}"
        )
        print("-" * len(header))
        for row in rows:
            print(
                f"{row.name:<60} {row.rate(row.plain):>8.0f} {row.rate(row.limited):>8.0f}"
                f" {row.wall_ratio:>5.2f}x {row.best_ratio:>5.2f}x"
                f" {row.cpu(row.plain):>10.1f} {row.cpu(row.limited):>8.1f} {row.cpu_ratio:>5.2f}x"
                f" {row.best_cpu_ratio:>5.2f}x"
            )
        print(
            "\nratios: rate-sync over plain, medians of the rounds (best: best round of each side); CPU ratio:"
            " plain us/req over rate-sync us/req. Target >= 0.95x"
        )

    print("\nwithout network (httpx.MockTransport), CPU microseconds per response, best of 5 rounds x 5000:\n")
    header = (
        f"{'upstream headers':<36} {'parse_rate_limit_headers':>25} {'transport read':>15}"
        f" {'plain':>8} {'rate-sync':>10} {'added':>8} {'async added':>12}"
    )
    print(header)
    print("-" * len(header))
    for style in dict.fromkeys(["none", *styles, "github", "ietf-structured", "ietf"]):
        off = offline_row(style, 5000, 5)
        async_plain, async_limited = offline_async(style, 5000, 5)
        print(
            f"{LABELS[style]:<36} {off.parse:>25.1f} {off.read:>15.1f}"
            f" {off.plain:>8.1f} {off.limited:>10.1f} {off.limited - off.plain:>8.1f}"
            f" {async_limited - async_plain:>12.1f}"
        )
    print(
        "\nparse_rate_limit_headers(httpx.Headers) decodes every header (httpx's multi_items); the transport"
        "\nreads the raw bytes of the rate-limit headers only, then parses them (transport read). plain and"
        "\nrate-sync: a sync MockTransport request; async added: the same through handle_async_request."
    )


if __name__ == "__main__":
    main()
