"""A Redis that dies mid-run and comes back: each outage policy, the cost of a call while it is
down, one log line per switch, the counters, and recovery without a new store.

Each test runs its own redis-server on a spare loopback port and kills it (SIGKILL, like a
crash), then starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from typing import Any

import pytest
from stores.backend_redis import RedisServer, require_binaries

import ratesync
from ratesync import Decision, StoreError, StoreUnavailableError, TokenBucket

pytestmark = [pytest.mark.redis, pytest.mark.realtime]

pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402

#: A dead Redis must cost milliseconds per call, not a connect timeout.
MAX_MEDIAN_DOWN = 0.020
RETRY_INTERVAL = 0.25


async def call(store: RedisStore, mode: str, slots: Any) -> Decision | StoreError:
    try:
        if mode == "sync":
            return store.acquire(slots, 1, 0.0)
        return await store.aacquire(slots, 1, 0.0)
    except StoreError as exc:
        return exc


def switches(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(went down, came back) log lines."""
    messages = [r.getMessage() for r in caplog.records if r.name == "ratesync"]
    failed = sum(" failed: " in m for m in messages)
    back = sum(m.endswith(") answers again") for m in messages)
    return failed, back


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("policy", ["open", "closed", "local"])
async def test_outage_policy_cost_and_recovery(policy: str, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    require_binaries()
    caplog.set_level(logging.WARNING, logger="ratesync")
    server = RedisServer().start()
    store = RedisStore(server.url, key_prefix="rs-outage:", on_error=policy, retry_interval=RETRY_INTERVAL)  # type: ignore[arg-type]
    limiter = ratesync.Limiter("api", store, [TokenBucket(rate_per_second=0.5, burst=2)])
    slots = limiter._slots("k")[0]
    try:
        healthy = await call(store, mode, slots)
        assert isinstance(healthy, Decision) and healthy.allowed and not healthy.degraded
        assert store.healthy and store.errors == 0

        server.stop()

        # Every call probes while retry_interval is 0: even then a dead server costs a refused
        # connect (no retries, no reconnect loop), i.e. milliseconds.
        store.retry_interval = 0.0
        probes, probe_answers = [], []
        for _ in range(8):
            started = time.perf_counter()
            probe_answers.append(await call(store, mode, slots))
            probes.append(time.perf_counter() - started)
        assert statistics.median(probes) < MAX_MEDIAN_DOWN, probes
        assert store.errors == 8
        store.retry_interval = RETRY_INTERVAL

        costs, answers = [], []
        for _ in range(40):
            started = time.perf_counter()
            answers.append(await call(store, mode, slots))
            costs.append(time.perf_counter() - started)
        assert statistics.median(costs) < MAX_MEDIAN_DOWN, costs
        assert not store.healthy
        assert store.fallbacks == 48
        assert 8 <= store.errors <= 10  # the circuit skips the backend: at most a probe or two more
        assert switches(caplog) == (1, 0), [r.getMessage() for r in caplog.records]

        if policy == "open":
            assert all(isinstance(a, Decision) and a.allowed and a.degraded for a in answers)
            attempt = limiter.try_acquire("k") if mode == "sync" else await limiter.atry_acquire("k")
            assert attempt.allowed
            assert limiter.get_metrics().store_errors == 1
        elif policy == "closed":
            assert all(isinstance(a, StoreError) for a in answers)
            # Calls the circuit skips say so; the message names the store, never a password.
            assert any(isinstance(a, StoreUnavailableError) for a in answers)
            assert all(store.describe() in str(a) for a in answers)
        else:
            # The local fallback still limits: burst 2 at 0.5/s, counted from the outage's start.
            everything = probe_answers + answers
            assert all(isinstance(a, Decision) and a.degraded for a in everything)
            assert sum(a.allowed for a in everything if isinstance(a, Decision)) in (2, 3)
            attempt = limiter.try_acquire("k") if mode == "sync" else await limiter.atry_acquire("k")
            assert not attempt.allowed
            assert limiter.get_metrics().store_errors == 1

        server.start()  # the same port, an empty server

        deadline = time.monotonic() + 5.0
        while True:
            answer = await call(store, mode, slots)
            if isinstance(answer, Decision) and not answer.degraded:
                break
            assert time.monotonic() < deadline, "the store did not recover by itself"
            await asyncio.sleep(0.02)
        assert answer.allowed  # the restarted server lost the bucket: a fresh start
        assert store.healthy
        assert switches(caplog) == (1, 1)
        again = await call(store, mode, slots)
        assert isinstance(again, Decision) and not again.degraded
    finally:
        store.close()
        await store.aclose()
        server.remove()


async def test_first_call_on_a_dead_server_fails_fast() -> None:
    # Nothing listens: the very first call (no pooled connection yet) costs a refused connect.
    require_binaries()
    server = RedisServer()  # never started
    store = RedisStore(server.url, on_error="closed")
    try:
        started = time.perf_counter()
        with pytest.raises(StoreError) as info:
            store.acquire([("{x}#0", TokenBucket(1.0, 1))])
        assert time.perf_counter() - started < 0.5
        assert f"127.0.0.1:{server.port}" in str(info.value)
        started = time.perf_counter()
        with pytest.raises(StoreError):
            await store.aacquire([("{x}#0", TokenBucket(1.0, 1))])
        assert time.perf_counter() - started < 0.5
    finally:
        store.close()
        await store.aclose()
        server.remove()
