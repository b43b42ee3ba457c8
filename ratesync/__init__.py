"""rate-sync: keep outbound work inside rate limits, across threads, processes and machines.

The module functions use a default registry that reads ``rate-sync.toml`` on first use
(``$RATE_SYNC_CONFIG``, ``./rate-sync.toml`` or ``./config/rate-sync.toml``)::

    from ratesync import acquire

    async with acquire("api"):          # asyncio
        ...
    with acquire("api"):                # plain synchronous code
        ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._algorithms import (
    Decision,
    FixedWindow,
    LeaseDecision,
    Observation,
    Quota,
    QuotaState,
    SlidingWindow,
    Spec,
    TokenBucket,
)
from ._config import Config, LimiterConfig, StoreConfig, find_config, parse_config, read_config
from ._exceptions import (
    ConcurrencyMisuseError,
    ConfigurationError,
    MissingDependencyError,
    RateLimitExceeded,
    RateLimitTimeout,
    RateSyncError,
    StoreError,
    StoreUnavailableError,
    UnknownLimiterError,
    UnknownStoreError,
)
from ._limiter import Acquisition, Attempt, Limiter, LimiterMetrics, LimiterState
from ._registry import Registry, _Initialized, default_registry, rate_limited
from ._stores import MemoryStore, Store, redact_url

if TYPE_CHECKING:  # imported lazily at run time (see __getattr__): their client libraries are optional
    from ._stores.nats import NatsStore
    from ._stores.postgres import PostgresStore
    from ._stores.redis import RedisStore
    from ._stores.sqlite import SQLiteStore

__version__ = "0.1.0"

# The default registry's table, read directly on the hot path of acquire().
_limiters = default_registry._limiters

__all__ = [
    "Acquisition",
    "Attempt",
    "ConcurrencyMisuseError",
    "Config",
    "ConfigurationError",
    "Decision",
    "FixedWindow",
    "LeaseDecision",
    "Limiter",
    "LimiterConfig",
    "LimiterMetrics",
    "LimiterState",
    "MemoryStore",
    "NatsStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "MissingDependencyError",
    "Observation",
    "Quota",
    "QuotaState",
    "RateLimitExceeded",
    "RateLimitTimeout",
    "RateSyncError",
    "Registry",
    "SlidingWindow",
    "Spec",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreUnavailableError",
    "TokenBucket",
    "UnknownLimiterError",
    "UnknownStoreError",
    "__version__",
    "acquire",
    "atry_acquire",
    "clone_limiter",
    "configure_limiter",
    "configure_store",
    "default_registry",
    "find_config",
    "get_limiter",
    "get_store",
    "initialize_all_limiters",
    "initialize_limiter",
    "list_limiters",
    "list_stores",
    "load_config",
    "parse_config",
    "rate_limited",
    "read_config",
    "redact_url",
    "try_acquire",
]


def acquire(limiter_id: str, *, timeout: float | None = None, cost: int = 1, key: str | None = None) -> Acquisition:
    """Wait for a permit of ``limiter_id``: ``await`` it, or use ``async with`` / ``with``.

    ``key`` gives each user or tenant its own state under one definition; ``acquire("api:42")``
    means ``acquire("api", key="42")``. A wait longer than ``timeout`` (default: the limiter's)
    raises :class:`RateLimitTimeout` at once, having reserved nothing.
    """
    limiter = _limiters.get(limiter_id)
    if limiter is None:
        return default_registry.acquire(limiter_id, timeout=timeout, cost=cost, key=key)
    return Acquisition(limiter, key, cost, limiter.timeout if timeout is None else timeout)


def try_acquire(limiter_id: str, *, cost: int = 1, key: str | None = None) -> Attempt:
    """Take a permit only if one is free now: the answer says whether, or how long it would wait."""
    return default_registry.try_acquire(limiter_id, cost=cost, key=key)


async def atry_acquire(limiter_id: str, *, cost: int = 1, key: str | None = None) -> Attempt:
    """Async twin of :func:`try_acquire`."""
    return await default_registry.atry_acquire(limiter_id, cost=cost, key=key)


def configure_store(
    store_id: str, strategy: str | Store = "memory", *, engine: str | None = None, **options: Any
) -> Store:
    """Define store ``store_id`` (``strategy``/``engine``: memory, redis, postgres, sqlite, nats)."""
    return default_registry.configure_store(store_id, strategy, engine=engine, **options)


def configure_limiter(limiter_id: str, store_id: str | None = None, **options: Any) -> Limiter:
    """Define limiter ``limiter_id``; see :meth:`Registry.configure_limiter` for the options."""
    return default_registry.configure_limiter(limiter_id, store_id, **options)


def load_config(path: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> Config | None:
    """Load a rate-sync.toml (or a dict of the same shape) into the default registry."""
    if isinstance(path, Mapping):
        config = parse_config(path)
        default_registry._apply(config)
        return config
    return default_registry.load_config(path)


def clone_limiter(source_id: str, new_id: str, **overrides: Any) -> Limiter:
    """A new limiter like ``source_id`` with ``overrides``, on the same store (and its pool)."""
    return default_registry.clone_limiter(source_id, new_id, **overrides)


def get_limiter(limiter_id: str) -> Limiter:
    return default_registry.get_limiter(limiter_id)


def get_store(store_id: str) -> Store:
    return default_registry.get_store(store_id)


def list_stores() -> list[str]:
    return default_registry.list_stores()


def list_limiters() -> list[str]:
    return default_registry.list_limiters()


def initialize_limiter(limiter_id: str) -> _Initialized:
    """Check ``limiter_id`` now (``await`` it in async code to connect its store too)."""
    return default_registry.initialize_limiter(limiter_id)


def initialize_all_limiters() -> _Initialized:
    """Check every limiter now (``await`` it in async code to connect the stores too)."""
    return default_registry.initialize_all_limiters()


_LAZY_STORES = {
    "RedisStore": "ratesync._stores.redis",
    "PostgresStore": "ratesync._stores.postgres",
    "SQLiteStore": "ratesync._stores.sqlite",
    "NatsStore": "ratesync._stores.nats",
}


def __getattr__(name: str) -> Any:
    # Store classes whose client library is optional: imported on first access only.
    module = _LAZY_STORES.get(name)
    if module is None:
        raise AttributeError(f"module 'ratesync' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_STORES))
