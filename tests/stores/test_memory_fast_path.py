"""The memory store's inlined token bucket (the hot path) is a port of the reference GCRA."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rs_testing import ManualClock

from ratesync import FixedWindow, MemoryStore, Observation, Quota, SlidingWindow, TokenBucket
from ratesync._algorithms import Decision, decide, quota_observe, state_ttl, token_bucket


@given(
    rate=st.sampled_from([0.5, 3.0, 10.0, 1e6]),
    burst=st.integers(1, 6),
    ops=st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(0.0, 2.0)),
            st.integers(1, 4),
            st.sampled_from([0.0, 0.25, 1.0, math.inf]),
        ),
        min_size=1,
        max_size=40,
    ),
)
@settings(max_examples=300, deadline=None)
def test_fast_path_matches_the_reference(rate: float, burst: int, ops: list[tuple[float, int, float]]) -> None:
    clock = ManualClock(100.0)
    store = MemoryStore(clock=clock)
    spec = TokenBucket(rate, burst)
    interval = 1.0 / rate
    state: float | None = None
    for step, cost, max_wait in ops:
        clock.now += step
        expected, new_state = token_bucket(state, clock.now, cost, spec, max_wait)
        wait = store.gcra("k", interval, burst * interval, cost, max_wait)
        assert (wait >= 0.0) == expected.allowed
        assert abs(wait) == expected.wait
        if expected.allowed:
            state = new_state
        # The generic path reads the same state the fast path wrote.
        assert store.peek([("k", spec)]) == store.peek([("k", spec)])
        assert store._get("k", clock.now) == (state if state is not None and state > clock.now else None)


class _Reference:
    """The memory store's semantics spelled out on ``decide``: state read if unexpired, written if admitted."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[Any, float]] = {}

    def acquire(self, slots: list[tuple[str, Any]], now: float, cost: int, max_wait: float) -> Decision:
        states = []
        for key, _ in slots:
            entry = self.states.get(key)
            states.append(entry[0] if entry is not None and entry[1] > now else None)
        d, new_states = decide(states, now, cost, [s for _, s in slots], max_wait)
        if d.allowed:
            for (key, spec), ns in zip(slots, new_states, strict=True):
                self.states[key] = (ns, now + state_ttl(ns, now, spec))
        return d

    def observe(self, key: str, spec: Quota, now: float, obs: Observation) -> None:
        entry = self.states.get(key)
        state = entry[0] if entry is not None and entry[1] > now else None
        ns = quota_observe(state, now, obs, spec)
        if ns is not None:
            self.states[key] = (ns, now + state_ttl(ns, now, spec))


@given(
    specs=st.lists(
        st.one_of(
            st.builds(TokenBucket, st.sampled_from([0.5, 3.0, 1e6]), st.integers(1, 5)),
            st.builds(FixedWindow, st.integers(1, 5), st.sampled_from([1.0, 7.0])),
            st.builds(SlidingWindow, st.integers(1, 5), st.sampled_from([1.0, 7.0])),
            st.just(Quota()),
        ),
        min_size=1,  # one limit takes the same inline path as several
        max_size=3,
    ),
    ops=st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(0.0, 3.0)),
            st.integers(1, 3),
            st.sampled_from([0.0, 0.5, math.inf]),
            st.one_of(
                st.none(),
                st.builds(
                    Observation,
                    st.integers(0, 4).map(float),
                    st.sampled_from([0.5, 2.0, 9.0]),
                    st.one_of(st.none(), st.integers(0, 6).map(float)),
                    st.one_of(st.none(), st.sampled_from([1.0, 9.0])),
                ),
            ),
        ),
        min_size=1,
        max_size=40,
    ),
)
@settings(max_examples=300, deadline=None)
def test_several_limits_match_decide(specs: list[Any], ops: list[tuple[float, int, float, Observation | None]]) -> None:
    # The inlined admitted-now path for several limits (a host's bucket and its learned quota, say)
    # gives decide's decisions and leaves the states decide would: every call's answer must match.
    clock = ManualClock(100.0)
    store = MemoryStore(clock=clock)
    reference = _Reference()
    slots = [(f"k{i}", spec) for i, spec in enumerate(specs)]
    for step, cost, max_wait, obs in ops:
        clock.now += step
        cost = min(cost, min(s.capacity for s in specs))
        if obs is not None:
            for key, spec in slots:
                if isinstance(spec, Quota):
                    store.observe(key, spec, obs)
                    reference.observe(key, spec, clock.now, obs)
        assert store.acquire(slots, cost, max_wait) == reference.acquire(slots, clock.now, cost, max_wait)
        for key, _ in slots:
            entry = reference.states.get(key)
            expected = entry[0] if entry is not None and entry[1] > clock.now else None
            assert store._get(key, clock.now) == expected
