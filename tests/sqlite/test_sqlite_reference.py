"""The SQLite store decides exactly as the pure reference does, for any sequence of operations.

Hypothesis draws limits and a sequence of operations (acquire on any combination of the limits,
peek, observe, leases, reset, time passing); the store (with an injected clock) and a model made
of the pure functions of ``ratesync._algorithms`` run the same sequence and must give identical
answers, float for float: states go through the file without losing a bit.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rs_testing import ManualClock

from ratesync._algorithms import (
    Decision,
    FixedWindow,
    LeaseDecision,
    Observation,
    Quota,
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
from ratesync._stores.sqlite import SQLiteStore

pytestmark = pytest.mark.sqlite

KEYS = ["{h}#0", "{h}#1", "{h}#2", "{h}#3"]
LEASE_KEYS = ["{h}#lease", "{g}#lease"]


class Reference:
    """The pure functions, with the expiry rule every store follows (``state_ttl``).

    States are kept in absolute times and every decision runs on times relative to the reading of
    the clock (``now = 0``, ``base`` the reading), as the module note on relative time says a store
    on an epoch clock does.
    """

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.states: dict[str, tuple[Any, float]] = {}
        self.leases: dict[str, dict[str, float]] = {}

    def _get(self, key: str, spec: Spec, now: float) -> Any:
        """The state of ``key`` relative to ``now``."""
        entry = self.states.get(key)
        return shift_state(entry[0], spec, -now) if entry is not None and entry[1] > now else None

    def _put(self, key: str, spec: Spec, state: Any, now: float) -> None:
        """Keep ``state`` (relative to ``now``) in absolute times."""
        if state is None:
            self.states.pop(key, None)
        else:
            self.states[key] = (shift_state(state, spec, now), now + state_ttl(state, 0.0, spec))

    def acquire(self, slots: list[tuple[str, Spec]], cost: int, max_wait: float) -> Decision:
        now = self.clock()
        states = [self._get(k, s, now) for k, s in slots]
        decision, new_states = decide(states, 0.0, cost, [s for _, s in slots], max_wait, now)
        if decision.allowed:
            for (k, s), ns in zip(slots, new_states, strict=True):
                self._put(k, s, ns, now)
        return decision

    def peek(self, slots: list[tuple[str, Spec]]) -> Decision:
        now = self.clock()
        return peek([self._get(k, s, now) for k, s in slots], 0.0, [s for _, s in slots], now)

    def observe(self, key: str, spec: Quota, obs: Observation) -> None:
        now = self.clock()
        new_state = quota_observe(self._get(key, spec, now), 0.0, obs, spec)
        if new_state is not None:
            self._put(key, spec, new_state, now)

    def lease_acquire(self, key: str, limit: int, seconds: float, lease_id: str) -> LeaseDecision:
        decision, leases = lease_acquire(self.leases.get(key, {}), self.clock(), limit, seconds, lease_id)
        self.leases[key] = leases
        return decision

    def lease_release(self, key: str, lease_id: str) -> None:
        self.leases.get(key, {}).pop(lease_id, None)

    def reset(self, keys: list[str]) -> None:
        for k in keys:
            self.states.pop(k, None)
            self.leases.pop(k, None)


specs = st.tuples(
    st.builds(TokenBucket, st.sampled_from([0.5, 1.0, 3.0, 10.0]), st.integers(1, 4)),
    st.builds(SlidingWindow, st.integers(1, 5), st.sampled_from([1.0, 2.5, 10.0])),
    st.builds(FixedWindow, st.integers(1, 5), st.sampled_from([1.0, 3.0, 60.0])),
    st.builds(Quota, st.sampled_from([5.0, 3600.0])),
)
subsets = st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True)
max_waits = st.sampled_from([0.0, 0.0, 0.3, 2.0, math.inf])
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("advance"),
            st.one_of(st.just(0.0), st.floats(0.0, 0.7), st.floats(0.7, 8.0), st.floats(8.0, 40.0)),
        ),
        st.tuples(st.just("acquire"), subsets, st.integers(1, 3), max_waits),
        st.tuples(st.just("acquire"), subsets, st.integers(1, 3), max_waits),
        st.tuples(st.just("peek"), subsets),
        st.tuples(
            st.just("observe"),
            st.builds(
                Observation,
                st.integers(0, 6).map(float),
                st.floats(0.0, 20.0),
                st.one_of(st.none(), st.sampled_from([5.0, 10.0])),
                st.one_of(st.none(), st.sampled_from([4.0, 10.0])),
            ),
        ),
        st.tuples(st.just("lease"), st.sampled_from(LEASE_KEYS), st.integers(1, 2), st.sampled_from([0.5, 3.0])),
        st.tuples(st.just("release"), st.sampled_from(LEASE_KEYS), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("reset"), subsets, st.booleans()),
    ),
    min_size=1,
    max_size=40,
)
starts = st.sampled_from([1_700_000_000.0, 1_700_000_000.123456, 86_400.0 * 19_000 + 0.5])


def never_admissible_reservation(slots: list[tuple[str, Spec]], cost: int, max_wait: float) -> bool:
    """Combined limits, one of which can never admit ``cost``, with ``max_wait = inf``.

    ``decide`` then places the call at ``now + inf`` instead of refusing it and raises (reported to
    the core: the memory store fails the same way); the store only relays that, so it is skipped.
    """
    return (
        len(slots) > 1
        and max_wait == math.inf
        and any(isinstance(s, SlidingWindow | FixedWindow) and cost > s.limit for _, s in slots)
    )


async def apply(
    store: SQLiteStore, ref: Reference, clock: ManualClock, limits: tuple[Spec, ...], ops: list[Any], mode: str
) -> None:
    """Run ``ops`` on both; ``mode`` "sync", "async" or "mixed" (alternating) picks the store's side."""
    for i, op in enumerate(ops):
        use_async = mode == "async" or (mode == "mixed" and i % 2 == 1)
        kind = op[0]
        if kind == "advance":
            clock.now += op[1]
        elif kind == "acquire":
            _, which, cost, max_wait = op
            slots = [(KEYS[j], limits[j]) for j in which]
            if never_admissible_reservation(slots, cost, max_wait):
                continue
            got = await store.aacquire(slots, cost, max_wait) if use_async else store.acquire(slots, cost, max_wait)
            assert got == ref.acquire(slots, cost, max_wait), (i, op)
        elif kind == "peek":
            slots = [(KEYS[j], limits[j]) for j in op[1]]
            got = await store.apeek(slots) if use_async else store.peek(slots)
            assert got == ref.peek(slots), (i, op)
        elif kind == "observe":
            quota = limits[3]
            assert isinstance(quota, Quota)
            if use_async:
                await store.aobserve(KEYS[3], quota, op[1])
            else:
                store.observe(KEYS[3], quota, op[1])
            ref.observe(KEYS[3], quota, op[1])
        elif kind == "lease":
            _, key, limit, seconds = op
            lease_id = "abc"[i % 3]
            got_lease = (
                await store.alease_acquire(key, limit, seconds, lease_id)
                if use_async
                else store.lease_acquire(key, limit, seconds, lease_id)
            )
            assert got_lease == ref.lease_acquire(key, limit, seconds, lease_id), (i, op)
        elif kind == "release":
            if use_async:
                await store.alease_release(op[1], op[2])
            else:
                store.lease_release(op[1], op[2])
            ref.lease_release(op[1], op[2])
        else:
            keys = [KEYS[j] for j in op[1]] + (LEASE_KEYS[:1] if op[2] else [])
            if use_async:
                await store.areset(keys)
            else:
                store.reset(keys)
            ref.reset(keys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limits=specs, ops=operations, start=starts)
def test_memory_database_matches_the_reference(limits: tuple[Spec, ...], ops: list[Any], start: float) -> None:
    clock = ManualClock(start)
    store = SQLiteStore(":memory:", clock=clock)
    try:
        asyncio.run(apply(store, Reference(clock), clock, limits, ops, "sync"))
    finally:
        store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limits=specs, ops=operations, start=starts, mode=st.sampled_from(["async", "mixed"]))
def test_file_database_matches_the_reference_sync_and_async(
    limits: tuple[Spec, ...], ops: list[Any], start: float, mode: str
) -> None:
    clock = ManualClock(start)
    with tempfile.TemporaryDirectory() as folder:
        store = SQLiteStore(Path(folder) / "ref.db", clock=clock)

        async def main() -> None:
            try:
                await apply(store, Reference(clock), clock, limits, ops, mode)
            finally:
                await store.aclose()
                store.close()

        asyncio.run(main())
