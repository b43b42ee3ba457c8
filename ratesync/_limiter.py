"""A limiter: limits over a store, with waiting, concurrency leases and metrics."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ._algorithms import Decision, FixedWindow, SlidingWindow, Spec, TokenBucket
from ._exceptions import ConcurrencyMisuseError, ConfigurationError, RateLimitTimeout
from ._stores import MemoryStore, Store

__all__ = ["Acquisition", "Attempt", "Limiter", "LimiterMetrics", "LimiterState"]

#: Default lifetime of a concurrency lease: a holder that dies gives its slot back after this.
DEFAULT_LEASE_SECONDS = 60.0
#: Longest pause between two looks at a shared store while waiting for a concurrency slot that
#: another process holds (a release in this process wakes the waiter at once).
LEASE_POLL_SECONDS = 0.05
_INF = math.inf


@dataclass(frozen=True, slots=True)
class LimiterMetrics:
    """A snapshot of a limiter's counters since it was created (or ``reset_metrics``)."""

    acquisitions: int
    timeouts: int
    denials: int
    waits: int
    wait_ms_total: float
    wait_ms_avg: float
    wait_ms_max: float
    concurrent: int
    peak_concurrent: int
    store_errors: int


@dataclass(frozen=True, slots=True)
class LimiterState:
    """What the limiter would say now, without consuming anything."""

    limit: float
    remaining: float
    reset_after: float
    retry_after: float
    #: Concurrency slots in use in this process (``None`` without ``max_concurrent``).
    concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """The answer of :meth:`Limiter.try_acquire`: admitted now, or how long it would have waited."""

    allowed: bool
    retry_after: float
    remaining: float
    lease: _Lease | None = None

    def __bool__(self) -> bool:
        return self.allowed

    def release(self) -> None:
        """Give back the concurrency slot taken by this attempt (no-op without one)."""
        if self.lease is not None:
            self.lease.release()

    async def arelease(self) -> None:
        if self.lease is not None:
            await self.lease.arelease()

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Attempt:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.arelease()


class _Lease:
    __slots__ = ("_key", "_limiter", "_released", "lease_id")

    def __init__(self, limiter: Limiter, key: str, lease_id: str) -> None:
        self._limiter = limiter
        self._key = key
        self.lease_id = lease_id
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release_sync(self._key, self.lease_id)

    async def arelease(self) -> None:
        if not self._released:
            self._released = True
            await self._limiter._release_async(self._key, self.lease_id)


class _Waiters:
    """Wakes callers waiting for a concurrency slot when this process releases one.

    Works for threads and for any number of event loops; a waiter also wakes by itself after a
    short poll, since a slot freed by another process sends no signal.
    """

    __slots__ = ("_cond", "_futures")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._futures: collections.deque[asyncio.Future[None]] = collections.deque()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify()
            while self._futures:
                fut = self._futures.popleft()
                if not fut.done():
                    fut.get_loop().call_soon_threadsafe(_set_done, fut)
                    break

    def wait_sync(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    async def wait_async(self, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._cond:
            self._futures.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()
            # A waiter that timed out (the usual case while another process holds the slots)
            # must not stay queued: one stale future per poll would pile up.
            with self._cond, contextlib.suppress(ValueError):
                self._futures.remove(fut)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_lease_counter = iter(range(1, 2**62)).__next__
_lease_prefix = f"{os.getpid():x}-{os.urandom(4).hex()}"


def _new_lease_id() -> str:
    # Unique across processes and machines: pid and random bytes, then a counter.
    return f"{_lease_prefix}-{_lease_counter():x}"


def _after_fork() -> None:
    global _lease_prefix
    _lease_prefix = f"{os.getpid():x}-{os.urandom(4).hex()}"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class Limiter:
    """Limits (``specs``) and an optional concurrency limit over a store.

    Use it through :func:`ratesync.acquire` or directly: ``limiter.acquire(key=...)`` returns an
    object that is awaited, or entered with ``async with`` / ``with``.
    """

    def __init__(
        self,
        limiter_id: str,
        store: Store,
        specs: Sequence[Spec] = (),
        *,
        max_concurrent: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        timeout: float | None = None,
        store_id: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not specs and max_concurrent is None:
            raise ConfigurationError(f"limiter {limiter_id!r} has no limit: give a rate, a window or max_concurrent")
        if "{" in limiter_id or "}" in limiter_id:
            raise ConfigurationError(f"limiter id {limiter_id!r} must not contain braces")
        self.id = limiter_id
        self.store = store
        self.store_id = store_id or store.name
        self.specs: tuple[Spec, ...] = tuple(specs)
        self.max_concurrent = max_concurrent
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._capacity = min((s.capacity for s in self.specs), default=math.inf)
        self._slots_cache: dict[str | None, tuple[tuple[tuple[str, Spec], ...], str]] = {}
        self._waiters = _Waiters() if max_concurrent is not None else None
        # The hot path: one token bucket on the memory store skips the generic slot machinery.
        self._fast: Callable[[str, float, float, int, float], float] | None = None
        self._interval = self._span = 0.0
        self._key0 = ""
        self._fast_keys: dict[str, str] = {}
        if type(store) is MemoryStore and len(self.specs) == 1 and isinstance(self.specs[0], TokenBucket):
            self._fast = store.gcra
            self._interval = 1.0 / self.specs[0].rate_per_second
            self._span = self.specs[0].burst * self._interval
            self._key0 = self._slots(None)[0][0][0]
        self._lock = threading.Lock()
        self.reset_metrics()

    def __repr__(self) -> str:
        limits = ", ".join(_describe_spec(s) for s in self.specs)
        if self.max_concurrent is not None:
            limits = ", ".join(filter(None, [limits, f"max_concurrent={self.max_concurrent}"]))
        return f"<Limiter {self.id!r} {limits} store={self.store_id!r} concurrent={self._concurrent}>"

    # -- keys --------------------------------------------------------------------------------

    def _slots(self, key: str | None) -> tuple[tuple[tuple[str, Spec], ...], str]:
        cached = self._slots_cache.get(key)
        if cached is not None:
            return cached
        base = self.id if key is None else f"{self.id}:{_clean_key(key)}"
        slots = tuple((f"{{{base}}}#{i}", spec) for i, spec in enumerate(self.specs))
        result = (slots, f"{{{base}}}#lease")
        if key is None or len(self._slots_cache) < 1024:
            # Per-user keys are many; cache the first thousand, build the rest each time.
            self._slots_cache[key] = result
        return result

    def _fast_key(self, key: str) -> str:
        k = self._slots(key)[0][0][0]
        if len(self._fast_keys) < 4096:
            self._fast_keys[key] = k
        return k

    def store_keys(self, key: str | None = None) -> list[str]:
        """The store keys holding this limiter's state for ``key`` (for inspection and clearing)."""
        slots, lease_key = self._slots(key)
        return [k for k, _ in slots] + ([lease_key] if self.max_concurrent is not None else [])

    # -- public API ----------------------------------------------------------------------------

    def acquire(self, key: str | None = None, *, cost: int = 1, timeout: float | None = None) -> Acquisition:
        """Wait for a permit: ``await``, ``async with`` or ``with`` the result."""
        return Acquisition(self, key, cost, self.timeout if timeout is None else timeout)

    def try_acquire(self, key: str | None = None, *, cost: int = 1) -> Attempt:
        """Take a permit only if one is free now; never waits."""
        self._check_cost(cost)
        lease = None
        if self.max_concurrent is not None:
            lease_id = _new_lease_id()
            _, lease_key = self._slots(key)
            ld = self.store.lease_acquire(lease_key, self.max_concurrent, self.lease_seconds, lease_id)
            if ld.degraded:
                self._store_errors += 1
            if not ld.acquired:
                self._denials += 1
                return Attempt(False, ld.retry_after, 0.0)
            lease = self._leased(lease_key, lease_id)
        if self.specs:
            d = self.store.acquire(self._slots(key)[0], cost, 0.0)
            if d.degraded:
                self._store_errors += 1
            if not d.allowed:
                self._denials += 1
                if lease is not None:
                    lease.release()
                return Attempt(False, d.wait, d.remaining)
            remaining = d.remaining
        else:
            remaining = math.inf
        self._acquisitions += 1
        return Attempt(True, 0.0, remaining, lease)

    async def atry_acquire(self, key: str | None = None, *, cost: int = 1) -> Attempt:
        """Async twin of :meth:`try_acquire`."""
        self._check_cost(cost)
        lease = None
        if self.max_concurrent is not None:
            lease_id = _new_lease_id()
            _, lease_key = self._slots(key)
            ld = await self.store.alease_acquire(lease_key, self.max_concurrent, self.lease_seconds, lease_id)
            if ld.degraded:
                self._store_errors += 1
            if not ld.acquired:
                self._denials += 1
                return Attempt(False, ld.retry_after, 0.0)
            lease = self._leased(lease_key, lease_id)
        if self.specs:
            d = await self.store.aacquire(self._slots(key)[0], cost, 0.0)
            if d.degraded:
                self._store_errors += 1
            if not d.allowed:
                self._denials += 1
                if lease is not None:
                    await lease.arelease()
                return Attempt(False, d.wait, d.remaining)
            remaining = d.remaining
        else:
            remaining = math.inf
        self._acquisitions += 1
        return Attempt(True, 0.0, remaining, lease)

    def state(self, key: str | None = None) -> LimiterState:
        """Limit, remaining and reset for ``key``, consuming nothing."""
        if not self.specs:
            return LimiterState(self.max_concurrent or 0, math.inf, 0.0, 0.0, self._concurrent)
        d = self.store.peek(self._slots(key)[0])
        return self._as_state(d)

    async def astate(self, key: str | None = None) -> LimiterState:
        if not self.specs:
            return LimiterState(self.max_concurrent or 0, math.inf, 0.0, 0.0, self._concurrent)
        return self._as_state(await self.store.apeek(self._slots(key)[0]))

    def _as_state(self, d: Decision) -> LimiterState:
        concurrent = self._concurrent if self.max_concurrent is not None else None
        return LimiterState(d.limit, d.remaining, d.reset_after, 0.0 if d.allowed else d.wait, concurrent)

    def reset(self, key: str | None = None) -> None:
        """Forget the state of ``key`` (everything this limiter has charged it)."""
        self.store.reset(self.store_keys(key))

    async def areset(self, key: str | None = None) -> None:
        await self.store.areset(self.store_keys(key))

    def get_metrics(self) -> LimiterMetrics:
        """Counters since creation: cheap increments on the hot path, a snapshot here."""
        waits = self._waits
        return LimiterMetrics(
            acquisitions=self._acquisitions,
            timeouts=self._timeouts,
            denials=self._denials,
            waits=waits,
            wait_ms_total=self._wait_total * 1000.0,
            wait_ms_avg=(self._wait_total * 1000.0 / waits) if waits else 0.0,
            wait_ms_max=self._wait_max * 1000.0,
            concurrent=self._concurrent,
            peak_concurrent=self._peak,
            store_errors=self._store_errors,
        )

    def reset_metrics(self) -> None:
        self._acquisitions = 0
        self._timeouts = 0
        self._denials = 0
        self._waits = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._concurrent = 0
        self._peak = 0
        self._store_errors = 0

    # -- the work behind Acquisition -------------------------------------------------------

    def _check_cost(self, cost: int) -> None:
        if cost < 1 or cost != int(cost):
            raise ValueError(f"cost must be a whole number of at least 1, got {cost!r}")
        if cost > self._capacity:
            raise ValueError(
                f"cost {cost} exceeds the capacity of limiter {self.id!r} ({self._capacity:g}); "
                "it could never be admitted"
            )

    def _timed_out(self, wait: float, timeout: float | None) -> RateLimitTimeout:
        self._timeouts += 1
        return RateLimitTimeout(
            f"limiter {self.id!r}: waiting {wait:.3f}s would exceed the timeout of {timeout}s",
            limiter_id=self.id,
            retry_after=wait,
        )

    def _record_wait(self, wait: float) -> None:
        self._waits += 1
        self._wait_total += wait
        if wait > self._wait_max:
            self._wait_max = wait

    def _fast_wait(self, key: str | None, cost: int, timeout: float | None) -> float:
        wait = self._fast(  # type: ignore[misc]
            self._key0 if key is None else (self._fast_keys.get(key) or self._fast_key(key)),
            self._interval,
            self._span,
            cost,
            _INF if timeout is None else timeout,
        )
        if wait != 0.0:
            return self._fast_waited(wait, timeout)
        return wait

    def _fast_waited(self, wait: float, timeout: float | None) -> float:
        # Off the allowed path: a reservation to record, or a refusal to raise.
        if wait < 0.0:
            raise self._timed_out(-wait, timeout)
        self._record_wait(wait)
        return wait

    def _rate_sync(self, key: str | None, cost: int, timeout: float | None) -> float:
        """Wait for the rate limits; return the seconds waited."""
        if self._fast is not None:
            wait = self._fast_wait(key, cost, timeout)
            if wait > 0.0:
                self._sleep(wait)
            return wait
        if not self.specs:
            return 0.0
        d = self.store.acquire(self._slots(key)[0], cost, _INF if timeout is None else timeout)
        if d.degraded:
            self._store_errors += 1
        if not d.allowed:
            raise self._timed_out(d.wait, timeout)
        if d.wait > 0.0:
            self._record_wait(d.wait)
            self._sleep(d.wait)
        return d.wait

    async def _rate_async(self, key: str | None, cost: int, timeout: float | None) -> float:
        if self._fast is not None:
            wait = self._fast_wait(key, cost, timeout)
            if wait > 0.0:
                await self._async_sleep(wait)
            return wait
        if not self.specs:
            return 0.0
        d = await self.store.aacquire(self._slots(key)[0], cost, _INF if timeout is None else timeout)
        if d.degraded:
            self._store_errors += 1
        if not d.allowed:
            raise self._timed_out(d.wait, timeout)
        if d.wait > 0.0:
            self._record_wait(d.wait)
            await self._async_sleep(d.wait)
        return d.wait

    def _leased(self, lease_key: str, lease_id: str) -> _Lease:
        with self._lock:
            self._concurrent += 1
            if self._concurrent > self._peak:
                self._peak = self._concurrent
        return _Lease(self, lease_key, lease_id)

    def _lease_sync(self, key: str | None, timeout: float | None) -> _Lease:
        assert self.max_concurrent is not None and self._waiters is not None
        _, lease_key = self._slots(key)
        lease_id = _new_lease_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        started = None
        while True:
            ld = self.store.lease_acquire(lease_key, self.max_concurrent, self.lease_seconds, lease_id)
            if ld.degraded:
                self._store_errors += 1
            if ld.acquired:
                if started is not None:
                    self._record_wait(time.monotonic() - started)
                return self._leased(lease_key, lease_id)
            now = time.monotonic()
            started = started if started is not None else now
            pause = min(max(ld.retry_after, 0.001), LEASE_POLL_SECONDS)
            if deadline is not None:
                if now >= deadline:
                    raise self._timed_out(max(ld.retry_after, 0.0), timeout)
                pause = min(pause, deadline - now)
            self._waiters.wait_sync(pause)

    async def _lease_async(self, key: str | None, timeout: float | None) -> _Lease:
        assert self.max_concurrent is not None and self._waiters is not None
        _, lease_key = self._slots(key)
        lease_id = _new_lease_id()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        started = None
        while True:
            try:
                ld = await self.store.alease_acquire(lease_key, self.max_concurrent, self.lease_seconds, lease_id)
            except BaseException:
                # Cancelled (or failed) while the store may already have granted the lease:
                # give it back rather than leave the slot taken until it expires. If that fails
                # too, the lease expires by itself; the original error is what the caller sees.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.alease_release(lease_key, lease_id))
                raise
            if ld.degraded:
                self._store_errors += 1
            if ld.acquired:
                if started is not None:
                    self._record_wait(loop.time() - started)
                return self._leased(lease_key, lease_id)
            now = loop.time()
            started = started if started is not None else now
            pause = min(max(ld.retry_after, 0.001), LEASE_POLL_SECONDS)
            if deadline is not None:
                if now >= deadline:
                    raise self._timed_out(max(ld.retry_after, 0.0), timeout)
                pause = min(pause, deadline - now)
            await self._waiters.wait_async(pause)

    def _release_sync(self, lease_key: str, lease_id: str) -> None:
        # Count the slot as free before the store frees it, so the metrics never show a waiter
        # that got the slot overlapping with the holder that gave it up.
        self._uncount()
        try:
            self.store.lease_release(lease_key, lease_id)
        finally:
            self._wake()

    async def _release_async(self, lease_key: str, lease_id: str) -> None:
        self._uncount()
        try:
            await asyncio.shield(self.store.alease_release(lease_key, lease_id))
        finally:
            self._wake()

    def _uncount(self) -> None:
        with self._lock:
            self._concurrent -= 1

    def _wake(self) -> None:
        if self._waiters is not None:
            self._waiters.notify()


class Acquisition:
    """One acquire, used as ``await``, ``async with`` or ``with``.

    ``await`` waits for the rate limits; on a limiter with ``max_concurrent`` it raises
    :class:`ConcurrencyMisuseError`, since nothing would release the slot: use ``async with``.
    """

    # ``_lease`` and ``_waited`` are set only when there is one: an acquire that goes at once on a
    # limiter without ``max_concurrent`` (the common case) writes four attributes, not six.
    __slots__ = ("_cost", "_key", "_lease", "_limiter", "_timeout", "_waited")

    def __init__(self, limiter: Limiter, key: str | None, cost: int, timeout: float | None) -> None:
        self._limiter = limiter
        self._key = key
        self._cost = cost
        self._timeout = timeout

    @property
    def waited(self) -> float:
        """Seconds this acquire was told to wait for the rate limits (0.0: it went at once)."""
        return getattr(self, "_waited", 0.0)

    def __await__(self) -> Generator[Any, None, Acquisition]:
        # A generator rather than a coroutine chain: on the allowed path of the memory store
        # nothing is awaited at all.
        limiter = self._limiter
        if limiter.max_concurrent is not None:
            raise ConcurrencyMisuseError(
                f"limiter {limiter.id!r} has max_concurrent={limiter.max_concurrent}: a bare await would never "
                f'release its slot; use "async with acquire({limiter.id!r}):" instead'
            )
        if self._cost != 1:
            limiter._check_cost(self._cost)
        if limiter._fast is not None:
            wait = limiter._fast_wait(self._key, self._cost, self._timeout)
            if wait > 0.0:
                self._waited = wait
                yield from _awaitable(limiter._async_sleep(wait))
        else:
            self._waited = yield from limiter._rate_async(self._key, self._cost, self._timeout).__await__()
        limiter._acquisitions += 1
        return self

    async def __aenter__(self) -> Acquisition:
        limiter = self._limiter
        if self._cost != 1:
            limiter._check_cost(self._cost)
        timeout = self._timeout
        if limiter.max_concurrent is None:
            if limiter._fast is not None:
                wait = limiter._fast_wait(self._key, self._cost, timeout)
                if wait > 0.0:
                    self._waited = wait
                    await limiter._async_sleep(wait)
            else:
                self._waited = await limiter._rate_async(self._key, self._cost, timeout)
            limiter._acquisitions += 1
            return self
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._waited = await limiter._rate_async(self._key, self._cost, timeout)
        left = None if timeout is None else max(0.0, timeout - (loop.time() - started))
        self._lease = await limiter._lease_async(self._key, left)
        limiter._acquisitions += 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._limiter.max_concurrent is not None:
            lease = getattr(self, "_lease", None)
            if lease is not None:
                del self._lease
                await lease.arelease()

    def __enter__(self) -> Acquisition:
        limiter = self._limiter
        if self._cost != 1:
            limiter._check_cost(self._cost)
        timeout = self._timeout
        if limiter.max_concurrent is None:
            fast = limiter._fast
            if fast is not None:
                # The hot path, inlined: one call into the memory store, nothing built.
                key = self._key
                wait = fast(
                    limiter._key0 if key is None else (limiter._fast_keys.get(key) or limiter._fast_key(key)),
                    limiter._interval,
                    limiter._span,
                    self._cost,
                    _INF if timeout is None else timeout,
                )
                if wait != 0.0:
                    self._waited = limiter._fast_waited(wait, timeout)
                    limiter._sleep(self.waited)
            else:
                self._waited = limiter._rate_sync(self._key, self._cost, timeout)
            limiter._acquisitions += 1
            return self
        started = time.monotonic()
        self._waited = limiter._rate_sync(self._key, self._cost, timeout)
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        self._lease = limiter._lease_sync(self._key, left)
        limiter._acquisitions += 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._limiter.max_concurrent is not None:
            lease = getattr(self, "_lease", None)
            if lease is not None:
                del self._lease
                lease.release()


def _awaitable(aw: Awaitable[None]) -> Generator[Any, None, None]:
    return aw.__await__()


def _clean_key(key: str) -> str:
    # Braces would change the Redis Cluster hash tag of the limiter's keys.
    return key.replace("{", "(").replace("}", ")") if "{" in key or "}" in key else key


def _describe_spec(spec: Spec) -> str:
    if isinstance(spec, TokenBucket):
        return f"{spec.rate_per_second:g}/s burst {spec.burst}"
    if isinstance(spec, SlidingWindow):
        return f"{spec.limit} per {spec.window_seconds:g}s sliding"
    if isinstance(spec, FixedWindow):
        return f"{spec.limit} per {spec.window_seconds:g}s fixed"
    return type(spec).__name__
