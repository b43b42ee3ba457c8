"""Store backends, created by engine name. Backends needing a client library import it lazily."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from .._exceptions import ConfigurationError
from ._base import ON_ERROR_VALUES, OnError, Slot, Store, redact_url
from .memory import MemoryStore

__all__ = [
    "ENGINES",
    "COMMON_OPTIONS",
    "ENGINE_OPTIONS",
    "ON_ERROR_VALUES",
    "MemoryStore",
    "OnError",
    "Slot",
    "Store",
    "create_store",
    "engine_class",
    "engine_options",
    "redact_url",
]

#: engine name -> (module, class). Aliases point at the same backend.
ENGINES: dict[str, tuple[str, str]] = {
    "memory": ("ratesync._stores.memory", "MemoryStore"),
    "redis": ("ratesync._stores.redis", "RedisStore"),
    "postgres": ("ratesync._stores.postgres", "PostgresStore"),
    "postgresql": ("ratesync._stores.postgres", "PostgresStore"),
    "sqlite": ("ratesync._stores.sqlite", "SQLiteStore"),
    "nats": ("ratesync._stores.nats", "NatsStore"),
}

#: Options every engine accepts (the outage policy).
COMMON_OPTIONS = frozenset({"on_error", "retry_interval"})

#: Each engine's own options, known without importing the backend (so a configuration file can be
#: checked on a machine without the client library). A backend's ``OPTIONS`` must match its entry.
ENGINE_OPTIONS: dict[str, frozenset[str]] = {
    "memory": frozenset({"capacity"}),
    "redis": frozenset({"url", "key_prefix", "pool_size", "socket_timeout", "connect_timeout", "cluster", "batch"}),
    "postgres": frozenset(
        {
            "url",
            "schema",
            "table_prefix",
            "pool_size",
            "connect_timeout",
            "command_timeout",
            "ssl",
            "unlogged",
            "synchronous_commit",
            "auto_create",
            "application_name",
            "batch",
        }
    ),
    "sqlite": frozenset({"path", "url", "busy_timeout"}),
    "nats": frozenset(
        {
            "url",
            "bucket",
            "max_age",
            "credentials",
            "user",
            "password",
            "token",
            "connect_timeout",
            "request_timeout",
            "replicas",
            "sync_clock",
        }
    ),
}
ENGINE_OPTIONS["postgresql"] = ENGINE_OPTIONS["postgres"]


def engine_options(engine: str) -> frozenset[str]:
    return ENGINE_OPTIONS.get(engine, frozenset())


def engine_class(engine: str) -> type[Store]:
    """The store class for ``engine``; the import of its client library happens on first use."""
    try:
        module_name, class_name = ENGINES[engine]
    except KeyError:
        raise ConfigurationError(
            f"unknown store engine {engine!r}; known engines: {', '.join(sorted(ENGINES))}", key="engine"
        ) from None
    cls: type[Store] = getattr(importlib.import_module(module_name), class_name)
    return cls


def create_store(name: str, engine: str, options: Mapping[str, Any]) -> Store:
    """Build a store from its configuration (``options`` without ``engine``).

    Each backend lists its options in ``OPTIONS``; an unknown one raises a
    :class:`ConfigurationError` naming it.
    """
    cls = engine_class(engine)
    allowed = COMMON_OPTIONS | engine_options(engine)
    for key in options:
        if key not in allowed:
            raise ConfigurationError(
                f"unknown option for engine {engine!r}; known options: {', '.join(sorted(allowed))}", key=key
            )
    on_error = options.get("on_error", "closed")
    if on_error not in ON_ERROR_VALUES:
        raise ConfigurationError(
            f"on_error must be one of {', '.join(ON_ERROR_VALUES)}, not {on_error!r}", key="on_error"
        )
    from_options = getattr(cls, "from_options", None)
    if from_options is not None:
        store: Store = from_options(name, dict(options))
        return store
    return cls(name=name, **options)
