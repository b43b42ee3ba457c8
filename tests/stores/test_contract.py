"""The store contract: every backend, sync and async, behaves as the pure reference says.

Backends with a server use the server's clock, which tests cannot move; the cases below use
limits whose windows are long next to a round trip, and tolerances on every duration.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from ratesync import (
    Decision,
    FixedWindow,
    LeaseDecision,
    Observation,
    Quota,
    SlidingWindow,
    Store,
    TokenBucket,
)
from ratesync._stores import Slot

Mode = str


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> Mode:
    return str(request.param)


def key(name: str = "k") -> str:
    return f"{{{name}-{uuid.uuid4().hex[:10]}}}"


async def acquire(store: Store, mode: Mode, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
    if mode == "sync":
        return store.acquire(slots, cost, max_wait)
    return await store.aacquire(slots, cost, max_wait)


async def peek(store: Store, mode: Mode, slots: Sequence[Slot]) -> Decision:
    return store.peek(slots) if mode == "sync" else await store.apeek(slots)


async def lease(store: Store, mode: Mode, k: str, limit: int, seconds: float, lease_id: str) -> LeaseDecision:
    if mode == "sync":
        return store.lease_acquire(k, limit, seconds, lease_id)
    return await store.alease_acquire(k, limit, seconds, lease_id)


async def release(store: Store, mode: Mode, k: str, lease_id: str) -> None:
    if mode == "sync":
        store.lease_release(k, lease_id)
    else:
        await store.alease_release(k, lease_id)


async def observe(store: Store, mode: Mode, k: str, obs: Observation) -> None:
    if mode == "sync":
        store.observe(k, Quota(), obs)
    else:
        await store.aobserve(k, Quota(), obs)


async def reset(store: Store, mode: Mode, keys: list[str]) -> None:
    if mode == "sync":
        store.reset(keys)
    else:
        await store.areset(keys)


async def test_token_bucket_burst_then_exact_wait(store: Store, mode: Mode) -> None:
    slots = [(key() + "#0", TokenBucket(rate_per_second=1.0, burst=3))]
    for expected_remaining in (2, 1, 0):
        d = await acquire(store, mode, slots)
        assert d.allowed and d.wait == 0.0
        assert d.remaining == expected_remaining
        assert d.limit == 3
    refused = await acquire(store, mode, slots)
    assert not refused.allowed
    assert refused.wait == pytest.approx(1.0, abs=0.25)
    # Willing to wait: a reservation, told when to go; the next one queues behind it.
    reserved = await acquire(store, mode, slots, max_wait=5.0)
    assert reserved.allowed
    assert reserved.wait == pytest.approx(1.0, abs=0.25)
    second = await acquire(store, mode, slots, max_wait=5.0)
    assert second.allowed
    assert second.wait == pytest.approx(2.0, abs=0.25)
    # A wait beyond max_wait reserves nothing.
    too_long = await acquire(store, mode, slots, max_wait=0.5)
    assert not too_long.allowed
    assert too_long.wait == pytest.approx(3.0, abs=0.25)
    again = await acquire(store, mode, slots, max_wait=5.0)
    assert again.wait == pytest.approx(3.0, abs=0.25)


async def test_token_bucket_cost(store: Store, mode: Mode) -> None:
    slots = [(key() + "#0", TokenBucket(rate_per_second=2.0, burst=5))]
    d = await acquire(store, mode, slots, cost=3)
    assert d.allowed and d.remaining == 2
    refused = await acquire(store, mode, slots, cost=3)
    assert not refused.allowed
    assert refused.wait == pytest.approx(0.5, abs=0.2)
    assert (await acquire(store, mode, slots, cost=2)).allowed


async def test_sliding_window_exact_retry_after(store: Store, mode: Mode) -> None:
    slots = [(key() + "#0", SlidingWindow(limit=2, window_seconds=30.0))]
    first = await acquire(store, mode, slots)
    assert first.allowed and first.remaining == 1
    assert (await acquire(store, mode, slots)).allowed
    refused = await acquire(store, mode, slots)
    assert not refused.allowed
    # The oldest call leaves the window 30 s after it was made.
    assert refused.wait == pytest.approx(30.0, abs=0.5)
    assert refused.remaining == 0
    reserved = await acquire(store, mode, slots, max_wait=60.0)
    assert reserved.allowed
    assert reserved.wait == pytest.approx(30.0, abs=0.5)


async def test_fixed_window(store: Store, mode: Mode) -> None:
    slots = [(key() + "#0", FixedWindow(limit=3, window_seconds=3600.0))]
    results = [await acquire(store, mode, slots) for _ in range(3)]
    assert all(d.allowed for d in results)
    assert [d.remaining for d in results] == [2, 1, 0]
    refused = await acquire(store, mode, slots)
    assert not refused.allowed
    assert 0.0 < refused.wait <= 3600.0
    assert refused.remaining == 0


async def test_combined_limits_are_all_or_nothing(store: Store, mode: Mode) -> None:
    base = key()
    # 10/s: a token comes back every 100 ms, far longer than the calls below take on any store.
    bucket = (base + "#0", TokenBucket(rate_per_second=10.0, burst=5))
    window = (base + "#1", FixedWindow(limit=2, window_seconds=3600.0))
    assert (await acquire(store, mode, [bucket, window])).allowed
    assert (await acquire(store, mode, [bucket, window])).allowed
    refused = await acquire(store, mode, [bucket, window])
    assert not refused.allowed
    # The bucket was charged for the two admitted calls only, not for the refused one.
    assert (await peek(store, mode, [bucket])).remaining == pytest.approx(3, abs=1)
    assert (await peek(store, mode, [window])).remaining == 0


async def test_peek_consumes_nothing(store: Store, mode: Mode) -> None:
    slots = [(key() + "#0", FixedWindow(limit=5, window_seconds=3600.0))]
    fresh = await peek(store, mode, slots)
    assert fresh.allowed and fresh.remaining == 5
    for _ in range(3):
        assert (await peek(store, mode, slots)).remaining == 5
    await acquire(store, mode, slots, cost=2)
    after = await peek(store, mode, slots)
    assert after.remaining == 3
    assert after.limit == 5


async def test_reset_forgets(store: Store, mode: Mode) -> None:
    k = key() + "#0"
    slots = [(k, FixedWindow(limit=1, window_seconds=3600.0))]
    assert (await acquire(store, mode, slots)).allowed
    assert not (await acquire(store, mode, slots)).allowed
    await reset(store, mode, [k])
    assert (await acquire(store, mode, slots)).allowed


async def test_leases_take_and_release_exactly_their_own(store: Store, mode: Mode) -> None:
    k = key() + "#lease"
    a = await lease(store, mode, k, 2, 30.0, "a")
    b = await lease(store, mode, k, 2, 30.0, "b")
    assert a.acquired and b.acquired and b.active == 2
    c = await lease(store, mode, k, 2, 30.0, "c")
    assert not c.acquired
    assert 0.0 < c.retry_after <= 30.0
    await release(store, mode, k, "zzz-not-a-lease")
    assert not (await lease(store, mode, k, 2, 30.0, "c")).acquired
    await release(store, mode, k, "a")
    got = await lease(store, mode, k, 2, 30.0, "c")
    assert got.acquired and got.active == 2


async def test_expired_lease_gives_its_slot_back(store: Store, mode: Mode) -> None:
    k = key() + "#lease"
    assert (await lease(store, mode, k, 1, 0.3, "dead-holder")).acquired
    assert not (await lease(store, mode, k, 1, 30.0, "waiter")).acquired
    await asyncio.sleep(0.5)  # real time: the server's clock decides when a lease expires
    assert (await lease(store, mode, k, 1, 30.0, "waiter")).acquired


async def test_observed_quota_blocks_until_reset(store: Store, mode: Mode) -> None:
    k = key("host") + "#quota"
    slots = [(k, Quota())]
    assert (await acquire(store, mode, slots)).allowed  # nothing learned: admit
    await observe(store, mode, k, Observation(remaining=2, reset_after=60.0, limit=100))
    assert (await acquire(store, mode, slots)).allowed
    assert (await acquire(store, mode, slots)).allowed
    refused = await acquire(store, mode, slots)
    assert not refused.allowed
    assert refused.wait == pytest.approx(60.0, abs=1.0)
    # A stale response of the same window cannot raise what is left.
    await observe(store, mode, k, Observation(remaining=50, reset_after=60.0, limit=100))
    assert not (await acquire(store, mode, slots)).allowed


async def test_observed_cooldown_is_capped(store: Store, mode: Mode) -> None:
    k = key("host") + "#quota"
    ten_years = 10 * 365 * 86400.0
    if mode == "sync":
        store.observe(k, Quota(max_cooldown=30.0), Observation(remaining=0, reset_after=ten_years))
    else:
        await store.aobserve(k, Quota(max_cooldown=30.0), Observation(remaining=0, reset_after=ten_years))
    refused = await acquire(store, mode, [(k, Quota(max_cooldown=30.0))])
    assert not refused.allowed
    assert refused.wait <= 30.5


async def test_non_finite_observations_never_poison_the_mirror(store: Store, mode: Mode) -> None:
    # An infinite window or limit says nothing (an infinite window once rolled the mirror into NaN,
    # failing every caller that shared it); a count that is not a number is the caller's error.
    k = key("host") + "#quota"
    slots = [(k, Quota())]
    await observe(store, mode, k, Observation(remaining=3, reset_after=60.0, limit=10.0))
    # Same window: the mirror keeps its reset and takes the lower count (and, once, took the window).
    await observe(store, mode, k, Observation(remaining=1, reset_after=60.0, limit=math.inf, window=math.inf))
    assert (await acquire(store, mode, slots)).allowed
    refused = await acquire(store, mode, slots)
    assert not refused.allowed and refused.wait == pytest.approx(60.0, abs=1.0)
    for bad in (Observation(math.inf, 1.0), Observation(math.nan, 1.0), Observation(1.0, math.nan)):
        with pytest.raises(ValueError, match="Observation"):
            await observe(store, mode, k, bad)
    assert not (await acquire(store, mode, slots)).allowed


def test_atomic_under_threads(store: Store) -> None:
    slots = [(key() + "#0", FixedWindow(limit=25, window_seconds=3600.0))]
    admitted = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            admitted.append(store.acquire(slots, 1, 0.0).allowed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 25
    assert len(admitted) == 80


async def test_atomic_under_tasks(store: Store) -> None:
    slots = [(key() + "#0", SlidingWindow(limit=30, window_seconds=3600.0))]
    results = await asyncio.gather(*(store.aacquire(slots, 1, 0.0) for _ in range(60)))
    assert sum(d.allowed for d in results) == 30


async def test_concurrent_leases_never_exceed_limit(store: Store) -> None:
    k = key() + "#lease"
    results = await asyncio.gather(*(store.alease_acquire(k, 4, 30.0, f"l{i}") for i in range(20)))
    assert sum(r.acquired for r in results) == 4


async def test_decisions_have_sane_fields(store: Store, mode: Mode) -> None:
    slots: list[tuple[str, Any]] = [(key() + "#0", TokenBucket(rate_per_second=10.0, burst=2))]
    d = await acquire(store, mode, slots)
    assert isinstance(d, Decision)
    assert d.allowed and not d.degraded
    assert math.isfinite(d.reset_after) and 0.0 <= d.reset_after <= 0.25
    assert d.remaining == 1


@pytest.mark.parametrize("rate", [3.0, 5.0, 7.0, 10.0, 30.0])
async def test_remaining_counts_every_token_at_real_times(store: Store, mode: Mode, rate: float) -> None:
    # At epoch times (about 1.7e9 s, last bit 2.4e-7 s) ``now + interval - now`` is not the interval:
    # a store must run the algorithms on times relative to its reading of the clock, or the count
    # loses a token for intervals that round up there (0.2 s always does until 2038).
    spec = TokenBucket(rate_per_second=rate, burst=4)
    k = key() + "#0"
    fresh = await peek(store, mode, [(key() + "#0", spec)])
    assert fresh.remaining == 4
    counts = [(await acquire(store, mode, [(k, spec)])).remaining for _ in range(4)]
    # Time passing between the calls can only give tokens back, never take one.
    assert all(c >= expected for c, expected in zip(counts, [3, 2, 1, 0], strict=True)), counts
    assert counts[0] == 3, counts


async def test_fixed_windows_are_aligned_to_the_clock(store: Store, mode: Mode) -> None:
    # Windows start at multiples of their length of the store's clock, alone and with another limit
    # in the same call, whatever time the call is made at.
    window = 3600.0
    clock = getattr(store, "now", time.time)  # Redis and PostgreSQL: the server's clock, this machine's
    fixed = FixedWindow(limit=3, window_seconds=window)
    pair = key()
    alone: list[Slot] = [(key() + "#0", fixed)]
    with_bucket: list[Slot] = [(pair + "#0", TokenBucket(rate_per_second=5.0, burst=2)), (pair + "#1", fixed)]
    for slots, remaining in ((alone, 2), (with_bucket, 1)):
        before = clock()
        d = await acquire(store, mode, slots)
        after = clock()
        assert d.allowed and d.remaining == remaining
        ends = {(before // window + 1) * window, (after // window + 1) * window}  # two if a window ended meanwhile
        assert any(end - after - 0.5 <= d.reset_after <= end - before + 0.5 for end in ends), (d, before, after)


def test_time_moves_with_the_clock(store: Store) -> None:
    # A short real-time check that state ages: a 10/s bucket refills within 0.3 s.
    slots = [(key() + "#0", TokenBucket(rate_per_second=10.0, burst=1))]
    assert store.acquire(slots, 1, 0.0).allowed
    assert not store.acquire(slots, 1, 0.0).allowed
    time.sleep(0.15)
    assert store.acquire(slots, 1, 0.0).allowed
