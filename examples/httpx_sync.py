"""httpx.Client through RateLimitedTransport, shared by a few threads.

Runs on its own: a local upstream allows 20 requests per second; 30 requests from 3 threads go
through one client with a limit of 19 per second and at most 2 requests in flight.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

import ratesync
from ratesync_http import RateLimitedTransport
from ratesync_http.testing import LocalUpstream


def main() -> int:
    with LocalUpstream(limit=20, window=1.0) as upstream:
        transport = RateLimitedTransport(
            hosts={"127.0.0.1": {"rate_per_second": 19, "max_concurrent": 2}},
            registry=ratesync.Registry(),
        )
        started = time.monotonic()
        with httpx.Client(transport=transport, base_url=upstream.url) as client, ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(lambda n: client.get(f"/items/{n}").status_code, range(30)))
        elapsed = time.monotonic() - started
        stats = upstream.stats()
        print(
            f"{statuses.count(200)} of {len(statuses)} ok in {elapsed:.1f} s, at most {stats.max_in_flight} in flight"
        )
        return 0 if statuses.count(200) == 30 and stats.rejected == 0 and stats.max_in_flight <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
