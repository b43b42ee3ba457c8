"""The in-process store: one dict under one lock, bounded, safe under threads and asyncio."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .._algorithms import (
    _ALGORITHMS,
    EPSILON,
    Decision,
    LeaseDecision,
    Observation,
    Quota,
    QuotaState,
    TokenBucket,
    _floor,
    checked_observation,
    decide,
    lease_acquire,
    peek,
    quota_observe,
    state_ttl,
)
from .._exceptions import ConfigurationError
from ._base import Slot, Store

__all__ = ["MemoryStore"]

logger = logging.getLogger("ratesync")

#: How many of the least recently used keys one write looks at to drop expired state.
_SWEEP = 2

_instances: weakref.WeakSet[MemoryStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork() time would stay held forever in the child.
    for store in list(_instances):
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MemoryStore(Store):
    """Limiter state in this process.

    ``capacity`` bounds the number of keys (per-user keys cannot grow memory without bound): state
    that has expired is dropped as it is met, and past the capacity the least recently used key is
    evicted even if it is live (counted in ``evicted_live``; such a key starts afresh).
    ``clock`` is a monotonic clock in seconds; tests inject their own.

    The lock is never held across an ``await``, so the async methods are the sync ones.
    """

    engine = "memory"
    OPTIONS = frozenset({"capacity"})

    def __init__(
        self,
        *,
        capacity: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        on_error: Any = "closed",
    ) -> None:
        super().__init__(name=name, on_error=on_error)
        if capacity < 1:
            raise ConfigurationError(f"capacity must be at least 1, not {capacity!r}")
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (state, expires_at); LRU order, oldest first.
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._leases: dict[str, dict[str, float]] = {}
        self.evicted_live = 0
        _instances.add(self)

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> MemoryStore:
        from .._convert import as_float, as_int

        store = cls(
            name=name,
            capacity=as_int(options.get("capacity", 100_000), "capacity"),
            on_error=options.get("on_error", "closed"),
        )
        if "retry_interval" in options:
            store.retry_interval = as_float(options["retry_interval"], "retry_interval")
        return store

    def describe(self) -> str:
        return f"memory (capacity {self.capacity})"

    def __len__(self) -> int:
        return len(self._data)

    def now(self) -> float:
        return self._clock()

    # The memory backend cannot fail the way a network one does: no policy wrapper on the hot path.

    def acquire(self, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
        with self._lock:
            now = self._clock()
            admitted = self._admit_now(slots, now, cost)
            if admitted is not None:
                return admitted
            states = [self._get(key, now) for key, _ in slots]
            decision, new_states = decide(states, now, cost, [s for _, s in slots], max_wait)
            if decision.allowed:
                for (key, spec), new_state in zip(slots, new_states, strict=True):
                    self._put(key, new_state, now + state_ttl(new_state, now, spec))
            return decision

    def _admit_now(self, slots: Sequence[Slot], now: float, cost: int) -> Decision | None:
        """One or several limits that all admit the call now (the usual case): charged, and their decision.

        ``decide``'s admitted-now case with token buckets inlined, as ``gcra`` inlines a single
        one (a host's bucket and its learned quota are the pair every HTTP request takes). None,
        and nothing written, when some limit would make the call wait: ``decide`` places it then.
        Checked against ``decide`` in tests/stores/test_memory_fast_path.py.
        """
        data = self._data
        writes: list[tuple[str, Any, float]] = []
        remaining = -1.0  # the tightest limit's; the first limit always sets it
        limit: float = 0.0
        latest_reset = 0.0
        for key, spec in slots:
            entry = data.get(key)
            state = entry[0] if entry is not None and entry[1] > now else None
            if type(spec) is TokenBucket:
                interval = 1.0 / spec.rate_per_second
                span = spec.burst * interval
                tat = now if state is None or state < now else state
                new_tat = tat + cost * interval
                if new_tat - span - now > EPSILON:
                    return None
                left = max(0.0, _floor((span - (new_tat - now)) / interval))
                reset_after = new_tat - now
                lim: float = spec.burst
                writes.append((key, new_tat, now + max(0.0, reset_after)))
            elif type(spec) is Quota and state is not None and state[0] > now and state[1] >= cost:
                # ``quota`` inside the learned window with room left (every HTTP response that
                # says "plenty remaining" leads here): charged now, the mirror otherwise unchanged.
                reset_at, left_before, learned_limit, window = state
                if window is not None and reset_at - window > now:
                    return None  # the window has not begun: decide places the call
                left = left_before - cost
                reset_after = reset_at - now
                lim = learned_limit if learned_limit is not None else math.inf
                expires_at = now + max(0.0, reset_at + (window or 0.0) - now)
                writes.append((key, QuotaState(reset_at, left, learned_limit, window), expires_at))
            else:
                d, new_state = _ALGORITHMS[type(spec)](state, now, cost, spec, math.inf)
                if d.wait != 0.0:
                    return None
                left, reset_after, lim = d.remaining, d.reset_after, d.limit
                writes.append((key, new_state, now + state_ttl(new_state, now, spec)))
            if remaining < 0.0 or left < remaining:  # the first of the tightest, as decide picks
                remaining, limit = left, lim
            if reset_after > latest_reset or len(writes) == 1:
                latest_reset = reset_after
        for key, new_state, expires_at in writes:
            if new_state is None:
                # Nothing to keep (a quota with nothing learned): absent reads as no state.
                if key in data:
                    del data[key]
            else:
                self._put(key, new_state, expires_at)
        return Decision(True, 0.0, remaining, latest_reset, limit)

    async def aacquire(self, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
        return self.acquire(slots, cost, max_wait)

    def gcra(self, key: str, interval: float, span: float, cost: int, max_wait: float) -> float:
        """One token bucket, the hot path: the wait, negated when refused (see ``_algorithms.gcra``).

        The same decision as ``acquire`` with one ``TokenBucket`` slot, without building a
        :class:`Decision`; a limiter with a single token bucket on this store calls it directly.
        """
        # ``_algorithms.gcra`` inlined (a port, like the Lua and SQL ones, checked against it in
        # tests/stores/test_memory_fast_path.py): the function call and its tuple cost a fifth of
        # the whole acquire.
        data = self._data
        with self._lock:
            now = self._clock()
            entry = data.get(key)
            tat = now if entry is None or entry[0] < now else entry[0]
            new_tat = tat + cost * interval
            wait = new_tat - span - now
            if wait > EPSILON:
                if wait > max_wait + EPSILON:
                    return -wait
            else:
                wait = 0.0
            # A bucket's state means nothing once its TAT has passed: that is its expiry.
            if entry is None:
                self._put(key, new_tat, new_tat)
            else:
                data[key] = (new_tat, new_tat)
                data.move_to_end(key)
            return wait

    def peek(self, slots: Sequence[Slot]) -> Decision:
        with self._lock:
            now = self._clock()
            return peek([self._get(key, now) for key, _ in slots], now, [s for _, s in slots])

    async def apeek(self, slots: Sequence[Slot]) -> Decision:
        return self.peek(slots)

    def observe(self, key: str, spec: Quota, obs: Observation) -> None:
        obs = checked_observation(obs)
        with self._lock:
            now = self._clock()
            new_state = quota_observe(self._get(key, now), now, obs, spec)
            if new_state is not None:
                self._put(key, new_state, now + state_ttl(new_state, now, spec))

    async def aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        self.observe(key, spec, obs)

    def lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        with self._lock:
            decision, leases = lease_acquire(self._leases.get(key, {}), self._clock(), limit, lease_seconds, lease_id)
            if leases:
                self._leases[key] = leases
            else:
                self._leases.pop(key, None)
            return decision

    async def alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return self.lease_acquire(key, limit, lease_seconds, lease_id)

    def lease_release(self, key: str, lease_id: str) -> None:
        with self._lock:
            leases = self._leases.get(key)
            if leases is not None:
                leases.pop(lease_id, None)
                if not leases:
                    del self._leases[key]

    async def alease_release(self, key: str, lease_id: str) -> None:
        self.lease_release(key, lease_id)

    def reset(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)
                self._leases.pop(key, None)

    async def areset(self, keys: Sequence[str]) -> None:
        self.reset(keys)

    def keys(self) -> list[str]:
        """The keys with live state or leases (for status displays)."""
        with self._lock:
            now = self._clock()
            return [k for k, (_, exp) in self._data.items() if exp > now] + list(self._leases)

    # -- the underscore protocol (the public methods above do the work) --------------------

    def _acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        return self.acquire(slots, cost, max_wait)

    async def _aacquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        return self.acquire(slots, cost, max_wait)

    def _peek(self, slots: Sequence[Slot]) -> Decision:
        return self.peek(slots)

    async def _apeek(self, slots: Sequence[Slot]) -> Decision:
        return self.peek(slots)

    def _observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self.observe(key, spec, obs)

    async def _aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        self.observe(key, spec, obs)

    def _lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return self.lease_acquire(key, limit, lease_seconds, lease_id)

    async def _alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return self.lease_acquire(key, limit, lease_seconds, lease_id)

    def _lease_release(self, key: str, lease_id: str) -> None:
        self.lease_release(key, lease_id)

    async def _alease_release(self, key: str, lease_id: str) -> None:
        self.lease_release(key, lease_id)

    def _reset(self, keys: Sequence[str]) -> None:
        self.reset(keys)

    async def _areset(self, keys: Sequence[str]) -> None:
        self.reset(keys)

    # -- storage ---------------------------------------------------------------------------

    def _get(self, key: str, now: float) -> Any:
        entry = self._data.get(key)
        return entry[0] if entry is not None and entry[1] > now else None

    def _put(self, key: str, state: Any, expires_at: float) -> None:
        data = self._data
        if key in data:
            data[key] = (state, expires_at)
            data.move_to_end(key)
            return
        data[key] = (state, expires_at)
        if len(data) > self.capacity // 2:
            self._evict(expires_at)

    def _evict(self, now_hint: float) -> None:
        # Drop expired entries among the oldest few on every insert once half full, which keeps
        # up with any steady stream of new keys; at capacity, evict the least recently used.
        data = self._data
        now = self._clock()
        for _ in range(_SWEEP):
            key, (_, expires_at) = next(iter(data.items()))
            if expires_at > now:
                break
            del data[key]
        while len(data) > self.capacity:
            key, (_, expires_at) = data.popitem(last=False)
            if expires_at > now:
                self.evicted_live += 1
                if self.evicted_live == 1:
                    logger.warning(
                        "rate-sync memory store %r is at its capacity of %d keys and evicts live state; "
                        "raise capacity if limits must hold across this many keys",
                        self.name,
                        self.capacity,
                    )
