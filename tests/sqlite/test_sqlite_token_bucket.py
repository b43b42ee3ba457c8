"""One token bucket is one UPSERT: the reference's decisions, and only with a fresh reading of the clock.

The store decides a single token bucket with one statement (``SQL_GCRA``) instead of a transaction.
These tests check that this path is taken, that it gives the reference's decisions float for float
(reservations, refusals, expiry, a key changing kind, resets), that a call kept waiting for the
write lock is decided in the transaction with the clock read after the wait, and that libraries
without RETURNING decide the same in the transaction.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rs_testing import ManualClock

from ratesync._algorithms import Decision, FixedWindow, Spec, TokenBucket, decide, shift_state, state_ttl
from ratesync._stores import sqlite as sqlite_module
from ratesync._stores.sqlite import STATE_TABLE, SQLiteStore

pytestmark = pytest.mark.sqlite

KEYS = ["{tb}#0", "{tb}#1"]


class Reference:
    """The pure functions with the stores' expiry rule, on times relative to each reading of the clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.states: dict[str, tuple[Any, float, type]] = {}

    def acquire(self, key: str, spec: Spec, cost: int, max_wait: float) -> Decision:
        now = self.clock()
        entry = self.states.get(key)
        state = entry[0] if entry is not None and entry[1] > now else None
        if entry is not None and type(spec) is not entry[2]:
            state = None  # a key whose limit changed kind starts afresh
        state = shift_state(state, spec, -now)
        decision, (new_state,) = decide((state,), 0.0, cost, (spec,), max_wait, now)
        if decision.allowed:
            if new_state is None:
                self.states.pop(key, None)
            else:
                expires_at = now + state_ttl(new_state, 0.0, spec)
                self.states[key] = (shift_state(new_state, spec, now), expires_at, type(spec))
        return decision


class Paths:
    """Counts the calls of one store decided in the transaction instead of the statement."""

    def __init__(self, store: SQLiteStore) -> None:
        self.transactions = 0
        one, arun = store._acquire_one, store._arun

        def counted_one(*args: Any) -> Decision:
            self.transactions += 1
            return one(*args)

        async def counted_arun(*args: Any, **kwargs: Any) -> Any:
            self.transactions += 1
            return await arun(*args, **kwargs)

        store._acquire_one = counted_one  # type: ignore[method-assign]
        store._arun = counted_arun  # type: ignore[method-assign]


buckets = st.builds(TokenBucket, st.sampled_from([0.5, 3.0, 10.0, 1e9]), st.integers(1, 4))
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.one_of(st.just(0.0), st.floats(0.0, 0.7), st.floats(0.7, 8.0), st.sampled_from([3600.0])),
        ),
        st.tuples(st.just("acquire"), st.integers(0, 1), st.integers(1, 3), st.sampled_from([0.0, 0.3, 2.0, math.inf])),
        st.tuples(st.just("acquire"), st.integers(0, 1), st.integers(1, 3), st.sampled_from([0.0, 0.0, 0.3])),
        st.tuples(st.just("window"), st.integers(0, 1)),
        st.tuples(st.just("reset"), st.integers(0, 1)),
    ),
    min_size=1,
    max_size=40,
)
starts = st.sampled_from([1_700_000_000.0, 1_700_000_000.123456, 86_400.0 * 19_000 + 0.5])


async def apply(store: SQLiteStore, clock: ManualClock, spec: TokenBucket, ops: list[Any], mode: str) -> int:
    """Run ``ops`` on the store and on the reference; returns how many token bucket calls were run.

    Every token bucket call must be decided by the statement (and a read for refusals), none in
    the transaction: one process and an injected clock leave no reason to fall back.
    """
    paths = Paths(store)
    ref = Reference(clock)
    window = FixedWindow(limit=2, window_seconds=10.0)
    statements: list[str] = []
    calls = 0
    for i, op in enumerate(ops):
        use_async = mode == "async" or (mode == "mixed" and i % 2 == 1)
        if op[0] == "advance":
            clock.now += op[1]
        elif op[0] == "acquire":
            _, k, cost, max_wait = op
            slots = [(KEYS[k], spec)]
            before = paths.transactions
            if use_async:
                got = await store.aacquire(slots, cost, max_wait)
            else:
                conn = store._conn
                assert conn is not None
                known = KEYS[k] in store._rows  # a row this process wrote: the UPDATE is tried first
                statements.clear()
                conn.set_trace_callback(statements.append)
                got = store.acquire(slots, cost, max_wait)
                conn.set_trace_callback(None)
                # Admitted: the one statement (and, for a row gone since, a read and the UPSERT).
                # Refused: it (unless no state could admit) and one read.
                kinds = [s.split(" ", 1)[0] for s in statements]
                if got.allowed:
                    expected = [["UPDATE"], ["UPDATE", "SELECT", "INSERT"]] if known else [["INSERT"]]
                else:
                    expected = [["UPDATE", "SELECT"], ["SELECT"]] if known else [["INSERT", "SELECT"], ["SELECT"]]
                assert kinds in expected, statements
                if got.allowed:
                    assert KEYS[k] in store._rows
            assert paths.transactions == before, (i, op)
            assert got == ref.acquire(KEYS[k], spec, cost, max_wait), (i, op)
            assert not got.degraded
            calls += 1
        elif op[0] == "window":
            # Another kind of limit on the same key: the bucket must start afresh after it.
            slots_w = [(KEYS[op[1]], window)]
            got = await store.aacquire(slots_w) if use_async else store.acquire(slots_w)
            assert got == ref.acquire(KEYS[op[1]], window, 1, 0.0), (i, op)
        else:
            if use_async:
                await store.areset([KEYS[op[1]]])
            else:
                store.reset([KEYS[op[1]]])
            ref.states.pop(KEYS[op[1]], None)
    return calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=buckets, ops=operations, start=starts, mode=st.sampled_from(["sync", "async", "mixed"]))
def test_the_statement_decides_as_the_reference(spec: TokenBucket, ops: list[Any], start: float, mode: str) -> None:
    clock = ManualClock(start)
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite_module, "_SWEEP_EVERY", 10**9)  # the sweep's statements are not under test here
        store = SQLiteStore(Path(folder) / "tb.db", clock=clock)
        store.initialize()

        async def main() -> None:
            try:
                await apply(store, clock, spec, ops, mode)
            finally:
                await store.aclose()
                store.close()

        asyncio.run(main())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=buckets, ops=operations, start=starts)
def test_without_returning_the_transaction_decides_the_same(spec: TokenBucket, ops: list[Any], start: float) -> None:
    clock = ManualClock(start)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sqlite_module, "_ONE_STATEMENT", False)  # SQLite before 3.35.5
        store = SQLiteStore(":memory:", clock=clock)
        store.initialize()
        ref = Reference(clock)
        statements: list[str] = []
        try:
            for op in ops:
                if op[0] == "advance":
                    clock.now += op[1]
                elif op[0] == "acquire":
                    _, k, cost, max_wait = op
                    conn = store._conn
                    assert conn is not None
                    statements.clear()
                    conn.set_trace_callback(statements.append)
                    got = store.acquire([(KEYS[k], spec)], cost, max_wait)
                    conn.set_trace_callback(None)
                    assert statements[0] == "BEGIN IMMEDIATE"
                    assert got == ref.acquire(KEYS[k], spec, cost, max_wait)
        finally:
            store.close()


def test_a_known_key_is_one_update_and_a_vanished_row_is_inserted_again(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_000.0)
    db = tmp_path / "rows.db"
    store = SQLiteStore(db, clock=clock)
    other = SQLiteStore(db, clock=clock)
    ref = Reference(clock)
    spec, key = TokenBucket(rate_per_second=2.0, burst=3), "{rows}#0"
    conn = store._connect().connection
    statements: list[str] = []
    conn.set_trace_callback(lambda sql: statements.append(sql.split(" ", 1)[0]))

    def call(cost: int = 1) -> list[str]:
        statements.clear()
        assert store.acquire([(key, spec)], cost) == ref.acquire(key, spec, cost, 0.0)
        return list(statements)

    assert call() == ["INSERT"]  # a key this process has not written: the UPSERT
    assert call() == ["UPDATE"]
    assert call(2) == ["UPDATE", "SELECT"]  # refused: the read tells why nothing was written
    other.reset([key])  # another process deletes the row (a reset; a sweep or a purge alike)
    ref.states.pop(key, None)
    assert call() == ["UPDATE", "SELECT", "INSERT"]
    clock.now += 10.0  # the row expires but stays: the UPDATE reads it as no state
    assert call() == ["UPDATE"]
    assert store.peek([(key, spec)]).remaining == 2
    other.close()
    store.close()


def test_the_keys_remembered_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "_ROWS_KEPT", 8)
    store = SQLiteStore(tmp_path / "bound.db", clock=ManualClock(1_700_000_000.0))
    spec = TokenBucket(rate_per_second=2.0, burst=3)
    for i in range(50):
        assert store.acquire([(f"{{k{i}}}#0", spec)]).allowed
        assert len(store._rows) <= 8
    assert "{k49}#0" in store._rows
    store.close()


@pytest.mark.parametrize("side", ["sync", "async"])
def test_the_sweep_runs_after_the_statement_of_the_call_that_makes_it_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    monkeypatch.setattr(sqlite_module, "_SWEEP_EVERY", 4)
    clock = ManualClock(1_700_000_000.0)
    store = SQLiteStore(tmp_path / "sweep.db", clock=clock)
    paths = Paths(store)
    spec = FixedWindow(limit=1, window_seconds=1.0)
    for i in range(3):
        assert store.acquire([(f"{{old{i}}}#0", spec)]).allowed
    clock.now += 3600.0
    bucket = [("{b}#0", TokenBucket(rate_per_second=100.0, burst=10))]

    async def twice() -> list[Decision]:
        return [await store.aacquire(bucket), await store.aacquire(bucket)]

    # The 4th row written makes the sweep due: the bucket call still takes its one statement.
    got = [store.acquire(bucket), store.acquire(bucket)] if side == "sync" else asyncio.run(twice())
    assert [d.remaining for d in got] == [9, 8]
    assert paths.transactions == 3  # the three windows only
    with sqlite3.connect(tmp_path / "sweep.db") as conn:
        keys = [k for (k,) in conn.execute(f"SELECT key FROM {STATE_TABLE}")]
    conn.close()
    assert keys == ["{b}#0"]
    assert store._written == 1
    store.close()


def test_a_failed_sweep_is_logged_and_the_call_keeps_its_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_module, "_SWEEP_EVERY", 2)
    store = SQLiteStore(tmp_path / "sweepfail.db", name="local")
    bucket = [("{b}#0", TokenBucket(rate_per_second=100.0, burst=10))]
    assert store.acquire(bucket).remaining == 9

    def failing(now: float) -> Any:
        raise sqlite3.OperationalError("disk I/O error")
        yield  # a generator, as _op_sweep

    monkeypatch.setattr(store, "_op_sweep", failing)
    with caplog.at_level("WARNING", logger="ratesync"):
        d = store.acquire(bucket)
    assert d.allowed and d.remaining == 8 and not d.degraded
    assert "sweeping expired rows failed" in caplog.text and "'local'" in caplog.text
    assert store.healthy and store._written == 0  # tried again a sweep's interval later, not on every call
    store.close()


# -- a call kept waiting for the write lock --------------------------------------------------------


def hold_the_write_lock(db: Path, seconds: float) -> tuple[threading.Timer, list[float], sqlite3.Connection]:
    """Another connection takes the write lock now and commits after ``seconds``; the commit time is recorded."""
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released: list[float] = []

    def commit() -> None:
        released.append(time.time())
        holder.execute("COMMIT")

    timer = threading.Timer(seconds, commit)
    timer.start()
    return timer, released, holder


def decided_at(db: Path, key: str, decision: Decision) -> float:
    """The store clock reading a bucket decision was made with: its new TAT minus ``reset_after``."""
    with sqlite3.connect(db) as conn:
        (tat,) = conn.execute(f"SELECT num FROM {STATE_TABLE} WHERE key = ?", (key,)).fetchone()
    conn.close()
    return float(tat) - decision.reset_after


@pytest.mark.realtime
@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("side", ["sync", "async"])
async def test_a_call_kept_waiting_is_decided_with_the_clock_after_the_wait(
    tmp_path: Path, side: str, existing: bool
) -> None:
    db = tmp_path / "wait.db"
    store = SQLiteStore(db)  # time.time: SQLite's clock can tell how old a reading is
    key, spec = "{wait}#0", TokenBucket(rate_per_second=1.0, burst=5)
    store.initialize()
    await store.ainitialize()
    if existing:
        assert store.acquire([(key, spec)]).allowed  # the row exists: the DO UPDATE branch
    paths = Paths(store)
    timer, released, holder = hold_the_write_lock(db, 0.2)
    try:
        started = time.time()
        d = await store.aacquire([(key, spec)]) if side == "async" else store.acquire([(key, spec)])
    finally:
        timer.join()
        holder.close()
    await store.aclose()
    store.close()
    assert d.allowed and not d.degraded
    # The statement found its reading of the clock 0.2 s old once it had the lock, wrote nothing,
    # and the transaction decided with a reading taken after the other writer let go.
    assert paths.transactions == 1
    assert decided_at(db, key, d) > released[0] - 1e-3
    assert decided_at(db, key, d) > started + 0.1


def test_a_row_left_by_a_stale_first_call_means_no_state(tmp_path: Path) -> None:
    # What the statement leaves for a new key when the reading was too old: kind 1, no TAT, expired.
    db = tmp_path / "null.db"
    store = SQLiteStore(db)
    store.initialize()
    now = time.time()
    conn = sqlite3.connect(db, isolation_level=None)
    tats: list[float | None] = []
    conn.create_function("ratesync_tat", 1, lambda x: tats.append(x) or x)
    rows = conn.execute(sqlite_module.SQL_GCRA, ("{n}#0", now - 1.0, 0.5, 2.5, 1e-9, 0.0)).fetchall()
    assert rows == [(1,)] and tats == [None]  # a row written, without a TAT
    assert conn.execute(f"SELECT kind, num, expires_at FROM {STATE_TABLE}").fetchall() == [(1, None, now - 1.0)]
    conn.close()
    spec = TokenBucket(rate_per_second=2.0, burst=5)
    assert store.peek([("{n}#0", spec)]).remaining == 5
    d = store.acquire([("{n}#0", spec)])
    assert d.allowed and d.remaining == 4
    store.close()


class _FlakyCursor:
    """Answers ``execute`` with the errors given, in order, then with ``rows``."""

    def __init__(self, errors: list[Exception], rows: list[Any]) -> None:
        self.errors = errors
        self.rows = rows
        self.calls = 0

    def execute(self, sql: str, params: Any) -> _FlakyCursor:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self

    def fetchall(self) -> list[Any]:
        return self.rows


def test_busy_statements_are_retried_within_the_busy_timeout(tmp_path: Any) -> None:
    import sqlite3
    import time

    store = SQLiteStore(str(tmp_path / "busy.db"), busy_timeout=0.5)
    busy = sqlite3.OperationalError("database is locked")
    # Busy once more, then answered: the cursor that ran it comes back.
    cursor = _FlakyCursor([sqlite3.OperationalError("database is locked")], [(1.0,)])
    assert store._retry_busy(cursor, "x", (), busy, time.monotonic()) is cursor  # type: ignore[arg-type]
    assert cursor.calls == 2
    # Another error during the retries is raised at once, not retried.
    other = sqlite3.OperationalError("no such table: x")
    cursor = _FlakyCursor([other], [])
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store._retry_busy(cursor, "x", (), busy, time.monotonic())  # type: ignore[arg-type]
    assert cursor.calls == 1
    # Busy past the timeout: the last busy error is raised.
    started = time.monotonic() - 1.0
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store._retry_busy(_FlakyCursor([], []), "x", (), busy, started)  # type: ignore[arg-type]
    store.close()
