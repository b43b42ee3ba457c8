"""Properties of the pure reference algorithms (hypothesis): the definition every store ports."""

from __future__ import annotations

import bisect
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratesync._algorithms import (
    EPSILON,
    Decision,
    FixedWindow,
    Observation,
    Quota,
    QuotaState,
    SlidingWindow,
    TokenBucket,
    decide,
    fixed_window,
    lease_acquire,
    peek,
    quota,
    quota_observe,
    shift_state,
    sliding_window,
    state_ttl,
    token_bucket,
)

# Steps between calls: often zero (a burst at one instant), sometimes long (idle).
steps = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 0.5), st.floats(0.5, 5.0)),
        st.integers(1, 3),
        st.sampled_from([0.0, 0.0, 0.3, 2.0, math.inf]),
    ),
    min_size=1,
    max_size=60,
)


def run(algorithm: Any, spec: Any, ops: list[tuple[float, int, float]]) -> list[tuple[float, int]]:
    """Apply ``ops`` (step, cost, max_wait); return (time the call goes, cost) of admitted calls."""
    state: Any = None
    now = 0.0
    admitted = []
    for step, cost, max_wait in ops:
        now += step
        d, new_state = algorithm(state, now, cost, spec, max_wait)
        if d.allowed:
            assert d.wait <= max_wait + EPSILON
            admitted.append((now + d.wait, cost))
            state = new_state
        else:
            assert d.wait > max_wait
            assert new_state == state, "a refused call must not change the state"
    return admitted


def max_cost_in_window(admitted: list[tuple[float, int]], length: float, closed: bool) -> int:
    """Largest total cost of calls in any window of ``length`` (half-open, or closed)."""
    admitted = sorted(admitted)
    times = [t for t, _ in admitted]
    best = 0
    for i, (t, _) in enumerate(admitted):
        end = t + length
        j = bisect.bisect_right(times, end + EPSILON) if closed else bisect.bisect_left(times, end - EPSILON)
        best = max(best, sum(c for _, c in admitted[i:j]))
    return best


@given(
    ops=steps,
    rate=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.integers(1, 5),
)
@settings(max_examples=300, deadline=None)
def test_token_bucket_never_exceeds_burst_plus_rate(ops: Any, rate: float, burst: int) -> None:
    spec = TokenBucket(rate, burst)
    ops = [(s, min(c, burst), w) for s, c, w in ops]
    admitted = run(token_bucket, spec, ops)
    # At one instant: never more than the burst.
    at_once: dict[float, int] = {}
    for t, c in admitted:
        at_once[round(t, 6)] = at_once.get(round(t, 6), 0) + c
    assert max(at_once.values(), default=0) <= burst
    # Over any window of length L: at most burst + L * rate (GCRA's bound).
    for length in (0.5, 1.0, 3.0):
        assert max_cost_in_window(admitted, length, closed=False) <= burst + math.floor(length * rate + EPSILON)


@given(ops=steps, limit=st.integers(1, 6), window=st.sampled_from([1.0, 2.5, 10.0]))
@settings(max_examples=300, deadline=None)
def test_sliding_window_never_exceeds_limit_in_any_window(ops: Any, limit: int, window: float) -> None:
    spec = SlidingWindow(limit, window)
    ops = [(s, min(c, limit), w) for s, c, w in ops]
    admitted = run(sliding_window, spec, ops)
    # An entry at e counts in (t - W, t]: any half-open window of length W holds at most `limit`.
    assert max_cost_in_window(admitted, window, closed=False) <= limit


@given(ops=steps, limit=st.integers(1, 6), window=st.sampled_from([1.0, 2.5, 10.0]))
@settings(max_examples=300, deadline=None)
def test_fixed_window_never_exceeds_limit_per_aligned_window(ops: Any, limit: int, window: float) -> None:
    spec = FixedWindow(limit, window)
    state: Any = None
    now = 0.0
    per_window: dict[int, int] = {}
    for step, cost, max_wait in ops:
        now += step
        cost = min(cost, limit)
        d, new_state = fixed_window(state, now, cost, spec, max_wait)
        if not d.allowed:
            continue
        # Charged to the aligned window the state names, and the call goes inside it: a wait
        # within EPSILON counts as none, so a call may go up to EPSILON before its window opens
        # (at a boundary, floor(t / window) alone cannot tell which side it was charged to).
        start = new_state[0]
        go = now + d.wait
        assert start - EPSILON <= go < start + window
        index = round(start / window)
        assert start == index * window
        per_window[index] = per_window.get(index, 0) + cost
        state = new_state
    assert max(per_window.values(), default=0) <= limit


@pytest.mark.parametrize(
    ("algorithm", "spec"),
    [
        (token_bucket, TokenBucket(2.0, 3)),
        (sliding_window, SlidingWindow(3, 5.0)),
        (fixed_window, FixedWindow(3, 5.0)),
    ],
)
@given(ops=steps)
@settings(max_examples=150, deadline=None)
def test_retry_after_is_exact(algorithm: Any, spec: Any, ops: Any) -> None:
    """A refused call is admitted exactly ``wait`` later, and not a moment before."""
    state: Any = None
    now = 0.0
    for step, cost, max_wait in ops:
        now += step
        cost = min(cost, 3)
        d, new_state = algorithm(state, now, cost, spec, max_wait)
        if d.allowed:
            state = new_state
            continue
        later, _ = algorithm(state, now + d.wait, cost, spec, 0.0)
        assert later.allowed, (state, now, d)
        if d.wait > 1e-6:
            earlier, _ = algorithm(state, now + d.wait - 1e-6, cost, spec, 0.0)
            assert not earlier.allowed
        state = new_state


@given(ops=steps, rate=st.sampled_from([1.0, 4.0]), burst=st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_cost_is_charged_in_full(ops: Any, rate: float, burst: int) -> None:
    spec = FixedWindow(burst * 2, 1000.0)
    state: Any = None
    charged = 0
    for _, cost, _ in ops:
        d, new_state = fixed_window(state, 0.0, cost, spec, 0.0)
        if d.allowed:
            charged += cost
            assert d.remaining == spec.limit - charged
            state = new_state
    assert charged <= spec.limit


@given(ops=steps)
@settings(max_examples=200, deadline=None)
def test_combined_limits_all_or_nothing(ops: Any) -> None:
    specs = [TokenBucket(2.0, 3), SlidingWindow(4, 5.0), FixedWindow(5, 7.0)]
    states: list[Any] = [None, None, None]
    now = 0.0
    for step, cost, max_wait in ops:
        now += step
        cost = min(cost, 3)
        d, new_states = decide(states, now, cost, specs, max_wait)
        if not d.allowed:
            assert new_states == states
            assert d.wait > max_wait
            continue
        # Admitted: every limit on its own admits the call at the time it goes.
        for spec, state in zip(specs, states):
            alone = {TokenBucket: token_bucket, SlidingWindow: sliding_window, FixedWindow: fixed_window}[type(spec)]
            single, _ = alone(state, now + d.wait, cost, spec, 0.0)
            assert single.allowed
        states = new_states


def test_combined_picks_the_latest_limit_and_charges_each_once() -> None:
    specs = [TokenBucket(1.0, 1), FixedWindow(10, 100.0)]
    d1, s1 = decide([None, None], 0.0, 1, specs, 0.0)
    assert d1.allowed and d1.wait == 0.0
    d2, s2 = decide(s1, 0.0, 1, specs, 5.0)
    assert d2.allowed and d2.wait == pytest.approx(1.0)
    assert s2[1] == (0.0, 2)
    refused, s3 = decide(s2, 0.0, 1, specs, 0.5)
    assert not refused.allowed and refused.wait == pytest.approx(2.0)
    assert s3 == s2


def test_token_bucket_reservations_are_fifo() -> None:
    spec = TokenBucket(10.0, 1)
    state = None
    waits = []
    for _ in range(5):
        d, state = token_bucket(state, 0.0, 1, spec, math.inf)
        waits.append(d.wait)
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_cost_above_capacity_is_never_admitted_by_windows() -> None:
    d, state = sliding_window(None, 0.0, 5, SlidingWindow(3, 1.0), math.inf)
    assert not d.allowed and d.wait == math.inf and state is None
    d2, state2 = fixed_window(None, 0.0, 5, FixedWindow(3, 1.0), math.inf)
    assert not d2.allowed and d2.wait == math.inf and state2 is None


def test_peek_consumes_nothing_and_counts_the_call_unspent() -> None:
    spec = [FixedWindow(3, 10.0)]
    _, states = decide([None], 0.0, 1, spec)
    p = peek(states, 0.0, spec)
    assert p.allowed and p.remaining == 2
    assert peek(states, 0.0, spec) == p


def test_state_ttl_means_no_state_after() -> None:
    spec = TokenBucket(2.0, 4)
    _, state = token_bucket(None, 10.0, 3, spec)
    ttl = state_ttl(state, 10.0, spec)
    assert ttl == pytest.approx(1.5)
    fresh, _ = token_bucket(None, 10.0 + ttl, 4, spec)
    after, _ = token_bucket(state, 10.0 + ttl, 4, spec)
    assert fresh == after


def test_quota_blocks_until_reset_then_rolls_with_known_window() -> None:
    spec = Quota()
    state = quota_observe(None, 0.0, Observation(remaining=1, reset_after=10.0, limit=3, window=10.0), spec)
    assert state == QuotaState(10.0, 1, 3, 10.0)
    d, state = quota(state, 0.0, 1, spec)
    assert d.allowed and d.remaining == 0
    refused, _ = quota(state, 5.0, 1, spec)
    assert not refused.allowed and refused.wait == pytest.approx(5.0)
    # After the reset, the mirror knows the next window holds 3 calls, not an unbounded herd.
    admitted = 0
    for _ in range(10):
        d, new_state = quota(state, 10.5, 1, spec)
        if d.allowed:
            admitted += 1
            state = new_state
    assert admitted == 3


def test_quota_reservations_queue_into_next_window() -> None:
    spec = Quota()
    state = quota_observe(None, 0.0, Observation(remaining=0, reset_after=4.0, limit=2, window=10.0), spec)
    waits = []
    for _ in range(5):
        d, state = quota(state, 0.0, 1, spec, math.inf)  # type: ignore[arg-type]
        waits.append(d.wait)
    assert waits == pytest.approx([4.0, 4.0, 14.0, 14.0, 24.0])


def test_quota_observe_same_window_only_lowers_remaining() -> None:
    spec = Quota()
    state = quota_observe(None, 0.0, Observation(remaining=10, reset_after=60.0, limit=100), spec)
    state = quota_observe(state, 0.1, Observation(remaining=40, reset_after=59.9, limit=100), spec)
    assert state is not None and state.remaining == 10
    state = quota_observe(state, 0.2, Observation(remaining=5, reset_after=59.8, limit=100), spec)
    assert state is not None and state.remaining == 5
    # A new window (reset well after the known one) replaces it.
    state = quota_observe(state, 61.0, Observation(remaining=99, reset_after=60.0, limit=100), spec)
    assert state is not None and state.remaining == 99 and state.reset_at == pytest.approx(121.0)


def test_quota_cooldown_is_capped_and_never_shortened() -> None:
    spec = Quota(max_cooldown=30.0)
    state = quota_observe(None, 0.0, Observation(remaining=0, reset_after=1e12), spec)
    assert state is not None and state.reset_at == 30.0
    shorter = quota_observe(state, 1.0, Observation(remaining=0, reset_after=2.0), spec)
    assert shorter is not None and shorter.reset_at == 30.0


def test_quota_with_nothing_learned_admits() -> None:
    d, state = quota(None, 0.0, 5, Quota())
    assert d.allowed and d.wait == 0.0 and state is None


def test_leases() -> None:
    d1, leases = lease_acquire({}, 0.0, 2, 10.0, "a")
    d2, leases = lease_acquire(leases, 1.0, 2, 10.0, "b")
    d3, leases = lease_acquire(leases, 2.0, 2, 10.0, "c")
    assert d1.acquired and d2.acquired and not d3.acquired
    assert d3.retry_after == pytest.approx(8.0)
    # "a" expires at 10: its slot comes back without anyone releasing it.
    d4, leases = lease_acquire(leases, 10.5, 2, 10.0, "c")
    assert d4.acquired and set(leases) == {"b", "c"}


def test_quota_observe_ignores_a_response_about_an_earlier_window() -> None:
    # Reservations rolled the mirror into [10, 11); a late response of the window ending at 10
    # must not empty the window the calls were already placed in.
    state = QuotaState(11.0, 5.0, 10.0, 1.0)
    after = quota_observe(state, 9.9, Observation(0.0, 0.1, 10.0, 1.0), Quota())
    assert after == state


@given(
    ops=st.lists(
        st.tuples(
            st.floats(0.0, 2.0),
            st.integers(0, 10),
            # Resets of a millisecond and up, as headers give them: a reset of 1e-228 s would make
            # a window so short that resets 1e-16 s apart are different windows (the mirror's
            # tolerance is half a window), which the 1e-9 "same window" test below cannot see.
            st.one_of(st.just(0.0), st.floats(1e-3, 3.0)),
            st.booleans(),
        ),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=200, deadline=None)
def test_quota_observe_never_raises_remaining_within_a_window(ops: Any) -> None:
    spec = Quota()
    state: QuotaState | None = None
    now = 0.0
    for step, remaining, reset_after, with_limit in ops:
        now += step
        new = quota_observe(state, now, Observation(remaining, reset_after, 10.0 if with_limit else None), spec)
        if state is not None and new is not None and abs(new.reset_at - state.reset_at) < 1e-9:
            assert new.remaining <= state.remaining
        if new is not None:
            assert new.reset_at <= now + spec.max_cooldown + 1e-9
        state = new


def test_combined_refuses_a_cost_one_limit_can_never_admit() -> None:
    specs = [TokenBucket(10.0, 20), SlidingWindow(3, 1.0)]
    d, states = decide([None, None], 0.0, 5, specs, math.inf)
    assert not d.allowed and d.wait == math.inf
    assert states == [None, None]


def test_quota_window_of_zero_says_nothing() -> None:
    state = quota_observe(None, 0.0, Observation(remaining=0, reset_after=5.0, limit=10, window=0.0), Quota())
    assert state is not None and state.window == 5.0  # estimated from the reset, not zero
    d, _ = quota(state, 100.0, 1, Quota())
    assert d.allowed


def _decide_by_definition(states: Any, now: float, cost: int, specs: Any, max_wait: float) -> tuple[Any, list[Any]]:
    """``decide`` as its docstring defines it: each limit's earliest time, then every limit placed there."""
    algo = {TokenBucket: token_bucket, SlidingWindow: sliding_window, FixedWindow: fixed_window, Quota: quota}
    first = [algo[type(s)](st_, now, cost, s, math.inf)[0] for st_, s in zip(states, specs)]
    at = max(d.wait for d in first)
    if math.isinf(at) or at > max_wait + EPSILON:
        return None, list(states)
    placed = [algo[type(s)](st_, now + at, cost, s, 0.0) for st_, s in zip(states, specs)]
    binding = min((d for d, _ in placed), key=lambda d: d.remaining)
    remaining = binding.remaining if at == 0.0 else 0.0
    reset = max(d.reset_after for d, _ in placed) + at
    return Decision(True, at, remaining, reset, binding.limit), [ns for _, ns in placed]


@given(ops=steps, observe_at=st.sampled_from([None, 0, 3]))
@settings(max_examples=200, deadline=None)
def test_combined_admission_now_equals_the_two_pass_definition(ops: Any, observe_at: int | None) -> None:
    # decide() skips its placement pass when every limit admits at once; the result must be the
    # definition's, field for field and state for state, admitted now or later.
    specs: list[Any] = [TokenBucket(2.0, 3), SlidingWindow(4, 5.0), FixedWindow(5, 7.0), Quota()]
    states: list[Any] = [None, None, None, None]
    now = 0.0
    for i, (step, cost, max_wait) in enumerate(ops):
        now += step
        if i == observe_at:
            states[3] = quota_observe(states[3], now, Observation(remaining=2, reset_after=4.0, limit=6), specs[3])
        d, new_states = decide(states, now, min(cost, 3), specs, max_wait)
        expected, expected_states = _decide_by_definition(states, now, min(cost, 3), specs, max_wait)
        if expected is None:
            assert not d.allowed and new_states == states
            continue
        assert d == expected
        assert new_states == expected_states
        states = new_states


# Relative time. Dyadic rates, windows and steps at a base below 2**20 keep every sum exact, so
# deciding at ``base`` and deciding at 0 on states shifted by ``-base`` must agree to the bit.
exact_specs = st.lists(
    st.one_of(
        st.builds(TokenBucket, st.sampled_from([0.5, 1.0, 4.0, 8.0]), st.integers(1, 4)),
        st.builds(SlidingWindow, st.integers(1, 4), st.sampled_from([0.5, 1.0, 4.0])),
        st.builds(FixedWindow, st.integers(1, 4), st.sampled_from([0.5, 1.0, 4.0, 64.0])),
    ),
    min_size=1,
    max_size=3,
)
exact_ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "peek"]),
        st.integers(0, 40).map(lambda n: n / 16),  # step
        st.integers(1, 3),
        st.sampled_from([0.0, 0.5, 2.0, math.inf]),
    ),
    min_size=1,
    max_size=30,
)


@given(specs=exact_specs, ops=exact_ops, start=st.integers(0, 2**20).map(lambda n: n / 8))
@settings(max_examples=300, deadline=None)
def test_deciding_relative_to_the_reading_is_deciding_at_it(specs: Any, ops: Any, start: float) -> None:
    absolute: list[Any] = [None] * len(specs)
    relative_kept: list[Any] = [None] * len(specs)  # in absolute times, as a store keeps them
    now = start
    for kind, step, cost, max_wait in ops:
        now += step
        shifted = [shift_state(st_, spec, -now) for st_, spec in zip(relative_kept, specs, strict=True)]
        if kind == "peek":
            assert peek(shifted, 0.0, specs, now) == peek(absolute, now, specs)
            continue
        d_abs, new_abs = decide(absolute, now, cost, specs, max_wait)
        d_rel, new_rel = decide(shifted, 0.0, cost, specs, max_wait, now)
        assert d_rel == d_abs
        if d_abs.allowed:
            absolute = new_abs
            relative_kept = [shift_state(n, spec, now) for n, spec in zip(new_rel, specs, strict=True)]
            assert relative_kept == absolute
            ttls = [state_ttl(n, 0.0, spec) for n, spec in zip(new_rel, specs, strict=True)]
            assert ttls == [state_ttl(n, now, spec) for n, spec in zip(new_abs, specs, strict=True)]


def test_shift_state_moves_every_time_and_nothing_else() -> None:
    q = QuotaState(reset_at=10.0, remaining=3.0, limit=5.0, window=60.0)
    assert shift_state(q, Quota(), -4.0) == QuotaState(6.0, 3.0, 5.0, 60.0)
    assert shift_state(((1.0, 2), (3.0, 1)), SlidingWindow(3, 1.0), 2.0) == ((3.0, 2), (5.0, 1))
    assert shift_state((8.0, 2), FixedWindow(3, 4.0), -8.0) == (0.0, 2)
    assert shift_state(7.5, TokenBucket(1.0), 0.5) == 8.0
    assert shift_state(None, TokenBucket(1.0), 0.5) is None


@pytest.mark.parametrize("rate", [3.0, 5.0, 7.0, 10.0, 30.0])
def test_at_epoch_times_only_relative_time_counts_every_token(rate: float) -> None:
    # 1.7e9 s has a last bit of 2.4e-7 s: ``now + 0.2`` rounds up, and the absolute form loses a
    # token where the relative one (a store's ``now = 0``, ``base`` the reading) does not.
    spec = TokenBucket(rate_per_second=rate, burst=4)
    now = 1_764_000_000.123
    d, (tat,) = decide([None], 0.0, 1, [spec], 0.0, now)
    assert d.remaining == 3
    assert peek([None], 0.0, [spec], now).remaining == 4
    d2, _ = decide([tat], 0.0, 1, [spec], 0.0, now)
    assert d2.remaining == 2
    if rate == 5.0:
        assert decide([None], now, 1, [spec])[0].remaining == 2  # the absolute form's lost token


def test_fixed_windows_relative_to_a_base_keep_the_absolute_alignment() -> None:
    spec = FixedWindow(limit=2, window_seconds=60.0)
    base = 6_000_045.0  # 45 s into a window of the absolute clock
    d, (state,) = decide([None], 0.0, 1, [spec], 0.0, base)
    assert d.reset_after == 15.0
    assert shift_state(state, spec, base) == (6_000_000.0, 1)
