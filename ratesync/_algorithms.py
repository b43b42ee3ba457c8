"""The limiter algorithms as pure functions: the one definition every store follows.

Each algorithm is a function ``f(state, now, cost, spec, max_wait=0.0) -> (Decision, new_state)``.
No I/O and no clock: ``now`` is the store's clock in seconds. Stores that run Python (memory,
SQLite, NATS) call these functions directly; stores that run code on the server (Redis Lua,
PostgreSQL SQL) are ports, checked against these functions with the golden vectors in
``tests/algorithms``.

Reservations: a caller that is willing to wait (``max_wait > 0``) is given its place in the
future and told how long to sleep (``Decision.wait``) instead of being refused and retrying.
Every algorithm keeps reservations in arrival order (a new reservation is never placed before
an existing one), which is what makes a batch of reservations exact and the order fair.

Relative time: every algorithm also takes ``base``, the absolute time that ``now = 0`` stands for.
A store whose clock reads epoch seconds (about 1.7e9, whose last bit is 2.4e-7 s: more than
``EPSILON``) runs the algorithms on states shifted by ``-base`` (:func:`shift_state`) with
``now = 0`` and ``base`` its reading, so that ``now + interval - now`` is the interval exactly and no
token is lost to rounding. Only fixed windows use ``base`` (their windows are aligned to the
absolute clock); the other algorithms depend on time differences alone and accept it so that all
of them are called alike. With ``base = 0`` every algorithm is exactly its absolute form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

__all__ = [
    "EPSILON",
    "Decision",
    "FixedWindow",
    "LeaseDecision",
    "Observation",
    "Quota",
    "QuotaState",
    "SlidingWindow",
    "Spec",
    "TokenBucket",
    "decide",
    "fixed_window",
    "gcra",
    "lease_acquire",
    "peek",
    "quota",
    "quota_observe",
    "shift_state",
    "sliding_window",
    "state_ttl",
    "token_bucket",
]

#: Waits at or below this many seconds count as "now". Floating point sums of intervals are not
#: exact; without a tolerance ``try_acquire`` would refuse a call that is due by 1e-16 s.
EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``rate_per_second`` on average, with up to ``burst`` calls at once (GCRA)."""

    rate_per_second: float
    burst: int = 1

    @property
    def interval(self) -> float:
        """Seconds between two calls at the steady rate (GCRA's emission interval)."""
        return 1.0 / self.rate_per_second

    @property
    def capacity(self) -> int:
        return self.burst


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """At most ``limit`` in any window of ``window_seconds`` (an exact log, not an estimate)."""

    limit: int
    window_seconds: float

    @property
    def capacity(self) -> int:
        return self.limit


@dataclass(frozen=True, slots=True)
class FixedWindow:
    """At most ``limit`` per window, windows aligned to multiples of ``window_seconds``."""

    limit: int
    window_seconds: float

    @property
    def capacity(self) -> int:
        return self.limit


@dataclass(frozen=True, slots=True)
class Quota:
    """A mirror of an upstream's own quota, taught by its rate-limit headers (see ``quota_observe``).

    With nothing learned it admits everything. ``max_cooldown`` caps how far into the future a
    learned reset may block, so a hostile "reset in ten years" never blocks forever.
    """

    max_cooldown: float = 3600.0

    @property
    def capacity(self) -> int:
        return 2**31


Spec: TypeAlias = TokenBucket | SlidingWindow | FixedWindow | Quota


class QuotaState(NamedTuple):
    """What is known of an upstream quota: ``remaining`` calls until ``reset_at`` (store clock).

    ``limit`` and ``window`` are known when the upstream said them; with both known the mirror
    rolls into the next window by itself instead of admitting a herd at the reset.
    """

    reset_at: float
    remaining: float
    limit: float | None = None
    window: float | None = None


class Observation(NamedTuple):
    """What one upstream response said, in seconds relative to the moment it was read."""

    # A NamedTuple (as QuotaState): one is built for nearly every response an HTTP client reads,
    # and a frozen dataclass costs three times as much to construct.

    remaining: float
    reset_after: float
    limit: float | None = None
    window: float | None = None


class Decision:
    """The outcome of one acquire.

    ``allowed`` with ``wait == 0``: go now. ``allowed`` with ``wait > 0``: a place is reserved,
    sleep ``wait`` seconds and go. Not ``allowed``: nothing was charged; ``wait`` is how long until
    the same call would be admitted (``math.inf`` if never, e.g. a cost above the capacity).
    ``remaining`` is what is left after this call, ``reset_after`` the seconds until the limit is
    fully replenished, ``limit`` the capacity of the binding limit. ``degraded`` is true when the
    store's outage policy answered instead of its backend.
    """

    # A plain class with __slots__: it is built on every acquire, and a frozen dataclass costs
    # four times as much to construct.
    __slots__ = ("allowed", "degraded", "limit", "remaining", "reset_after", "wait")

    def __init__(
        self,
        allowed: bool,
        wait: float,
        remaining: float,
        reset_after: float,
        limit: float,
        degraded: bool = False,
    ) -> None:
        self.allowed = allowed
        self.wait = wait
        self.remaining = remaining
        self.reset_after = reset_after
        self.limit = limit
        self.degraded = degraded

    def _astuple(self) -> tuple[bool, float, float, float, float, bool]:
        return (self.allowed, self.wait, self.remaining, self.reset_after, self.limit, self.degraded)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed}, wait={self.wait!r}, remaining={self.remaining!r}, "
            f"reset_after={self.reset_after!r}, limit={self.limit!r}, degraded={self.degraded})"
        )

    def replace(self, **changes: Any) -> Decision:
        """A copy with ``changes`` applied."""
        values = {name: getattr(self, name) for name in ("allowed", "wait", "remaining", "reset_after", "limit")}
        values["degraded"] = self.degraded
        values.update(changes)
        return Decision(**values)


@dataclass(frozen=True, slots=True)
class LeaseDecision:
    """Outcome of a concurrency lease request: ``active`` holders after it, ``retry_after`` hint."""

    acquired: bool
    active: int
    retry_after: float
    degraded: bool = False


def _floor(x: float) -> float:
    return float(math.floor(x + EPSILON))


def gcra(
    tat: float | None, now: float, cost: int, interval: float, span: float, max_wait: float
) -> tuple[float, float]:
    """GCRA's whole decision: ``(wait, new_tat)``, ``wait`` negated when refused.

    A refused wait is always positive (it exceeds ``max_wait >= 0``), so the sign carries the
    verdict without another object. :func:`token_bucket` is this plus the counts; the memory
    store's fast path calls it directly.
    """
    if tat is None or tat < now:
        tat = now
    new_tat = tat + cost * interval
    wait = new_tat - span - now
    if wait <= EPSILON:
        return 0.0, new_tat
    if wait <= max_wait + EPSILON:
        return wait, new_tat
    return -wait, tat


def token_bucket(
    state: float | None, now: float, cost: int, spec: TokenBucket, max_wait: float = 0.0, base: float = 0.0
) -> tuple[Decision, float | None]:
    """GCRA: the state is one number, the theoretical arrival time (TAT) of the next call."""
    interval = 1.0 / spec.rate_per_second
    span = spec.burst * interval
    wait, new_tat = gcra(state, now, cost, interval, span, max_wait)
    if wait >= 0.0:
        remaining = max(0.0, _floor((span - (new_tat - now)) / interval)) if wait == 0.0 else 0.0
        return Decision(True, wait, remaining, new_tat - now, spec.burst), new_tat
    remaining = max(0.0, _floor((span - (new_tat - now)) / interval))
    return Decision(False, -wait, remaining, new_tat - now, spec.burst), state


def sliding_window(
    state: Sequence[tuple[float, int]] | None,
    now: float,
    cost: int,
    spec: SlidingWindow,
    max_wait: float = 0.0,
    base: float = 0.0,
) -> tuple[Decision, Sequence[tuple[float, int]] | None]:
    """An exact log of ``(time, cost)`` entries, oldest first.

    An entry at ``e`` counts in the window ``(t - W, t]``. A call is placed at the first time
    ``t >= max(now, newest entry)`` where the window ending at ``t`` has room, so no window of
    length ``W`` ever holds more than ``limit``, reservations included.
    """
    window = spec.window_seconds
    entries = [e for e in state or () if e[0] > now - window]
    if cost > spec.limit:
        used = sum(c for _, c in entries)
        return Decision(False, math.inf, max(0.0, spec.limit - used), _reset(entries, now, window), spec.limit), state
    t0 = max(now, entries[-1][0]) if entries else now
    counted = [e for e in entries if e[0] > t0 - window]
    used = sum(c for _, c in counted)
    at = t0
    if used + cost > spec.limit:
        need = used + cost - spec.limit
        freed = 0
        for e_time, e_cost in counted:
            freed += e_cost
            if freed >= need:
                at = e_time + window
                break
    wait = at - now
    if wait <= EPSILON:
        wait = 0.0
    if wait <= max_wait + EPSILON:
        kept = [e for e in entries if e[0] > at - window]
        used_at = sum(c for _, c in kept)
        kept.append((at, cost))
        remaining = float(spec.limit - used_at - cost) if wait == 0.0 else 0.0
        return Decision(True, wait, max(0.0, remaining), at + window - now, spec.limit), tuple(kept)
    now_used = sum(c for t, c in entries if t <= now)
    remaining = 0.0 if t0 > now else float(max(0, spec.limit - now_used))
    # Refused: the state is returned as it came (a store writes nothing).
    return Decision(False, wait, remaining, _reset(entries, now, window), spec.limit), state


def _reset(entries: Sequence[tuple[float, int]], now: float, window: float) -> float:
    return entries[-1][0] + window - now if entries else 0.0


def fixed_window(
    state: tuple[float, int] | None,
    now: float,
    cost: int,
    spec: FixedWindow,
    max_wait: float = 0.0,
    base: float = 0.0,
) -> tuple[Decision, tuple[float, int] | None]:
    """``(window_start, count)``; windows start at multiples of ``window_seconds`` of the clock.

    The clock is absolute: with times relative to ``base``, the windows are those of ``base + now``.
    """
    window = spec.window_seconds
    current = math.floor((base + now) / window) * window - base
    start, count = state if state is not None and state[0] >= current else (current, 0)
    room_now = float(max(0, spec.limit - count)) if start <= now else 0.0
    if cost > spec.limit:
        return Decision(False, math.inf, room_now, start + window - now, spec.limit), state
    if count + cost > spec.limit:
        start, count = start + window, 0
    wait = max(0.0, start - now)
    if wait <= EPSILON:
        wait = 0.0
    if wait <= max_wait + EPSILON:
        remaining = float(spec.limit - count - cost) if wait == 0.0 else 0.0
        return Decision(True, wait, remaining, start + window - now, spec.limit), (start, count + cost)
    return Decision(False, wait, room_now, wait, spec.limit), state


def quota(
    state: QuotaState | None, now: float, cost: int, spec: Quota, max_wait: float = 0.0, base: float = 0.0
) -> tuple[Decision, QuotaState | None]:
    """Spend a learned upstream quota; with nothing learned, admit."""
    if state is None:
        return Decision(True, 0.0, math.inf, 0.0, math.inf), None
    reset_at, remaining, limit, window = state
    start = reset_at - window if window is not None else -math.inf
    at = max(now, start)
    if at >= reset_at:
        if limit is None or window is None:
            # The learned block is over and nothing says what comes next: admit, forget.
            return Decision(True, 0.0, math.inf, 0.0, math.inf), None
        # Roll the mirror forward to the window that contains ``at``.
        skipped = math.floor((at - reset_at) / window) + 1
        reset_at += skipped * window
        remaining = limit
    lim = limit if limit is not None else math.inf
    if remaining >= cost:
        wait = max(0.0, at - now)
        new_state = QuotaState(reset_at, remaining - cost, limit, window)
    elif limit is not None and window is not None:
        # Reserve in the next window (cost above the limit still goes then: better than never).
        wait = reset_at - now
        new_state = QuotaState(reset_at + window, max(0.0, limit - cost), limit, window)
    else:
        wait = reset_at - now
        new_state = QuotaState(reset_at, 0.0, limit, window)
    if wait <= EPSILON:
        wait = 0.0
    if wait <= max_wait + EPSILON:
        left = new_state.remaining if wait == 0.0 else 0.0
        return Decision(True, wait, left, max(0.0, new_state.reset_at - now), lim), new_state
    left = remaining if at <= now else 0.0
    return Decision(False, wait, max(0.0, left), max(0.0, reset_at - now), lim), state


def checked_observation(obs: Observation) -> Observation:
    """``obs`` fit for any store's mirror: counts and delays must be numbers, bounds may be unknown.

    A ``limit`` or ``window`` that is not finite says nothing and is dropped (an infinite window
    would roll the mirror into NaN, and every caller sharing it would fail). A ``remaining`` that
    is not finite, or a NaN ``reset_after``, is an error: :class:`ValueError` names the field.
    Every store's ``observe`` runs this first, so the reference and its ports never see such values.
    """
    remaining, reset_after, limit, window = obs
    if not math.isfinite(remaining):
        raise ValueError(f"Observation.remaining must be a finite number, got {remaining!r}")
    if math.isnan(reset_after):
        raise ValueError("Observation.reset_after must be a number of seconds, got nan")
    if (limit is None or math.isfinite(limit)) and (window is None or math.isfinite(window)):
        return obs
    return Observation(
        remaining,
        reset_after,
        limit if limit is not None and math.isfinite(limit) else None,
        window if window is not None and math.isfinite(window) else None,
    )


def quota_observe(state: QuotaState | None, now: float, obs: Observation, spec: Quota) -> QuotaState | None:
    """Fold one upstream response into the mirror.

    Responses of the same window (resets within a tolerance) can only lower ``remaining``: a
    response that was in flight longer carries an older, higher count. A later reset starts a new
    window. A response about an earlier window changes nothing but the known limit and window, so
    a shorter or earlier claim never shortens a block already learned, nor empties a window the
    mirror has already rolled into.
    """
    reset_after = min(max(0.0, obs.reset_after), spec.max_cooldown)
    reset_at = now + reset_after
    remaining = max(0.0, math.floor(obs.remaining))
    limit = obs.limit if obs.limit is not None and obs.limit >= remaining else None
    # A window of zero or less says nothing (and would divide by zero when the mirror rolls).
    window = obs.window if obs.window is not None and obs.window > 0 else None
    if state is not None:
        if window is None and limit is not None:
            # A response just after a reset shows nearly the whole window: the largest reset seen
            # is the best estimate of the window's length the headers allow.
            window = max(state.window or 0.0, reset_after) or None
        if limit is None:
            limit = state.limit
        if window is None:
            window = state.window
        tolerance = min(1.0, 0.5 * window) if window else 1.0
        if reset_at < state.reset_at - tolerance:
            # About an earlier window than the mirror's: the mirror has moved on (reservations
            # rolled it into a later window, or a later response was folded in first). Only what
            # it says of the limit and the window is kept. A Retry-After cooldown is not a window:
            # callers keep cooldowns under a key of their own (see ratesync_http).
            return QuotaState(state.reset_at, state.remaining, limit, window)
        if reset_at <= state.reset_at + tolerance:
            return QuotaState(max(reset_at, state.reset_at), min(remaining, state.remaining), limit, window)
    elif window is None and limit is not None and reset_after > 0:
        window = reset_after
    if reset_after <= 0 and (limit is None or window is None):
        return state
    if window is not None:
        window = min(window, spec.max_cooldown)
    return QuotaState(reset_at, remaining, limit, window)


_ALGORITHMS: dict[type[Any], Callable[..., tuple[Decision, Any]]] = {
    TokenBucket: token_bucket,
    SlidingWindow: sliding_window,
    FixedWindow: fixed_window,
    Quota: quota,
}


def decide(
    states: Sequence[Any],
    now: float,
    cost: int,
    specs: Sequence[Spec],
    max_wait: float = 0.0,
    base: float = 0.0,
) -> tuple[Decision, list[Any]]:
    """Several limits as one: admitted only when every limit admits, charged all or nothing.

    Each limit says when it could admit the call; the call is placed at the latest of those times
    in every limit (each algorithm admits at any time after its earliest, so this is exact).
    ``base``: see the module's note on relative time.
    """
    if len(specs) == 1:
        decision, new_state = _ALGORITHMS[type(specs[0])](states[0], now, cost, specs[0], max_wait, base)
        return decision, [new_state]
    first: list[Decision] = []
    first_states: list[Any] = []
    at = 0.0  # every wait is >= 0 (admitted) or inf (never): the latest of them
    for st, s in zip(states, specs, strict=True):
        d, ns = _ALGORITHMS[type(s)](st, now, cost, s, math.inf, base)
        first.append(d)
        first_states.append(ns)
        if d.wait > at:
            at = d.wait
    if at == 0.0:
        # Every limit admits now (the usual case): the placement pass would run each algorithm
        # again at ``now + 0.0``, the same instant, and an admitted call's decision and new state do
        # not depend on ``max_wait``: this pass is that pass.
        tightest = first[0]
        latest_reset = tightest.reset_after
        for d in first:
            if d.remaining < tightest.remaining:  # the first of the tightest, as min() picks
                tightest = d
            if d.reset_after > latest_reset:
                latest_reset = d.reset_after
        return Decision(True, 0.0, tightest.remaining, latest_reset, tightest.limit), first_states
    # ``inf``: some limit can never admit this cost; ``inf > inf + EPSILON`` is false, hence the test.
    if math.isinf(at) or at > max_wait + EPSILON:
        binding = max(first, key=lambda d: d.wait)
        remaining = min(_remaining_now(st, now, s, base) for st, s in zip(states, specs, strict=True))
        return Decision(False, at, remaining, binding.reset_after, binding.limit), list(states)
    decisions: list[Decision] = []
    new_states: list[Any] = []
    for st, s in zip(states, specs, strict=True):
        d, ns = _ALGORITHMS[type(s)](st, now + at, cost, s, 0.0, base)
        decisions.append(d)
        new_states.append(ns)
    binding = min(decisions, key=lambda d: d.remaining)
    remaining = binding.remaining if at == 0.0 else 0.0
    return (
        Decision(True, at, remaining, max(d.reset_after for d in decisions) + at, binding.limit),
        new_states,
    )


def _remaining_now(state: Any, now: float, spec: Spec, base: float) -> float:
    d, _ = _ALGORITHMS[type(spec)](state, now, 1, spec, 0.0, base)
    return d.remaining + 1 if d.allowed else d.remaining


def peek(states: Sequence[Any], now: float, specs: Sequence[Spec], base: float = 0.0) -> Decision:
    """What a call of cost 1 would be told now, charging nothing; ``remaining`` counts it unspent."""
    d, _ = decide(states, now, 1, specs, 0.0, base)
    if d.allowed:
        return Decision(True, 0.0, d.remaining + 1, d.reset_after, d.limit)
    return d


def shift_state(state: Any, spec: Spec, offset: float) -> Any:
    """``state`` of ``spec`` with every time in it moved by ``offset`` seconds; None stays None.

    ``shift_state(state, spec, -base)`` reads an absolute state relative to ``base``, and
    ``shift_state(state, spec, base)`` writes it back (see the module's note on relative time).
    """
    if state is None:
        return None
    if isinstance(spec, TokenBucket):
        return state + offset
    if isinstance(spec, SlidingWindow):
        return tuple((t + offset, c) for t, c in state)
    if isinstance(spec, FixedWindow):
        return (state[0] + offset, state[1])
    return QuotaState(state.reset_at + offset, state.remaining, state.limit, state.window)


def state_ttl(state: Any, now: float, spec: Spec) -> float:
    """Seconds after which ``state`` means the same as no state (stores expire keys by this)."""
    if state is None:
        return 0.0
    if isinstance(spec, TokenBucket):
        return max(0.0, float(state) - now)
    if isinstance(spec, SlidingWindow):
        return max(0.0, float(state[-1][0]) + spec.window_seconds - now) if state else 0.0
    if isinstance(spec, FixedWindow):
        return max(0.0, float(state[0]) + spec.window_seconds - now)
    return max(0.0, float(state.reset_at) + float(state.window or 0.0) - now)


def lease_acquire(
    leases: dict[str, float], now: float, limit: int, lease_seconds: float, lease_id: str
) -> tuple[LeaseDecision, dict[str, float]]:
    """Concurrency leases: ``{lease_id: expires_at}``; expired leases give their slot back."""
    live = {k: exp for k, exp in leases.items() if exp > now}
    if lease_id in live or len(live) < limit:
        live[lease_id] = now + lease_seconds
        return LeaseDecision(True, len(live), 0.0), live
    return LeaseDecision(False, len(live), min(live.values()) - now), live
