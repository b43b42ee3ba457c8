"""Several real processes on one Redis: a lease holder killed with SIGKILL, and four processes
sharing one limiter without ever exceeding it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from rs_multiprocess import max_in_any_window, run_processes, summarize
from rs_testing import require_service

import ratesync

pytestmark = [pytest.mark.redis, pytest.mark.realtime]

pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402

HOLDER = """
import sys, time
from ratesync import Limiter
from ratesync._stores.redis import RedisStore

store = RedisStore(sys.argv[1], key_prefix=sys.argv[2])
limiter = Limiter("work", store, max_concurrent=1, lease_seconds=float(sys.argv[3]))
with limiter.acquire():
    print("holding", flush=True)
    time.sleep(60)
"""

LEASE_SECONDS = 1.0


def test_a_killed_holder_gives_its_slot_back_when_its_lease_expires() -> None:
    host, port = require_service("redis")
    url = f"redis://{host}:{port}/0"
    prefix = f"rs-kill:{uuid.uuid4().hex[:8]}:"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, prefix, str(LEASE_SECONDS)], stdout=subprocess.PIPE, text=True
    )
    store = RedisStore(url, key_prefix=prefix)
    limiter = ratesync.Limiter("work", store, max_concurrent=1, lease_seconds=30.0)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        held_at = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)  # no finally, no release: the lease is orphaned
        holder.wait(timeout=10)
        assert holder.returncode == -signal.SIGKILL

        refused = limiter.try_acquire()
        assert not refused.allowed
        assert 0.0 < refused.retry_after <= LEASE_SECONDS

        with limiter.acquire(timeout=5.0):
            waited = time.monotonic() - held_at
            # Not before the dead holder's lease expired, and soon after it did.
            assert LEASE_SECONDS - 0.15 <= waited <= LEASE_SECONDS + 1.0, waited
            assert limiter.get_metrics().concurrent == 1
        with limiter.try_acquire() as again:
            assert again.allowed  # our own release gave the slot back at once
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
        store.reset(limiter.store_keys())
        store.close()


RATE = 100
BURST = 1
DURATION = 3.0
#: Four interpreters importing ratesync and redis at once on a busy two-core machine need time.
STARTUP = 3.0


def test_four_processes_share_one_limit() -> None:
    host, port = require_service("redis")
    prefix = f"rs-mp:{uuid.uuid4().hex[:8]}:"
    config = {
        "stores": {"shared": {"engine": "redis", "url": f"redis://{host}:{port}/0", "key_prefix": prefix}},
        "limiters": {"api": {"store": "shared", "algorithm": "token_bucket", "rate_per_second": RATE, "burst": BURST}},
    }
    # Two tasks per process keep eight reservations queued (80 ms ahead: enough to saturate the
    # limit) while sparing the CPU. The admission times are taken where each task wakes, so a
    # process the OS schedules 10 ms late moves an admission into the next window: on a busy
    # two-core machine that, not the store, is what this bound is sensitive to.
    times = run_processes(
        config, "api", processes=4, tasks_per_process=2, duration=DURATION, mode="async", startup=STARTUP
    )
    stats = summarize(times, DURATION)
    print(f"accuracy: {stats}")  # shown by pytest -rP, for the release notes
    # Never more than the limit (plus the burst) in any one-second window, across all processes...
    assert max_in_any_window(times, 1.0) <= RATE + BURST, stats
    # ...and together they still get at least 90% of it.
    assert len(times) >= 0.9 * RATE * DURATION, stats
