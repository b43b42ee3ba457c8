"""The PostgreSQL store beyond the contract: configuration, schema, cleanup, batching, loops, fork."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from pathlib import Path

import pytest
from rs_testing import require_service
from stores.backend_postgres import URL, drop, make_isolated, new_schema

import ratesync
from ratesync import ConfigurationError, FixedWindow, MissingDependencyError, StoreError, TokenBucket
from ratesync._stores import create_store
from ratesync._stores.postgres import SCHEMA_VERSION, PostgresStore, render_schema_sql

pytestmark = [pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def isolated(tag: str, **kwargs: object) -> PostgresStore:
    store = make_isolated(tag, **kwargs)
    assert isinstance(store, PostgresStore)
    return store


# -- configuration ----------------------------------------------------------------------------


def test_options_from_config_and_password_redacted() -> None:
    store = create_store(
        "pg",
        "postgresql",
        {
            "url": "postgresql://app:s3cr3t-pw@127.0.0.1:5432/test?sslmode=disable",
            "schema": "limits",
            "table_prefix": "rl_",
            "pool_size": "4",
            "connect_timeout": 2,
            "command_timeout": 1.5,
            "unlogged": "true",
            "synchronous_commit": "local",
            "auto_create": False,
            "application_name": "billing",
            "batch": False,
            "on_error": "open",
            "retry_interval": 0.5,
        },
    )
    assert isinstance(store, PostgresStore)
    assert (store.schema, store.table_prefix, store.pool_size) == ("limits", "rl_", 4)
    assert (store.connect_timeout, store.command_timeout, store.retry_interval) == (2.0, 1.5, 0.5)
    assert store.unlogged and not store.auto_create and not store.batch
    assert store.synchronous_commit == "local" and store.application_name == "billing"
    assert store.on_error == "open"
    for text in (store.describe(), repr(store)):
        assert "s3cr3t-pw" not in text
        assert "app:***@127.0.0.1:5432" in text
    # Nothing was connected: configuring never touches the server.
    assert store._portal is None and not store._pools
    assert PostgresStore().describe() == "postgres (PG* environment) public.ratesync_*"


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"schema": "Bad-Name"}, "schema"),
        ({"table_prefix": "x y"}, "table_prefix"),
        ({"ssl": "sometimes"}, "ssl"),
        ({"synchronous_commit": "maybe"}, "synchronous_commit"),
        ({"url": "mysql://root@localhost/db"}, "url"),
        ({"pool_size": 0}, "pool_size"),
        ({"unlogged": "perhaps"}, "unlogged"),
        ({"socket_timeout": 1}, "socket_timeout"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_store("pg", "postgres", {"url": URL, **options} if "url" not in options else options)
    assert info.value.key == key


def test_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(MissingDependencyError, match=r"rate-sync\[postgres\]"):
        PostgresStore(URL)


def test_schema_sql_is_documented_exactly() -> None:
    sql = render_schema_sql()
    assert "CREATE SCHEMA IF NOT EXISTS public;" in sql
    assert "CREATE TABLE IF NOT EXISTS public.ratesync_state" in sql
    assert "CREATE OR REPLACE FUNCTION public.ratesync_acquire(" in sql
    assert f"VALUES ('version', '{SCHEMA_VERSION}')" in sql
    assert "{schema}" not in sql and "{prefix}" not in sql and "{lock_space}" not in sql
    assert "CREATE UNLOGGED TABLE IF NOT EXISTS s.p_state" in render_schema_sql("s", "p_", unlogged=True)
    doc = (ROOT / "docs" / "stores" / "postgres.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, re.S)
    assert sql.strip() in [b.strip() for b in blocks], "docs/stores/postgres.md must show render_schema_sql() as is"


# -- schema -----------------------------------------------------------------------------------


async def test_many_stores_install_the_schema_at_once() -> None:
    require_service("postgres")
    schema = new_schema("install")
    stores = [PostgresStore(URL, schema=schema, name=f"s{i}") for i in range(6)]
    try:
        await asyncio.gather(*(s.ainitialize() for s in stores))
        slots = [("{install}#0", FixedWindow(limit=3, window_seconds=3600.0))]
        results = await asyncio.gather(*(s.aacquire(slots) for s in stores))
        assert sum(d.allowed for d in results) == 3
        rows = await stores[0]._fetch(f"SELECT value FROM {schema}.ratesync_meta WHERE name = 'version'")
        assert rows[0]["value"] == str(SCHEMA_VERSION)
    finally:
        await stores[0]._fetch(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for s in stores:
            await s.aclose()


async def test_without_auto_create_a_missing_schema_is_a_store_error() -> None:
    require_service("postgres")
    closed = PostgresStore(URL, schema=new_schema("noauto"), auto_create=False, name="noauto")
    opened = PostgresStore(URL, schema=closed.schema, auto_create=False, on_error="open", name="noauto-open")
    slots = [("{noauto}#0", TokenBucket(rate_per_second=1.0, burst=1))]
    try:
        with pytest.raises(StoreError, match="schema_sql"):
            await closed.aacquire(slots)
        d = await opened.aacquire(slots)
        assert d.allowed and d.degraded
    finally:
        await closed.aclose()
        await opened.aclose()


async def test_dropped_tables_are_installed_again() -> None:
    store = isolated("reinstall")
    slots = [("{re}#0", FixedWindow(limit=1, window_seconds=3600.0))]
    try:
        assert (await store.aacquire(slots)).allowed
        await store._fetch(f"DROP SCHEMA {store.schema} CASCADE")
        d = await store.aacquire(slots)
        assert d.allowed and not d.degraded  # state went with the tables; the store carries on
    finally:
        await store.aclose()
        drop(store)


async def test_unlogged_tables_and_asynchronous_commit() -> None:
    fast = isolated("unlogged", unlogged=True, synchronous_commit="off")
    default = isolated("logged", synchronous_commit=None)
    try:
        await fast.ainitialize()
        await default.ainitialize()
        kinds = await fast._fetch(
            "SELECT relname, relpersistence::text AS p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND relkind = 'r' ORDER BY relname",
            fast.schema,
        )
        assert {r["relname"]: r["p"] for r in kinds} == {
            "ratesync_leases": "u",
            "ratesync_meta": "p",
            "ratesync_state": "u",
        }
        assert (await fast._fetch("SHOW synchronous_commit"))[0][0] == "off"
        import asyncpg

        plain = await asyncpg.connect(URL)
        try:
            server_default = await plain.fetchval("SHOW synchronous_commit")
        finally:
            await plain.close()
        assert (await default._fetch("SHOW synchronous_commit"))[0][0] == server_default
    finally:
        await fast.aclose()
        await default.aclose()
        drop(fast)
        drop(default)


# -- cleanup ----------------------------------------------------------------------------------


def test_sweep_deletes_expired_rows_in_bounded_batches() -> None:
    store = isolated("sweep")
    t = f"{store.schema}.ratesync_"
    try:
        store.initialize()
        store._sync(
            lambda: store._fetch(
                f"INSERT INTO {t}state (key, kind, v1, expires_at) "
                "SELECT 'old' || i, 1, 0, 10 FROM generate_series(1, 150) i "
                "UNION ALL SELECT 'live' || i, 1, 0, 1e12 FROM generate_series(1, 20) i"
            )
        )
        store._sync(
            lambda: store._fetch(
                f"INSERT INTO {t}leases (key, lease_id, expires_at) "
                "SELECT 'k', 'old' || i, 10 FROM generate_series(1, 100) i UNION ALL SELECT 'k', 'live', 1e12"
            )
        )

        def count(table: str, where: str) -> int:
            return int(store._sync(lambda: store._fetch(f"SELECT count(*) FROM {t}{table} WHERE {where}"))[0][0])

        deleted = store._sync(lambda: store._fetch(f"SELECT {t}sweep(100.0, 64)"))[0][0]
        assert 0 < deleted <= 128  # at most one batch of each table
        for _ in range(6):
            store._sync(lambda: store._fetch(f"SELECT {t}sweep(100.0, 64)"))
        assert count("state", "expires_at <= 100") == 0
        assert count("state", "expires_at > 100") == 20
        assert count("leases", "true") == 1
    finally:
        drop(store)


def test_a_lease_call_deletes_its_keys_expired_leases() -> None:
    store = isolated("leasegc")
    try:
        for i in range(5):
            assert store._sync(lambda i=i: store._run_lease_acquire("{k}#lease", 10, 1.0, f"l{i}", now=100.0)).acquired
        d = store._sync(lambda: store._run_lease_acquire("{k}#lease", 10, 1.0, "new", now=200.0))
        assert d.acquired and d.active == 1
        rows = store._sync(lambda: store._fetch(f"SELECT lease_id FROM {store.schema}.ratesync_leases"))
        assert [r[0] for r in rows] == ["new"]
    finally:
        drop(store)


def test_a_key_reused_with_another_algorithm_starts_afresh() -> None:
    store = isolated("kind")
    try:
        assert store.acquire([("{k}#0", FixedWindow(limit=1, window_seconds=3600.0))]).allowed
        d = store.acquire([("{k}#0", TokenBucket(rate_per_second=1.0, burst=2))])
        assert d.allowed and d.remaining == 1
    finally:
        drop(store)


# -- batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [True, False])
async def test_concurrent_calls_on_one_key_are_batched_in_order(batch: bool) -> None:
    store = isolated("batch", batch=batch)
    statements = 0
    original = store._statement

    async def counting(*args: object, **kwargs: object) -> object:
        nonlocal statements
        statements += 1
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    store._statement = counting  # type: ignore[method-assign]
    try:
        await store.ainitialize()
        slots = [("{hot}#0", FixedWindow(limit=30, window_seconds=3600.0))]
        results = await asyncio.gather(*(store.aacquire(slots) for _ in range(60)))
        admitted = [d for d in results if d.allowed]
        assert len(admitted) == 30
        # Decided one after the other: every admitted call saw a different count.
        assert sorted(d.remaining for d in admitted) == list(range(30))
        if batch:
            assert statements < 30
        else:
            assert statements == 60
    finally:
        await store.aclose()
        drop(store)


def test_threads_on_the_sync_side_share_batches() -> None:
    store = isolated("threads")
    slots = [("{threads}#0", FixedWindow(limit=40, window_seconds=3600.0))]
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            results.append(store.acquire(slots).allowed)

    try:
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sum(results) == 40 and len(results) == 80
    finally:
        drop(store)


# -- loops, portal, fork ----------------------------------------------------------------------


def test_each_loop_has_its_own_pool() -> None:
    store = isolated("loops")
    slots = [("{loops}#0", FixedWindow(limit=100, window_seconds=3600.0))]

    async def use() -> int:
        await store.aacquire(slots)
        pools = len(store._pools)
        await store.aclose()
        return pools

    try:
        store.acquire(slots)  # the portal's pool
        seen: list[int] = []
        threads = [threading.Thread(target=lambda: seen.append(asyncio.run(use()))) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert all(n >= 2 for n in seen)  # the portal's pool and the thread loop's own
        assert len(store._pools) == 1  # each loop closed its own; the portal's remains
        assert store.peek(slots).remaining == 97
    finally:
        drop(store)


def test_a_sync_call_from_inside_the_portal_loop_raises_instead_of_deadlocking() -> None:
    store = isolated("inside")
    slots = [("{inside}#0", TokenBucket(rate_per_second=100.0, burst=5))]

    async def sync_call_inside() -> object:
        return store.acquire(slots)

    try:
        assert store.acquire(slots).allowed
        with pytest.raises(RuntimeError, match="use the async API"):
            store._sync(sync_call_inside)
        assert store.acquire(slots).allowed  # the portal is unharmed
        assert store.errors == 0  # a misuse, not a backend failure
    finally:
        drop(store)


async def test_the_sync_api_works_from_inside_another_running_loop() -> None:
    store = isolated("otherloop")
    slots = [("{other}#0", FixedWindow(limit=2, window_seconds=3600.0))]
    try:
        assert store.acquire(slots).allowed  # blocks this loop briefly; the portal loop does the work
        assert (await store.aacquire(slots)).allowed
        assert not store.acquire(slots).allowed
    finally:
        await store.aclose()
        drop(store)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_sync_side_survives_fork() -> None:
    store = isolated("fork")
    slots = [("{fork}#0", FixedWindow(limit=10, window_seconds=3600.0))]
    try:
        assert store.acquire(slots).remaining == 9  # the parent's portal and pool are up
        pid = os.fork()
        if pid == 0:  # the child: its own portal and pool, the parent's left untouched
            code = 1
            try:
                d1 = store.acquire(slots)
                d2 = store.acquire(slots, cost=2)
                store.close()
                code = 0 if (d1.allowed and d1.remaining == 8 and d2.remaining == 6) else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connections still work: the child neither used nor closed them.
        d = store.acquire(slots)
        assert d.allowed and d.remaining == 5 and not d.degraded
        assert store.errors == 0
    finally:
        drop(store)


def test_registry_configures_a_postgres_store() -> None:
    require_service("postgres")
    schema = new_schema("registry")
    registry = ratesync.Registry(
        config={
            "stores": {"pg": {"engine": "postgres", "url": URL, "schema": schema}},
            "limiters": {"api": {"store": "pg", "algorithm": "fixed_window", "limit": 2, "window_seconds": 3600}},
        }
    )
    store = registry.get_store("pg")
    try:
        assert isinstance(store, PostgresStore)
        assert registry.try_acquire("api", key="u1")
        assert registry.try_acquire("api", key="u1")
        assert not registry.try_acquire("api", key="u1")
        assert registry.try_acquire("api", key="u2")
    finally:
        drop(store)
        registry.close()


def test_engine_options_match_the_store() -> None:
    from ratesync._stores import ENGINE_OPTIONS

    assert ENGINE_OPTIONS["postgres"] == PostgresStore.OPTIONS == ENGINE_OPTIONS["postgresql"]
