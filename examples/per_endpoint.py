"""Rules per endpoint: a method and a path template, so one limit covers every owner and repo.

Runs on its own against a local upstream. ``GET /repos/{owner}/{repo}/issues`` is limited to 4 per
second whatever the owner and repo (one store key, never one per URL), while the host as a whole
allows 50 per second; a request matching both goes through both, all or nothing.
"""

from __future__ import annotations

import sys
import time

import httpx

import ratesync
from ratesync import MemoryStore
from ratesync_http import RateLimitedTransport
from ratesync_http.testing import LocalUpstream


def main() -> int:
    store = MemoryStore()
    transport = RateLimitedTransport(
        hosts={"127.0.0.1": {"rate_per_second": 50, "burst": 10}},
        endpoints=[
            # The same as [[http.endpoints]] tables in rate-sync.toml.
            {"host": "127.0.0.1", "route": "GET /repos/{owner}/{repo}/issues", "rate_per_second": 4},
        ],
        store=store,
        registry=ratesync.Registry(),
    )
    with LocalUpstream(limit=None) as upstream, httpx.Client(transport=transport, base_url=upstream.url) as client:
        started = time.monotonic()
        for owner, repo in [("python", "cpython"), ("pallets", "flask"), ("encode", "httpx"), ("psf", "requests")] * 2:
            client.get(f"/repos/{owner}/{repo}/issues")
        issues_time = time.monotonic() - started
        started = time.monotonic()
        for n in range(8):
            client.get(f"/users/{n}")  # only the host rule
        users_time = time.monotonic() - started
    keys = sorted(filter(lambda k: "issues" in k, store.keys()))
    print(f"8 issue listings took {issues_time:.2f} s (4 per second), 8 user look-ups {users_time:.2f} s")
    print("store keys for the endpoint:", keys)
    return 0 if issues_time >= 1.5 and users_time < 0.5 and len(keys) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
