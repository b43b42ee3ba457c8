"""The SQLite store: limits shared by the processes of one machine, kept across restarts, no server.

Every operation is one short transaction on a database file: ``BEGIN IMMEDIATE`` (the write lock,
so two processes never both read the old state and one update is lost), read the state, run the
pure reference function of ``ratesync._algorithms`` on it, write the new state, ``COMMIT``. The
commonest, one token bucket, is one UPSERT instead (one UPDATE for a key whose row this process
has written), which decides as the reference does (see ``SQL_GCRA``) and leaves the call to the
transaction when it cannot. The file is in WAL mode
(readers never block the writer) with ``synchronous = NORMAL`` (a commit survives a crash of the
process; a power loss may lose the last few milliseconds of charges, which a rate limiter can
afford) and a generous busy timeout, so processes queue for the write lock instead of failing with
``database is locked``.

The sync side needs only the standard library (``sqlite3``); the async side runs the very same
operations through ``aiosqlite`` (imported on first async use). Both sides of one store share the
file, so they share the limits. Time is ``time.time()`` of the machine: all the processes of one
machine read the same clock. States hold absolute times; every decision runs the reference on
times relative to the call's reading of the clock (``now = 0``, ``base`` the reading: see the note
on relative time in ``ratesync._algorithms``), as the Redis and PostgreSQL stores do, so that an
epoch time's last bit (2.4e-7 s) never costs a token.

Operations are written once, as generators that yield SQL statements and receive their rows
(``_Op``); a sync driver runs them on ``sqlite3`` and an async driver on ``aiosqlite``, which is
what keeps the two sides' behaviour identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from math import floor as _floor
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

from .._algorithms import (
    EPSILON,
    Decision,
    FixedWindow,
    LeaseDecision,
    Observation,
    Quota,
    QuotaState,
    SlidingWindow,
    Spec,
    TokenBucket,
    decide,
    lease_acquire,
    peek,
    quota_observe,
    shift_state,
    state_ttl,
    token_bucket,
)
from .._exceptions import ConfigurationError, MissingDependencyError, StoreError
from ._base import _OPEN, OnError, Slot, Store, redact_url

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["SQLiteStore", "parse_sqlite_url"]

logger = logging.getLogger("ratesync")

T = TypeVar("T")

#: One statement of an operation: SQL, parameters, and how to run it (one of the three below).
_Request: TypeAlias = tuple[str, Any, int]
#: A query: its rows are sent back. A write: nothing is sent back (``[]``). ``executemany``.
_QUERY, _WRITE, _MANY = 0, 1, 2
_NO_ROWS: list[Any] = []  # what a write is sent back (never modified)
#: An operation: yields statements, receives each one's rows, returns its result.
_Op: TypeAlias = Generator[_Request, list[Any], T]

MEMORY = ":memory:"

# -- schema and statements (constants: sqlite3 caches prepared statements by their text) -------

STATE_TABLE = "ratesync_state"
LEASE_TABLE = "ratesync_leases"

SCHEMA = (
    # One row per limit key. ``kind`` says which algorithm wrote it (a key whose limit changed
    # kind starts afresh instead of feeding one algorithm another's state). The token bucket's
    # state, one float, lives in the typed column ``num`` (no JSON on the hottest path); the other
    # algorithms' states are JSON in ``data``. ``expires_at`` (store clock) is when the state
    # starts to mean the same as no state: rows past it are ignored and swept.
    f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} ("
    " key TEXT PRIMARY KEY NOT NULL,"
    " kind INTEGER NOT NULL,"
    " num REAL,"
    " data TEXT,"
    " expires_at REAL NOT NULL"
    ") WITHOUT ROWID",
    # One row per concurrency lease.
    f"CREATE TABLE IF NOT EXISTS {LEASE_TABLE} ("
    " key TEXT NOT NULL,"
    " lease_id TEXT NOT NULL,"
    " expires_at REAL NOT NULL,"
    " PRIMARY KEY (key, lease_id)"
    ") WITHOUT ROWID",
)

SQL_TABLES = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('{STATE_TABLE}', '{LEASE_TABLE}')"
SQL_GET = f"SELECT kind, num, data, expires_at FROM {STATE_TABLE} WHERE key = ?"
# The row was read under the write lock, so whether it exists is known: UPDATE or INSERT, not an
# INSERT OR REPLACE (a delete and an insert in the B-tree: measured twice the cost). Same parameters.
SQL_UPDATE = f"UPDATE {STATE_TABLE} SET kind = ?, num = ?, data = ?, expires_at = ? WHERE key = ?"
SQL_INSERT = f"INSERT INTO {STATE_TABLE} (kind, num, data, expires_at, key) VALUES (?, ?, ?, ?, ?)"
SQL_DELETE = f"DELETE FROM {STATE_TABLE} WHERE key = ?"
SQL_LEASES = f"SELECT lease_id, expires_at FROM {LEASE_TABLE} WHERE key = ?"
SQL_LEASE_PUT = f"INSERT OR REPLACE INTO {LEASE_TABLE} (key, lease_id, expires_at) VALUES (?, ?, ?)"
SQL_LEASE_DELETE = f"DELETE FROM {LEASE_TABLE} WHERE key = ? AND lease_id = ?"

#: The sweep walks each table in key order, ``_SWEEP_ROWS`` rows every ``_SWEEP_EVERY`` rows
#: written, deleting what has expired. Visiting more rows than are written keeps the table within
#: a small multiple of its live keys whatever the churn of keys, at a cost bounded per sweep (a
#: range scan of the primary key: no index on ``expires_at`` to update on every write).
_SWEEP_EVERY = 128
_SWEEP_ROWS = 512
SQL_SWEEP_END = {
    table: f"SELECT key FROM {table} WHERE key > ? ORDER BY key LIMIT 1 OFFSET {_SWEEP_ROWS - 1}"
    for table in (STATE_TABLE, LEASE_TABLE)
}
SQL_SWEEP_RANGE = {
    table: f"DELETE FROM {table} WHERE key > ? AND key <= ? AND expires_at <= ?" for table in (STATE_TABLE, LEASE_TABLE)
}
SQL_SWEEP_TAIL = {
    table: f"DELETE FROM {table} WHERE key > ? AND expires_at <= ?" for table in (STATE_TABLE, LEASE_TABLE)
}


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


_GET_MANY: dict[int, str] = {}
_DELETE_MANY: dict[int, str] = {}


def _sql_get_many(n: int) -> str:
    sql = _GET_MANY.get(n)
    if sql is None:
        sql = f"SELECT key, kind, num, data, expires_at FROM {STATE_TABLE} WHERE key IN ({_placeholders(n)})"
        if n <= 64:
            _GET_MANY[n] = sql
    return sql


def _sql_delete_many(table: str, n: int) -> str:
    sql = _DELETE_MANY.get(n) if table == STATE_TABLE else None
    if sql is None:
        sql = f"DELETE FROM {table} WHERE key IN ({_placeholders(n)})"
        if table == STATE_TABLE and n <= 64:
            _DELETE_MANY[n] = sql
    return sql


# -- state encoding -----------------------------------------------------------------------------

_TOKEN_BUCKET, _SLIDING_WINDOW, _FIXED_WINDOW, _QUOTA = 1, 2, 3, 4
_KINDS: dict[type[Any], int] = {
    TokenBucket: _TOKEN_BUCKET,
    SlidingWindow: _SLIDING_WINDOW,
    FixedWindow: _FIXED_WINDOW,
    Quota: _QUOTA,
}
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads

# -- the token bucket in one statement ------------------------------------------------------------
#
# One limit of the token bucket kind, admitted, is one autocommit UPSERT instead of a transaction
# of four statements. A write statement takes the write lock before it reads the row (its implicit
# transaction begins like ``BEGIN IMMEDIATE``), so it is as atomic across processes as the
# transaction, and the lock is held for one statement run in C, with no Python between statements.
# Python runs while it is held: the TAT comes back through ``ratesync_tat`` (``_TatOut``), and on
# the async side a ``RETURNING`` row says that a row was written (Python takes it before the step
# that commits). In a process whose other threads keep the GIL busy, those moments can wait for
# the GIL with the lock held. The SQL runs the arithmetic of ``_algorithms.gcra`` with the
# same IEEE operations in the same order (SQLite computes in C doubles), so the TAT it returns is
# the reference's bit for bit. Like the transaction, it runs the reference on times relative to the
# reading ``now``: the stored TAT is read as ``num - now``, the reference runs at time 0, and the
# new relative TAT is what ``ratesync_tat`` hands back, while ``num`` gets it plus ``now``.
# Parameters:
#   ?1 key, ?2 now, ?3 cost * interval, ?4 span (burst * interval), ?5 max_wait + EPSILON,
#   ?6 how far SQLite's clock may be past ?2 when the lock is held (``_FRESH``).
# ``_TAT`` is ``max(state - now, 0)``, where a row that is expired or of another kind is no state
# (``_decode``); the right-hand sides and the WHERE of DO UPDATE all read the row as it was. A new
# key inserts unconditionally: the caller checks first that the call is admissible with no state
# (``(0 + step) - span <= limit``; an empty bucket admits whatever a fuller one does).
#
# ``now`` is read in Python before the statement waits for the lock; the transaction reads it once
# the lock is held. So that a call kept waiting by other processes (SQLite's busy handler sleeps
# 1 to 100 ms at a time) is not decided with an old reading against charges made after it, the
# statement only writes when SQLite's own clock, read once the lock is held, is not past ``now``
# (?6 is 0; ``math.inf`` turns the test off). Otherwise the DO UPDATE does nothing and a new key
# gets a row without state (NULL ``num``, expired), so no row or a NULL comes back and the call is
# decided in the transaction. SQLite's clock is ``gettimeofday`` truncated to the millisecond (the
# clock of ``time.time``): a reading it is not past was taken less than a millisecond before the
# lock was held. ``julianday`` is that millisecond count over 86,400,000, so rounding recovers it
# exactly (210,866,760,000,000 ms is the Unix epoch: Julian day 2,440,587.5).
_FRESH = "(round(julianday('now') * 86400000.0) - 210866760000000.0) / 1000.0 - ?2 <= ?6"
_TAT = f"(CASE WHEN kind = {_TOKEN_BUCKET} AND expires_at > ?2 AND num >= ?2 THEN num - ?2 ELSE 0.0 END)"


def _sql_gcra(out: str, returning: str) -> str:
    """The statement, the relative TAT it computes passed through the SQL function ``out``."""
    return (
        f"INSERT INTO {STATE_TABLE} (key, kind, num, data, expires_at)"
        f" VALUES (?1, {_TOKEN_BUCKET}, {out}(CASE WHEN {_FRESH} THEN 0.0 + ?3 END) + ?2, NULL,"
        f" CASE WHEN {_FRESH} THEN ?2 + max(0.0, 0.0 + ?3) ELSE ?2 END)"
        f" ON CONFLICT (key) DO UPDATE SET kind = {_TOKEN_BUCKET}, num = {out}({_TAT} + ?3) + ?2, data = NULL,"
        f" expires_at = ?2 + max(0.0, {_TAT} + ?3)"
        f" WHERE {_TAT} + ?3 - ?4 <= ?5 AND {_FRESH}"
        f"{returning}"
    )


#: The SQL function that hands the relative TAT to Python (see ``_TatOut``).
_TAT_OUT = "ratesync_tat"
#: The async side's statement: a row comes back when one was written (one aiosqlite round trip;
#: the TAT itself through the async connection's ``ratesync_tat``, the row holds only absolute times).
SQL_GCRA = _sql_gcra(_TAT_OUT, " RETURNING 1")
#: The sync side's statement: the same, minus RETURNING.
SQL_GCRA_SYNC = _sql_gcra(_TAT_OUT, "")
#: The sync side's statement for a key whose row this process has written (``_rows``): the DO
#: UPDATE branch alone, as a plain UPDATE. The UPSERT builds the row to insert (with a call of
#: ``ratesync_tat`` and two more tests of the clock) before it finds the conflict; this skips
#: that: 0.8 us of a 13 us statement. No row updated (refused, a stale reading, or the row was
#: swept, reset or never there) leads to the same read as the UPSERT's no-write, which tells which.
SQL_GCRA_UPDATE = (
    f"UPDATE {STATE_TABLE} SET kind = {_TOKEN_BUCKET}, num = {_TAT_OUT}({_TAT} + ?3) + ?2, data = NULL,"
    f" expires_at = ?2 + max(0.0, {_TAT} + ?3)"
    f" WHERE key = ?1 AND {_TAT} + ?3 - ?4 <= ?5 AND {_FRESH}"
)
#: How many keys ``_rows`` remembers before it starts again (a bound, not a cache policy: a key
#: forgotten costs one UPSERT, after which it is remembered again).
_ROWS_KEPT = 4096
#: A refused call is answered from the row as one read finds it, provided the reading of the clock
#: is as fresh at the read (the same test and parameters as ``SQL_GCRA``; one row even for no key).
SQL_GET_FRESH = (
    f"SELECT s.kind, s.num, s.data, s.expires_at, {_FRESH} FROM (SELECT 1) LEFT JOIN {STATE_TABLE} AS s ON s.key = ?1"
)
#: How far past a call's reading of the clock SQLite's may be when its statement holds the lock.
_FRESH_FOR = 0.0
#: RETURNING came with SQLite 3.35.0, with defects fixed in the patch releases that followed: older
#: libraries decide token buckets in the transaction, like every other limit.
_ONE_STATEMENT = sqlite3.sqlite_version_info >= (3, 35, 5)


def _gcra_admitted(new_tat: float, interval: float, span: float, burst: int) -> Decision:
    """The decision ``_algorithms.token_bucket`` gives an admitted call that set the relative TAT to ``new_tat``."""
    # The reference at now = 0: ``x - 0.0`` is ``x``, so the subtractions of ``now`` are left out.
    # ``_floor`` and ``max`` are written out: this runs on every admitted call of the hottest path.
    wait = new_tat - span
    if wait <= EPSILON:
        left = _floor((span - new_tat) / interval + EPSILON)
        return Decision(True, 0.0, float(left) if left > 0 else 0.0, new_tat, burst)
    return Decision(True, wait, 0.0, new_tat, burst)


def _gcra_refused(spec: TokenBucket, row: Sequence[Any], now: float, cost: int, max_wait: float) -> Decision | None:
    """The refusal of the reference on a row of ``SQL_GET_FRESH``; None if the reading was stale or it admits."""
    if not row[4]:
        return None
    state = _decode(spec, row if row[0] is not None else None, now)
    decision, _ = token_bucket(state, 0.0, cost, spec, max_wait, now)
    return None if decision.allowed else decision


def _decode(spec: Spec, row: Sequence[Any] | None, now: float) -> Any:
    """The state a row holds for ``spec``, relative to ``now``; None when absent, expired or of another kind.

    ``row`` is ``(kind, num, data, expires_at)``; its times are absolute.
    """
    if row is None or row[3] <= now:
        return None
    kind = _KINDS[type(spec)]
    if row[0] != kind:
        return None
    if kind == _TOKEN_BUCKET:
        return row[1] - now
    data = _loads(row[2])  # a list: of [time, cost] pairs, [start, count], or a QuotaState's fields
    return shift_state(QuotaState(*data) if kind == _QUOTA else data, spec, -now)


def _encode(spec: Spec, state: Any, now: float) -> tuple[int, float | None, str | None, float]:
    """``(kind, num, data, expires_at)`` for a state relative to ``now``, written in absolute times.

    Floats keep every bit (JSON writes ``repr(float)``).
    """
    kind = _KINDS[type(spec)]
    expires_at = now + state_ttl(state, 0.0, spec)
    if kind == _TOKEN_BUCKET:
        return kind, float(state) + now, None, expires_at
    return kind, None, _dumps(list(shift_state(state, spec, now))), expires_at


# -- configuration ------------------------------------------------------------------------------


def parse_sqlite_url(url: str) -> str:
    """The database path of a ``sqlite://`` URL (SQLAlchemy's spelling).

    ``sqlite:///relative.db`` is relative to the working directory, ``sqlite:////abs/path.db`` is
    absolute, ``sqlite://`` and ``sqlite:///:memory:`` are an in-memory database.
    """
    shown = redact_url(url)  # errors name the URL, never a password someone put in it
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"malformed sqlite URL {shown!r}: {exc}", key="url") from None
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"expected a sqlite:/// URL, got {shown!r}", key="url")
    if parts.netloc:
        raise ConfigurationError(
            f"a sqlite URL has no host: use sqlite:///relative.db or sqlite:////absolute/path.db, not {shown!r}",
            key="url",
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(f"query parameters are not supported in a sqlite URL: {shown!r}", key="url")
    path = parts.path
    if path in ("", "/"):
        return MEMORY
    # ``sqlite:///x`` has the path ``/x``: the first slash separates it from the (empty) host.
    return path[1:]


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


#: Connections opened before a ``fork()``, abandoned in the child: they must never be used or
#: closed there (closing one could checkpoint or delete the parent's WAL file), and being kept
#: here they are never garbage-collected either (which would close them).
_ABANDONED: list[Any] = []
#: Every live store, for the ``fork()`` hook.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _TatOut:
    """The SQL function ``ratesync_tat(x)``: returns ``x`` and keeps it, for the statement's caller to read.

    ``SQL_GCRA_SYNC`` passes the TAT it computes through it instead of ``RETURNING`` it: ``RETURNING``
    makes SQLite buffer the row in an ephemeral table and commit only at a second step, after
    Python has taken the row (measured: 1.3 us of a 9.5 us statement). And the TAT it hands back
    is relative to the call's reading of the clock, which the row (absolute times) cannot give back
    exactly. A connection runs one statement at a time (the sync one under the store's ``_lock``,
    an async one under its side's lock), so one slot per connection suffices.
    """

    __slots__ = ("tat",)

    def __init__(self) -> None:
        self.tat: float | None = None

    def __call__(self, value: float | None) -> float | None:
        self.tat = value
        return value


@dataclass(eq=False)
class _AsyncSide:
    """The async connection of one store in one event loop, and the lock ordering its users."""

    lock: asyncio.Lock
    conn: aiosqlite.Connection | None = None
    #: ``ratesync_tat`` of this side's connection (re-registered on each connection opened).
    tat_out: _TatOut = field(default_factory=_TatOut)


class SQLiteStore(Store):
    """Limiter state in an SQLite database file, shared by the processes of one machine.

    ``path`` is the database file (created with its tables on first use), or ``":memory:"``: a
    private database of this store and this process, for tests (it lives in the sync connection:
    the async side uses that one too, and :meth:`close` forgets it). ``busy_timeout`` is how long one
    call waits for another process's write to finish before it counts as a failure of the store
    (and the ``on_error`` policy applies). ``clock`` is the store clock in seconds, ``time.time``
    unless a test injects its own: state is written in its terms, so every process using one file
    must use the same clock.

    Threads of one process share one connection, taken in turn under a lock (see ``_run``); each
    event loop gets its own ``aiosqlite`` connection. After ``fork()`` the child opens its own.
    """

    engine = "sqlite"
    OPTIONS = frozenset({"path", "url", "busy_timeout"})

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        name: str = "",
        on_error: OnError = "closed",
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(name=name, on_error=on_error, retry_interval=retry_interval)
        text = os.fspath(path)
        if not text:
            raise ConfigurationError("the sqlite path must not be empty (use ':memory:' for a private database)")
        self.path = text if text == MEMORY else os.path.expanduser(text)
        if busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be zero or more seconds, not {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self._clock = clock
        # SQLite's clock is the clock of ``time.time``: it can tell how old a reading of that one is,
        # not of a clock a test injects (whose readings are then taken as they are).
        self._fresh_for = _FRESH_FOR if clock is time.time else math.inf
        self._memory = self.path == MEMORY
        self._pid = os.getpid()
        # The sync side: one connection for every thread of this process, used under ``_lock``.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None  # reused by every statement: one object less per call
        self._tat_out = _TatOut()
        # Keys whose row this process's sync side has written: their calls try ``SQL_GCRA_UPDATE``
        # first. Rows disappear only when swept (expired), reset or purged, all of which the
        # UPDATE's no-write and the read after it notice.
        self._rows: set[str] = set()
        # The async side: one aiosqlite connection per event loop (an asyncio lock belongs to one loop,
        # and one connection cannot interleave two loops' transactions); dropped with its loop.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncSide] = weakref.WeakKeyDictionary()
        self._async_lock = threading.Lock()
        # Rows written since the last sweep, and where each table's sweep resumes.
        self._written = 0
        self._sweep_from = {STATE_TABLE: "", LEASE_TABLE: ""}
        _STORES.add(self)

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> SQLiteStore:
        """Build the store from a ``[stores.<name>]`` table of rate-sync.toml."""
        from .._convert import as_float, as_str

        if "path" in options and "url" in options:
            raise ConfigurationError("give either path or url, not both", key="url")
        if "path" in options:
            path = as_str(options["path"], "path")
            if not path:
                raise ConfigurationError("must not be empty (use ':memory:' for a private database)", key="path")
        elif "url" in options:
            path = parse_sqlite_url(as_str(options["url"], "url"))
        else:
            raise ConfigurationError(
                'the sqlite engine needs a database file: path = "/var/lib/myapp/rate-sync.db"', key="path"
            )
        kwargs: dict[str, Any] = {}
        if "busy_timeout" in options:
            kwargs["busy_timeout"] = as_float(options["busy_timeout"], "busy_timeout", allow_zero=True)
        if "retry_interval" in options:
            kwargs["retry_interval"] = as_float(options["retry_interval"], "retry_interval")
        return cls(path, name=name, on_error=options.get("on_error", "closed"), **kwargs)

    def describe(self) -> str:
        return f"sqlite {self.path}"

    def now(self) -> float:
        """The store clock (seconds)."""
        return self._clock()

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        # OperationalError: disk I/O error, disk full, unable to open the file, busy past the timeout.
        return (*super()._backend_errors(), sqlite3.OperationalError)

    # -- lifecycle ---------------------------------------------------------------------------

    def initialize(self) -> None:
        """Open the database and create the tables now (otherwise done on first use)."""
        self._run(_noop(), write=False)

    async def ainitialize(self) -> None:
        await self._arun(_noop(), write=False)

    def close(self) -> None:
        """Close the sync connection (the next call opens a new one). Async ones close in :meth:`aclose`."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._lock:
            conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Close this store's async connections (the one of the running loop, and any left by closed loops)."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        loop = asyncio.get_running_loop()
        with self._async_lock:
            sides = list(self._async.items())
            self._async.clear()
        for side_loop, side in sides:
            conn, side.conn = side.conn, None
            if conn is None:
                continue
            if side_loop is loop:
                async with side.lock:
                    await conn.close()
            else:
                # Another loop's connection: stop its thread, closing the connection after the work
                # already queued (that loop, if still running, opens a new one on its next call).
                conn.stop()

    # -- the operations (shared by the sync and async sides) --------------------------------

    def _op_acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> _Op[Decision]:
        now = self._clock()
        if len(slots) == 1:
            key, spec = slots[0]
            rows = yield (SQL_GET, (key,), _QUERY)
            decision, write = _decide_one(key, spec, rows, now, cost, max_wait)
            if decision.allowed:
                if write is not None:
                    yield write
                self._written += 1
                if self._written >= _SWEEP_EVERY:
                    yield from self._op_sweep(now)
            return decision
        keys = [key for key, _ in slots]
        rows = yield (_sql_get_many(len(keys)), keys, _QUERY)
        found = {row[0]: row[1:] for row in rows}
        states = [_decode(spec, found.get(key), now) for key, spec in slots]
        decision, new_states = decide(states, 0.0, cost, [spec for _, spec in slots], max_wait, now)
        if decision.allowed:
            updates: list[tuple[Any, ...]] = []
            inserts: list[tuple[Any, ...]] = []
            deletes: list[str] = []
            for (key, spec), state in zip(slots, new_states, strict=True):
                if state is not None:
                    params = (*_encode(spec, state, now), key)
                    (updates if key in found else inserts).append(params)
                elif key in found:
                    deletes.append(key)
            if updates:
                yield (SQL_UPDATE, updates, _MANY)
            if inserts:
                yield (SQL_INSERT, inserts, _MANY)
            if deletes:
                yield (_sql_delete_many(STATE_TABLE, len(deletes)), deletes, _WRITE)
            self._written += len(slots)
            if self._written >= _SWEEP_EVERY:
                yield from self._op_sweep(now)
        return decision

    def _op_peek(self, slots: Sequence[Slot]) -> _Op[Decision]:
        now = self._clock()
        if len(slots) == 1:
            key, spec = slots[0]
            rows = yield (SQL_GET, (key,), _QUERY)
            return peek((_decode(spec, rows[0] if rows else None, now),), 0.0, (spec,), now)
        keys = [key for key, _ in slots]
        rows = yield (_sql_get_many(len(keys)), keys, _QUERY)
        found = {row[0]: row[1:] for row in rows}
        return peek([_decode(spec, found.get(key), now) for key, spec in slots], 0.0, [s for _, s in slots], now)

    def _op_observe(self, key: str, spec: Quota, obs: Observation) -> _Op[None]:
        now = self._clock()
        rows = yield (SQL_GET, (key,), _QUERY)
        new_state = quota_observe(_decode(spec, rows[0] if rows else None, now), 0.0, obs, spec)
        if new_state is not None:
            params = (*_encode(spec, new_state, now), key)
            yield (SQL_UPDATE if rows else SQL_INSERT, params, _WRITE)
            self._written += 1
            if self._written >= _SWEEP_EVERY:
                yield from self._op_sweep(now)

    def _op_lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> _Op[LeaseDecision]:
        now = self._clock()
        rows = yield (SQL_LEASES, (key,), _QUERY)
        leases = dict(rows)
        decision, live = lease_acquire(leases, now, limit, lease_seconds, lease_id)
        # Write the difference: leases the reference dropped (expired ones), and new or renewed ones.
        gone = [(key, lid) for lid in leases if lid not in live]
        if gone:
            yield (SQL_LEASE_DELETE, gone, _MANY)
        changed = [(key, lid, exp) for lid, exp in live.items() if leases.get(lid) != exp]
        if changed:
            yield (SQL_LEASE_PUT, changed, _MANY)
            self._written += len(changed)
            if self._written >= _SWEEP_EVERY:
                yield from self._op_sweep(now)
        return decision

    def _op_lease_release(self, key: str, lease_id: str) -> _Op[None]:
        yield (SQL_LEASE_DELETE, (key, lease_id), _WRITE)

    def _op_reset(self, keys: Sequence[str]) -> _Op[None]:
        keys = list(keys)
        if keys:
            yield (_sql_delete_many(STATE_TABLE, len(keys)), keys, _WRITE)
            yield (_sql_delete_many(LEASE_TABLE, len(keys)), keys, _WRITE)

    def _op_sweep(self, now: float) -> _Op[None]:
        """Delete the expired among the next rows of each table (every ``_SWEEP_EVERY`` rows written)."""
        self._written = 0
        for table in (STATE_TABLE, LEASE_TABLE):
            start = self._sweep_from[table]
            rows = yield (SQL_SWEEP_END[table], (start,), _QUERY)
            if rows:
                end = rows[0][0]
                yield (SQL_SWEEP_RANGE[table], (start, end, now), _WRITE)
                self._sweep_from[table] = end
            else:
                yield (SQL_SWEEP_TAIL[table], (start, now), _WRITE)
                self._sweep_from[table] = ""

    def _op_purge(self) -> _Op[int]:
        now = self._clock()
        deleted = 0
        for table in (STATE_TABLE, LEASE_TABLE):
            yield (f"DELETE FROM {table} WHERE expires_at <= ?", (now,), _WRITE)
            rows = yield ("SELECT changes()", (), _QUERY)
            deleted += int(rows[0][0])
        return deleted

    def _op_count(self) -> _Op[int]:
        now = self._clock()
        rows = yield (f"SELECT count(*) FROM {STATE_TABLE} WHERE expires_at > ?", (now,), _QUERY)
        return int(rows[0][0])

    # -- the backend protocol ------------------------------------------------------------------

    def acquire(self, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
        # The hot path, one token bucket while the file answers, calls the statement without the
        # policy wrapper's closures (a tenth of the call's time); what it does on a failure is the
        # wrapper's (``Store._guard``), and everything else goes through the wrapper.
        down = self._down  # a local: mypy would narrow the attribute and take its later test for dead code
        if len(slots) == 1 and _ONE_STATEMENT and not down:
            key, spec = slots[0]
            if type(spec) is TokenBucket:
                try:
                    decision = self._acquire_gcra(key, spec, cost, max_wait)
                except self._backend_errors() as exc:
                    self._failed(exc)
                    return self._fallback_answer(exc, lambda f: f.acquire(slots, cost, max_wait), _OPEN)
                if decision is None:
                    return self._guard(
                        lambda: self._acquire_one(slots[0], cost, max_wait),
                        lambda f: f.acquire(slots, cost, max_wait),
                        _OPEN,
                    )
                if self._down:  # another thread saw a failure meanwhile
                    self._recovered()
                return decision
        return super().acquire(slots, cost, max_wait)

    def _acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        if len(slots) == 1:
            key, spec = slots[0]
            if _ONE_STATEMENT and type(spec) is TokenBucket:
                decision = self._acquire_gcra(key, spec, cost, max_wait)
                if decision is not None:
                    return decision
            return self._acquire_one(slots[0], cost, max_wait)
        return self._run(self._op_acquire(slots, cost, max_wait), write=True)

    def _acquire_gcra(self, key: str, spec: TokenBucket, cost: int, max_wait: float) -> Decision | None:
        """The hottest path, one token bucket on the sync side: one UPSERT (``SQL_GCRA``), no transaction.

        None when the call must be decided in the transaction instead: the clock reading was not
        fresh any more when the lock was held, or a refusal read from the row does not hold (the
        row changed between the statement and the read). A sweep that is due runs after the
        statement (``_sweep_after``).
        """
        interval = 1.0 / spec.rate_per_second
        span = spec.burst * interval
        step = cost * interval
        limit = max_wait + EPSILON
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            try:
                cursor = self._cursor or self._connect()
                now = self._clock()
                params = (key, now, step, span, limit, self._fresh_for)
                if step - span <= limit:  # else refused whatever the state (0 + step - span - 0)
                    rows_known = self._rows
                    sql = SQL_GCRA_UPDATE if key in rows_known else SQL_GCRA_SYNC
                    try:
                        written = cursor.execute(sql, params).rowcount
                    except sqlite3.OperationalError as exc:
                        # The deadline of the retries counts from here: reading the clock before
                        # every statement would cost the hot path more than the rare retry needs.
                        started = time.monotonic()
                        written = self._retry_busy(cursor, sql, params, exc, started).rowcount
                    if written != 1 and sql is SQL_GCRA_UPDATE:
                        row = cursor.execute(SQL_GET_FRESH, params).fetchone()
                        if row[0] is not None:  # refused, or a stale reading: as after the UPSERT
                            return _gcra_refused(spec, row, now, cost, max_wait)
                        rows_known.discard(key)  # swept, reset or purged meanwhile: insert it
                        sql = SQL_GCRA_SYNC
                        try:
                            written = cursor.execute(sql, params).rowcount
                        except sqlite3.OperationalError as exc:
                            written = self._retry_busy(cursor, sql, params, exc, time.monotonic()).rowcount
                    if written == 1:
                        # A row was written, so this statement computed it through ``ratesync_tat``
                        # (the UPSERT: the INSERT's values always, then the DO UPDATE's if there was
                        # a conflict).
                        new_tat = self._tat_out.tat
                        if new_tat is None:
                            return None  # a new key, and a clock reading too old: nothing written
                        self._written += 1
                        if sql is not SQL_GCRA_UPDATE:
                            if len(rows_known) >= _ROWS_KEPT:
                                rows_known.clear()
                            rows_known.add(key)
                        decision = _gcra_admitted(new_tat, interval, span, spec.burst)
                        if self._written >= _SWEEP_EVERY:
                            self._sweep_after(cursor, now)
                        return decision
                rows = cursor.execute(SQL_GET_FRESH, params).fetchall()
            except BaseException as exc:
                translated = self._sync_error(exc, write=True)
                if translated is not None:
                    raise translated from exc
                raise
        return _gcra_refused(spec, rows[0], now, cost, max_wait)

    def _sweep_after(self, cursor: sqlite3.Cursor, now: float) -> None:
        """The sweep that is due, after a call's own statement has committed (under ``_lock``).

        Its statements commit one by one: each deletes only rows expired at ``now`` as it finds them
        under the write lock, so a row another process has just renewed is never deleted. The call
        is decided and charged already, so a failure here is logged, not raised: the next sweep
        visits the same rows, and a file that has failed fails the next call, which the policy handles.
        """
        self._written = 0  # also after a failure: the next try is a sweep's interval later
        try:
            _drive(cursor, self._op_sweep(now))
        except sqlite3.Error as exc:
            logger.warning("rate-sync store %r: sweeping expired rows failed (%s); retried later", self.name, exc)

    async def _asweep_after(self, conn: aiosqlite.Connection, now: float) -> None:
        """The async twin of :meth:`_sweep_after` (under the side's lock)."""
        self._written = 0
        try:
            await _adrive(conn, self._op_sweep(now))
        except sqlite3.Error as exc:
            logger.warning("rate-sync store %r: sweeping expired rows failed (%s); retried later", self.name, exc)

    def _retry_busy(
        self, cursor: sqlite3.Cursor, sql: str, params: Any, exc: sqlite3.OperationalError, started: float
    ) -> sqlite3.Cursor:
        """Run a write statement again after ``exc``: the busy cases SQLite does not wait for (see :meth:`_begin`)."""
        for pause in self._busy_pauses(started):
            if not _is_busy(exc):
                break
            time.sleep(pause)
            try:
                return cursor.execute(sql, params)
            except sqlite3.OperationalError as again:
                exc = again
        raise exc

    def _busy_pauses(self, started: float) -> Iterator[float]:
        """Pauses before each retry of a busy statement (sync and async alike): doubling, within the busy timeout."""
        deadline = started + self.busy_timeout
        delay = 0.001
        while (left := deadline - time.monotonic()) > 0:
            yield min(delay, left)
            delay = min(delay * 2, 0.05)

    def _acquire_one(self, slot: Slot, cost: int, max_wait: float) -> Decision:
        """The hot path, one limit on the sync side: the steps of ``_op_acquire`` and ``_run`` inline.

        The same statements and the same decision (``_decide_one``) without the generator's
        round trips, which are a measurable share of a call that otherwise runs at C speed.
        """
        key, spec = slot
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            try:
                cursor = self._cursor or self._connect()
                self._begin(cursor)
                now = self._clock()
                rows = cursor.execute(SQL_GET, (key,)).fetchall()
                decision, write = _decide_one(key, spec, rows, now, cost, max_wait)
                if decision.allowed:
                    if write is not None:
                        cursor.execute(write[0], write[1])
                    self._written += 1
                    if self._written >= _SWEEP_EVERY:
                        _drive(cursor, self._op_sweep(now))
                cursor.execute("COMMIT")
                return decision
            except BaseException as exc:
                translated = self._sync_error(exc, write=True)
                if translated is not None:
                    raise translated from exc
                raise

    async def _aacquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        if len(slots) == 1 and _ONE_STATEMENT:
            key, spec = slots[0]
            if type(spec) is TokenBucket:
                if self._memory:
                    return self._acquire(slots, cost, max_wait)  # the sync connection, inline (see ``_arun``)
                decision = await self._aacquire_gcra(key, spec, cost, max_wait)
                if decision is not None:
                    return decision
        return await self._arun(self._op_acquire(slots, cost, max_wait), write=True)

    async def _aacquire_gcra(self, key: str, spec: TokenBucket, cost: int, max_wait: float) -> Decision | None:
        """The async twin of :meth:`_acquire_gcra`: one round trip to aiosqlite's thread instead of four."""
        interval = 1.0 / spec.rate_per_second
        span = spec.burst * interval
        step = cost * interval
        limit = max_wait + EPSILON
        if self._pid != os.getpid():
            self._after_fork()
        side = self._async_side()
        # The lock still matters: a statement queued between another task's BEGIN and COMMIT on
        # this connection would run inside that transaction.
        async with side.lock:
            conn = side.conn
            try:
                if conn is None:
                    conn = side.conn = await self._aopen(side.tat_out)
                now = self._clock()
                params = (key, now, step, span, limit, self._fresh_for)
                if step - span <= limit:
                    started = time.monotonic()
                    try:
                        rows = list(await conn.execute_fetchall(SQL_GCRA, params))
                    except sqlite3.OperationalError as exc:
                        rows = await self._aretry_busy(conn, SQL_GCRA, params, exc, started)
                    if rows:  # a row was written: its TAT went through ``ratesync_tat`` (see the sync side)
                        new_tat = side.tat_out.tat
                        if new_tat is None:
                            return None
                        self._written += 1
                        decision = _gcra_admitted(new_tat, interval, span, spec.burst)
                        if self._written >= _SWEEP_EVERY:
                            await self._asweep_after(conn, now)
                        return decision
                rows = list(await conn.execute_fetchall(SQL_GET_FRESH, params))
            except BaseException as exc:
                # Nothing to roll back: the statement commits by itself or not at all.
                if conn is not None and _is_broken(exc):
                    side.conn = None
                    await _aclose_quietly(conn)
                if _needs_translation(exc):
                    raise self._translate(exc) from exc
                raise
        return _gcra_refused(spec, rows[0], now, cost, max_wait)

    async def _aretry_busy(
        self, conn: aiosqlite.Connection, sql: str, params: Any, exc: sqlite3.OperationalError, started: float
    ) -> list[Any]:
        for pause in self._busy_pauses(started):
            if not _is_busy(exc):
                break
            await asyncio.sleep(pause)
            try:
                return list(await conn.execute_fetchall(sql, params))
            except sqlite3.OperationalError as again:
                exc = again
        raise exc

    def _peek(self, slots: Sequence[Slot]) -> Decision:
        # One SELECT is one read transaction: a consistent snapshot of every key, no write lock.
        return self._run(self._op_peek(slots), write=False)

    async def _apeek(self, slots: Sequence[Slot]) -> Decision:
        return await self._arun(self._op_peek(slots), write=False)

    def _observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self._run(self._op_observe(key, spec, obs), write=True)

    async def _aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        await self._arun(self._op_observe(key, spec, obs), write=True)

    def _lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return self._run(self._op_lease_acquire(key, limit, lease_seconds, lease_id), write=True)

    async def _alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return await self._arun(self._op_lease_acquire(key, limit, lease_seconds, lease_id), write=True)

    def _lease_release(self, key: str, lease_id: str) -> None:
        # A single DELETE is atomic by itself (autocommit).
        self._run(self._op_lease_release(key, lease_id), write=False)

    async def _alease_release(self, key: str, lease_id: str) -> None:
        await self._arun(self._op_lease_release(key, lease_id), write=False)

    def _reset(self, keys: Sequence[str]) -> None:
        self._run(self._op_reset(keys), write=True)

    async def _areset(self, keys: Sequence[str]) -> None:
        await self._arun(self._op_reset(keys), write=True)

    # -- maintenance -------------------------------------------------------------------------

    def purge_expired(self) -> int:
        """Delete every expired state and lease now; returns how many rows went.

        Not needed for correctness (expired rows are ignored, and swept a few at a time as rows are
        written); useful before a backup or after a burst of one-off keys.
        """
        return self._run(self._op_purge(), write=True)

    def count_keys(self) -> int:
        """How many keys hold live (unexpired) limiter state."""
        return self._run(self._op_count(), write=False)

    # -- the sync driver -----------------------------------------------------------------------

    def _run(self, op: _Op[T], *, write: bool) -> T:
        """Run ``op`` on this process's connection; ``write`` wraps it in ``BEGIN IMMEDIATE ... COMMIT``.

        Threads share one connection under a lock rather than one connection each: writers are
        serialized by SQLite's write lock anyway, and a thread waiting on a Python lock is woken
        the moment it is released, where a connection waiting on SQLite's lock polls with sleeps
        of 1 to 100 ms (its busy handler). It also bounds the connections (and file descriptors)
        to one per process whatever the number of threads.
        """
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            try:
                cursor = self._cursor or self._connect()
                if write:
                    self._begin(cursor)
                result = _drive(cursor, op)
                if write:
                    cursor.execute("COMMIT")  # cached statement: cheaper than conn.commit()
                return result
            except BaseException as exc:
                translated = self._sync_error(exc, write=write)
                if translated is not None:
                    raise translated from exc
                raise

    def _connect(self) -> sqlite3.Cursor:
        """Open this process's connection (under ``_lock``); its cursor serves every statement."""
        conn = self._open()
        self._conn = conn
        cursor = self._cursor = conn.cursor()
        return cursor

    def _sync_error(self, exc: BaseException, *, write: bool) -> StoreError | None:
        """Clean up after a failed operation (under ``_lock``); the :class:`StoreError` to raise instead.

        Rolls back, drops a connection that may be broken, and translates the database errors the
        outage policy would not recognize (None: raise ``exc`` itself).
        """
        conn = self._conn
        if write and conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        self._sync_failed(exc)
        return self._translate(exc) if _needs_translation(exc) else None

    def _begin(self, conn: sqlite3.Connection | sqlite3.Cursor) -> None:
        # ``BEGIN IMMEDIATE`` takes the write lock before reading, so the state read is the state
        # overwritten. The busy timeout makes SQLite wait for it; a few busy cases return at once
        # without waiting (a WAL recovery in progress), so those are retried until the same deadline.
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # no implicit transactions: ours are explicit
            check_same_thread=False,  # used by every thread, one at a time under ``_lock``
            cached_statements=64,
        )
        conn.create_function(_TAT_OUT, 1, self._tat_out, deterministic=False)
        try:
            cursor = conn.cursor()
            deadline = time.monotonic() + self.busy_timeout
            delay = 0.001
            while True:
                try:
                    if not _drive(cursor, self._op_setup()):
                        self._begin(cursor)
                        try:
                            _drive(cursor, _op_create_schema())
                            cursor.execute("COMMIT")
                        except BaseException:
                            if conn.in_transaction:
                                conn.execute("ROLLBACK")
                            raise
                    break
                except sqlite3.OperationalError as exc:
                    # Processes opening a new file at once contend for its first writes.
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            cursor.close()
        except BaseException:
            conn.close()
            raise
        return conn

    def _op_setup(self) -> _Op[bool]:
        """Set up a new connection; True when the tables exist already.

        Opening a file that is already set up takes no write lock: many processes starting at once
        do not queue for it.
        """
        if not self._memory:
            # WAL: readers (peek) never wait for the writer, and a commit appends to the log instead
            # of rewriting pages. It is a property of the file: set once, by the first process.
            rows = yield ("PRAGMA journal_mode", (), _QUERY)
            if str(rows[0][0]).lower() != "wal":
                yield ("PRAGMA journal_mode = WAL", (), _QUERY)
            # NORMAL: no fsync per commit in WAL mode; durable across a crash of the process, not
            # necessarily across a power loss. A property of the connection.
            yield ("PRAGMA synchronous = NORMAL", (), _WRITE)
        rows = yield (SQL_TABLES, (), _QUERY)
        return bool(rows[0][0] == len(SCHEMA))

    def _sync_failed(self, exc: BaseException) -> None:
        # A connection that failed for another reason than contention may be broken (the file was
        # removed, the disk failed): drop it so that the next call opens a fresh one.
        if _is_broken(exc):
            conn, self._conn, self._cursor = self._conn, None, None
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _translate(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.name!r} ({self.describe()}) failed: {type(exc).__name__}: {exc}")

    # -- the async driver ------------------------------------------------------------------------

    async def _arun(self, op: _Op[T], *, write: bool) -> T:
        """The async twin of :meth:`_run`, on this event loop's aiosqlite connection.

        The statements of one operation are queued to aiosqlite's thread one by one under an
        asyncio lock, so the transactions of this loop's tasks never interleave on the connection.
        """
        if self._memory:
            # ``:memory:`` is private to one connection: the async side must use the sync one to
            # see the same database. Its calls take microseconds (no I/O), so they run inline.
            return self._run(op, write=write)
        if self._pid != os.getpid():
            self._after_fork()
        side = self._async_side()
        async with side.lock:
            conn = side.conn
            try:
                if conn is None:
                    conn = side.conn = await self._aopen(side.tat_out)
                if write:
                    await self._abegin(conn)
                result = await _adrive(conn, op)
                if write:
                    await conn.commit()
                return result
            except BaseException as exc:
                if conn is not None:
                    if write:
                        # Shielded: a task cancelled mid-transaction must still give the write lock
                        # back. aiosqlite runs queued statements in order: this lands before the next BEGIN.
                        await asyncio.shield(_arollback(conn))
                    if _is_broken(exc):
                        side.conn = None
                        await _aclose_quietly(conn)
                if _needs_translation(exc):
                    raise self._translate(exc) from exc
                raise

    def _async_side(self) -> _AsyncSide:
        loop = asyncio.get_running_loop()
        side = self._async.get(loop)
        if side is not None:
            return side
        with self._async_lock:
            side = self._async.get(loop)
            if side is None:
                # Connections of loops that have closed since are stopped here: their threads
                # would otherwise wait for work until the loop object is garbage-collected.
                for other, old in list(self._async.items()):
                    if other.is_closed():
                        del self._async[other]
                        if old.conn is not None:
                            old.conn.stop()
                            old.conn = None
                side = self._async[loop] = _AsyncSide(asyncio.Lock())
            return side

    async def _abegin(self, conn: aiosqlite.Connection) -> None:
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                await conn.execute_fetchall("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, 0.05)

    async def _aopen(self, tat_out: _TatOut) -> aiosqlite.Connection:
        try:
            import aiosqlite
        except ImportError:
            raise MissingDependencyError("aiosqlite", "sqlite", "the async side of the SQLite store") from None
        conn = aiosqlite.connect(self.path, timeout=self.busy_timeout, isolation_level=None, cached_statements=64)
        # aiosqlite's worker thread is not a daemon: a store never closed would keep the interpreter
        # from exiting. Ours only ever runs short transactions, so it may stop with the interpreter.
        thread = getattr(conn, "_thread", None)
        if isinstance(thread, threading.Thread) and not thread.is_alive():
            thread.daemon = True
        await conn
        try:
            await conn.create_function(_TAT_OUT, 1, tat_out, deterministic=False)
            deadline = time.monotonic() + self.busy_timeout
            delay = 0.001
            while True:
                try:
                    if not await _adrive(conn, self._op_setup()):
                        await self._abegin(conn)
                        try:
                            await _adrive(conn, _op_create_schema())
                            await conn.commit()
                        except BaseException:
                            await asyncio.shield(_arollback(conn))
                            raise
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or time.monotonic() >= deadline:
                        raise
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except BaseException:
            await _aclose_quietly(conn)
            raise
        return conn

    # -- fork ----------------------------------------------------------------------------------

    def _after_fork(self) -> None:
        """In a child process: forget (never use, never close) the parent's connections.

        Runs in the child right after ``fork()`` (``os.register_at_fork``), before any other thread
        exists there; the process id check of every call is the fallback. No lock is taken: the
        parent's may have been held, at the fork, by a thread that does not exist in the child.
        """
        if self._pid == os.getpid():
            return
        _ABANDONED.append((self._conn, list(self._async.values())))
        self._conn = self._cursor = None
        self._async = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._async_lock = threading.Lock()
        self._written = 0
        self._pid = os.getpid()


def _decide_one(
    key: str, spec: Spec, rows: list[Any], now: float, cost: int, max_wait: float
) -> tuple[Decision, _Request | None]:
    """The decision for one limit whose row (if any) is ``rows[0]``, and the statement writing it."""
    state = _decode(spec, rows[0] if rows else None, now)
    decision, new_states = decide((state,), 0.0, cost, (spec,), max_wait, now)
    if not decision.allowed:
        return decision, None
    state = new_states[0]
    if state is not None:
        params = (*_encode(spec, state, now), key)
        return decision, (SQL_UPDATE if rows else SQL_INSERT, params, _WRITE)
    return decision, ((SQL_DELETE, (key,), _WRITE) if rows else None)


def _drive(cursor: sqlite3.Cursor, op: _Op[T]) -> T:
    """Run the statements of ``op`` on ``cursor``; return what ``op`` returns."""
    try:
        sql, params, how = next(op)
        while True:
            if how == _QUERY:
                sql, params, how = op.send(cursor.execute(sql, params).fetchall())
            else:
                if how == _WRITE:
                    cursor.execute(sql, params)
                else:
                    cursor.executemany(sql, params)
                sql, params, how = op.send(_NO_ROWS)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def _adrive(conn: aiosqlite.Connection, op: _Op[T]) -> T:
    """Run the statements of ``op`` on ``conn``, one aiosqlite round trip each."""
    try:
        sql, params, how = next(op)
        while True:
            if how == _QUERY:
                rows = list(await conn.execute_fetchall(sql, params))
            else:
                if how == _WRITE:
                    await conn.execute_fetchall(sql, params)
                else:
                    await conn.executemany(sql, params)
                rows = _NO_ROWS
            sql, params, how = op.send(rows)
    except StopIteration as stop:
        result: T = stop.value
        return result


def _op_create_schema() -> _Op[None]:
    for sql in SCHEMA:
        yield (sql, (), _WRITE)


def _noop() -> _Op[None]:
    return
    yield  # a generator that runs no statement


def _is_broken(exc: BaseException) -> bool:
    """True for a failure that may have left the connection unusable (anything but contention)."""
    return isinstance(exc, sqlite3.Error) and not (isinstance(exc, sqlite3.OperationalError) and _is_busy(exc))


def _needs_translation(exc: BaseException) -> bool:
    """True for a database error that is a failure of the store but not an ``OperationalError``.

    A corrupt file or "file is not a database" raise ``sqlite3.DatabaseError``, which also covers
    programming errors: those two are reported as :class:`StoreError` (which the outage policy
    handles) instead of adding ``DatabaseError`` to ``_backend_errors``.
    """
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.OperationalError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


async def _arollback(conn: aiosqlite.Connection) -> None:
    # No transaction active, or the connection is closed: nothing to give back.
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.execute_fetchall("ROLLBACK")


async def _aclose_quietly(conn: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError):
        await conn.close()
