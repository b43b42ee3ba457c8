"""Async callers of one key queue behind the call in flight and are decided together by the next
one: the same answers as a call each, in their order, for far fewer round trips."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from stores.backend_redis import RedisServer, require_binaries

import ratesync
from ratesync import FixedWindow, StoreError, TokenBucket

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402


@pytest.fixture
def server() -> Iterator[RedisServer]:
    require_binaries()
    with RedisServer() as s:
        yield s


def script_calls(server: RedisServer) -> int:
    admin = redis.Redis.from_url(server.url)
    try:
        stats: dict[str, Any] = admin.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
            stats.get("cmdstat_eval", {}).get("calls", 0)
        )
    finally:
        admin.close()


@pytest.mark.parametrize("batch", [True, False])
async def test_a_hot_key_is_decided_in_batches(server: RedisServer, batch: bool) -> None:
    store = RedisStore(server.url, pool_size=10, batch=batch)
    limiter = ratesync.Limiter("hot", store, [FixedWindow(limit=150, window_seconds=3600.0)])
    try:
        await limiter.atry_acquire()  # load the script
        before = script_calls(server)
        attempts = await asyncio.gather(*(limiter.atry_acquire() for _ in range(200)))
        calls = script_calls(server) - before
        # Exactly the limit admitted (149 left after the first), whatever the batching.
        assert sum(a.allowed for a in attempts) == 149
        if batch:
            assert calls <= 20, calls  # one call in flight per key: the rest rode along in batches
        else:
            assert calls == 200
    finally:
        await store.aclose()


async def test_batched_reservations_keep_arrival_order(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=4)
    slots = (("{order}#0", TokenBucket(rate_per_second=100.0, burst=1)),)

    async def go_at() -> float:
        d = await store.aacquire(slots, 1, 10.0)
        assert d.allowed
        return time.monotonic() + d.wait  # when this caller is to go

    try:
        times = await asyncio.gather(*(go_at() for _ in range(50)))
        # Each goes 10 ms after the one before it, in the order the calls were made.
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(gap == pytest.approx(0.01, abs=0.004) for gap in gaps), gaps
        assert times[-1] - times[0] == pytest.approx(0.49, abs=0.01)
    finally:
        await store.aclose()


async def test_a_cancelled_caller_is_not_charged(server: RedisServer) -> None:
    store = RedisStore(server.url)
    slots = (("{cancel}#0", FixedWindow(limit=100, window_seconds=3600.0)),)
    try:
        leader = asyncio.ensure_future(store.aacquire(slots))
        await asyncio.sleep(0)  # the leader's call is in flight
        followers = [asyncio.ensure_future(store.aacquire(slots)) for _ in range(10)]
        await asyncio.sleep(0)  # queued behind it
        for f in followers[:4]:
            f.cancel()
        assert (await leader).allowed
        done = await asyncio.gather(*followers, return_exceptions=True)
        assert sum(isinstance(d, asyncio.CancelledError) for d in done) == 4
        assert sum(getattr(d, "allowed", False) for d in done) == 6
        assert (await store.apeek(slots)).remaining == 100 - 7
    finally:
        await store.aclose()


async def test_a_failed_batch_fails_each_caller_into_the_policy(server: RedisServer) -> None:
    store = RedisStore(server.url, on_error="open")
    slots = (("{fail}#0", TokenBucket(rate_per_second=1000.0, burst=1000)),)
    try:
        assert not (await store.aacquire(slots)).degraded
        server.stop()
        decisions = await asyncio.gather(*(store.aacquire(slots) for _ in range(20)))
        assert all(d.allowed and d.degraded for d in decisions)
        assert store.fallbacks == 20
        store_closed = RedisStore(server.url, on_error="closed")
        try:
            results = await asyncio.gather(*(store_closed.aacquire(slots) for _ in range(5)), return_exceptions=True)
            assert all(isinstance(r, StoreError) for r in results)
        finally:
            await store_closed.aclose()
    finally:
        await store.aclose()
