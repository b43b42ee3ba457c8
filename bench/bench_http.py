"""Requests per second through ratesync_http against plain clients, to the same local server.

Memory store, a host rule whose limit is never reached, learning on (the defaults). Rounds of the
baseline and the rate-limited client alternate and the median of each is compared, so a noisy
machine shifts both alike. Prints a table of ratios (target: >= 0.95x).

    python bench/bench_http.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import requests

import ratesync
from ratesync_http import RateLimitedSession, RateLimitedTransport
from ratesync_http.testing import HeaderStyle, LocalUpstream

RULE = {"127.0.0.1": {"rate_per_second": 1_000_000, "burst": 1_000}}


def limited_transport() -> RateLimitedTransport:
    return RateLimitedTransport(hosts=RULE, registry=ratesync.Registry())


def httpx_sync(url: str, n: int, transport: RateLimitedTransport | None) -> float:
    with httpx.Client(transport=transport) as client:
        client.get(url)  # connect first
        started = time.perf_counter()
        for _ in range(n):
            client.get(url)
        return n / (time.perf_counter() - started)


def httpx_async(url: str, n: int, transport: RateLimitedTransport | None, tasks: int = 50) -> float:
    async def main() -> float:
        async with httpx.AsyncClient(
            transport=transport, limits=httpx.Limits(max_connections=tasks, max_keepalive_connections=tasks)
        ) as client:
            await asyncio.gather(*(client.get(url) for _ in range(tasks)))  # open the connections
            per_task = n // tasks
            started = time.perf_counter()

            async def work() -> None:
                for _ in range(per_task):
                    await client.get(url)

            await asyncio.gather(*(work() for _ in range(tasks)))
            return per_task * tasks / (time.perf_counter() - started)

    return asyncio.run(main())


def requests_session(url: str, n: int, limited: bool) -> float:
    session = RateLimitedSession(hosts=RULE, registry=ratesync.Registry()) if limited else requests.Session()
    with session:
        session.get(url)
        started = time.perf_counter()
        for _ in range(n):
            session.get(url)
        return n / (time.perf_counter() - started)


@contextlib.contextmanager
def upstream_process(style: HeaderStyle) -> Iterator[str]:
    """The server in a process of its own, so its threads do not share the clients' GIL."""
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
    with LocalUpstream(limit=10**9 if style != "none" else None, window=3600.0, headers=style) as upstream:
        print(upstream.url, flush=True)
        sys.stdin.read()


def compare(rounds: int, baseline: Callable[[], float], limited: Callable[[], float]) -> tuple[float, float]:
    base_rates, limited_rates = [], []
    for _ in range(rounds):
        base_rates.append(baseline())
        limited_rates.append(limited())
    return statistics.median(base_rates), statistics.median(limited_rates)


def overhead_us(headers: dict[str, str], n: int = 20000) -> tuple[float, float]:
    """Microseconds per request of an in-memory transport, plain and wrapped (no network, no server)."""
    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok", headers=headers))
    limited = RateLimitedTransport(mock, hosts=RULE, registry=ratesync.Registry())
    request = httpx.Request("GET", "http://127.0.0.1:8000/bench")
    results = []
    for transport in (mock, limited):
        transport.handle_request(request)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for _ in range(n):
                transport.handle_request(request)
            best = min(best, (time.perf_counter() - started) / n * 1e6)
        results.append(best)
    return results[0], results[1]


def run_clients(label: str, url: str, n: int, rounds: int) -> list[tuple[str, float, float]]:
    return [
        (
            f"httpx.Client, {label}",
            *compare(rounds, lambda: httpx_sync(url, n, None), lambda: httpx_sync(url, n, limited_transport())),
        ),
        (
            f"httpx.AsyncClient x50 tasks, {label}",
            *compare(rounds, lambda: httpx_async(url, n, None), lambda: httpx_async(url, n, limited_transport())),
        ),
        (
            f"requests.Session, {label}",
            *compare(rounds, lambda: requests_session(url, n, False), lambda: requests_session(url, n, True)),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve", choices=["none", "ietf", "x-ratelimit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    n, rounds = args.requests, args.rounds

    rows: list[tuple[str, float, float]] = []
    styles: list[tuple[str, HeaderStyle]] = [("no rate-limit headers", "none"), ("with RateLimit-* headers", "ietf")]
    for label, style in styles:
        with upstream_process(style) as base_url:
            rows += run_clients(label, base_url + "/bench", n, rounds)

    print(f"\nratesync_http overhead: {n} requests x {rounds} rounds (median), memory store, limit never reached\n")
    print(f"{'client':<50} {'plain req/s':>12} {'rate-sync req/s':>16} {'ratio':>7}")
    print("-" * 88)
    for name, base, limited in rows:
        print(f"{name:<50} {base:>12.0f} {limited:>16.0f} {limited / base:>6.2f}x")
    print("\ntarget: >= 0.95x")
    print("\nper-request cost without network (httpx.MockTransport, best of 3 x 20000):\n")
    print(f"{'response':<50} {'plain us':>12} {'rate-sync us':>16} {'added':>7}")
    print("-" * 88)
    ietf = {"RateLimit-Limit": "1000000", "RateLimit-Remaining": "999999", "RateLimit-Reset": "100.0"}
    for name, headers in (("no rate-limit headers", {}), ("RateLimit-* headers (parsed, learned)", ietf)):
        plain, limited = overhead_us(headers)
        print(f"{name:<50} {plain:>12.1f} {limited:>16.1f} {limited - plain:>6.1f}")


if __name__ == "__main__":
    main()
