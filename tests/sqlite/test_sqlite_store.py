"""The SQLite store beyond the contract: configuration, ``:memory:``, restarts, expiry, fork, failures."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from rs_testing import ManualClock

import ratesync
from ratesync import (
    ConfigurationError,
    FixedWindow,
    MissingDependencyError,
    Observation,
    Quota,
    SlidingWindow,
    Spec,
    StoreError,
    TokenBucket,
)
from ratesync._stores import create_store
from ratesync._stores import sqlite as sqlite_module
from ratesync._stores.sqlite import LEASE_TABLE, STATE_TABLE, SQLiteStore, parse_sqlite_url

pytestmark = pytest.mark.sqlite

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "limits.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()


def rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    conn.close()
    return count


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:///dir/relative.db", "dir/relative.db"),
        ("sqlite:////abs/path.db", "/abs/path.db"),
        ("sqlite://", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_url_forms(url: str, path: str) -> None:
    assert parse_sqlite_url(url) == path


@pytest.mark.parametrize("url", ["postgres:///x.db", "sqlite://host/x.db", "sqlite:///x.db?mode=ro"])
def test_bad_urls_name_the_key(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_sqlite_url(url)
    assert info.value.key == "url"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://user:hunter2@/x.db",
        "sqlite://user:hunter2@host/x.db",
        "pg://u:hunter2@h/x.db",
        "sqlite://u:hunter2@/x?a=1",
    ],
)
def test_bad_urls_never_show_a_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_sqlite_url(url)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)  # the URL is still named, its password masked


def test_from_options(tmp_path: Path) -> None:
    store = create_store("local", "sqlite", {"path": str(tmp_path / "a.db"), "busy_timeout": 2, "on_error": "open"})
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "a.db")
    assert store.busy_timeout == 2.0
    assert store.on_error == "open"
    assert store.name == "local"
    assert "a.db" in store.describe() and "sqlite" in repr(store)
    by_url = create_store("u", "sqlite", {"url": f"sqlite:///{tmp_path}/b.db", "retry_interval": 3})
    assert isinstance(by_url, SQLiteStore)
    assert by_url.path == f"{tmp_path}/b.db"
    assert by_url.retry_interval == 3.0


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "path"),
        ({"path": ""}, "path"),
        ({"path": 3}, "path"),
        ({"path": "a.db", "url": "sqlite:///b.db"}, "url"),
        ({"path": "a.db", "busy_timeout": "soon"}, "busy_timeout"),
        ({"path": "a.db", "busy_timeout": -1}, "busy_timeout"),
        ({"path": "a.db", "pool_size": 3}, "pool_size"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_store("s", "sqlite", options)
    assert info.value.key == key


def test_from_a_configuration_file(tmp_path: Path) -> None:
    path = tmp_path / "rate-sync.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [stores.local]
            engine = "sqlite"
            path = "{tmp_path / "limits.db"}"

            [limiters.api]
            store = "local"
            algorithm = "fixed_window"
            limit = 2
            window_seconds = 3600
            """
        )
    )
    reg = ratesync.Registry(config=str(path))
    try:
        assert reg.try_acquire("api")
        assert reg.try_acquire("api")
        assert not reg.try_acquire("api")
        assert isinstance(reg.get_store("local"), SQLiteStore)
    finally:
        reg.close()
    assert (tmp_path / "limits.db").exists()


# -- :memory: -----------------------------------------------------------------------------------


async def test_memory_database_is_shared_by_the_sync_and_async_sides() -> None:
    store = SQLiteStore(":memory:")
    other = SQLiteStore(":memory:")
    slots = [("{m}#0", FixedWindow(limit=3, window_seconds=3600.0))]
    try:
        assert store.acquire(slots).allowed
        assert (await store.aacquire(slots)).allowed
        assert (await store.apeek(slots)).remaining == 1
        assert store.peek(slots).remaining == 1
        assert store.acquire(slots).allowed
        assert not (await store.aacquire(slots)).allowed
        # Another store's :memory: is another database.
        assert other.peek(slots).remaining == 3
    finally:
        store.close()
        other.close()
        await store.aclose()


def test_memory_database_is_shared_by_threads() -> None:
    store = SQLiteStore(":memory:")
    slots = [("{m}#0", FixedWindow(limit=30, window_seconds=3600.0))]
    results: list[bool] = []

    def worker() -> None:
        for _ in range(10):
            results.append(store.acquire(slots).allowed)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert sum(results) == 30 and len(results) == 60


# -- the two sides of a file store ---------------------------------------------------------------


async def test_threads_and_tasks_share_one_limit(store: SQLiteStore) -> None:
    slots = [("{mix}#0", FixedWindow(limit=40, window_seconds=3600.0))]
    sync_results: list[bool] = []

    def worker() -> None:
        for _ in range(10):
            sync_results.append(store.acquire(slots).allowed)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    async_results = await asyncio.gather(*(store.aacquire(slots) for _ in range(40)))
    for t in threads:
        t.join()
    await store.aclose()
    assert sum(sync_results) + sum(d.allowed for d in async_results) == 40


async def test_cancelled_tasks_never_keep_the_write_lock(db: Path) -> None:
    store = SQLiteStore(db)
    probe = SQLiteStore(db, busy_timeout=1.0)
    slots = [("{cancel}#0", SlidingWindow(limit=1000, window_seconds=3600.0))]
    try:
        await store.aacquire(slots)  # connect first, so that cancellations land inside transactions
        for steps in range(12):
            task = asyncio.create_task(store.aacquire(slots))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            # The write lock was given back: another connection gets it within its (short) timeout.
            assert probe.acquire(slots).allowed
            assert (await store.aacquire(slots)).allowed
    finally:
        await store.aclose()
        store.close()
        probe.close()


def test_missing_aiosqlite_names_the_extra(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiosqlite", None)
    store = SQLiteStore(db)
    slots = [("{dep}#0", TokenBucket(rate_per_second=10.0))]
    assert store.acquire(slots).allowed  # the sync side needs only the standard library

    async def main() -> None:
        await store.aacquire(slots)

    with pytest.raises(MissingDependencyError) as info:
        asyncio.run(main())
    store.close()
    assert "rate-sync[sqlite]" in str(info.value)
    assert info.value.package == "aiosqlite"


# -- what is stored ------------------------------------------------------------------------------


def test_every_algorithm_round_trips_through_the_file(db: Path) -> None:
    clock = ManualClock()
    slots = {
        "tb": [("{r}#0", TokenBucket(rate_per_second=0.5, burst=3))],
        "sw": [("{r}#1", SlidingWindow(limit=3, window_seconds=60.0))],
        "fw": [("{r}#2", FixedWindow(limit=3, window_seconds=60.0))],
    }
    first = SQLiteStore(db, clock=clock)
    for s in slots.values():
        first.acquire(s, cost=2)
    first.observe("{r}#q", Quota(), Observation(remaining=5, reset_after=30.0, limit=10, window=60.0))
    first.close()
    second = SQLiteStore(db, clock=clock)
    for name, s in slots.items():
        assert second.peek(s).remaining == 1, name
    assert second.acquire([("{r}#q", Quota())], cost=5).remaining == 0
    assert not second.acquire([("{r}#q", Quota())]).allowed
    second.close()


def test_a_key_whose_limit_changes_kind_starts_afresh(store: SQLiteStore) -> None:
    key = "{kind}#0"
    assert store.acquire([(key, FixedWindow(limit=1, window_seconds=3600.0))]).allowed
    assert not store.acquire([(key, FixedWindow(limit=1, window_seconds=3600.0))]).allowed
    d = store.acquire([(key, TokenBucket(rate_per_second=1.0, burst=2))])
    assert d.allowed and d.remaining == 1


def test_combined_limits_write_all_or_nothing(store: SQLiteStore) -> None:
    bucket = ("{multi}#0", TokenBucket(rate_per_second=0.001, burst=2))
    window = ("{multi}#1", FixedWindow(limit=5, window_seconds=3600.0))
    assert store.acquire([bucket, window]).allowed
    assert store.acquire([bucket, window]).allowed
    assert not store.acquire([bucket, window]).allowed
    assert store.peek([window]).remaining == 3
    store.reset(["{multi}#0"])
    assert store.acquire([bucket, window]).allowed
    assert store.peek([window]).remaining == 2


def test_expired_state_is_ignored_then_swept(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "_SWEEP_EVERY", 10)
    clock = ManualClock()
    store = SQLiteStore(db, clock=clock)
    spec = FixedWindow(limit=1, window_seconds=10.0)
    for i in range(200):
        assert store.acquire([(f"{{user{i:03}}}#0", spec)]).allowed
        assert store.lease_acquire(f"{{user{i:03}}}#lease", 1, 5.0, "holder").acquired
    assert store.count_keys() == 200
    clock.now += 3600.0
    assert store.count_keys() == 0
    # Expired rows mean nothing even before they are deleted...
    assert store.acquire([("{user000}#0", spec)]).allowed
    assert store.lease_acquire("{user000}#lease", 1, 5.0, "other").acquired
    # ...and the writes that follow sweep them a few at a time.
    for i in range(200):
        store.acquire([(f"{{fresh{i:03}}}#0", spec)])
    assert rows(db, STATE_TABLE) < 200 + 150
    assert rows(db, LEASE_TABLE) < 150
    clock.now += 3600.0
    deleted = store.purge_expired()
    assert deleted > 0
    assert rows(db, STATE_TABLE) == 0 and rows(db, LEASE_TABLE) == 0
    store.close()


# -- processes -----------------------------------------------------------------------------------


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_state_and_leases_survive_a_restart(db: Path) -> None:
    setup = f"""
        from ratesync import FixedWindow, TokenBucket
        from ratesync._stores.sqlite import SQLiteStore

        store = SQLiteStore({str(db)!r})
        for _ in range(3):
            assert store.acquire([("{{api:1}}#0", FixedWindow(limit=3, window_seconds=3600.0))]).allowed
        assert store.acquire([("{{api:1}}#1", TokenBucket(rate_per_second=0.01, burst=1))]).allowed
        assert store.lease_acquire("{{api:1}}#lease", 1, 600.0, "worker-1").acquired
        print("done")
    """
    assert run_python(setup).strip() == "done"  # that process has exited
    store = SQLiteStore(db)
    try:
        assert not store.acquire([("{api:1}#0", FixedWindow(limit=3, window_seconds=3600.0))]).allowed
        refused = store.acquire([("{api:1}#1", TokenBucket(rate_per_second=0.01, burst=1))])
        assert not refused.allowed and refused.wait > 90.0
        held = store.lease_acquire("{api:1}#lease", 1, 600.0, "worker-2")
        assert not held.acquired and held.retry_after > 500.0
        # The lease's owner, restarted with the same id, still holds it and can release it.
        store.lease_release("{api:1}#lease", "worker-1")
        assert store.lease_acquire("{api:1}#lease", 1, 600.0, "worker-2").acquired
    finally:
        store.close()
    # And back: a new process sees what this one wrote.
    check = f"""
        from ratesync._stores.sqlite import SQLiteStore

        store = SQLiteStore({str(db)!r})
        print(store.lease_acquire("{{api:1}}#lease", 1, 600.0, "worker-3").acquired)
    """
    assert run_python(check).strip() == "False"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(store: SQLiteStore) -> None:
    slots = [("{fork}#0", FixedWindow(limit=3, window_seconds=3600.0))]
    assert store.acquire(slots).allowed
    parent_conn = store._conn
    assert parent_conn is not None
    # Fork while another thread holds the store's lock: the child must not wait for a lock whose
    # holder does not exist there.
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process" (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            signal.alarm(20)  # a child stuck on the parent's lock dies instead of hanging the test
            ok = store.acquire(slots).allowed
            status = 0 if ok and store._conn is not parent_conn and parent_conn in _abandoned() else 2
            store.close()
        finally:
            os._exit(status)
    done.set()
    holder.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection still works, and sees the child's charge.
    assert store._conn is parent_conn
    d = store.acquire(slots)
    assert d.allowed and d.remaining == 0


def _abandoned() -> list[object]:
    return [conn for conn, _ in sqlite_module._ABANDONED]


# -- failures ------------------------------------------------------------------------------------


def test_an_unopenable_file_is_a_store_failure(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "limits.db"
    slots = [("{down}#0", TokenBucket(rate_per_second=1.0))]
    closed = SQLiteStore(path)
    with pytest.raises(StoreError) as info:
        closed.acquire(slots)
    assert "no-such-dir" in str(info.value)
    opened = SQLiteStore(path, on_error="open")
    d = opened.acquire(slots)
    assert d.allowed and d.degraded
    assert opened.errors == 1 and not opened.healthy


async def test_a_file_that_is_not_a_database_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an sqlite database" * 200)
    store = SQLiteStore(path, on_error="local")
    slots = [("{bad}#0", FixedWindow(limit=1, window_seconds=3600.0))]
    d = store.acquire(slots)
    assert d.allowed and d.degraded
    assert not store.acquire(slots).allowed  # the local fallback still limits
    bucket = [("{bad}#1", TokenBucket(rate_per_second=1 / 3600, burst=1))]  # the hot path's fallback too
    d = store.acquire(bucket)
    assert d.allowed and d.degraded
    d = store.acquire(bucket)
    assert not d.allowed and d.degraded
    closed = SQLiteStore(path, retry_interval=0.0)
    with pytest.raises(StoreError):
        closed.acquire(slots)
    with pytest.raises(StoreError):
        await closed.aacquire(slots)
    await closed.aclose()
    store.close()
    closed.close()


@pytest.mark.parametrize(
    "spec",
    # A token bucket is the store's own hot path (its ``acquire`` skips the policy wrapper while
    # healthy), a window goes through the wrapper: both must fail over and recover alike.
    [FixedWindow(limit=1, window_seconds=3600.0), TokenBucket(rate_per_second=1 / 3600, burst=1)],
    ids=["window", "token_bucket"],
)
def test_the_store_recovers_when_the_file_becomes_usable(tmp_path: Path, spec: Spec) -> None:
    folder = tmp_path / "later"
    store = SQLiteStore(folder / "limits.db", on_error="open", retry_interval=0.0)
    slots = [("{rec}#0", spec)]
    assert store.acquire(slots).degraded
    assert store.errors == 1 and store.fallbacks == 1 and not store.healthy
    folder.mkdir()
    d = store.acquire(slots)
    assert d.allowed and not d.degraded
    assert not store.acquire(slots).allowed
    assert store.healthy
    store.close()


def test_close_then_use_reopens(store: SQLiteStore) -> None:
    slots = [("{reopen}#0", FixedWindow(limit=2, window_seconds=3600.0))]
    assert store.acquire(slots).allowed
    store.close()
    store.close()  # idempotent
    assert store.peek(slots).remaining == 1


def test_a_writer_holding_the_lock_briefly_is_waited_for(db: Path) -> None:
    store = SQLiteStore(db, busy_timeout=5.0)
    store.initialize()
    assert rows(db, STATE_TABLE) == 0
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.2, holder.execute, args=("COMMIT",))
    timer.start()
    try:
        d = store.acquire([("{wait}#0", FixedWindow(limit=1, window_seconds=3600.0))])
    finally:
        timer.join()
        holder.close()
        store.close()
    assert d.allowed and not d.degraded


async def test_a_lock_held_past_the_busy_timeout_is_a_store_failure(db: Path) -> None:
    store = SQLiteStore(db, busy_timeout=0.2, retry_interval=0.0)
    store.initialize()
    await store.ainitialize()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    slots = [("{stuck}#0", FixedWindow(limit=1, window_seconds=3600.0))]
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.acquire(slots)
        with pytest.raises(StoreError, match="locked"):
            await store.aacquire(slots)
        assert time.monotonic() - started < 2.0
        # Reading needs no write lock (WAL): peek still answers.
        assert store.peek(slots).remaining == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.acquire(slots).allowed
    await store.aclose()
    store.close()
