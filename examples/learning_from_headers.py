"""Learning from the upstream's rate-limit headers: no rule configured, (almost) no 429.

Runs on its own: a local upstream allows 10 requests per second and says so in its headers
(RateLimit-Limit / -Remaining / -Reset). Nothing is configured: the transport learns the quota
into the store (so every process sharing the store would act on it) and 8 tasks stay within it.
The very first window may see one 429 at most; a 429 with Retry-After sets a shared cooldown and
the request is retried after it (GET is idempotent).
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

import ratesync
from ratesync_http import RateLimitedTransport, parse_rate_limit_headers
from ratesync_http.testing import LocalUpstream


async def main() -> int:
    with LocalUpstream(limit=10, window=1.0, headers="ietf") as upstream:
        transport = RateLimitedTransport(registry=ratesync.Registry())  # no rules: learning only
        started = time.monotonic()
        async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:
            first = await client.get("/")
            print("the upstream says:", parse_rate_limit_headers(first.headers, status=first.status_code))

            async def worker() -> list[int]:
                return [(await client.get("/items")).status_code for _ in range(3)]

            results = await asyncio.gather(*(worker() for _ in range(8)))
        elapsed = time.monotonic() - started
        stats = upstream.stats()
        metrics = transport.get_metrics()
        print(f"25 requests in {elapsed:.1f} s; upstream: {stats.accepted} accepted, {stats.rejected} refused")
        print(f"learned from {metrics.learned} responses; waited {metrics.wait_seconds_total:.1f} s in total")
        print(stats)
        ok = all(status == 200 for statuses in results for status in statuses)
        return 0 if ok and stats.max_429_per_window <= 1 and stats.max_per_window <= 10 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
