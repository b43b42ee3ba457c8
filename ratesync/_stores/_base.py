"""The store protocol every backend implements, and the outage policy they share.

A store keeps limiter state under string keys and applies the pure algorithms of
``ratesync._algorithms`` atomically. Keys are chosen by the caller; all keys of one call share a
hash tag (the first ``{...}`` of the key, as in Redis Cluster), so a backend that shards by key can
run the call on one node. ``ratesync`` builds keys as ``{<limiter>:<key>}#<n>``.

Backends implement the underscore methods (``_acquire``/``_aacquire`` and so on). The public
methods wrap them in the outage policy (``on_error``), so a backend never decides by itself what
a failure means for the caller.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .._algorithms import Decision, LeaseDecision, Observation, Quota, Spec, checked_observation
from .._exceptions import ConfigurationError, StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from .memory import MemoryStore

__all__ = ["OnError", "Slot", "Store", "redact_url"]

logger = logging.getLogger("ratesync")

#: One limit of one call: the store key and the limit that applies there.
Slot: TypeAlias = tuple[str, Spec]
OnError: TypeAlias = Literal["open", "closed", "local"]
ON_ERROR_VALUES: tuple[OnError, ...] = ("open", "closed", "local")

T = TypeVar("T")

_OPEN = Decision(True, 0.0, math.inf, 0.0, math.inf, degraded=True)
_OPEN_LEASE = LeaseDecision(True, 0, 0.0, degraded=True)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{user}:***@{host}" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Store(ABC):
    """A backend for limiter state. One instance serves sync and async callers alike.

    ``on_error`` says what a backend failure means: ``"closed"`` raises :class:`StoreError`,
    ``"open"`` admits the call, ``"local"`` falls back to an in-process memory store with the same
    limits. While the backend is known to be down, calls skip it for ``retry_interval`` seconds
    (milliseconds per call, not a connect timeout each), then one call probes it again.
    """

    #: The engine name in rate-sync.toml (``engine = "memory"``).
    engine: str = ""

    def __init__(self, *, on_error: OnError = "closed", retry_interval: float = 1.0, name: str = "") -> None:
        if on_error not in ON_ERROR_VALUES:
            raise ConfigurationError(f"on_error must be one of {', '.join(ON_ERROR_VALUES)}, not {on_error!r}")
        self.on_error: OnError = on_error
        self.name = name or self.engine
        self.retry_interval = retry_interval
        self._down_until = 0.0
        self._down = False
        self._state_lock = threading.Lock()
        self._fallback: MemoryStore | None = None
        #: Failures of the backend seen so far (each one, not each switch).
        self.errors = 0
        #: Calls answered by the policy instead of the backend.
        self.fallbacks = 0

    # -- what a backend implements ---------------------------------------------------------

    @abstractmethod
    def _acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision: ...
    @abstractmethod
    async def _aacquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision: ...
    @abstractmethod
    def _peek(self, slots: Sequence[Slot]) -> Decision: ...
    @abstractmethod
    async def _apeek(self, slots: Sequence[Slot]) -> Decision: ...
    @abstractmethod
    def _observe(self, key: str, spec: Quota, obs: Observation) -> None: ...
    @abstractmethod
    async def _aobserve(self, key: str, spec: Quota, obs: Observation) -> None: ...
    @abstractmethod
    def _lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision: ...
    @abstractmethod
    async def _alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision: ...
    @abstractmethod
    def _lease_release(self, key: str, lease_id: str) -> None: ...
    @abstractmethod
    async def _alease_release(self, key: str, lease_id: str) -> None: ...
    @abstractmethod
    def _reset(self, keys: Sequence[str]) -> None: ...
    @abstractmethod
    async def _areset(self, keys: Sequence[str]) -> None: ...

    def initialize(self) -> None:
        """Connect and create what the backend needs (tables, buckets); idempotent, optional."""

    async def ainitialize(self) -> None:
        """Async twin of :meth:`initialize`."""

    def close(self) -> None:
        """Release connections held by this store (sync side)."""

    async def aclose(self) -> None:
        """Release connections held by this store (async side)."""

    def describe(self) -> str:
        """A one-line description safe to log (passwords redacted)."""
        return self.engine

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.describe()} on_error={self.on_error!r}>"

    # -- the public protocol: backend calls under the outage policy --------------------------

    def acquire(self, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
        """Apply every limit in ``slots`` atomically: all admit and are charged, or none is."""
        return self._guard(
            lambda: self._acquire(slots, cost, max_wait), lambda f: f.acquire(slots, cost, max_wait), _OPEN
        )

    async def aacquire(self, slots: Sequence[Slot], cost: int = 1, max_wait: float = 0.0) -> Decision:
        return await self._aguard(
            lambda: self._aacquire(slots, cost, max_wait), lambda f: f.acquire(slots, cost, max_wait), _OPEN
        )

    def peek(self, slots: Sequence[Slot]) -> Decision:
        """What a call of cost 1 would be told, charging nothing."""
        return self._guard(lambda: self._peek(slots), lambda f: f.peek(slots), _OPEN)

    async def apeek(self, slots: Sequence[Slot]) -> Decision:
        return await self._aguard(lambda: self._apeek(slots), lambda f: f.peek(slots), _OPEN)

    def observe(self, key: str, spec: Quota, obs: Observation) -> None:
        """Fold what an upstream said of its quota into the mirror under ``key``.

        Raises :class:`ValueError` for an observation whose ``remaining`` is not a finite number
        (see :func:`checked_observation`).
        """
        obs = checked_observation(obs)
        self._guard(lambda: self._observe(key, spec, obs), lambda f: f.observe(key, spec, obs), None)

    async def aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        obs = checked_observation(obs)
        await self._aguard(lambda: self._aobserve(key, spec, obs), lambda f: f.observe(key, spec, obs), None)

    def lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        """Take one of ``limit`` concurrency slots as lease ``lease_id``, expiring in ``lease_seconds``."""
        return self._guard(
            lambda: self._lease_acquire(key, limit, lease_seconds, lease_id),
            lambda f: f.lease_acquire(key, limit, lease_seconds, lease_id),
            _OPEN_LEASE,
        )

    async def alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return await self._aguard(
            lambda: self._alease_acquire(key, limit, lease_seconds, lease_id),
            lambda f: f.lease_acquire(key, limit, lease_seconds, lease_id),
            _OPEN_LEASE,
        )

    def lease_release(self, key: str, lease_id: str) -> None:
        """Remove exactly lease ``lease_id`` (a no-op if it has expired or was never taken)."""
        self._guard(lambda: self._lease_release(key, lease_id), lambda f: f.lease_release(key, lease_id), None)

    async def alease_release(self, key: str, lease_id: str) -> None:
        await self._aguard(lambda: self._alease_release(key, lease_id), lambda f: f.lease_release(key, lease_id), None)

    def reset(self, keys: Sequence[str]) -> None:
        """Forget the state (and leases) under ``keys``."""
        self._guard(lambda: self._reset(keys), lambda f: f.reset(keys), None)

    async def areset(self, keys: Sequence[str]) -> None:
        await self._aguard(lambda: self._areset(keys), lambda f: f.reset(keys), None)

    # -- the outage policy ---------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False while the backend is known to be down."""
        return not self._down

    @property
    def fallback(self) -> MemoryStore:
        """The in-process store that ``on_error = "local"`` answers from while the backend is down."""
        if self._fallback is None:
            from .memory import MemoryStore

            self._fallback = MemoryStore(name=f"{self.name} (local fallback)")
        return self._fallback

    def _skip_backend(self) -> bool:
        if not self._down:
            return False
        now = time.monotonic()
        with self._state_lock:
            if now < self._down_until:
                return True
            # One caller probes the backend; the others keep skipping it until that probe ends.
            self._down_until = now + self.retry_interval
            return False

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        with self._state_lock:
            self._down_until = time.monotonic() + self.retry_interval
            was_down, self._down = self._down, True
        if not was_down:
            logger.warning(
                "rate-sync store %r (%s) failed: %s; on_error=%r until it answers again",
                self.name,
                self.describe(),
                _describe_error(exc),
                self.on_error,
            )

    def _recovered(self) -> None:
        with self._state_lock:
            was_down, self._down = self._down, False
        if was_down:
            logger.warning("rate-sync store %r (%s) answers again", self.name, self.describe())

    def _fallback_answer(self, exc: BaseException | None, local: Callable[[MemoryStore], T], open_value: T) -> T:
        self.fallbacks += 1
        if self.on_error == "open":
            return open_value
        if self.on_error == "local":
            answer = local(self.fallback)
            if isinstance(answer, Decision):
                return answer.replace(degraded=True)  # type: ignore[return-value]
            if isinstance(answer, LeaseDecision):
                return replace(answer, degraded=True)
            return answer
        if exc is None:
            raise StoreUnavailableError(f"store {self.name!r} ({self.describe()}) is unavailable")
        if isinstance(exc, StoreError):
            raise exc
        raise StoreError(f"store {self.name!r} ({self.describe()}) failed: {_describe_error(exc)}") from exc

    def _guard(self, call: Callable[[], T], local: Callable[[MemoryStore], T], open_value: T) -> T:
        if self._skip_backend():
            return self._fallback_answer(None, local, open_value)
        try:
            result = call()
        except self._backend_errors() as exc:
            self._failed(exc)
            return self._fallback_answer(exc, local, open_value)
        if self._down:
            self._recovered()
        return result

    async def _aguard(self, call: Callable[[], Awaitable[T]], local: Callable[[MemoryStore], T], open_value: T) -> T:
        if self._skip_backend():
            return self._fallback_answer(None, local, open_value)
        try:
            result = await call()
        except self._backend_errors() as exc:
            self._failed(exc)
            return self._fallback_answer(exc, local, open_value)
        if self._down:
            self._recovered()
        return result

    def _backend_errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions that mean "the backend failed" (a backend adds its client's errors)."""
        return (OSError, StoreError, TimeoutError)


def _describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
