"""The memory store's inlined token bucket (the hot path) is a port of the reference GCRA."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ratesync import MemoryStore, TokenBucket
from ratesync._algorithms import token_bucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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
    clock = Clock()
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
