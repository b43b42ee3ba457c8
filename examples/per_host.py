"""Rules per host from a rate-sync.toml (per_host.toml beside this script).

Runs on its own: loads per_host.toml, starts a local upstream that allows 20 requests per second,
and sends 30 requests through an httpx client whose transport takes its rules from the file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx

import ratesync
from ratesync_http import RateLimitedTransport
from ratesync_http.testing import LocalUpstream


def main() -> int:
    # In an application, rate-sync.toml in the working directory (or $RATE_SYNC_CONFIG) is read on
    # first use and RateLimitedTransport() needs no argument at all.
    registry = ratesync.Registry(config=Path(__file__).with_name("per_host.toml"))
    transport = RateLimitedTransport(registry=registry)
    print("rules for 127.0.0.1:", transport.policy.describe("GET", "127.0.0.1:8000", "/"))
    print("rules for api.partner.example:", transport.policy.describe("GET", "api.partner.example", "/"))
    with LocalUpstream(limit=20, window=1.0) as upstream:
        started = time.monotonic()
        with httpx.Client(transport=transport, base_url=upstream.url) as client:
            statuses = [client.get(f"/items/{n}").status_code for n in range(30)]
        elapsed = time.monotonic() - started
        print(f"{statuses.count(200)} of {len(statuses)} ok in {elapsed:.1f} s; upstream saw {upstream.stats()}")
        return 0 if statuses.count(200) == 30 and upstream.stats().rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
