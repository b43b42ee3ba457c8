"""httpx.AsyncClient through RateLimitedTransport: many tasks, one limit, no 429.

Runs on its own: it starts a local upstream that allows 20 requests per second and answers 429
beyond that, then sends 40 requests from 10 tasks with a limit of 19 per second given in code.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

import ratesync
from ratesync_http import RateLimitedTransport
from ratesync_http.testing import LocalUpstream


async def main() -> int:
    with LocalUpstream(limit=20, window=1.0) as upstream:
        transport = RateLimitedTransport(
            hosts={"127.0.0.1": {"rate_per_second": 19}},  # the same as [http.hosts."127.0.0.1"] in rate-sync.toml
            registry=ratesync.Registry(),  # a registry of its own: no rate-sync.toml is read
        )
        started = time.monotonic()
        async with httpx.AsyncClient(transport=transport, base_url=upstream.url) as client:

            async def fetch(n: int) -> int:
                response = await client.get(f"/items/{n}")
                return response.status_code

            statuses = await asyncio.gather(*(fetch(n) for n in range(40)))
        elapsed = time.monotonic() - started
        print(f"{statuses.count(200)} of {len(statuses)} ok in {elapsed:.1f} s; upstream saw {upstream.stats()}")
        print(transport.get_metrics())
        return 0 if statuses.count(200) == 40 and upstream.stats().rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
