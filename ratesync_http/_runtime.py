"""The store calls behind a plan, as a sync and an async twin.

Admission: the probe gate (first request to a host not yet heard from goes alone), then every
store call of the plan with the time left before the timeout as ``max_wait`` (a reservation: the
store says how long to sleep, one round trip even when waiting), one sleep for the longest of
those waits, then the concurrency leases. Learning: parse the response's headers, fold what they
say into the store (atomic there, on the store's clock), and decide on a retry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ratesync import Observation, RateLimitTimeout
from ratesync._limiter import LEASE_POLL_SECONDS, _new_lease_id

from ._headers import RateLimitInfo, RateLimitLines, parse_lines
from ._policy import ALWAYS_PARSE, NO_RETRY, RETRY_STATUSES, HttpPolicy, LeaseSpec, Plan, Verdict

__all__ = ["NO_PERMIT", "Permit", "aacquire", "acquire", "alearn", "learn"]

logger = logging.getLogger("ratesync_http")

_PROBE_POLL = 0.005

#: A response's headers, in whatever form the client has them (read only when needed).
H = TypeVar("H")


class Permit:
    """The concurrency leases one request holds; released once, by the first release call."""

    __slots__ = ("_leases", "_policy", "_released")

    def __init__(self, policy: HttpPolicy | None, leases: list[tuple[LeaseSpec, str]]) -> None:
        self._policy = policy
        self._leases = leases
        self._released = not leases
        if leases and policy is not None:
            policy.leases_held += 1

    @property
    def holds_lease(self) -> bool:
        return not self._released

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        policy = self._policy
        assert policy is not None  # only the shared NO_PERMIT has none, and it is born released
        policy.leases_held -= 1
        for spec, lease_id in self._leases:
            try:
                spec.store.lease_release(spec.key, lease_id)
            finally:
                policy.waiters(spec.key).notify()

    async def arelease(self) -> None:
        if self._released:
            return
        self._released = True
        policy = self._policy
        assert policy is not None
        policy.leases_held -= 1
        for spec, lease_id in self._leases:
            try:
                await asyncio.shield(spec.store.alease_release(spec.key, lease_id))
            finally:
                policy.waiters(spec.key).notify()


#: The permit of every request that holds no lease (most of them): nothing to give back, so one
#: immutable instance serves them all.
NO_PERMIT = Permit(None, [])


def _timed_out(policy: HttpPolicy, plan: Plan, wait: float, timeout: float | None) -> RateLimitTimeout:
    policy.timeouts += 1
    return RateLimitTimeout(
        f"{plan.label}: waiting {wait:.3f}s for a permit would exceed the timeout of {timeout}s (nothing was sent)",
        limiter_id=plan.label,
        retry_after=wait,
    )


# -- sync ------------------------------------------------------------------------------------


def wait_gate_sync(policy: HttpPolicy, plan: Plan) -> bool:
    """Wait for a probe of this host in flight; returns True when this request is the probe."""
    probing, gate = policy.probe_enter(plan)
    if gate is not None:
        gate.wait(policy.config.probe_wait)
    return probing


def acquire(policy: HttpPolicy, plan: Plan, cost: int, sleep: Callable[[float], None]) -> Permit:
    """Wait for every limit of ``plan`` (raising ``RateLimitTimeout`` before sending if too long)."""
    timeout = plan.timeout
    calls = policy.calls_for(plan)
    if calls:
        # Each call reserves its place (or refuses, charging nothing); one sleep then covers the
        # longest wait. Waits are not shortened by the time the calls took: going a little later
        # than reserved is always within the limits.
        budget = math.inf if timeout is None else timeout
        wait = 0.0
        for call in calls:
            d = call.store.acquire(call.slots, cost, budget)
            if d.degraded:
                policy.degraded += 1
            if not d.allowed:
                raise _timed_out(policy, plan, d.wait, timeout)
            if d.wait > wait:
                wait = d.wait
        if wait > 0.0:
            policy.record_wait(wait)
            sleep(wait)
    if not plan.leases:
        return NO_PERMIT
    return Permit(policy, _leases_sync(policy, plan, timeout))


def _leases_sync(policy: HttpPolicy, plan: Plan, timeout: float | None) -> list[tuple[LeaseSpec, str]]:
    held: list[tuple[LeaseSpec, str]] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for spec in plan.leases:
            lease_id = _new_lease_id()
            started = None
            while True:
                ld = spec.store.lease_acquire(spec.key, spec.limit, spec.lease_seconds, lease_id)
                if ld.degraded:
                    policy.degraded += 1
                if ld.acquired:
                    held.append((spec, lease_id))
                    if started is not None:
                        policy.record_wait(time.monotonic() - started)
                    break
                now = time.monotonic()
                started = started if started is not None else now
                pause = min(max(ld.retry_after, 0.001), LEASE_POLL_SECONDS)
                if deadline is not None:
                    if now >= deadline:
                        raise _timed_out(policy, plan, max(ld.retry_after, 0.0), timeout)
                    pause = min(pause, deadline - now)
                policy.waiters(spec.key).wait_sync(pause)
    except BaseException:
        for spec, lease_id in held:
            spec.store.lease_release(spec.key, lease_id)
        raise
    return held


def _info(status: int, lines: RateLimitLines) -> RateLimitInfo | None:
    """What a response says, or None when it has nothing to say (no rate-limit header, a plain status)."""
    if not lines and status not in ALWAYS_PARSE:
        return None
    return parse_lines(lines, status=status)


def _unread(policy: HttpPolicy, key: str | None, status: int) -> bool:
    """Whether this response may go unread (see :meth:`HttpPolicy.read_less`); counts it if so."""
    if key is None:
        # Not learning: only a 429 or 503 needs its headers (for the wait before a retry).
        if status in RETRY_STATUSES:
            return False
    else:
        budget = policy.unread_until.get(key)
        if budget is None or budget.left <= 0 or status in ALWAYS_PARSE or policy.clock() >= budget.until:
            return False
        budget.left -= 1
        policy.unread += 1
    policy.sent += 1  # record_status of a status that is neither 429 nor 503
    return True


def _lesson(
    policy: HttpPolicy, key: str | None, status: int, headers: H, read: Callable[[H], RateLimitLines], attempt: int
) -> tuple[RateLimitInfo | None, Observation | None]:
    """What a response that is read says, and what of it to fold into the quota (twins' shared part)."""
    policy.record_status(status)
    info = _info(status, read(headers))
    if info is None or key is None:
        return info, None
    return info, policy.observation(info, status, attempt)


def _verdict(
    policy: HttpPolicy, plan: Plan, info: RateLimitInfo | None, status: int, attempt: int, stored: bool
) -> Verdict:
    """After the store call (if any): how soon to read again, what was heard, whether to retry."""
    if stored and plan.quota_key is not None and info is not None:
        policy.read_less(plan.quota_key, info, status)
    policy.heard(plan, stored)
    if status not in RETRY_STATUSES:
        return NO_RETRY  # the usual answer, without a call
    return policy.verdict(info, status, attempt, stored)


def learn(
    policy: HttpPolicy, plan: Plan, status: int, headers: H, read: Callable[[H], RateLimitLines], attempt: int
) -> Verdict:
    """Fold what a response's rate-limit headers say into the store; decide on a retry.

    ``read(headers)`` gives the lines (see ``rate_limit_lines``); it is not called for a response
    that goes unread (:meth:`HttpPolicy.read_less`). At most one store call: the observation,
    only when the response taught something.
    """
    key = plan.quota_key
    if _unread(policy, key, status):
        return NO_RETRY
    info, obs = _lesson(policy, key, status, headers, read, attempt)
    stored = False
    if obs is not None and key is not None:
        try:
            policy.store.observe(key, policy.quota_spec, obs)
            policy.learned += 1
            stored = True
        except Exception as exc:  # learning must never fail the caller's request
            logger.debug("rate-sync: could not record what %s said: %s", plan.label, exc)
    return _verdict(policy, plan, info, status, attempt, stored)


# -- async -----------------------------------------------------------------------------------


async def await_gate(policy: HttpPolicy, plan: Plan) -> bool:
    """Async twin of :func:`wait_gate_sync` (polls the gate: it may be opened from another thread)."""
    probing, gate = policy.probe_enter(plan)
    if gate is not None:
        deadline = time.monotonic() + policy.config.probe_wait
        # The gate is a threading.Event (the probe may run in another thread or event loop): poll it.
        while not gate.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_PROBE_POLL)
    return probing


async def aacquire(policy: HttpPolicy, plan: Plan, cost: int, sleep: Callable[[float], Awaitable[None]]) -> Permit:
    """Async twin of :func:`acquire`."""
    timeout = plan.timeout
    calls = policy.calls_for(plan)
    if calls:
        # Each call reserves its place (or refuses, charging nothing); one sleep then covers the
        # longest wait. Waits are not shortened by the time the calls took: going a little later
        # than reserved is always within the limits.
        budget = math.inf if timeout is None else timeout
        wait = 0.0
        for call in calls:
            d = await call.store.aacquire(call.slots, cost, budget)
            if d.degraded:
                policy.degraded += 1
            if not d.allowed:
                raise _timed_out(policy, plan, d.wait, timeout)
            if d.wait > wait:
                wait = d.wait
        if wait > 0.0:
            policy.record_wait(wait)
            await sleep(wait)
    if not plan.leases:
        return NO_PERMIT
    return Permit(policy, await _leases_async(policy, plan, timeout))


async def _leases_async(policy: HttpPolicy, plan: Plan, timeout: float | None) -> list[tuple[LeaseSpec, str]]:
    held: list[tuple[LeaseSpec, str]] = []
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        for spec in plan.leases:
            lease_id = _new_lease_id()
            started = None
            while True:
                try:
                    ld = await spec.store.alease_acquire(spec.key, spec.limit, spec.lease_seconds, lease_id)
                except BaseException:
                    # Cancelled while the store may have granted it: give it back.
                    await asyncio.shield(spec.store.alease_release(spec.key, lease_id))
                    raise
                if ld.degraded:
                    policy.degraded += 1
                if ld.acquired:
                    held.append((spec, lease_id))
                    if started is not None:
                        policy.record_wait(loop.time() - started)
                    break
                now = loop.time()
                started = started if started is not None else now
                pause = min(max(ld.retry_after, 0.001), LEASE_POLL_SECONDS)
                if deadline is not None:
                    if now >= deadline:
                        raise _timed_out(policy, plan, max(ld.retry_after, 0.0), timeout)
                    pause = min(pause, deadline - now)
                await policy.waiters(spec.key).wait_async(pause)
    except BaseException:
        for spec, lease_id in held:
            await asyncio.shield(spec.store.alease_release(spec.key, lease_id))
        raise
    return held


async def alearn(
    policy: HttpPolicy, plan: Plan, status: int, headers: H, read: Callable[[H], RateLimitLines], attempt: int
) -> Verdict:
    """Async twin of :func:`learn`."""
    key = plan.quota_key
    if _unread(policy, key, status):
        return NO_RETRY
    info, obs = _lesson(policy, key, status, headers, read, attempt)
    stored = False
    if obs is not None and key is not None:
        try:
            await policy.store.aobserve(key, policy.quota_spec, obs)
            policy.learned += 1
            stored = True
        except Exception as exc:  # learning must never fail the caller's request
            logger.debug("rate-sync: could not record what %s said: %s", plan.label, exc)
    return _verdict(policy, plan, info, status, attempt, stored)
