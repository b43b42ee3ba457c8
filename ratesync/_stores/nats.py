"""The NATS JetStream KV store: limiter state under compare-and-set, for teams that run NATS.

Layout (one KV bucket, created on first use: history 1, ``max_age`` bounding idle entries):

- ``s.<tag>``: the state of every limit whose keys share the hash tag ``<tag>`` (the ``{...}`` of
  the key), as one JSON object ``{key: [expires_at, kind, state]}``. KV has no multi-key
  transaction, so the slots of one call live in ONE entry and a single compare-and-set covers
  them all (all-or-nothing).
- ``l.<key>``: the concurrency leases under ``key``, ``{lease_id: expires_at}``.
- ``c.probe``: written by the clock calibration (see below).

KV keys allow ``[-/_=.a-zA-Z0-9]`` only, and ``.`` separates subject tokens; ``<tag>`` and
``<key>`` are escaped: every byte of their UTF-8 form outside ``[-/_a-zA-Z0-9]`` becomes ``=XX``
(hex), so ``{api:42}#0`` has the tag ``api:42`` and lives in ``s.api=3A42``.

Every change is read, decided by the pure reference functions of ``ratesync._algorithms``, and
written with ``update(last=<revision read>)``; a conflict re-reads and retries with jitter
(bounded; the last resort is a :class:`StoreError`). Operations on one entry from one process
queue behind each other, so a process never conflicts with itself; and when the last write to
an entry was this process's own and nobody has written since, the next write goes straight from
the cached copy (one round trip instead of two; a conflict simply falls back to reading).

Time: decisions need a clock shared by every client. KV entries carry the server's timestamp,
but nothing in a read or an acknowledgement says what time it is NOW, so each store calibrates
its own clock against the server's: it writes ``c.probe``, reads back the timestamp the server
gave that message, and keeps ``offset = server_timestamp - midpoint(send, ack)`` (best of three,
again every ``clock_sync_interval`` seconds). The clock is then ``client_clock() + offset``: off
by at most half a round trip plus drift between calibrations, whatever the client's own clock
says. With ``sync_clock=False`` the client clock (``time.time``) is used as is, and two clients
skewed by ``s`` seconds may over-admit by about ``s x rate`` once.

nats-py is async-only and its connections are bound to their event loop: the async API keeps
one connection per running loop; the sync API runs on a :class:`~ratesync._portal.Portal` (a
loop in a daemon thread) with a connection of its own there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .._algorithms import (
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
)
from .._exceptions import ConfigurationError, MissingDependencyError, StoreError
from .._portal import Portal
from ._base import OnError, Slot, redact_url
from ._portal_store import PortalStore

__all__ = ["NatsStore", "entry_name", "escape_key", "hash_tag", "unescape_key"]

logger = logging.getLogger("ratesync")

T = TypeVar("T")

#: Bytes kept as they are in a KV key; every other byte becomes ``=XX``. ``.`` is escaped too:
#: in NATS it separates subject tokens, and a leading, trailing or doubled dot is invalid.
_SAFE = frozenset((string.ascii_letters + string.digits + "-_/").encode())
_ESCAPED = [chr(b) if b in _SAFE else f"={b:02X}" for b in range(256)]
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")

#: nats-py client settings. A short reconnect budget: a brief blip (a rolling restart) is bridged
#: by the client itself; after that the connection closes and the next call (the outage policy's
#: probe, at most one per ``retry_interval``) connects afresh, which fails in milliseconds while
#: the server refuses connections and succeeds by itself once it is back.
_MAX_RECONNECT_ATTEMPTS = 1
_RECONNECT_TIME_WAIT = 0.02
_PING_INTERVAL = 10
_MAX_OUTSTANDING_PINGS = 2

#: Conflicting writes before an operation gives up, and the backoff between them (seconds).
DEFAULT_MAX_ATTEMPTS = 50
_BACKOFF_BASE = 0.0005
_BACKOFF_CAP = 0.02

#: Entries whose last known revision a connection remembers (the write-from-cache fast path).
_CACHE_SIZE = 4096

#: Spec class -> the tag stored with its state (a key reused with another algorithm starts afresh).
_KINDS: dict[type[Any], str] = {TokenBucket: "tb", SlidingWindow: "sw", FixedWindow: "fw", Quota: "q"}


def escape_key(key: str) -> str:
    """``key`` in the KV key alphabet: bytes outside ``[-/_a-zA-Z0-9]`` become ``=XX`` (injective)."""
    if not key:
        return "="  # never produced otherwise: an escape is always three characters
    return "".join([_ESCAPED[b] for b in key.encode()])


def unescape_key(name: str) -> str:
    """The inverse of :func:`escape_key` (for tools reading the bucket)."""
    if name == "=":
        return ""
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "=":
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(name[i]))
            i += 1
    return out.decode()


def hash_tag(key: str) -> str:
    """The hash tag of ``key`` as in Redis Cluster: the text inside the first ``{...}``, if not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@functools.lru_cache(maxsize=8192)
def entry_name(key: str) -> str:
    """The KV entry holding the state of ``key`` (shared by every key with the same hash tag)."""
    return "s." + escape_key(hash_tag(key))


@functools.lru_cache(maxsize=8192)
def _lease_entry(key: str) -> str:
    return "l." + escape_key(key)


_PROBE_ENTRY = "c.probe"


def _redact_one(url: str) -> str:
    url = url.strip()
    redacted = redact_url(url)
    if redacted != url:
        return redacted
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.username is None:
        return url
    # ``nats://TOKEN@host``: a user name without a password is a token in NATS.
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def redact_nats_url(url: str) -> str:
    """``url`` (possibly several, comma-separated) with passwords and tokens replaced by ``***``."""
    return ",".join(_redact_one(u) for u in url.split(","))


# -- state encoding --------------------------------------------------------------------------


def _encode_state(state: Any, spec: Spec, now: float) -> Any:
    """The stored form of ``state``, relative to ``now``: absolute times (see ``_field_state``)."""
    state = shift_state(state, spec, now)
    if isinstance(state, QuotaState):
        return list(state)
    return state


def _decode_state(raw: Any, spec: Spec) -> Any:
    if isinstance(spec, TokenBucket):
        return float(raw)
    if isinstance(spec, SlidingWindow):
        return tuple((float(t), int(c)) for t, c in raw)
    if isinstance(spec, FixedWindow):
        return (float(raw[0]), int(raw[1]))
    reset_at, remaining, limit, window = raw
    return QuotaState(float(reset_at), float(remaining), limit, window)


def _field_state(obj: dict[str, Any], key: str, spec: Spec, now: float) -> Any:
    """The state of ``key`` relative to ``now``; None when absent, expired, of another kind or unreadable.

    Entries hold absolute times, and decisions run the reference on times relative to the reading
    of the clock (``now = 0``, ``base = now``: see the note on relative time in
    ``ratesync._algorithms``), so that an epoch time's last bit (2.4e-7 s) never costs a token.
    """
    record = obj.get(key)
    if record is None:
        return None
    try:
        expires_at, kind, raw = record
        if expires_at <= now or kind != _KINDS[type(spec)]:
            return None
        return shift_state(_decode_state(raw, spec), spec, -now)
    except (TypeError, ValueError, KeyError):
        logger.warning("rate-sync nats store: unreadable state under %r ignored (starts afresh)", key)
        return None


def _live(obj: dict[str, Any], now: float) -> dict[str, Any]:
    """``obj`` without the fields that have expired (a fresh dict: cached objects are never mutated)."""
    out = {}
    for k, record in obj.items():
        try:
            if record[0] > now:
                out[k] = record
        except (TypeError, IndexError, KeyError):
            continue
    return out


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(value: bytes | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        obj = json.loads(value)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        logger.warning("rate-sync nats store: an entry that is not a JSON object was ignored (starts afresh)")
        return {}
    return obj


# -- per-connection state ----------------------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    revision: int
    obj: dict[str, Any]
    #: Nobody else wrote between our last two writes: the next write may skip the read.
    trusted: bool


@dataclass
class _Conn:
    """One nats-py connection (bound to the loop it was made on) and what goes with it."""

    nc: Any
    js: Any
    kv: Any
    pid: int = field(default_factory=os.getpid)
    locks: dict[str, list[Any]] = field(default_factory=dict)
    cache: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Serialize the operations of this connection on one entry (they would only conflict)."""
        item = self.locks.get(name)
        if item is None:
            item = self.locks[name] = [asyncio.Lock(), 0]
        item[1] += 1
        try:
            async with item[0]:
                yield
        finally:
            item[1] -= 1
            if item[1] == 0:
                del self.locks[name]

    def remember(self, name: str, revision: int, obj: dict[str, Any], trusted: bool) -> None:
        cache = self.cache
        cache[name] = _Cached(revision, obj, trusted)
        cache.move_to_end(name)
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)


class NatsStore(PortalStore):
    """Limiter state in a NATS JetStream key-value bucket, changed by compare-and-set.

    ``url``: ``nats://host:4222`` or ``tls://...`` (several comma-separated for a cluster);
    ``user``/``password``/``token``/``credentials`` (a ``.creds`` file) are passed to nats-py.
    ``bucket`` is created on first use if missing (history 1, ``max_age`` seconds bounding idle
    entries: it must be longer than the longest window, lease or quota reset in use, or idle state
    is forgotten early). ``sync_clock`` calibrates ``clock`` against the server's timestamps (see
    the module docstring); ``clock`` defaults to ``time.monotonic`` then, ``time.time`` without.
    """

    engine = "nats"
    OPTIONS = frozenset(
        {
            "url",
            "bucket",
            "max_age",
            "credentials",
            "user",
            "password",
            "token",
            "connect_timeout",
            "request_timeout",
            "replicas",
            "sync_clock",
        }
    )

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        bucket: str = "ratesync",
        max_age: float = 86400.0,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials: str | None = None,
        connect_timeout: float = 1.0,
        request_timeout: float = 1.0,
        replicas: int = 1,
        sync_clock: bool = True,
        clock: Callable[[], float] | None = None,
        clock_sync_interval: float = 60.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        name: str = "",
        on_error: OnError = "closed",
        retry_interval: float = 1.0,
    ) -> None:
        super().__init__(on_error=on_error, retry_interval=retry_interval, name=name)
        _require_nats()
        if not _BUCKET_RE.match(bucket):
            raise ConfigurationError(
                f"bucket names allow letters, digits, '-' and '_' only, not {bucket!r}", key="bucket"
            )
        if max_age <= 0 or connect_timeout <= 0 or request_timeout <= 0:
            raise ConfigurationError("max_age, connect_timeout and request_timeout must be greater than zero")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, not {max_attempts!r}")
        self.url = url
        self.servers = [u.strip() for u in url.split(",") if u.strip()]
        if not self.servers:
            raise ConfigurationError("url is empty", key="url")
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.max_age = float(max_age)
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self.replicas = replicas
        self.max_attempts = max_attempts
        self.sync_clock = sync_clock
        self.clock_sync_interval = clock_sync_interval
        self._auth = {"user": user, "password": password, "token": token, "user_credentials": credentials}
        # Everything that must never be logged: the options' secrets and those inside the urls
        # (a user name without a password is a token in NATS).
        self._secrets = [s for s in (password, token) if s]
        for server in self.servers:
            with contextlib.suppress(ValueError):
                parts = urlsplit(server)
                secret = parts.password if parts.password is not None else parts.username
                if secret:
                    self._secrets.append(secret)
        self._clock = clock if clock is not None else (time.monotonic if sync_clock else time.time)
        # Until the first calibration, assume the client's wall clock is right.
        self._offset = time.time() - self._clock() if sync_clock else 0.0
        #: Half the round trip of the best calibration sample: the bound on the clock's error.
        self.clock_error: float | None = None
        self._next_sync = 0.0
        self._portal: Portal | None = None
        self._lock = threading.Lock()
        self._conns: dict[asyncio.AbstractEventLoop, _Conn] = {}
        self._connect_locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._warned_max_age = False
        self._warned_clock = False
        self._errors: tuple[type[BaseException], ...] | None = None
        #: Conflicting writes retried so far (contention between processes).
        self.conflicts = 0
        # The write-from-cache fast path (switched off by the benchmark to measure read + write).
        self._write_from_cache = True
        # The whole of one operation, bounded (each request is bounded by request_timeout too).
        self._call_timeout = self.connect_timeout + 4 * self.request_timeout + 5.0

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> NatsStore:
        """Build from a ``[stores.<name>]`` table of rate-sync.toml."""
        from .._convert import as_bool, as_float, as_int, as_str

        def opt_str(key: str) -> str | None:
            value = options.get(key)
            return None if value is None else as_str(value, key)

        store = cls(
            as_str(options.get("url", "nats://127.0.0.1:4222"), "url"),
            bucket=as_str(options.get("bucket", "ratesync"), "bucket"),
            max_age=as_float(options.get("max_age", 86400.0), "max_age"),
            user=opt_str("user"),
            password=opt_str("password"),
            token=opt_str("token"),
            credentials=opt_str("credentials"),
            connect_timeout=as_float(options.get("connect_timeout", 1.0), "connect_timeout"),
            request_timeout=as_float(options.get("request_timeout", 1.0), "request_timeout"),
            replicas=as_int(options.get("replicas", 1), "replicas"),
            sync_clock=as_bool(options.get("sync_clock", True), "sync_clock"),
            name=name,
            on_error=options.get("on_error", "closed"),
            retry_interval=as_float(options.get("retry_interval", 1.0), "retry_interval"),
        )
        return store

    def describe(self) -> str:
        return f"nats {redact_nats_url(self.url)} bucket {self.bucket}"

    def now(self) -> float:
        """The store clock: the client clock corrected by the calibrated offset to the server's."""
        return self._clock() + self._offset

    # -- connections ---------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        for url in self.servers:
            safe = _redact_one(url)
            if safe != url:
                text = text.replace(url, safe)
        return text

    async def _open(self) -> _Conn:
        import nats
        import nats.errors
        import nats.js.errors
        from nats.js.api import KeyValueConfig

        async def on_error(exc: Exception) -> None:
            # nats-py's default handler logs every failed reconnect attempt at ERROR with a
            # traceback; the outage policy already logs the switch once.
            logger.debug("rate-sync nats store %r: %s", self.name, self._scrub(f"{type(exc).__name__}: {exc}"))

        holder: list[Any] = []

        async def on_disconnect() -> None:
            # Requests in flight when the connection drops will never be answered (their replies
            # went to the lost connection); without this each waits out request_timeout. nats-py
            # keeps their futures in a private map: fail them now if it is there.
            if holder:
                pending = getattr(holder[0], "_resp_map", None)
                if isinstance(pending, dict):
                    for future in list(pending.values()):
                        if not future.done():
                            future.set_exception(nats.errors.ConnectionClosedError())

        async def on_event() -> None:
            return None

        nc = await nats.connect(
            servers=self.servers,
            name=f"rate-sync {self.name}",
            connect_timeout=self.connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=_MAX_RECONNECT_ATTEMPTS,
            reconnect_time_wait=_RECONNECT_TIME_WAIT,
            ping_interval=_PING_INTERVAL,
            max_outstanding_pings=_MAX_OUTSTANDING_PINGS,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_event,
            closed_cb=on_event,
            **{k: v for k, v in self._auth.items() if v},
        )
        holder.append(nc)
        try:
            js = nc.jetstream(timeout=self.request_timeout)
            try:
                kv = await js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.max_age,
                    replicas=self.replicas,
                    direct=True,
                    description="rate-sync limiter state",
                )
                try:
                    kv = await js.create_key_value(config)
                except nats.js.errors.BadRequestError:
                    # Created meanwhile by another client (with another configuration): use it.
                    kv = await js.key_value(self.bucket)
            conn = _Conn(nc, js, kv)
            if self.sync_clock and time.monotonic() >= self._next_sync:
                await self._calibrate(conn)
        except BaseException:
            await _close_quietly(nc)
            raise
        return conn

    async def _conn(self) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is not None and conn.pid == os.getpid():
            nc = conn.nc
            if nc.is_connected:
                if self.sync_clock and time.monotonic() >= self._next_sync:
                    await self._calibrate(conn)
                return conn
            if nc.is_reconnecting:
                # Fail fast instead of queueing behind a reconnect (the policy decides the answer).
                import nats.errors

                raise nats.errors.ConnectionReconnectingError
        return await self._reconnect(loop)

    async def _reconnect(self, loop: asyncio.AbstractEventLoop) -> _Conn:
        with self._lock:
            self._forget_dead_loops()
            lock = self._connect_locks.get(loop)
            if lock is None:
                lock = self._connect_locks[loop] = asyncio.Lock()
        async with lock:
            conn = self._conns.get(loop)
            if conn is not None and conn.pid == os.getpid() and conn.nc.is_connected:
                return conn
            if conn is not None:
                with self._lock:
                    self._conns.pop(loop, None)
                if conn.pid == os.getpid():
                    await _close_quietly(conn.nc)
            conn = await self._open()
            with self._lock:
                self._conns[loop] = conn
            return conn

    def _forget_dead_loops(self) -> None:
        # Connections of loops that have closed (or of the parent, after fork) cannot be used or
        # closed any more: drop the references. Called with self._lock held.
        pid = os.getpid()
        for loop in [lp for lp, c in self._conns.items() if lp.is_closed() or c.pid != pid]:
            del self._conns[loop]
        for loop in [lp for lp in self._connect_locks if lp.is_closed()]:
            del self._connect_locks[loop]

    async def _drop(self, conn: _Conn) -> None:
        """Forget a connection that failed a request; the next call connects afresh."""
        with self._lock:
            for loop, c in list(self._conns.items()):
                if c is conn:
                    del self._conns[loop]
        await _close_quietly(conn.nc)

    async def _close_current(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            conn = self._conns.pop(loop, None)
            self._connect_locks.pop(loop, None)
            self._forget_dead_loops()
        if conn is not None and conn.pid == os.getpid():
            await _close_quietly(conn.nc)

    def initialize(self) -> None:
        """Connect (on the sync side) and create the bucket if missing."""
        self._sync(self._conn)

    async def ainitialize(self) -> None:
        """Connect on the running loop and create the bucket if missing."""
        await self._conn()

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        if self._errors is None:
            import nats.errors
            import nats.js.errors

            self._errors = (
                *super()._backend_errors(),
                nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError,
                nats.errors.ConnectionDrainingError,
                nats.errors.NoServersError,
                nats.errors.TimeoutError,
                nats.errors.StaleConnectionError,
                nats.errors.OutboundBufferLimitError,
                nats.errors.NoRespondersError,
                nats.errors.AuthorizationError,
                nats.errors.SecureConnFailedError,
                nats.js.errors.ServiceUnavailableError,
                nats.js.errors.ServerError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.BucketNotFoundError,
            )
        return self._errors

    # -- the clock -----------------------------------------------------------------------------

    async def _calibrate(self, conn: _Conn) -> None:
        """Measure the offset from the client clock to the server's: write, read back its timestamp."""
        import nats.js.errors

        # Claimed before the first await: concurrent callers keep using the current offset.
        self._next_sync = time.monotonic() + self.clock_sync_interval
        # Read back the way kv.get reads (direct get when the bucket allows it: same permissions).
        direct = bool(getattr(conn.kv, "_direct", False))
        best: tuple[float, float] | None = None
        for _ in range(3):
            t0 = self._clock()
            revision = await conn.kv.put(_PROBE_ENTRY, b"", validate_keys=False)
            t1 = self._clock()
            try:
                msg = await conn.js.get_msg(self.stream, seq=revision, direct=direct)
            except nats.js.errors.NotFoundError:
                continue  # replaced by another client's probe already (history 1): sample again
            except nats.js.errors.APIError as exc:
                # Refused (permissions, an old server): keep the current clock, say so once.
                if not self._warned_clock:
                    self._warned_clock = True
                    logger.warning(
                        "rate-sync nats store %r cannot read the server's timestamps (%s); using the client clock",
                        self.name,
                        self._scrub(str(exc)),
                    )
                return
            if msg.time is None:
                continue
            half = (t1 - t0) / 2
            if best is None or half < best[1]:
                best = (msg.time.timestamp() - (t0 + half), half)
        if best is None:
            self._next_sync = time.monotonic() + 1.0
            return
        self._offset, self.clock_error = best

    # -- compare-and-set -----------------------------------------------------------------------

    async def _read(self, conn: _Conn, name: str) -> tuple[int, dict[str, Any]]:
        import nats.js.errors

        try:
            entry = await conn.kv.get(name, validate_keys=False)
        except nats.js.errors.KeyNotFoundError as exc:
            # A deleted or purged entry leaves a marker: the next write must name its revision.
            marker = getattr(exc, "entry", None)
            return (marker.revision or 0) if marker is not None else 0, {}
        return entry.revision or 0, _loads(entry.value)

    async def _cas(
        self,
        name: str,
        change: Callable[[dict[str, Any], float], tuple[T, dict[str, Any] | None]],
    ) -> T:
        """Read entry ``name``, apply ``change(obj, now) -> (result, new_obj or None)``, write it back.

        ``None`` means nothing to write. A write conflicting with another client's re-reads and
        retries. The cached copy of an entry is only used when the outcome is a write: the
        conditional write proves the copy current; an answer that writes nothing is always
        decided on a fresh read.
        """
        import nats.errors
        import nats.js.errors

        conn = await self._conn()
        try:
            async with conn.hold(name):
                cached = conn.cache.get(name)
                use_cache = self._write_from_cache and cached is not None and cached.trusted
                attempt = 0
                while True:
                    if use_cache:
                        assert cached is not None
                        revision, obj = cached.revision, cached.obj
                    else:
                        revision, obj = await self._read(conn, name)
                    now = self.now()
                    result, new_obj = change(obj, now)
                    if new_obj is None or new_obj == obj:
                        if use_cache:
                            use_cache = False
                            continue
                        return result
                    try:
                        new_revision = await conn.kv.update(name, _dumps(new_obj), last=revision, validate_keys=False)
                    except nats.js.errors.KeyWrongLastSequenceError:
                        conn.cache.pop(name, None)
                        if use_cache:
                            use_cache = False  # the copy was stale: read, no need to back off
                            continue
                        self.conflicts += 1
                        attempt += 1
                        if attempt >= self.max_attempts:
                            raise StoreError(
                                f"store {self.name!r} ({self.describe()}): {attempt} conflicting writes in a row "
                                f"on entry {name!r}; giving up"
                            ) from None
                        await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)))
                        continue
                    # Trusted when nobody wrote between our previous write and this one.
                    quiet = use_cache or (cached is not None and cached.revision == revision)
                    conn.remember(name, new_revision, new_obj, quiet)
                    return result
        except (nats.errors.TimeoutError, nats.errors.StaleConnectionError, nats.errors.NoRespondersError):
            # A connection that stopped answering is dropped; the next call (the outage policy's
            # probe) connects afresh instead of waiting on it again.
            await self._drop(conn)
            raise

    def _check_max_age(self, ttl: float) -> None:
        if ttl > self.max_age and not self._warned_max_age:
            self._warned_max_age = True
            logger.warning(
                "rate-sync nats store %r: state must live %.0f s but the bucket's max_age is %.0f s; idle state "
                "will be forgotten early (raise max_age)",
                self.name,
                ttl,
                self.max_age,
            )

    # -- operations (async; the sync API runs them on the portal) --------------------------------

    def _slots_entry(self, slots: Sequence[Slot]) -> str:
        name = entry_name(slots[0][0])
        for key, _ in slots[1:]:
            if entry_name(key) != name:
                raise ValueError(
                    f"the keys of one call must share a hash tag ({{...}}): {slots[0][0]!r} and {key!r} do not"
                )
        return name

    async def _run_acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        specs = [spec for _, spec in slots]

        def change(obj: dict[str, Any], now: float) -> tuple[Decision, dict[str, Any] | None]:
            states = [_field_state(obj, key, spec, now) for key, spec in slots]
            decision, new_states = decide(states, 0.0, cost, specs, max_wait, now)
            if not decision.allowed:
                return decision, None
            new_obj = _live(obj, now)
            for (key, spec), state in zip(slots, new_states, strict=True):
                ttl = state_ttl(state, 0.0, spec)
                if ttl > 0:
                    self._check_max_age(ttl)
                    new_obj[key] = [now + ttl, _KINDS[type(spec)], _encode_state(state, spec, now)]
                else:
                    new_obj.pop(key, None)
            return decision, new_obj

        return await self._cas(self._slots_entry(slots), change)

    async def _run_peek(self, slots: Sequence[Slot]) -> Decision:
        name = self._slots_entry(slots)
        conn = await self._conn()
        _, obj = await self._read(conn, name)
        now = self.now()
        return peek([_field_state(obj, key, spec, now) for key, spec in slots], 0.0, [s for _, s in slots], now)

    async def _run_observe(self, key: str, spec: Quota, obs: Observation) -> None:
        def change(obj: dict[str, Any], now: float) -> tuple[None, dict[str, Any] | None]:
            state = quota_observe(_field_state(obj, key, spec, now), 0.0, obs, spec)
            if state is None:
                return None, None
            new_obj = _live(obj, now)
            ttl = state_ttl(state, 0.0, spec)
            if ttl > 0:
                self._check_max_age(ttl)
                new_obj[key] = [now + ttl, _KINDS[Quota], _encode_state(state, spec, now)]
            else:
                new_obj.pop(key, None)
            return None, new_obj

        await self._cas(entry_name(key), change)

    async def _run_lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        def change(obj: dict[str, Any], now: float) -> tuple[LeaseDecision, dict[str, Any] | None]:
            leases = {k: float(v) for k, v in obj.items() if isinstance(v, int | float)}
            decision, live = lease_acquire(leases, now, limit, lease_seconds, lease_id)
            if not decision.acquired:
                return decision, None
            self._check_max_age(lease_seconds)
            return decision, dict(live)

        return await self._cas(_lease_entry(key), change)

    async def _run_lease_release(self, key: str, lease_id: str) -> None:
        def change(obj: dict[str, Any], now: float) -> tuple[None, dict[str, Any] | None]:
            if lease_id not in obj:
                return None, None
            return None, {k: v for k, v in obj.items() if k != lease_id and isinstance(v, int | float) and v > now}

        await self._cas(_lease_entry(key), change)

    async def _run_reset(self, keys: Sequence[str]) -> None:
        by_entry: dict[str, list[str]] = {}
        for key in keys:
            by_entry.setdefault(entry_name(key), []).append(key)

        def forget(names: list[str]) -> Callable[[dict[str, Any], float], tuple[None, dict[str, Any] | None]]:
            def change(obj: dict[str, Any], now: float) -> tuple[None, dict[str, Any] | None]:
                if not any(n in obj for n in names):
                    return None, None
                return None, {k: v for k, v in _live(obj, now).items() if k not in names}

            return change

        def clear(obj: dict[str, Any], now: float) -> tuple[None, dict[str, Any] | None]:
            return None, ({} if obj else None)

        for name, group in by_entry.items():
            await self._cas(name, forget(group))
        for key in keys:
            await self._cas(_lease_entry(key), clear)


async def _close_quietly(nc: Any) -> None:
    # Closing must not fail the caller, nor hang on a connection that stopped answering.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 2.0)


def _require_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise MissingDependencyError("nats-py", "nats", "the NATS store (engine = 'nats')") from None
