"""Four processes share one 50/s limiter through the NATS store: never over, nearly all of it."""

from __future__ import annotations

import uuid

import pytest
from rs_multiprocess import max_in_any_window, run_processes, summarize
from rs_testing import require_service

pytestmark = [pytest.mark.nats, pytest.mark.realtime]

RATE = 50
BURST = 1
DURATION = 3.0


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_four_processes_share_one_limit(mode: str) -> None:
    require_service("nats")
    from stores.backend_nats import delete_bucket

    bucket = f"rs_mp_{uuid.uuid4().hex[:10]}"
    config = {
        "stores": {"shared": {"engine": "nats", "url": "nats://127.0.0.1:4222", "bucket": bucket}},
        "limiters": {"api": {"store": "shared", "algorithm": "token_bucket", "rate_per_second": RATE, "burst": BURST}},
    }
    try:
        times = run_processes(config, "api", processes=4, tasks_per_process=10, duration=DURATION, mode=mode)
    finally:
        delete_bucket(bucket)
    stats = summarize(times, DURATION)
    print(f"accuracy: {stats}")  # shown by pytest -rP, for the release notes
    # Never more than the limit (plus the burst) in any one-second window, across all processes...
    assert max_in_any_window(times, 1.0) <= RATE + BURST, stats
    # ...and the processes together still get at least 80% of it.
    assert len(times) >= 0.8 * RATE * DURATION, stats
