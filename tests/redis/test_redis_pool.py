"""The store's connection pools: bounded, waiting instead of failing, fork-safe, and healing
connections a restarted server closed before anyone notices."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Iterator

import pytest
from stores.backend_redis import RedisServer, require_binaries

from ratesync import FixedWindow, SlidingWindow, StoreError, TokenBucket

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402

SLOTS = (("{pool}#0", TokenBucket(rate_per_second=1e6, burst=100_000)),)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    require_binaries()
    with RedisServer() as s:
        yield s


def clients(server: RedisServer) -> int:
    """Connections the server has, not counting the one asking."""
    admin = redis.Redis.from_url(server.url)
    try:
        return len(admin.client_list()) - 1
    finally:
        admin.close()


def test_threads_beyond_the_pool_size_wait_for_a_connection(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=2)
    errors: list[BaseException] = []
    admitted = []

    def work() -> None:
        try:
            for _ in range(25):
                admitted.append(store.acquire(SLOTS).allowed)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(admitted) == 300 and all(admitted)
        assert clients(server) <= 2
    finally:
        store.close()
    assert clients(server) == 0


async def test_tasks_beyond_the_pool_size_wait_for_a_connection(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=3)
    slots = (("{pool}#0", SlidingWindow(limit=100, window_seconds=60.0)),)
    try:
        results = await asyncio.gather(*(store.aacquire(slots) for _ in range(150)))
        assert sum(d.allowed for d in results) == 100
        assert clients(server) <= 3
    finally:
        await store.aclose()
    assert clients(server) == 0


async def test_a_pool_that_stays_full_fails_into_the_policy(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=1, connect_timeout=0.1, socket_timeout=0.1, retry_interval=0.0)
    try:
        pool = store._sync().pool
        held = pool.get_connection()
        started = time.monotonic()
        with pytest.raises(StoreError, match="No connection available"):
            store.acquire(SLOTS)
        assert 0.15 <= time.monotonic() - started < 1.0
        pool.release(held)
        assert store.acquire(SLOTS).allowed

        apool = store._async().pool
        aheld = await apool.get_connection()
        with pytest.raises(StoreError, match="No connection available"):
            await store.aacquire(SLOTS)
        waiter = asyncio.ensure_future(store.aacquire(SLOTS))
        await asyncio.sleep(0.05)
        await apool.release(aheld)  # wakes the waiter
        assert (await waiter).allowed
    finally:
        store.close()
        await store.aclose()


async def test_connections_closed_by_a_restart_are_renewed_on_checkout(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=4)
    try:
        # Warm both pools with several connections each: held at once, so each pool must open
        # three (calls from threads or tasks need not overlap: async ones of one key even batch).
        assert store.acquire(SLOTS).allowed and (await store.aacquire(SLOTS)).allowed
        pool, apool = store._sync().pool, store._async().pool
        held = [pool.get_connection() for _ in range(3)]
        aheld = [await apool.get_connection() for _ in range(3)]
        for connection in held:
            pool.release(connection)
        for connection in aheld:
            await apool.release(connection)
        assert clients(server) >= 6

        server.stop()
        server.start()  # every pooled connection is now closed by the server's side
        await asyncio.sleep(0.05)  # the event loop reads the EOFs (here the test blocked it)

        # No call failed while the server was away, so nothing knows: the checkout does.
        for _ in range(6):
            assert not store.acquire(SLOTS).degraded
            assert not (await store.aacquire(SLOTS)).degraded
        assert store.errors == 0 and store.healthy
    finally:
        store.close()
        await store.aclose()


def test_a_forked_child_opens_its_own_connections(server: RedisServer) -> None:
    store = RedisStore(server.url, pool_size=2)
    try:
        assert store.acquire(SLOTS).allowed  # the parent holds a pooled connection now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, on 3.12+
            pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 1
            try:
                ok = store.acquire(SLOTS).allowed and store.errors == 0
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        # The parent's connection was not shared with the child: it still answers in order.
        for _ in range(5):
            assert store.acquire(SLOTS).allowed
        assert store.errors == 0
    finally:
        store.close()


@pytest.mark.parametrize("batch", [False, True])
async def test_cancelled_calls_leave_no_reply_behind(server: RedisServer, batch: bool) -> None:
    # A call cancelled between its request and its reply must not leave that reply on a pooled
    # connection, where the next call would read it as its own.
    store = RedisStore(server.url, pool_size=2, batch=batch)
    a = (("{a}#0", FixedWindow(limit=10, window_seconds=3600.0)),)
    b = (("{b}#0", FixedWindow(limit=1000, window_seconds=3600.0)),)
    try:
        for delay in (0, 0, 0, 1, 1, 2, 2, 3, 4, 5) * 3:
            tasks = [asyncio.ensure_future(store.aacquire(a)) for _ in range(3)]
            for _ in range(delay):
                await asyncio.sleep(0)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            b_state, a_state = await asyncio.gather(store.apeek(b), store.apeek(a))
            assert (b_state.limit, b_state.remaining) == (1000, 1000)
            assert a_state.limit == 10
        assert store.errors == 0
    finally:
        await store.aclose()
