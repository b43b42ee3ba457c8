"""requests through RateLimitedSession (or RateLimitedAdapter mounted on your own session).

Runs on its own: a local upstream allows 20 requests per second; 30 requests go through a
session limited to 19 per second. A request can skip the limits with ``ratesync={"skip": True}``.
"""

from __future__ import annotations

import sys
import time

import requests

import ratesync
from ratesync_http import RateLimitedAdapter, RateLimitedSession
from ratesync_http.testing import LocalUpstream


def main() -> int:
    with LocalUpstream(limit=20, window=1.0) as upstream:
        registry = ratesync.Registry()  # no rate-sync.toml: the rules are given in code
        started = time.monotonic()
        with RateLimitedSession(hosts={"127.0.0.1": {"rate_per_second": 19}}, registry=registry) as session:
            statuses = [session.get(f"{upstream.url}/items/{n}").status_code for n in range(30)]
        elapsed = time.monotonic() - started

        # The same with a plain session: mount the adapter yourself.
        with requests.Session() as plain:
            plain.mount("http://", RateLimitedAdapter(hosts={"127.0.0.1": {"rate_per_second": 19}}, registry=registry))
            statuses.append(plain.get(f"{upstream.url}/health").status_code)

        print(f"{statuses.count(200)} of {len(statuses)} ok in {elapsed:.1f} s; upstream saw {upstream.stats()}")
        return 0 if statuses.count(200) == 31 and upstream.stats().rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
