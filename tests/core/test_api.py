"""The public API: acquire in every form, keys, try_acquire, rate_limited, errors, metrics."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable

import pytest
from rs_testing import ManualClock

import ratesync
from ratesync import (
    ConcurrencyMisuseError,
    ConfigurationError,
    MemoryStore,
    RateLimitTimeout,
    RateSyncError,
    Registry,
    UnknownLimiterError,
    UnknownStoreError,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def reg(clock: ManualClock) -> Registry:
    registry = Registry()
    registry.configure_store("mem", MemoryStore(clock=clock, name="mem"))
    return registry


def limiter(reg: Registry, clock: ManualClock, limiter_id: str, **options: object) -> ratesync.Limiter:
    lim = reg.configure_limiter(limiter_id, "mem", **options)
    lim._sleep = clock.sleep
    lim._async_sleep = clock.asleep
    return lim


def test_sync_with_waits_its_turn(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=10.0)
    for _ in range(5):
        with reg.acquire("api"):
            pass
    # Evenly spaced by default (burst 1): four waits of 0.1 s, each told by the store, no polling.
    assert clock.slept == pytest.approx([0.1, 0.1, 0.1, 0.1])
    m = reg.get_limiter("api").get_metrics()
    assert m.acquisitions == 5 and m.waits == 4
    assert m.wait_ms_max == pytest.approx(100.0)
    assert m.wait_ms_avg == pytest.approx(100.0)


async def test_await_and_async_with(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=2.0, burst=2)
    await reg.acquire("api")
    async with reg.acquire("api"):
        pass
    await reg.acquire("api")
    assert clock.slept == pytest.approx([0.5])


async def test_burst_is_real(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0, burst=5)
    for _ in range(5):
        await reg.acquire("api")
    assert clock.slept == []
    await reg.acquire("api")
    assert clock.slept == pytest.approx([1.0])


def test_timeout_raises_and_reserves_nothing(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0)
    with reg.acquire("api"):
        pass
    with pytest.raises(RateLimitTimeout) as info:
        with reg.acquire("api", timeout=0.5):
            pass
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, RateSyncError)
    assert info.value.retry_after == pytest.approx(1.0)
    assert "api" in str(info.value)
    # Nothing was reserved: the next caller waits 1 s, not 2 s.
    with reg.acquire("api", timeout=5):
        pass
    assert clock.slept == pytest.approx([1.0])
    assert reg.get_limiter("api").get_metrics().timeouts == 1


def test_default_timeout_from_definition(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0, timeout=0.1)
    reg.try_acquire("api")
    with pytest.raises(RateLimitTimeout):
        with reg.acquire("api"):
            pass


def test_keys_are_independent(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0)
    assert reg.try_acquire("api", key="alice").allowed
    assert reg.try_acquire("api:bob").allowed
    assert not reg.try_acquire("api", key="alice").allowed
    refused = reg.try_acquire("api:bob")
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0)
    assert reg.try_acquire("api").allowed


def test_colon_id_prefers_an_exact_limiter(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0)
    limiter(reg, clock, "api:v2", rate_per_second=100.0, burst=10)
    for _ in range(5):
        assert reg.try_acquire("api:v2").allowed
    assert reg.try_acquire("api:other").allowed
    with pytest.raises(ValueError, match="already names a key"):
        reg.acquire("api:x", key="y")


def test_try_acquire_never_waits(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "login", algorithm="sliding_window", limit=2, window_seconds=300)
    assert reg.try_acquire("login").allowed
    assert reg.try_acquire("login").allowed
    third = reg.try_acquire("login")
    assert not third and third.retry_after == pytest.approx(300.0)
    clock.now += 299.0
    assert not reg.try_acquire("login").allowed
    clock.now += 1.0
    assert reg.try_acquire("login").allowed
    assert clock.slept == []
    assert reg.get_limiter("login").get_metrics().denials == 2


def test_cost(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "tokens", algorithm="fixed_window", limit=100, window_seconds=60)
    assert reg.try_acquire("tokens", cost=60).remaining == 40
    assert not reg.try_acquire("tokens", cost=41).allowed
    assert reg.try_acquire("tokens", cost=40).allowed
    with pytest.raises(ValueError, match="capacity"):
        reg.try_acquire("tokens", cost=101)
    with pytest.raises(ValueError, match="at least 1"):
        reg.try_acquire("tokens", cost=0)


def test_combined_limits(reg: Registry, clock: ManualClock) -> None:
    limiter(
        reg,
        clock,
        "github",
        rate_per_second=10.0,
        burst=10,
        limits=[{"algorithm": "fixed_window", "limit": 12, "window_seconds": 3600}],
    )
    admitted = sum(reg.try_acquire("github").allowed for _ in range(30))
    assert admitted == 10  # the burst binds first
    clock.now += 10.0
    admitted += sum(reg.try_acquire("github").allowed for _ in range(30))
    assert admitted == 12  # then the hourly limit


async def test_bare_await_on_concurrency_limiter_refuses(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "db", max_concurrent=2)
    with pytest.raises(ConcurrencyMisuseError, match="async with"):
        await reg.acquire("db")
    assert reg.get_limiter("db").get_metrics().concurrent == 0


async def test_async_with_releases_on_exit_error_and_cancel(reg: Registry, clock: ManualClock) -> None:
    lim = limiter(reg, clock, "db", max_concurrent=2)
    async with reg.acquire("db"):
        async with reg.acquire("db"):
            assert lim.get_metrics().concurrent == 2
            assert not (await lim.atry_acquire()).allowed
    assert lim.get_metrics().concurrent == 0
    with pytest.raises(RuntimeError):
        async with reg.acquire("db"):
            raise RuntimeError("boom")
    assert lim.get_metrics().concurrent == 0

    entered = asyncio.Event()

    async def holder() -> None:
        async with reg.acquire("db"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(holder())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lim.get_metrics().concurrent == 0
    assert lim.get_metrics().peak_concurrent == 2
    # Every slot is free in the store too.
    a, b = await lim.atry_acquire(), await lim.atry_acquire()
    assert a.allowed and b.allowed
    await a.arelease()
    await b.arelease()


async def test_concurrency_waiter_wakes_on_release() -> None:
    reg = Registry()
    reg.configure_limiter("db", max_concurrent=1)
    order: list[str] = []

    async def worker(name: str, hold: float) -> None:
        async with reg.acquire("db", timeout=5):
            order.append(f"in {name}")
            await asyncio.sleep(hold)
            order.append(f"out {name}")

    await asyncio.gather(worker("a", 0.05), worker("b", 0.0), worker("c", 0.0))
    # Never two inside at once.
    depth = 0
    for event in order:
        depth += 1 if event.startswith("in") else -1
        assert depth <= 1
    assert reg.get_limiter("db").get_metrics().peak_concurrent == 1


async def test_concurrency_timeout() -> None:
    reg = Registry()
    reg.configure_limiter("db", max_concurrent=1)
    async with reg.acquire("db"):
        with pytest.raises(RateLimitTimeout):
            async with reg.acquire("db", timeout=0.05):
                pass
    assert reg.get_limiter("db").get_metrics().timeouts == 1


def test_sync_concurrency_with_threads() -> None:
    reg = Registry()
    reg.configure_limiter("db", max_concurrent=3)
    inside = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, peak
        for _ in range(5):
            with reg.acquire("db", timeout=10):
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                threading.Event().wait(0.002)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 3
    m = reg.get_limiter("db").get_metrics()
    assert m.acquisitions == 40 and m.concurrent == 0 and m.peak_concurrent <= 3


async def test_rate_limited_decorates_def_and_async_def(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0)

    @ratesync.rate_limited("api:{user_id}", registry=reg)
    def fetch(user_id: int, extra: str = "") -> str:
        return f"user {user_id}{extra}"

    @ratesync.rate_limited(lambda user_id: f"api:{user_id}", registry=reg)
    async def afetch(user_id: int) -> str:
        return f"async user {user_id}"

    assert fetch(1) == "user 1"
    assert fetch(user_id=2, extra="!") == "user 2!"
    assert await afetch(3) == "async user 3"
    assert clock.slept == []
    assert fetch(1) == "user 1"
    assert clock.slept == pytest.approx([1.0])
    assert fetch.__name__ == "fetch"
    assert asyncio.iscoroutinefunction(afetch)


def test_rate_limited_template_names_a_missing_parameter() -> None:
    with pytest.raises(ConfigurationError, match="user"):

        @ratesync.rate_limited("api:{user}")
        def f(user_id: int) -> None: ...


def test_unknown_ids_list_the_known_ones(reg: Registry, clock: ManualClock) -> None:
    limiter(reg, clock, "api", rate_per_second=1.0)
    with pytest.raises(UnknownLimiterError, match="known limiters: api") as info:
        reg.acquire("nope")
    assert isinstance(info.value, KeyError) and isinstance(info.value, RateSyncError)
    with pytest.raises(UnknownStoreError, match="known stores: mem"):
        reg.configure_limiter("x", "missing", rate_per_second=1)
    with pytest.raises(UnknownStoreError):
        reg.get_store("missing")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "no limit"),
        ({"rate_per_second": 0}, "greater than zero"),
        ({"rate_per_second": -1}, "greater than zero"),
        ({"rate_per_second": "fast"}, "expected a number"),
        ({"rate_per_second": 1, "limit": 5}, "limit belongs to"),
        ({"algorithm": "sliding_window", "limit": 5}, "needs window_seconds"),
        ({"algorithm": "fixed_window", "limit": 5, "window_seconds": 1, "burst": 2}, "burst belongs to"),
        ({"algorithm": "leaky", "rate_per_second": 1}, "unknown algorithm"),
        ({"rate_per_second": 1, "colour": "red"}, "unknown option"),
        ({"max_concurrent": 0}, "at least 1"),
        ({"limit": 5, "window_seconds": 1}, "need an algorithm"),
    ],
)
def test_configuration_errors(registry: Registry, options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        registry.configure_limiter("bad", **options)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_clone_limiter_shares_the_store(reg: Registry, clock: ManualClock) -> None:
    source = limiter(reg, clock, "api", rate_per_second=5.0, burst=2, max_concurrent=4)
    clone = reg.clone_limiter("api", "api-slow", rate_per_second=1.0)
    assert clone.store is source.store
    assert clone.max_concurrent == 4
    assert clone.specs[0] == ratesync.TokenBucket(1.0, 2)
    assert reg.list_limiters() == ["api", "api-slow"]
    with pytest.raises(UnknownLimiterError):
        reg.clone_limiter("missing", "x")


def test_state_consumes_nothing(reg: Registry, clock: ManualClock) -> None:
    lim = limiter(reg, clock, "login", algorithm="fixed_window", limit=5, window_seconds=100)
    assert lim.state().remaining == 5
    reg.try_acquire("login", cost=2)
    s = lim.state()
    assert (s.limit, s.remaining) == (5, 3)
    assert lim.state().remaining == 3
    assert 0 < s.reset_after <= 100
    lim.reset()
    assert lim.state().remaining == 5


def test_memory_store_stays_bounded(clock: ManualClock) -> None:
    store = MemoryStore(capacity=1000, clock=clock)
    reg = Registry()
    reg.configure_store("mem", store)
    reg.configure_limiter("user", "mem", rate_per_second=1.0)
    for i in range(20_000):
        reg.try_acquire("user", key=str(i))
        if i % 100 == 0:
            clock.now += 0.5
    assert len(store) <= 1000


def test_memory_store_evicts_expired_before_live(clock: ManualClock) -> None:
    store = MemoryStore(capacity=100, clock=clock)
    reg = Registry()
    reg.configure_store("mem", store)
    reg.configure_limiter("user", "mem", rate_per_second=10.0)
    for i in range(10_000):
        reg.try_acquire("user", key=str(i))
        clock.now += 0.01  # each key's state expires 0.1 s after its call
    assert store.evicted_live == 0
    assert len(store) <= 100


async def test_sync_api_from_many_event_loops_and_threads() -> None:
    reg = Registry()
    reg.configure_limiter("api", rate_per_second=1000.0, burst=1000)

    def run_loop() -> None:
        async def main() -> None:
            for _ in range(50):
                await reg.acquire("api")

        asyncio.run(main())

    threads = [threading.Thread(target=run_loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.get_limiter("api").get_metrics().acquisitions == 200


def test_module_functions_use_the_default_registry() -> None:
    ratesync.configure_store("local")
    ratesync.configure_limiter("api", "local", rate_per_second=100.0, burst=3)
    assert ratesync.list_stores() == ["local"]
    assert ratesync.list_limiters() == ["api"]
    with ratesync.acquire("api"):
        pass
    assert ratesync.try_acquire("api").allowed
    assert ratesync.get_limiter("api").get_metrics().acquisitions == 2
    assert ratesync.get_store("local").engine == "memory"
    ratesync.initialize_all_limiters()
    ratesync.initialize_limiter("api")


async def test_initialize_awaitable() -> None:
    ratesync.configure_limiter("api", rate_per_second=1.0)
    await ratesync.initialize_all_limiters()
    await ratesync.initialize_limiter("api")


def test_engine_and_strategy_are_one_setting(registry: Registry) -> None:
    assert registry.configure_store("a", engine="memory").engine == "memory"
    assert registry.configure_store("b", "memory", capacity=10).engine == "memory"
    with pytest.raises(ConfigurationError, match="unknown store engine"):
        registry.configure_store("c", engine="mongodb")
    with pytest.raises(ConfigurationError, match="unknown option"):
        registry.configure_store("d", "memory", url="x")


def test_exports_are_exactly_all() -> None:
    public = {name for name in dir(ratesync) if not name.startswith("_")}
    assert public - {"annotations", "os", "Mapping", "Any", "TYPE_CHECKING"} == set(ratesync.__all__) - {"__version__"}
    for name in ratesync.__all__:
        assert getattr(ratesync, name) is not None
    assert ratesync.RedisStore.engine == "redis"


def test_repr_shows_live_state(reg: Registry, clock: ManualClock) -> None:
    lim = limiter(reg, clock, "api", rate_per_second=5.0, burst=2, max_concurrent=3)
    text = repr(lim)
    assert "api" in text and "5/s burst 2" in text and "max_concurrent=3" in text and "concurrent=0" in text


def test_metrics_count_store_errors_from_the_policy() -> None:
    class Broken(MemoryStore):
        def _acquire(self, slots, cost, max_wait):  # type: ignore[no-untyped-def]
            raise ConnectionError("down")

        acquire = ratesync.Store.acquire  # run through the outage policy

    store = Broken(on_error="open")
    reg = Registry()
    reg.configure_store("s", store)
    reg.configure_limiter("api", "s", rate_per_second=1.0)
    assert all(reg.try_acquire("api").allowed for _ in range(3))
    assert reg.get_limiter("api").get_metrics().store_errors == 3
    assert store.errors == 1  # the circuit skipped the backend after the first failure
    assert store.fallbacks == 3


def _never() -> Callable[[], None]:
    return lambda: None


def test_infinite_capacity_concurrency_only_state() -> None:
    reg = Registry()
    lim = reg.configure_limiter("db", max_concurrent=2)
    s = lim.state()
    assert s.limit == 2 and s.remaining == math.inf
