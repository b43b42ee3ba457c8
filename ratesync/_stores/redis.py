"""The Redis store: every algorithm runs as a Lua script on the server, one round trip per call.

The scripts (``ratesync/resources/redis/*.lua``) are ports of the pure functions in
``ratesync._algorithms`` and read the server's clock (``TIME``), so clients on machines whose
clocks disagree still share one timeline. redis-py's script objects own them: their hash, and
loading them again after a ``NOSCRIPT`` (a restarted, flushed or failed-over server).

Keys are ``<key_prefix><key>``: the prefix goes before the caller's ``{hash tag}``, so every key of
one call stays in one Redis Cluster slot (``ratesync:{api:42}#0``, ``ratesync:{api:42}#lease``).

The client side is kept lean, since an acquire should cost about what a bare round trip costs: the
keys and arguments of a slot tuple are prepared once and the command packed once per (cost,
max_wait); off a cluster the acquire goes straight to a pooled connection of the store's own pools
(:class:`_Pool`, :class:`_AsyncPool`: redis-py's pools with a lean checkout); async callers of one
key queue behind the call in flight and are decided by one batch call (:meth:`RedisStore._drain`);
and a reservation's wait is counted from the server's decision (:class:`_ServerClock`).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import os
import struct
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._algorithms import Decision, FixedWindow, LeaseDecision, Observation, Quota, SlidingWindow, Spec, TokenBucket
from .._exceptions import ConfigurationError, MissingDependencyError
from ._base import OnError, Slot, Store, redact_url

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.cluster
    import redis.exceptions
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise MissingDependencyError("redis", "redis", 'the Redis store (engine = "redis")') from exc

__all__ = ["SCRIPT_PARTS", "RedisStore", "lua_file", "script_source"]

T = TypeVar("T")

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX: Final = "ratesync:"
#: Connections per pool (per side: sync and each event loop; per node in a cluster).
DEFAULT_POOL_SIZE: Final = 50
#: A dead or unreachable Redis must cost milliseconds, not seconds: short timeouts by default.
DEFAULT_CONNECT_TIMEOUT: Final = 0.5
DEFAULT_SOCKET_TIMEOUT: Final = 1.0

_SCHEMES: Final = {"redis": False, "rediss": False, "unix": False, "redis+cluster": True, "rediss+cluster": True}
_ONE: Final = b"1"
_ZERO: Final = b"0"
_INF: Final = b"inf"
_SERVER_CLOCK: Final = b""
_ACQUIRE: Final = b"a"
_PEEK: Final = b"p"
#: Prepared (keys, ARGV) per slot tuple are cached up to this many tuples...
_CACHE_SIZE: Final = 4096
#: ... and up to this many packed calls (cost, max_wait) per tuple.
_CALLS_PER_SLOTS: Final = 8
#: Most calls one batch script decides.
_BATCH_MAX: Final = 256
_BATCH: Final = b"b"
#: An acquire script's reply: allowed (1.0 or 0.0), wait, remaining, reset_after and limit as
#: little-endian doubles in one string (exact, and the cheapest reply for the server to build, see
#: acquire.lua); a reservation adds the server time it was made at. A batch's: that time, then the
#: five fields of each call.
_FIELDS: Final = struct.Struct("<5d")
_RESERVATION: Final = struct.Struct("<6d")
_SERVER_TIME: Final = struct.Struct("<d")
#: The standalone token bucket script's numbers: cost, max_wait, rate_per_second and burst as
#: little-endian doubles in one argument (exact; the server parsed four decimals for longer than
#: it now takes to unpack them, see token_bucket.lua).
_BUCKET_ARGS: Final = struct.Struct("<4d")


#: The Lua files each script is made of, in order (Redis scripts cannot import: they are joined).
SCRIPT_PARTS: Final = {
    "acquire": ("prelude", "algorithms", "state", "acquire"),
    "observe": ("prelude", "state", "observe"),
    "lease_acquire": ("prelude", "lease_acquire"),
    # Standalone: the hot path (one token bucket, acquire) inlined, see the script's header.
    "token_bucket": ("token_bucket",),
}


@functools.cache
def lua_file(name: str) -> str:
    """The text of ``ratesync/resources/redis/<name>.lua`` (a package resource)."""
    return resources.files("ratesync").joinpath("resources", "redis", f"{name}.lua").read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The Lua source of script ``name`` (``acquire``, ``observe``, ``lease_acquire``)."""
    return "\n".join(lua_file(part) for part in SCRIPT_PARTS[name])


def _safe_url(url: str) -> str:
    """``url`` with its password hidden, in the user part (``redact_url``) and in the query."""
    safe = redact_url(url)
    parts = urlsplit(safe)
    if not parts.query or "password" not in parts.query.lower():
        return safe
    query = [(k, "***" if k.lower() == "password" else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe="*"), parts.fragment))


def _raw_replies(url: str) -> str:
    """``url`` without a ``decode_responses`` option (redis-py reads it from the query).

    The store's replies are never handed to callers, and the acquire scripts answer in packed
    doubles, which decoding as text would break; redis-py also takes ``decode_responses=false``
    from a URL as the non-empty, so true, string ``"false"``.
    """
    parts = urlsplit(url)
    if "decode_responses" not in parts.query:
        return url
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "decode_responses"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _float_arg(x: float) -> bytes:
    # repr() round-trips a float exactly; Lua's tonumber() (strtod) reads it back exactly.
    if x == 0.0:
        return _ZERO
    if x == math.inf:
        return _INF
    return repr(float(x)).encode()


def _spec_args(spec: Spec) -> tuple[bytes, bytes, bytes]:
    if isinstance(spec, TokenBucket):
        return b"t", _float_arg(spec.rate_per_second), str(int(spec.burst)).encode()
    if isinstance(spec, SlidingWindow):
        return b"s", str(int(spec.limit)).encode(), _float_arg(spec.window_seconds)
    if isinstance(spec, FixedWindow):
        return b"f", str(int(spec.limit)).encode(), _float_arg(spec.window_seconds)
    if isinstance(spec, Quota):
        return b"q", _float_arg(spec.max_cooldown), _ZERO
    raise TypeError(f"the Redis store has no script for {type(spec).__name__}")


def _decision(reply: bytes) -> Decision:
    allowed, wait, remaining, reset_after, limit = _FIELDS.unpack(reply)
    return Decision(allowed == 1.0, wait, remaining, reset_after, limit)


class _ServerClock:
    """Where the server's clock stands on this process's ``time.monotonic()``.

    A reservation's wait counts from the moment the server made it. Read as "from now" by a
    process that took a while to read the reply (a busy event loop, a descheduled process), it
    would go late and bunch with the calls after it. Each reservation reply carries the server
    time it was made at: the true offset between the clocks lies between ``server - received``
    and ``server - sent``, and the sample with the shortest round trip pins it best (as NTP does).
    A sample that proves the current estimate wrong (the server's clock was set) replaces it; an
    estimate's error bound grows with its age, so drift is followed.
    """

    __slots__ = ("_best",)

    #: How fast the two clocks may drift apart (seconds per second) when judging an old sample.
    DRIFT = 1e-4

    def __init__(self) -> None:
        # (offset, error bound, monotonic time taken)
        self._best: tuple[float, float, float] | None = None

    def offset(self, sent: float, received: float, server_now: float) -> float:
        low, high = server_now - received, server_now - sent
        best = self._best
        if best is not None:
            offset, bound, taken = best
            if low <= offset <= high and bound + self.DRIFT * (received - taken) <= (high - low) / 2:
                return offset
        offset = (low + high) / 2
        self._best = (offset, (high - low) / 2, received)
        return offset

    def wait(self, sent: float, server_now: float, wait: float) -> float:
        """The part of ``wait`` (counted by the server from ``server_now``) still ahead now."""
        received = time.monotonic()
        ahead = server_now + wait - self.offset(sent, received, server_now) - received
        return wait if ahead >= wait else max(0.0, ahead)


def _lease_decision(reply: Sequence[Any]) -> LeaseDecision:
    return LeaseDecision(reply[0] == 1, int(reply[1]), float(reply[2]))


def _opt(x: float | None) -> bytes:
    return b"" if x is None else _float_arg(x)


def _call_args(cost: int, max_wait: float, mode: bytes, spec_args: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return (_SERVER_CLOCK, _ONE if cost == 1 else str(int(cost)).encode(), _float_arg(max_wait), mode, *spec_args)


class _Call:
    """One acquire script call, packed: the same slots, cost and max_wait send the same bytes."""

    __slots__ = ("argv", "packed", "sha")

    def __init__(self, sha: str, argv: tuple[bytes, ...], packed: Any) -> None:
        self.sha = sha
        self.argv = argv
        self.packed = packed


class _Prepared:
    """The keys and spec arguments of one slot tuple, and its packed calls."""

    __slots__ = ("args", "batch", "bucket", "calls", "keys", "single_bucket", "slots")

    def __init__(self, slots: Sequence[Slot], keys: tuple[str, ...], args: tuple[bytes, ...]) -> None:
        self.slots = slots
        self.keys = keys
        self.args = args
        spec = slots[0][1] if len(slots) == 1 else None
        #: One token bucket: an acquire runs the standalone script (token_bucket.lua) with its rate
        #: and burst as the general script reads them (a float, a whole number).
        self.bucket = (float(spec.rate_per_second), float(int(spec.burst))) if isinstance(spec, TokenBucket) else None
        self.single_bucket = self.bucket is not None
        self.calls: dict[tuple[int, float, bytes], _Call] = {}
        #: Where async callers queue while a call for these keys is in flight.
        self.batch: _Batch | None = None

    def argv(self, cost: int, max_wait: float, mode: bytes) -> tuple[bytes, ...]:
        """The arguments of a call: the standalone script's for an acquire on one token bucket."""
        if self.bucket is not None and mode is _ACQUIRE:
            return (_SERVER_CLOCK, _BUCKET_ARGS.pack(int(cost), max_wait, *self.bucket))
        return _call_args(cost, max_wait, mode, self.args)

    def call(self, connection: Any, sha: str, cost: int, max_wait: float, mode: bytes) -> _Call:
        argv = self.argv(cost, max_wait, mode)
        call = _Call(sha, argv, connection.pack_command("EVALSHA", sha, len(self.keys), *self.keys, *argv))
        # Callers use a few (cost, max_wait) pairs; one passing a fresh timeout each time does not
        # grow the cache.
        if len(self.calls) < _CALLS_PER_SLOTS:
            self.calls[(cost, max_wait, mode)] = call
        return call


#: The async connection's "is there something to read (or has the server closed it)?" check: its
#: name changed in redis-py 8 (the old one is deprecated there, the new one missing before).
_ASYNC_CAN_READ: Final = "can_read" if hasattr(redis.asyncio.Connection, "can_read") else "can_read_destructive"


def _should_reconnect(connection: Any) -> bool:
    # A server announcing maintenance marks connections to renew (redis-py 6 and later).
    check = getattr(connection, "should_reconnect", None)
    return bool(check()) if check is not None else False


class _Batch:
    """Async callers of one event loop queued behind a call in flight for the same keys."""

    __slots__ = ("busy", "loop", "queue", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: A call (or a batch) for these keys is in flight on this loop.
        self.busy = False
        self.queue: list[tuple[int, float, asyncio.Future[Decision]]] = []
        self.task: asyncio.Task[None] | None = None


class _Pool(redis.ConnectionPool):
    """redis-py's connection pool with a lean checkout, for the sync side.

    The same life cycle as redis-py's pools: LIFO reuse, the same readiness check on checkout (a
    connection the server closed, say by restarting, is reconnected before use), reset after a
    fork, and callers wait up to ``wait_timeout`` for a free connection when all ``max_connections``
    are busy. Without redis-py's per-checkout metrics and locking layers, a checkout costs a few
    microseconds instead of twenty: as much as the whole script costs the server.
    """

    def __init__(self, *, wait_timeout: float, **kwargs: Any) -> None:
        self.wait_timeout = wait_timeout
        super().__init__(**kwargs)

    def reset(self) -> None:
        super().reset()
        self._freed = threading.Condition(self._lock)
        self._waiting = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self.pid != os.getpid():
            self._checkpid()
        # The readiness check below runs whatever the maintenance notification setting (redis-py
        # skips it while that is "auto", the default).
        with self._lock:
            if self._available_connections:
                connection = self._available_connections.pop()
            else:
                connection = self._new_or_wait()
            self._in_use_connections.add(connection)
        try:
            connection.connect()
            try:
                if connection.can_read():
                    raise redis.exceptions.ConnectionError("Connection has data")
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                connection.disconnect()
                connection.connect()
                if connection.can_read():
                    raise redis.exceptions.ConnectionError("Connection not ready") from None
        except BaseException:
            self.release(connection)
            raise
        return connection

    def _new_or_wait(self) -> Any:
        # Under self._lock.
        deadline = time.monotonic() + self.wait_timeout
        while not self._available_connections:
            if self._created_connections < self.max_connections:
                return self.make_connection()
            left = deadline - time.monotonic()
            if left <= 0:
                raise redis.exceptions.ConnectionError("No connection available.")
            self._waiting += 1
            try:
                self._freed.wait(left)
            finally:
                self._waiting -= 1
        return self._available_connections.pop()

    def release(self, connection: Any) -> None:
        if self.pid != os.getpid():
            self._checkpid()
        with self._lock:
            try:
                self._in_use_connections.remove(connection)
            except KeyError:
                return  # not ours (from before a fork, or released twice)
            if connection.pid != self.pid:
                connection.disconnect()
                self._created_connections -= 1
            else:
                if _should_reconnect(connection):
                    connection.disconnect()
                self._available_connections.append(connection)
            if self._waiting:
                self._freed.notify()


class _AsyncPool(redis.asyncio.ConnectionPool):
    """The async twin of :class:`_Pool` (one per event loop)."""

    def __init__(self, *, wait_timeout: float, **kwargs: Any) -> None:
        self.wait_timeout = wait_timeout
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        super().__init__(**kwargs)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._available_connections:
            connection = self._available_connections.pop()
        else:
            connection = await self._new_or_wait()
        self._in_use_connections.add(connection)
        try:
            # redis-py's own check is skipped while maintenance notifications are "auto" (the
            # default): a connection the server closed would fail its first command.
            await connection.connect()  # type: ignore[no-untyped-call]
            try:
                if await getattr(connection, _ASYNC_CAN_READ)():
                    raise redis.exceptions.ConnectionError("Connection has data")
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                await connection.disconnect()
                await connection.connect()  # type: ignore[no-untyped-call]
                if await getattr(connection, _ASYNC_CAN_READ)():
                    raise redis.exceptions.ConnectionError("Connection not ready") from None
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def _new_or_wait(self) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while not self._available_connections:
            if len(self._in_use_connections) < self.max_connections:
                return self.make_connection()  # type: ignore[no-untyped-call]
            left = deadline - loop.time()
            if left <= 0:
                raise redis.exceptions.ConnectionError("No connection available.")
            # A release wakes one waiter, which then looks again: a woken waiter that was
            # cancelled meanwhile leaves the connection in the pool for the next.
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()
        return self._available_connections.pop()

    async def release(self, connection: Any) -> None:
        self._in_use_connections.discard(connection)
        if _should_reconnect(connection):
            await connection.disconnect()
        self._available_connections.append(connection)
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


class _Side:
    """One client (sync, or async on one event loop) and its script objects."""

    __slots__ = (
        "_init_lock",
        "acquire",
        "client",
        "gate",
        "lease",
        "loop",
        "observe",
        "pool",
        "ready",
        "token_bucket",
    )

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop | None = None, gate: int = 0) -> None:
        self.client = client
        self.loop = loop
        # The pool of a single server (the direct hot path); None for a cluster client.
        self.pool = None if gate or isinstance(client, redis.cluster.RedisCluster) else client.connection_pool
        # register_script: run by hash, loaded again by redis-py after NOSCRIPT.
        self.acquire = client.register_script(script_source("acquire"))
        self.observe = client.register_script(script_source("observe"))
        self.lease = client.register_script(script_source("lease_acquire"))
        self.token_bucket = client.register_script(script_source("token_bucket"))
        # The async cluster client needs two guards: it raises instead of waiting when a node's
        # pool is exhausted (so calls in flight on this loop are bounded by the pool size), and
        # concurrent first calls each start their own topology discovery, replacing nodes under
        # each other's feet (so the first call discovers it alone).
        self.gate = asyncio.Semaphore(gate) if gate else None
        self.ready = not gate
        self._init_lock: asyncio.Lock | None = None

    async def warm_up(self) -> None:
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if not self.ready:
                await self.client.initialize()
                self.ready = True


class RedisStore(Store):
    """Limiter state in Redis (or Redis Cluster), shared by every process that uses the same keys.

    ``url``: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS), ``unix:///path``,
    or ``redis+cluster://host:port`` (also ``cluster=True``) for Redis Cluster.
    ``key_prefix`` is put before every key. ``pool_size`` bounds the connections of each pool:
    one for sync callers, one per event loop for async callers (per node in a cluster); callers
    beyond it wait for a free connection. ``socket_timeout`` and ``connect_timeout`` are short by
    default so that a dead Redis costs little; the outage policy (``on_error``) then answers
    without touching the network until ``retry_interval`` has passed. With ``batch`` (the
    default), async callers of one event loop that acquire the same keys while a call for them is
    in flight are decided together by the next call, in their order: the same answers as one
    call each, for one round trip.
    """

    engine = "redis"
    OPTIONS = frozenset({"url", "key_prefix", "pool_size", "socket_timeout", "connect_timeout", "cluster", "batch"})

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        key_prefix: str = DEFAULT_PREFIX,
        pool_size: int = DEFAULT_POOL_SIZE,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        cluster: bool | None = None,
        batch: bool = True,
        name: str = "",
        on_error: OnError = "closed",
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(on_error=on_error, retry_interval=retry_interval, name=name)
        safe = _safe_url(url)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            scheme = ""
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unsupported Redis URL {safe!r}: use redis://, rediss://, unix:// or redis+cluster://", key="url"
            )
        url_cluster = _SCHEMES[scheme]
        if cluster is None:
            cluster = url_cluster
        elif url_cluster and not cluster:
            raise ConfigurationError(f"{safe!r} is a cluster URL but cluster = false", key="cluster")
        if cluster and scheme == "unix":
            raise ConfigurationError("Redis Cluster is reached over TCP, not a unix:// socket", key="cluster")
        if "{" in key_prefix or "}" in key_prefix:
            # A brace in the prefix would become the hash tag of every key: one cluster slot for all.
            raise ConfigurationError(f"key_prefix must not contain braces, got {key_prefix!r}", key="key_prefix")
        if pool_size < 1:
            raise ConfigurationError(f"pool_size must be at least 1, got {pool_size!r}", key="pool_size")
        for option, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{option} must be a positive number of seconds, got {value!r}", key=option)
        #: The URL with any password hidden (the store keeps the real one to itself).
        self.url = safe
        self.cluster = bool(cluster)
        self.key_prefix = key_prefix
        self.pool_size = pool_size
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(connect_timeout)
        self.batch = bool(batch)
        self._client_url = _raw_replies(url.replace("+cluster", "", 1) if url_cluster else url)
        self._lock = threading.Lock()
        self._sync_side: _Side | None = None
        # One async client per event loop (redis.asyncio connections belong to the loop that made them).
        self._async_sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Side] = weakref.WeakKeyDictionary()
        self._last_async: _Side | None = None
        # id(slot tuple) -> its _Prepared, which keeps the tuple alive: the id cannot be reused by
        # another tuple while cached.
        self._prepared: dict[int, _Prepared] = {}
        self._server_clock = _ServerClock()

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> RedisStore:
        """Build the store from its rate-sync.toml table (``engine = "redis"``)."""
        from .._convert import as_bool, as_float, as_int, as_str

        cluster = options.get("cluster")
        return cls(
            as_str(options.get("url", DEFAULT_URL), "url"),
            key_prefix=as_str(options.get("key_prefix", DEFAULT_PREFIX), "key_prefix"),
            pool_size=as_int(options.get("pool_size", DEFAULT_POOL_SIZE), "pool_size"),
            socket_timeout=as_float(options.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT), "socket_timeout"),
            connect_timeout=as_float(options.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT), "connect_timeout"),
            cluster=None if cluster is None else as_bool(cluster, "cluster"),
            batch=as_bool(options.get("batch", True), "batch"),
            name=name,
            on_error=options.get("on_error", "closed"),
            retry_interval=as_float(options.get("retry_interval", 1.0), "retry_interval"),
        )

    def describe(self) -> str:
        kind = "redis cluster" if self.cluster else "redis"
        return f"{kind} {self.url} prefix {self.key_prefix!r}"

    # -- clients -----------------------------------------------------------------------------

    def _connection_kwargs(self, *, asynchronous: bool = False) -> dict[str, Any]:
        # No retries: an acquire is not idempotent (a retried call that had reached the server
        # would charge twice), and a dead server must fail fast into the outage policy. Each side
        # gets its own kind of Retry: redis-py 8 warns when an asyncio client is given a sync one.
        retry = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry": retry,
        }

    def _pool_timeout(self) -> float:
        # How long a caller waits for a free pooled connection before that counts as a failure.
        return self.connect_timeout + self.socket_timeout

    def _make_sync_client(self) -> Any:
        kwargs = self._connection_kwargs()
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(
                self._client_url,
                max_connections=self.pool_size,
                connection_pool_class=redis.BlockingConnectionPool,
                timeout=self._pool_timeout(),
                **kwargs,
            )
        pool = _Pool.from_url(
            self._client_url, max_connections=self.pool_size, wait_timeout=self._pool_timeout(), **kwargs
        )
        return redis.Redis(connection_pool=pool)

    def _make_async_client(self) -> Any:
        kwargs = self._connection_kwargs(asynchronous=True)
        if self.cluster:
            return redis.asyncio.cluster.RedisCluster.from_url(
                self._client_url, max_connections=self.pool_size, **kwargs
            )
        pool = _AsyncPool.from_url(
            self._client_url, max_connections=self.pool_size, wait_timeout=self._pool_timeout(), **kwargs
        )
        return redis.asyncio.Redis(connection_pool=pool)

    def _sync(self) -> _Side:
        side = self._sync_side
        if side is None:
            with self._lock:
                side = self._sync_side
                if side is None:
                    side = self._sync_side = _Side(self._make_sync_client())
        return side

    def _async(self) -> _Side:
        loop = asyncio.get_running_loop()
        side = self._last_async
        if side is not None and side.loop is loop:
            return side
        with self._lock:
            side = self._async_sides.get(loop)
            if side is None:
                side = _Side(self._make_async_client(), loop, gate=self.pool_size if self.cluster else 0)
                self._async_sides[loop] = side
            self._last_async = side
        return side

    def initialize(self) -> None:
        """Connect and load the scripts now (instead of on the first call)."""
        self._guard(self._initialize_sync, lambda f: None, None)

    async def ainitialize(self) -> None:
        """Connect the async client of the running loop and load the scripts."""
        await self._aguard(self._initialize_async, lambda f: None, None)

    def _initialize_sync(self) -> None:
        side = self._sync()
        for script in (side.acquire, side.observe, side.lease):
            script.sha = side.client.script_load(script.script)

    async def _initialize_async(self) -> None:
        side = self._async()
        for script in (side.acquire, side.observe, side.lease):
            script.sha = await self._gated(side, functools.partial(side.client.script_load, script.script))

    def close(self) -> None:
        """Close the sync client's connections (the store reconnects if used again)."""
        with self._lock:
            side, self._sync_side = self._sync_side, None
        if side is not None:
            client = side.client
            if self.cluster:
                client.close()
            else:
                client.close()
                client.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the async client of the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            side = self._async_sides.pop(loop, None)
            if self._last_async is side:
                self._last_async = None
        if side is not None:
            client = side.client
            if self.cluster:
                await client.aclose()
            else:
                await client.aclose()
                await client.connection_pool.disconnect()

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        # Every RedisError: connection and timeout errors, a server LOADING or READONLY after a
        # failover, CLUSTERDOWN, OOM... all mean the backend cannot answer; the policy decides.
        return (*super()._backend_errors(), redis.exceptions.RedisError)

    # -- keys and arguments ------------------------------------------------------------------

    def _prepare(self, slots: Sequence[Slot]) -> _Prepared:
        prepared = self._prepared.get(id(slots))
        if prepared is not None and prepared.slots is slots:
            return prepared
        prefix = self.key_prefix
        keys = tuple(prefix + key for key, _ in slots)
        args: tuple[bytes, ...] = ()
        for _, spec in slots:
            args += _spec_args(spec)
        prepared = _Prepared(slots, keys, args)
        if type(slots) is tuple:
            # Limiters pass the same tuple for the same key every time; lists may change.
            if len(self._prepared) >= _CACHE_SIZE:
                self._prepared.clear()
            self._prepared[id(slots)] = prepared
        return prepared

    # -- running the acquire script ----------------------------------------------------------
    #
    # The script object (register_script) owns the script's hash and loads it again after a
    # NOSCRIPT. Off a cluster, the hot path sends the EVALSHA itself on a pooled connection, with
    # the command bytes packed once per slot tuple, cost and max_wait: redis-py's generic command
    # path costs more client CPU than the script itself costs the server. A NOSCRIPT reply is
    # handed back to the script object, which loads the script and runs the call again.

    def _run(self, prepared: _Prepared, cost: int, max_wait: float, mode: bytes) -> Any:
        side = self._sync_side or self._sync()
        script = side.token_bucket if prepared.single_bucket and mode is _ACQUIRE else side.acquire
        pool = side.pool
        if pool is None:
            return script(prepared.keys, prepared.argv(cost, max_wait, mode))
        call = prepared.calls.get((cost, max_wait, mode))
        connection = pool.get_connection()
        try:
            if call is None or call.sha != script.sha:
                call = prepared.call(connection, script.sha, cost, max_wait, mode)
            connection.send_packed_command(call.packed, False)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            pass
        finally:
            pool.release(connection)
        return script(prepared.keys, prepared.argv(cost, max_wait, mode))

    async def _arun(self, prepared: _Prepared, cost: int, max_wait: float, mode: bytes) -> Any:
        side = self._async()
        script = side.token_bucket if prepared.single_bucket and mode is _ACQUIRE else side.acquire
        pool = side.pool
        if pool is None:
            return await self._gated(side, lambda: script(prepared.keys, prepared.argv(cost, max_wait, mode)))
        call = prepared.calls.get((cost, max_wait, mode))
        connection = await pool.get_connection()
        try:
            if call is None or call.sha != script.sha:
                call = prepared.call(connection, script.sha, cost, max_wait, mode)
            await connection.send_packed_command(call.packed, False)
            return await connection.read_response()
        except redis.exceptions.NoScriptError:
            pass
        finally:
            await pool.release(connection)
        return await script(prepared.keys, prepared.argv(cost, max_wait, mode))

    # -- the store protocol ------------------------------------------------------------------

    @staticmethod
    async def _gated(side: _Side, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call()`` under the async cluster client's guards (see :class:`_Side`)."""
        gate = side.gate
        if gate is None:
            return await call()
        async with gate:
            if not side.ready:
                await side.warm_up()
            return await call()

    def _acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        sent = time.monotonic()
        reply = self._run(self._prepare(slots), cost, max_wait, _ACQUIRE)
        if len(reply) == _FIELDS.size:
            return _decision(reply)
        return self._reservation(reply, sent)

    async def _aacquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        prepared = self._prepare(slots)
        if not self.batch:
            return await self._aacquire_one(prepared, cost, max_wait)
        loop = asyncio.get_running_loop()
        batch = prepared.batch
        if batch is None or batch.loop is not loop:
            if batch is not None and batch.busy:  # in use by another thread's event loop
                return await self._aacquire_one(prepared, cost, max_wait)
            batch = prepared.batch = _Batch(loop)
        if batch.busy:
            # A call for these keys is in flight: queue for the next one, which decides every
            # queued call in order (see _drain).
            future: asyncio.Future[Decision] = loop.create_future()
            batch.queue.append((cost, max_wait, future))
            return await future
        batch.busy = True
        try:
            return await self._aacquire_one(prepared, cost, max_wait)
        finally:
            if batch.queue:
                batch.task = loop.create_task(self._drain(prepared, batch))
            else:
                batch.busy = False

    async def _aacquire_one(self, prepared: _Prepared, cost: int, max_wait: float) -> Decision:
        sent = time.monotonic()
        reply = await self._arun(prepared, cost, max_wait, _ACQUIRE)
        if len(reply) == _FIELDS.size:
            return _decision(reply)
        return self._reservation(reply, sent)

    async def _drain(self, prepared: _Prepared, batch: _Batch) -> None:
        """Decide the queued calls, a script call per batch, until none is left."""
        queue = batch.queue
        try:
            while queue:
                calls = [c for c in queue[:_BATCH_MAX] if not c[2].done()]  # skip the cancelled
                del queue[:_BATCH_MAX]
                if not calls:
                    continue
                try:
                    decisions = await self._abatch(prepared, calls)
                except Exception as exc:
                    # Each caller meets the failure as if its own call had failed (the outage
                    # policy answers each of them).
                    for _, _, future in calls:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, _, future in calls:  # this task was cancelled: so are its callers
                        future.cancel()
                    raise
                for (_, _, future), decision in zip(calls, decisions, strict=True):
                    if not future.done():
                        future.set_result(decision)
        finally:
            batch.busy = False
            batch.task = None
            for _, _, future in queue:  # only when this task itself is cancelled (loop shutdown)
                future.cancel()
            queue.clear()

    async def _abatch(
        self, prepared: _Prepared, calls: list[tuple[int, float, asyncio.Future[Decision]]]
    ) -> list[Decision]:
        argv: list[bytes] = [_SERVER_CLOCK, str(len(calls)).encode(), _ZERO, _BATCH, *prepared.args]
        for cost, max_wait, _ in calls:
            argv.append(_ONE if cost == 1 else str(int(cost)).encode())
            argv.append(_float_arg(max_wait))
        sent = time.monotonic()
        side = self._async()
        script = side.acquire
        pool = side.pool
        if pool is None:
            reply = await self._gated(side, lambda: script(prepared.keys, argv))
        else:
            reply = await self._arun_packed(pool, script, prepared.keys, argv)
        (server_now,) = _SERVER_TIME.unpack_from(reply)
        clock = self._server_clock
        decisions = []
        for flag, wait, remaining, reset_after, limit in _FIELDS.iter_unpack(memoryview(reply)[_SERVER_TIME.size :]):
            allowed = flag == 1.0
            if allowed and wait > 0.0:
                wait = clock.wait(sent, server_now, wait)
            decisions.append(Decision(allowed, wait, remaining, reset_after, limit))
        return decisions

    @staticmethod
    async def _arun_packed(pool: Any, script: Any, keys: tuple[str, ...], argv: Sequence[bytes]) -> Any:
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(
                connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *argv), False
            )
            return await connection.read_response()
        except redis.exceptions.NoScriptError:
            pass
        finally:
            await pool.release(connection)
        return await script(keys, argv)

    def _reservation(self, reply: bytes, sent: float) -> Decision:
        _, wait, remaining, reset_after, limit, server_now = _RESERVATION.unpack(reply)
        return Decision(True, self._server_clock.wait(sent, server_now, wait), remaining, reset_after, limit)

    def _peek(self, slots: Sequence[Slot]) -> Decision:
        return _decision(self._run(self._prepare(slots), 1, 0.0, _PEEK))

    async def _apeek(self, slots: Sequence[Slot]) -> Decision:
        return _decision(await self._arun(self._prepare(slots), 1, 0.0, _PEEK))

    @staticmethod
    def _observe_args(spec: Quota, obs: Observation) -> tuple[bytes, ...]:
        return (
            _SERVER_CLOCK,
            _float_arg(obs.remaining),
            _float_arg(obs.reset_after),
            _opt(obs.limit),
            _opt(obs.window),
            _float_arg(spec.max_cooldown),
        )

    def _observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self._sync().observe((self.key_prefix + key,), self._observe_args(spec, obs))

    async def _aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        side = self._async()
        await self._gated(side, lambda: side.observe((self.key_prefix + key,), self._observe_args(spec, obs)))

    @staticmethod
    def _lease_args(limit: int, lease_seconds: float, lease_id: str) -> tuple[bytes, ...]:
        return (_SERVER_CLOCK, str(int(limit)).encode(), _float_arg(lease_seconds), lease_id.encode())

    def _lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        reply = self._sync().lease((self.key_prefix + key,), self._lease_args(limit, lease_seconds, lease_id))
        return _lease_decision(reply)

    async def _alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        side = self._async()
        args = self._lease_args(limit, lease_seconds, lease_id)
        return _lease_decision(await self._gated(side, lambda: side.lease((self.key_prefix + key,), args)))

    def _lease_release(self, key: str, lease_id: str) -> None:
        self._sync().client.zrem(self.key_prefix + key, lease_id)

    async def _alease_release(self, key: str, lease_id: str) -> None:
        side = self._async()
        await self._gated(side, lambda: side.client.zrem(self.key_prefix + key, lease_id))

    def _reset(self, keys: Sequence[str]) -> None:
        if keys:
            self._sync().client.delete(*(self.key_prefix + k for k in keys))

    async def _areset(self, keys: Sequence[str]) -> None:
        if keys:
            side = self._async()
            await self._gated(side, lambda: side.client.delete(*(self.key_prefix + k for k in keys)))
