"""Outages: backends terminated mid-call, a server that is not there; the policy holds, the pool heals."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from stores.backend_postgres import URL, drop, make_isolated

from ratesync import FixedWindow, StoreError
from ratesync._stores.postgres import PostgresStore, _lock_space

pytestmark = [pytest.mark.postgres]


async def admin() -> Any:
    import asyncpg

    return await asyncpg.connect(URL)


async def wait_for_lock_waiter(conn: Any, app: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", app
        )
        if n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no backend of {app} waited for the lock")


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("on_error", ["closed", "open", "local"])
async def test_terminated_backends_mid_call(on_error: str, mode: str) -> None:
    app = f"ratesync-kill-{uuid.uuid4().hex[:8]}"
    store = make_isolated("kill", application_name=app, on_error=on_error, retry_interval=0.2)
    assert isinstance(store, PostgresStore)
    key = "{kill}#0"
    slots = [(key, FixedWindow(limit=2, window_seconds=3600.0))]

    async def call() -> Any:
        if mode == "sync":
            return await asyncio.to_thread(store.acquire, slots)
        return await store.aacquire(slots)

    conn = await admin()
    try:
        assert (await call()).allowed
        # Hold the key's lock from outside, so the next call waits inside its statement; then end
        # every backend of the store, as a restart or a failover would.
        await conn.execute(
            "SELECT pg_advisory_lock(hashtextextended($1, $2))", key, _lock_space(store.schema, store.table_prefix)
        )
        pending = asyncio.ensure_future(call())
        await wait_for_lock_waiter(conn, app)
        killed = await conn.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = $1) t",
            app,
        )
        assert killed >= 1
        if on_error == "closed":
            with pytest.raises(StoreError) as info:
                await pending
            assert "kill" in str(info.value)
        else:
            d = await pending
            assert d.allowed and d.degraded
        assert store.errors >= 1 and not store.healthy
        await conn.execute("SELECT pg_advisory_unlock_all()")
        if on_error == "local":
            # While the backend is known down, the local fallback keeps the limit in this process.
            d2 = await call()
            assert d2.degraded
        # The pool reconnects by itself once the retry interval has passed.
        await asyncio.sleep(0.25)
        d = await call()
        assert not d.degraded
        assert store.healthy
        # The killed call was rolled back with its backend: only the first call and this one count.
        assert d.allowed and d.remaining == 0
    finally:
        await conn.close()
        await store.aclose()
        drop(store)


@pytest.mark.parametrize("on_error", ["closed", "open", "local"])
async def test_a_server_that_is_not_there(on_error: str) -> None:
    # Port 1 on loopback: connection refused at once. The password must never show.
    store = PostgresStore(
        "postgresql://app:hunter2-secret@127.0.0.1:1/test", on_error=on_error, retry_interval=30.0, name="down"
    )
    slots = [("{down}#0", FixedWindow(limit=2, window_seconds=3600.0))]
    try:
        start = time.monotonic()
        if on_error == "closed":
            with pytest.raises(StoreError) as info:
                await store.aacquire(slots)
            assert "hunter2-secret" not in str(info.value)
            assert "app:***@127.0.0.1:1" in str(info.value)
            # Known down: the next calls skip the backend instead of connecting again.
            with pytest.raises(StoreError):
                store.acquire(slots)
            assert store.errors == 1 and store.fallbacks == 2
        elif on_error == "open":
            answers = [await store.aacquire(slots) for _ in range(3)]
            assert all(d.allowed and d.degraded for d in answers)
        else:
            answers = [await store.aacquire(slots) for _ in range(3)]
            assert [d.allowed for d in answers] == [True, True, False]  # the limit, kept locally
            assert all(d.degraded for d in answers)
        assert time.monotonic() - start < 3.0
    finally:
        await store.aclose()
        store.close()


async def test_idle_connections_killed_between_calls_are_replaced() -> None:
    app = f"ratesync-idle-{uuid.uuid4().hex[:8]}"
    store = make_isolated("idle", application_name=app)
    assert isinstance(store, PostgresStore)
    slots = [("{idle}#0", FixedWindow(limit=100, window_seconds=3600.0))]
    conn = await admin()
    try:
        assert store.acquire(slots).allowed and (await store.aacquire(slots)).allowed
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app)
        await asyncio.sleep(0.2)  # the clients see their sockets close
        d1 = store.acquire(slots)
        d2 = await store.aacquire(slots)
        assert d1.allowed and d2.allowed and not (d1.degraded or d2.degraded)
        assert d2.remaining == 96
    finally:
        await conn.close()
        await store.aclose()
        drop(store)
