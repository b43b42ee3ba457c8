"""The decisions shared by every HTTP client shell (sans I/O).

:class:`HttpPolicy` turns a request (method, host, path, per-request control) into a
:class:`Plan`: which store calls admit it (each call's slots share one hash tag, so one call is
atomic even on Redis Cluster), which concurrency leases it holds, where what its response teaches
is kept. It also decides what a response means: what to learn (an :class:`~ratesync.Observation`)
and whether to retry. The store calls themselves live in ``_runtime`` (a sync and an async twin).

Store keys, all under the host's hash tag ``{http:HOST}`` (HOST is the host, with the port when it
is not the scheme's default)::

    {http:api.github.com}#host:0                          inline host rule, one key per limit
    {http:api.github.com}#host:lease                      its concurrency leases
    {http:api.github.com}#GET /repos/{owner}/{repo}:0     inline endpoint rule (the template, not the URL)
    {http:api.github.com}#quota                           the learned quota of the host
    {http:api.github.com}#GET /repos/{owner}/{repo}:quota the learned quota of an endpoint

A rule that names a limiter (``limiter = "partner"``) uses that limiter's own keys and store
(``{partner}#0``...), so its budget is shared with every other use of the limiter; being under
another hash tag, it is admitted by a separate store call, made after the host's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ratesync
from ratesync import ConfigurationError, Observation, Quota, Registry, Spec, Store, UnknownLimiterError
from ratesync._limiter import _Waiters
from ratesync._registry import DEFAULT_STORE_ID

from ._config import EndpointRule, HttpConfig, HttpRule, describe_rule, min_timeout
from ._headers import RateLimitInfo
from ._routing import Route, Router

__all__ = [
    "ALWAYS_PARSE",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "Control",
    "HttpMetrics",
    "HttpPolicy",
    "LeaseSpec",
    "Plan",
    "StoreCall",
    "Verdict",
    "parse_control",
]

logger = logging.getLogger("ratesync_http")

#: Methods that may be sent again after a 429 or 503 (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Statuses answered by waiting and sending again.
RETRY_STATUSES = frozenset({429, 503})
#: Statuses whose headers are parsed even when no rate-limit header is present.
ALWAYS_PARSE = frozenset({403, 429, 503})
#: The ``request.extensions`` key (httpx) holding per-request control.
EXTENSION = "ratesync"
CONTROL_KEYS = frozenset({"skip", "limiter", "key", "cost", "timeout", "retries", "learn"})
_PLAN_CACHE_SIZE = 4096
_GATE_LIMIT = 100_000

#: A learned quota is "far from exhausted", and its responses may go unread for up to
#: ``learn_interval``, while the upstream's last word left more than this share of its limit...
LEARN_MARGIN_SHARE = 0.25
#: ... and more than this many requests (a floor for small or unstated limits).
LEARN_MARGIN_MIN = 32.0


#: Longest tail of a window left unspent (see :func:`tail_guard`).
TAIL_GUARD_MAX = 0.25


def tail_guard(window: float | None) -> float:
    """Seconds before a learned reset in which the rest of the window is not spent."""
    return min(TAIL_GUARD_MAX, 0.1 * (window if window is not None else 1.0))


# -- per-request control ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Control:
    """Per-request control, from ``extensions={"ratesync": {...}}`` (httpx) or ``ratesync=`` (session)."""

    #: Send without waiting for any limit (the response is still learned from).
    skip: bool = False
    #: Limiters to go through instead of the rules that route would pick.
    limiters: tuple[str, ...] | None = None
    #: The key of ``limiters`` (as in ``acquire(name, key=...)``).
    key: str | None = None
    cost: int = 1
    #: Longest wait for a permit, overriding the rules' and ``[http]``'s timeout.
    timeout: float | None = None
    timeout_set: bool = False
    retries: int | None = None
    learn: bool | None = None


NO_CONTROL = Control()


def parse_control(raw: Any) -> Control:
    """Validate ``request.extensions["ratesync"]``; mistakes raise :class:`ratesync.ConfigurationError`."""
    if raw is None:
        return NO_CONTROL
    if isinstance(raw, Control):
        return raw
    table = "request.extensions"

    def bad(message: str, key: str) -> ConfigurationError:
        return ConfigurationError(message, table=table, key=f"{EXTENSION}.{key}")

    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f'must be a dict such as {{"limiter": "name"}} or {{"skip": True}}, got {type(raw).__name__}',
            table=table,
            key=EXTENSION,
        )
    for k in raw:
        if k not in CONTROL_KEYS:
            raise bad(f"unknown key; known keys: {', '.join(sorted(CONTROL_KEYS))}", str(k))
    skip = raw.get("skip", False)
    if not isinstance(skip, bool):
        raise bad(f"expected True or False, got {skip!r}", "skip")
    limiter = raw.get("limiter")
    limiters: tuple[str, ...] | None
    if limiter is None:
        limiters = None
    elif isinstance(limiter, str):
        limiters = (limiter,)
    elif isinstance(limiter, list | tuple) and limiter and all(isinstance(x, str) for x in limiter):
        limiters = tuple(limiter)
    else:
        raise bad(f"expected a limiter name or a list of names, got {limiter!r}", "limiter")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise bad(f"expected a string, got {key!r}", "key")
    if key is not None and limiters is None:
        raise bad('key picks the key of a named limiter: give "limiter" too', "key")
    cost = raw.get("cost", 1)
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise bad(f"expected a whole number of at least 1, got {cost!r}", "cost")
    timeout_set = "timeout" in raw
    timeout = raw.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise bad(f"expected seconds (a number >= 0) or None, got {timeout!r}", "timeout")
    retries = raw.get("retries")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise bad(f"expected a whole number >= 0, got {retries!r}", "retries")
    learn = raw.get("learn")
    if learn is not None and not isinstance(learn, bool):
        raise bad(f"expected True or False, got {learn!r}", "learn")
    return Control(
        skip=skip,
        limiters=limiters,
        key=key,
        cost=cost,
        timeout=None if timeout is None else float(timeout),
        timeout_set=timeout_set,
        retries=retries,
        learn=learn,
    )


# -- plans -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCall:
    """One atomic store call: every slot shares one hash tag."""

    store: Store
    slots: tuple[tuple[str, Spec], ...]


@dataclass(frozen=True, slots=True)
class LeaseSpec:
    """One concurrency limit a request holds a lease of until its response is closed."""

    store: Store
    key: str
    limit: int
    lease_seconds: float


@dataclass(frozen=True, slots=True)
class Plan:
    """What admitting one request takes, and where its response's lessons go."""

    #: ``host`` or ``host METHOD /template``: names the limits in errors, logs and metrics.
    label: str
    #: The store calls, the learned quota included.
    calls: tuple[StoreCall, ...]
    #: The same without the learned quota: for a host that has answered without rate-limit
    #: headers (checking an empty quota on every request would cost a store round trip's work).
    lean_calls: tuple[StoreCall, ...]
    leases: tuple[LeaseSpec, ...]
    #: Where the learned quota lives (``None``: learning is off for this request).
    quota_key: str | None
    timeout: float | None
    #: Nothing to wait for and nothing to learn: send as is.
    passthrough: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a response means: retry or not, and how long to wait locally before the next attempt."""

    retry: bool
    #: Seconds until the upstream should be asked again (for the timeout check).
    wait: float
    #: Seconds to sleep here before acquiring again (when nothing shared will make acquire wait).
    local_wait: float
    info: RateLimitInfo | None = None


NO_RETRY = Verdict(False, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class HttpMetrics:
    """Counters of one transport or adapter since it was created (or ``reset_metrics``)."""

    #: Requests handed to the transport (each counted once, whatever its retries).
    requests: int
    #: Requests sent upstream, retries included.
    sent: int
    #: Requests that waited for a permit, and the time they waited.
    waits: int
    wait_seconds_total: float
    wait_seconds_max: float
    #: Permits refused because the wait would exceed the timeout (``RateLimitTimeout`` raised).
    timeouts: int
    retries: int
    responses_429: int
    responses_503: int
    #: Responses whose rate-limit headers were folded into the store.
    learned: int
    #: Requests sent with ``skip``.
    skipped: int
    #: Store answers given by the store's outage policy instead of its backend.
    degraded: int
    #: Responses not yet closed that hold a concurrency lease.
    leases_held: int
    #: Responses not read because their quota was far from exhausted and another response of it
    #: had been read less than ``learn_interval`` before (see docs/http.md, "Learning").
    unread: int = 0


class HttpPolicy:
    """Routing, plans, learning and retry decisions for one transport or adapter."""

    def __init__(self, config: HttpConfig, registry: Registry | None = None, store: Store | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else ratesync.default_registry
        self.store = store if store is not None else self._resolve_store()
        self.quota_spec = Quota(max_cooldown=config.max_cooldown)
        self.router = Router(config.hosts, config.endpoints, config.default)
        self._check_limiters()
        # Plans by (method, authority, None) when the path does not matter for that host and
        # method, else by (method, authority, ids of the endpoint rules the path matched): one
        # plan per route shape, however many distinct URLs.
        self._plans: dict[tuple[str, str, tuple[int, ...] | None], Plan] = {}
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._heard: set[str] = set()
        self._learned: set[str] = set()
        self._gates: dict[str, threading.Event] = {}
        self._waiters: dict[str, _Waiters] = {}
        #: A gauge, not a counter: ``reset_metrics`` leaves it alone.
        self.leases_held = 0
        #: Per quota key: until when, and for how many more responses, responses may go unread.
        self.unread_until: dict[str, UnreadBudget] = {}
        #: The clock of ``learn_interval`` (replaceable in tests).
        self.clock: Callable[[], float] = time.monotonic
        self.reset_metrics()

    def __repr__(self) -> str:
        hosts = ", ".join(f"{p}: {describe_rule(r)}" for p, r in self.config.hosts.items())
        return f"<HttpPolicy store={self.store.name!r} learn={self.config.learn} hosts={{{hosts}}}>"

    # -- construction --------------------------------------------------------------------------

    def _resolve_store(self) -> Store:
        store_id = self.config.store
        if store_id is None:
            try:
                return self.registry.get_store(DEFAULT_STORE_ID)
            except ratesync.UnknownStoreError:
                with _DEFAULT_STORE_LOCK:
                    try:
                        return self.registry.get_store(DEFAULT_STORE_ID)
                    except ratesync.UnknownStoreError:
                        return self.registry.configure_store(DEFAULT_STORE_ID, "memory")
        try:
            return self.registry.get_store(store_id)
        except ratesync.UnknownStoreError as exc:
            raise ConfigurationError(
                f"names the store {store_id!r}, which is not defined; "
                f"defined stores: {', '.join(exc.known) or '(none)'}",
                path=self.config.path,
                table="http",
                key="store",
            ) from None

    def _check_limiters(self) -> None:
        rules: list[tuple[str, HttpRule]] = [(f'http.hosts."{p}"', r) for p, r in self.config.hosts.items()]
        rules += [(f"http.endpoints[{i}]", e.rule) for i, e in enumerate(self.config.endpoints)]
        if self.config.default is not None:
            rules.append(("http.default", self.config.default))
        for table, rule in rules:
            if rule.limiter is None:
                continue
            try:
                self.registry.resolve(rule.limiter, rule.key)
            except (UnknownLimiterError, ValueError) as exc:
                raise ConfigurationError(str(exc), path=self.config.path, table=table, key="limiter") from None

    # -- plans ---------------------------------------------------------------------------------

    def cached_plan(self, method: str, authority: str) -> Plan | None:
        """The plan of a request without per-request control, when its path does not matter and it is cached.

        The transports try this first, so most requests never compute their path.
        """
        return self._plans.get((method, authority, None))

    def plan(self, method: str, authority: str, path: str, control: Control = NO_CONTROL) -> Plan:
        """The plan of one request; cached per (method, host), or per route shape when endpoint rules apply."""
        if control is not NO_CONTROL:
            return self._build(self.router.route(method, authority, path), authority, control)
        route: Route | None = None
        shape: tuple[int, ...] | None = None
        if self.router.has_endpoints(method, authority):
            route = self.router.route(method, authority, path)
            # The router keeps every rule alive as long as this policy, so ids are stable keys.
            shape = tuple(map(id, route.endpoints))
        key = (method, authority, shape)
        cached = self._plans.get(key)
        if cached is not None:
            return cached
        if route is None:
            route = self.router.route(method, authority, path)
        plan = self._build(route, authority, control)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _build(self, route: Route, authority: str, control: Control) -> Plan:
        tag = f"{{http:{authority}}}"
        rules: list[tuple[str, HttpRule]] = []
        if control.limiters is not None:
            rules = [("", HttpRule(limiter=name, key=control.key)) for name in control.limiters]
        else:
            if route.host_rule is not None:
                rules.append(("host", route.host_rule))
            rules += [(e.route, e.rule) for e in route.endpoints]
        learn = self._learns(route, control)
        label = authority if not route.endpoints else f"{authority} {route.endpoints[0].route}"
        quota_key = None
        if learn:
            quota_key = f"{tag}#{route.endpoints[0].route}:quota" if route.endpoints else f"{tag}#quota"

        own_slots: list[tuple[str, Spec]] = []
        other_calls: list[StoreCall] = []
        leases: list[LeaseSpec] = []
        timeouts: list[float | None] = []
        for name, rule in rules:
            timeouts.append(rule.timeout)
            if rule.limiter is not None:
                limiter, key = self.registry.resolve(rule.limiter, rule.key)
                timeouts.append(limiter.timeout)
                keys = limiter.store_keys(key)
                if limiter.specs:
                    other_calls.append(StoreCall(limiter.store, tuple(zip(keys, limiter.specs, strict=False))))
                if limiter.max_concurrent is not None:
                    leases.append(LeaseSpec(limiter.store, keys[-1], limiter.max_concurrent, limiter.lease_seconds))
                continue
            own_slots += [(f"{tag}#{name}:{i}", spec) for i, spec in enumerate(rule.specs)]
            if rule.max_concurrent is not None:
                leases.append(LeaseSpec(self.store, f"{tag}#{name}:lease", rule.max_concurrent, rule.lease_seconds))
        lean: list[StoreCall] = []
        if own_slots:
            lean.append(StoreCall(self.store, tuple(own_slots)))
        lean += other_calls
        calls = lean
        if quota_key is not None and not control.skip:
            calls = [StoreCall(self.store, (*own_slots, (quota_key, self.quota_spec))), *other_calls]
        if control.skip:
            calls, lean, leases = [], [], []
        if control.timeout_set:
            timeout = control.timeout
        else:
            timeout = min_timeout(timeouts)
            if timeout is None:
                timeout = self.config.timeout
        return Plan(
            label=label,
            calls=tuple(calls),
            lean_calls=tuple(lean),
            leases=tuple(leases),
            quota_key=quota_key,
            timeout=timeout,
            passthrough=not calls and not leases and quota_key is None,
        )

    def _learns(self, route: Route, control: Control) -> bool:
        if control.learn is not None:
            return control.learn
        for e in route.endpoints:
            if e.rule.learn is not None:
                return e.rule.learn
        if route.host_rule is not None and route.host_rule.learn is not None:
            return route.host_rule.learn
        return self.config.learn

    def describe(self, method: str, authority: str, path: str) -> str:
        """Which rules a request would go through (for logs and debugging)."""
        route = self.router.route(method, authority, path)
        parts = []
        if route.host_rule is not None:
            parts.append(f"host rule {route.host_pattern!r} ({describe_rule(route.host_rule)})")
        parts += [f"endpoint {e.host} {e.route!r} ({describe_rule(e.rule)})" for e in route.endpoints]
        return "; ".join(parts) or "no rule"

    # -- learning and retries --------------------------------------------------------------------

    def observation(self, info: RateLimitInfo, status: int, attempt: int) -> Observation | None:
        """What to fold into the learned quota for a response (``None``: nothing to learn)."""
        if info.retry_after is not None and info.blocked:
            # A cooldown the server asked for, shared by every process; a quota that is also at
            # zero may say its reset is later still.
            reset = info.retry_after
            if info.remaining is not None and info.remaining < 1 and info.reset_after is not None:
                reset = max(reset, info.reset_after)
            return Observation(0.0, reset, info.limit, info.window)
        remaining, reset_after = info.remaining, info.reset_after
        if remaining is not None and reset_after is not None:
            if status == 429:
                remaining = 0.0
            elif reset_after < TAIL_GUARD_MAX and reset_after < tail_guard(info.window):
                # The last moments of a window are not spent: a request sent now may reach the
                # upstream after its reset and count in the next window, which the mirror will
                # hand out in full.
                remaining = 0.0
            return Observation(remaining, reset_after, info.limit, info.window)
        if status == 429:
            # Refused with no hint of when to come back: a short shared cooldown, doubling.
            return Observation(0.0, self.backoff(attempt))
        return None

    def read_less(self, key: str, info: RateLimitInfo, status: int) -> None:
        """After a response of quota ``key`` was read: may the next ones go unread, and how many?

        Reading and folding every response costs more CPU than the rest of the request path
        together, and while the upstream's quota is far from exhausted it teaches next to nothing
        that the store's mirror does not already count (every process sharing the store charges
        it). So while the last response read left more than a margin (a quarter of the limit, at
        least ``LEARN_MARGIN_MIN``), the following responses of that quota are not read for up to
        ``learn_interval`` seconds, and at most as many of them as the margin leaves; never past
        the tail of the window (the first response of the next one is read), never a 403, 429 or
        503. What goes unseen is only what clients outside the store spent in that interval.
        """
        interval = self.config.learn_interval
        remaining = info.remaining
        if interval <= 0.0 or remaining is None or info.blocked or status in ALWAYS_PARSE:
            self.unread_until.pop(key, None)
            return
        limit = info.limit
        margin = LEARN_MARGIN_MIN if limit is None else max(LEARN_MARGIN_MIN, LEARN_MARGIN_SHARE * limit)
        left = remaining - margin
        span = interval
        reset_after = info.reset_after
        if reset_after is not None:
            span = min(span, reset_after - tail_guard(info.window))
        if left < 1.0 or span <= 0.0:
            self.unread_until.pop(key, None)
            return
        budget = self.unread_until.get(key)
        if budget is None:
            if len(self.unread_until) >= _GATE_LIMIT:
                self.unread_until.clear()
            budget = self.unread_until[key] = UnreadBudget()
        budget.until = self.clock() + span
        budget.left = int(min(left, 1e9))

    def backoff(self, attempt: int) -> float:
        return min(self.config.backoff * (2.0**attempt), self.config.max_cooldown)

    def verdict(
        self,
        info: RateLimitInfo | None,
        status: int,
        attempt: int,
        learned: bool,
    ) -> Verdict:
        """Whether a response with ``status`` is worth another attempt, and the wait before it."""
        if status not in RETRY_STATUSES:
            return NO_RETRY
        cap = self.config.max_cooldown
        if info is not None and info.retry_after is not None:
            wait = min(info.retry_after, cap)
        elif info is not None and info.remaining is not None and info.remaining < 1 and info.reset_after is not None:
            wait = min(info.reset_after, cap)
        else:
            wait = self.backoff(attempt)
        # When the lesson went to the shared store, acquiring again waits for it; otherwise wait here.
        return Verdict(True, wait, 0.0 if learned else wait, info)

    def retries_for(self, method: str, has_idempotency_key: bool, replayable: bool, control: Control) -> int:
        """How many times a request may be sent again after a 429 or 503."""
        if not replayable:
            return 0
        if method not in IDEMPOTENT_METHODS and not has_idempotency_key:
            return 0
        return self.config.retries if control.retries is None else control.retries

    # -- the probe gate: the first request to a host not yet heard from goes alone -----------------

    def probe_enter(self, plan: Plan) -> tuple[bool, threading.Event | None]:
        """``(True, None)``-like answers: whether this request probes, or the gate to wait on."""
        key = plan.quota_key
        if key is None or key in self._known or self.config.probe_wait <= 0:
            return False, None
        with self._lock:
            if key in self._known:
                return False, None
            gate = self._gates.get(key)
            if gate is not None:
                return False, gate
            self._gates[key] = threading.Event()
            return True, None

    def calls_for(self, plan: Plan) -> tuple[StoreCall, ...]:
        """The plan's store calls: with the learned quota unless this host is known to send no headers.

        The quota is consulted until this process has heard from the host, and for good once the
        host has taught anything; a host that answered without rate-limit headers skips it.
        """
        key = plan.quota_key
        if key is None or key in self._learned or key not in self._heard:
            return plan.calls
        return plan.lean_calls

    def heard(self, plan: Plan, learned: bool) -> None:
        """Record that the host of ``plan`` answered (and whether its answer taught anything)."""
        key = plan.quota_key
        if key is None:
            return
        if learned and key not in self._learned:
            with self._lock:
                if len(self._learned) >= _GATE_LIMIT:
                    self._learned.clear()
                self._learned.add(key)
        if key not in self._heard:
            with self._lock:
                if len(self._heard) >= _GATE_LIMIT:
                    self._heard.clear()
                self._heard.add(key)

    def probe_exit(self, plan: Plan) -> None:
        key = plan.quota_key
        if key is None:
            return
        with self._lock:
            if len(self._known) >= _GATE_LIMIT:
                self._known.clear()
            self._known.add(key)
            gate = self._gates.pop(key, None)
        if gate is not None:
            gate.set()

    def waiters(self, lease_key: str) -> _Waiters:
        w = self._waiters.get(lease_key)
        if w is None:
            with self._lock:
                w = self._waiters.setdefault(lease_key, _Waiters())
        return w

    # -- metrics -------------------------------------------------------------------------------

    def reset_metrics(self) -> None:
        """Start the counters over (``leases_held`` counts what is held now, and stays)."""
        self.requests = 0
        self.sent = 0
        self.waits = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.timeouts = 0
        self.retries = 0
        self.responses_429 = 0
        self.responses_503 = 0
        self.learned = 0
        self.skipped = 0
        self.degraded = 0
        self.unread = 0

    def record_wait(self, seconds: float) -> None:
        self.waits += 1
        self.wait_total += seconds
        if seconds > self.wait_max:
            self.wait_max = seconds

    def record_status(self, status: int) -> None:
        self.sent += 1
        if status == 429:
            self.responses_429 += 1
        elif status == 503:
            self.responses_503 += 1

    def metrics(self) -> HttpMetrics:
        return HttpMetrics(
            requests=self.requests,
            sent=self.sent,
            waits=self.waits,
            wait_seconds_total=self.wait_total,
            wait_seconds_max=self.wait_max,
            timeouts=self.timeouts,
            retries=self.retries,
            responses_429=self.responses_429,
            responses_503=self.responses_503,
            learned=self.learned,
            skipped=self.skipped,
            degraded=self.degraded,
            leases_held=self.leases_held,
            unread=self.unread,
        )


class UnreadBudget:
    """How long, and for how many responses, the responses of one quota may go unread."""

    # Updated without a lock: a lost decrement between threads lets one more response go unread
    # within the same interval, which the margin covers.
    __slots__ = ("left", "until")

    def __init__(self) -> None:
        self.until = 0.0
        self.left = 0


_DEFAULT_STORE_LOCK = threading.Lock()


def endpoint_label(e: EndpointRule) -> str:
    return f"{e.host} {e.route}"


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def make_policy(
    config: HttpConfig | Mapping[str, Any] | None = None,
    *,
    registry: Registry | None = None,
    store: str | Store | None = None,
    hosts: Mapping[str, HttpRule | Mapping[str, Any]] | None = None,
    endpoints: Iterable[EndpointRule | Mapping[str, Any]] | None = None,
    default: HttpRule | Mapping[str, Any] | None = None,
    learn: bool | None = None,
    retries: int | None = None,
    max_cooldown: float | None = None,
    timeout: float | None = None,
    backoff: float | None = None,
    probe_wait: float | None = None,
    learn_interval: float | None = None,
) -> HttpPolicy:
    """Build the policy of a transport or adapter: the ``[http]`` table, changed by keyword arguments.

    With ``config=None`` the table comes from ``registry`` (the default registry loads
    rate-sync.toml on first use). ``hosts``, ``endpoints`` and ``default`` replace the table's rules
    of the same kind; each value is an :class:`HttpRule` or a dict shaped like its TOML table.
    """
    from ._config import parse_endpoint, parse_http_config, parse_rule

    reg = registry if registry is not None else ratesync.default_registry
    if config is None:
        reg.list_limiters()  # an autoloading registry reads rate-sync.toml now
        base = parse_http_config(reg.http_config, path=reg.config_path)
    elif isinstance(config, HttpConfig):
        base = config
    else:
        base = parse_http_config(config)
    changes: dict[str, Any] = {
        "learn": learn,
        "retries": retries,
        "max_cooldown": max_cooldown,
        "timeout": timeout,
        "backoff": backoff,
        "probe_wait": probe_wait,
        "learn_interval": learn_interval,
    }
    if hosts is not None:
        from ._config import check_host_pattern

        changes["hosts"] = {
            check_host_pattern(p, table="hosts", key=str(p)): parse_rule(r, table=f'hosts["{p}"]')
            for p, r in hosts.items()
        }
    if endpoints is not None:
        changes["endpoints"] = tuple(parse_endpoint(e, table=f"endpoints[{i}]") for i, e in enumerate(endpoints))
    if default is not None:
        changes["default"] = parse_rule(default, table="default")
    store_obj = None
    if isinstance(store, Store):
        store_obj = store
    elif store is not None:
        changes["store"] = store
    for name in ("learn", "retries", "max_cooldown", "timeout", "backoff", "probe_wait", "learn_interval"):
        value = changes[name]
        if value is not None:
            # The same checks as the file's keys.
            parse_http_config({name: value})
    return HttpPolicy(base.with_overrides(**changes), reg, store_obj)
