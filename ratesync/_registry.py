"""Stores and limiters by id: the :class:`Registry`, and the default one behind the module functions."""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import os
import string
import threading
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar, cast

from ._config import Config, LimiterConfig, find_config, limiter_config, parse_config, read_config
from ._exceptions import ConfigurationError, UnknownLimiterError, UnknownStoreError
from ._limiter import DEFAULT_LEASE_SECONDS, Acquisition, Attempt, Limiter, LimiterState
from ._stores import MemoryStore, Store, create_store

__all__ = ["DEFAULT_STORE_ID", "Registry", "default_registry", "rate_limited"]

#: The store a limiter uses when it names none: an in-process memory store.
DEFAULT_STORE_ID = "default"

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Stores and limiters by id.

    The module-level functions (``ratesync.acquire`` and the rest) use a default registry that
    loads rate-sync.toml on first use; make your own ``Registry(config=None)`` to avoid globals.
    """

    def __init__(self, *, config: str | os.PathLike[str] | Mapping[str, Any] | None = None, autoload: bool = False):
        self._lock = threading.RLock()
        self._stores: dict[str, Store] = {}
        self._limiters: dict[str, Limiter] = {}
        self._configs: dict[str, LimiterConfig] = {}
        self._autoload = autoload
        self._loaded = False
        #: The raw ``[http]`` table of the loaded configuration, for ``ratesync_http``.
        self.http_config: dict[str, Any] = {}
        #: Where the loaded configuration came from.
        self.config_path: str | None = None
        if config is not None:
            if isinstance(config, Mapping):
                self._apply(parse_config(config))
            else:
                self.load_config(config)

    # -- configuration ---------------------------------------------------------------------

    def load_config(self, path: str | os.PathLike[str] | None = None) -> Config:
        """Load a rate-sync.toml (``path``, or the one found as on first use)."""
        if path is None:
            found = find_config()
            if found is None:
                raise ConfigurationError(
                    "no configuration file found: set RATE_SYNC_CONFIG or create ./rate-sync.toml "
                    "or ./config/rate-sync.toml"
                )
            path = found
        config = read_config(path)
        self._apply(config)
        return config

    def _apply(self, config: Config) -> None:
        with self._lock:
            self._loaded = True
            for sc in config.stores.values():
                try:
                    self.configure_store(sc.store_id, sc.engine, **sc.options)
                except ConfigurationError as exc:
                    raise ConfigurationError(
                        exc.detail, path=config.path, table=f"stores.{sc.store_id}", key=exc.key
                    ) from None
            for lc in config.limiters.values():
                self._add_limiter(lc)
            self.http_config = config.http
            self.config_path = config.path

    def ensure_loaded(self) -> None:
        """Load the configuration file now if this registry autoloads and has not yet (idempotent)."""
        self._ensure_loaded()

    def default_store(self) -> Store:
        """The store of limiters that name none: an in-process memory store, made on first use."""
        with self._lock:
            store = self._stores.get(DEFAULT_STORE_ID)
            if store is None:
                store = self._stores[DEFAULT_STORE_ID] = MemoryStore(name=DEFAULT_STORE_ID)
            return store

    def _ensure_loaded(self) -> None:
        if not self._autoload:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            path = find_config()
            if path is not None:
                self._apply(read_config(path))

    def configure_store(
        self, store_id: str, strategy: str | Store = "memory", *, engine: str | None = None, **options: Any
    ) -> Store:
        """Define (or replace) store ``store_id``: ``strategy``/``engine`` names the backend.

        A :class:`Store` instance is accepted too, for stores built in code (tests inject clocks).
        """
        if isinstance(strategy, Store):
            store = strategy
        else:
            name = engine if engine is not None else strategy
            if engine is not None and strategy not in ("memory", engine):
                raise ConfigurationError(f"strategy {strategy!r} and engine {engine!r} disagree", key="engine")
            store = create_store(store_id, name, options)
        with self._lock:
            old = self._stores.get(store_id)
            self._stores[store_id] = store
            if old is not None and old is not store:
                # Limiters on the replaced store move to the new one.
                for lid, limiter in list(self._limiters.items()):
                    if limiter.store is old:
                        self._limiters[lid] = self._build(self._configs[lid])
                old.close()
        return store

    def configure_limiter(self, limiter_id: str, store_id: str | None = None, **options: Any) -> Limiter:
        """Define (or replace) limiter ``limiter_id``.

        Options: ``rate_per_second``, ``burst``, ``algorithm`` (``"token_bucket"``,
        ``"sliding_window"``, ``"fixed_window"``), ``limit``, ``window_seconds``, ``limits`` (more
        limits, all enforced together), ``max_concurrent``, ``lease_seconds``, ``timeout``.
        """
        if store_id is not None:
            options["store_id"] = store_id
        config = limiter_config(limiter_id, options)
        return self._add_limiter(config)

    def _add_limiter(self, config: LimiterConfig) -> Limiter:
        with self._lock:
            limiter = self._build(config)
            self._configs[config.limiter_id] = config
            self._limiters[config.limiter_id] = limiter
            return limiter

    def _build(self, config: LimiterConfig) -> Limiter:
        store_id = config.store_id or DEFAULT_STORE_ID
        store = self._stores.get(store_id)
        if store is None:
            if config.store_id is not None:
                raise UnknownStoreError(store_id, sorted(self._stores))
            store = self.default_store()
        return Limiter(
            config.limiter_id,
            store,
            config.specs,
            max_concurrent=config.max_concurrent,
            lease_seconds=config.lease_seconds or DEFAULT_LEASE_SECONDS,
            timeout=config.timeout,
            store_id=store_id,
        )

    def clone_limiter(self, source_id: str, new_id: str, **overrides: Any) -> Limiter:
        """A new limiter with ``source_id``'s definition, changed by ``overrides``; same store."""
        self._ensure_loaded()
        with self._lock:
            if source_id not in self._configs:
                raise UnknownLimiterError(source_id, sorted(self._limiters))
            if "store" in overrides:
                overrides["store_id"] = overrides.pop("store")
            return self._add_limiter(self._configs[source_id].with_overrides(new_id, overrides))

    # -- lookup ----------------------------------------------------------------------------

    def get_limiter(self, limiter_id: str) -> Limiter:
        """The limiter ``limiter_id``; :class:`UnknownLimiterError` lists the known ones."""
        limiter = self._limiters.get(limiter_id)
        if limiter is None:
            self._ensure_loaded()
            limiter = self._limiters.get(limiter_id)
            if limiter is None:
                raise UnknownLimiterError(limiter_id, sorted(self._limiters))
        return limiter

    def get_store(self, store_id: str) -> Store:
        self._ensure_loaded()
        store = self._stores.get(store_id)
        if store is None:
            raise UnknownStoreError(store_id, sorted(self._stores))
        return store

    def list_stores(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._stores)

    def list_limiters(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._limiters)

    def resolve(self, limiter_id: str, key: str | None = None) -> tuple[Limiter, str | None]:
        """``"api:42"`` is limiter ``api`` with key ``42`` unless a limiter is named ``api:42``."""
        limiter = self._limiters.get(limiter_id)
        if limiter is not None:
            return limiter, key
        self._ensure_loaded()
        limiter = self._limiters.get(limiter_id)
        if limiter is not None:
            return limiter, key
        base, sep, rest = limiter_id.partition(":")
        if sep and base in self._limiters:
            if key is not None:
                raise ValueError(f"{limiter_id!r} already names a key; do not pass key={key!r} as well")
            return self._limiters[base], rest
        raise UnknownLimiterError(limiter_id, sorted(self._limiters))

    # -- acquiring -------------------------------------------------------------------------

    def acquire(
        self, limiter_id: str, *, timeout: float | None = None, cost: int = 1, key: str | None = None
    ) -> Acquisition:
        limiter = self._limiters.get(limiter_id)
        if limiter is None:
            limiter, key = self.resolve(limiter_id, key)
        return Acquisition(limiter, key, cost, limiter.timeout if timeout is None else timeout)

    def try_acquire(self, limiter_id: str, *, cost: int = 1, key: str | None = None) -> Attempt:
        limiter, key = self.resolve(limiter_id, key)
        return limiter.try_acquire(key, cost=cost)

    async def atry_acquire(self, limiter_id: str, *, cost: int = 1, key: str | None = None) -> Attempt:
        limiter, key = self.resolve(limiter_id, key)
        return await limiter.atry_acquire(key, cost=cost)

    def state(self, limiter_id: str, *, key: str | None = None) -> LimiterState:
        limiter, key = self.resolve(limiter_id, key)
        return limiter.state(key)

    # -- lifecycle -------------------------------------------------------------------------

    def initialize_limiter(self, limiter_id: str) -> _Initialized:
        """Check ``limiter_id`` and its store now; ``await`` it to also connect the async client."""
        limiter = self.get_limiter(limiter_id)
        return _Initialized([limiter.store])

    def initialize_all_limiters(self) -> _Initialized:
        """Check every limiter and store now; ``await`` it to also connect the async clients."""
        self._ensure_loaded()
        with self._lock:
            stores = list({id(lim.store): lim.store for lim in self._limiters.values()}.values())
        return _Initialized(stores)

    def close(self) -> None:
        """Close every store's sync side."""
        with self._lock:
            stores = list(self._stores.values())
        for store in stores:
            store.close()

    async def aclose(self) -> None:
        with self._lock:
            stores = list(self._stores.values())
        for store in stores:
            await store.aclose()

    def clear(self) -> None:
        """Forget every store and limiter (stores are closed); the next use loads the file again."""
        self.close()
        with self._lock:
            self._stores.clear()
            self._limiters.clear()
            self._configs.clear()
            self._loaded = False
            self.http_config = {}
            self.config_path = None


class _Initialized:
    """Returned by ``initialize_*``.

    By the time it exists the definitions were checked and the stores built (no I/O: clients
    connect on first use). Awaiting it also connects each store's async client and creates what
    the backend needs (tables, buckets), so the first acquire pays no set-up.
    """

    __slots__ = ("stores",)

    def __init__(self, stores: list[Store]) -> None:
        self.stores = stores

    def __await__(self) -> Generator[Any, None, None]:
        return self._ainit().__await__()

    async def _ainit(self) -> None:
        await asyncio.gather(*(s.ainitialize() for s in self.stores))


default_registry = Registry(autoload=True)
atexit.register(default_registry.close)


# -- rate_limited --------------------------------------------------------------------------


def rate_limited(
    limiter_id: str | Callable[..., str],
    timeout: float | None = None,
    *,
    cost: int = 1,
    registry: Registry | None = None,
) -> Callable[[F], F]:
    """Run the decorated ``def`` or ``async def`` under ``acquire(limiter_id)``.

    ``limiter_id`` may be a template filled from the call's arguments (``"api:{user_id}"``) or a
    callable taking the same arguments and returning the id.
    """

    def decorate(func: F) -> F:
        resolve = _id_resolver(limiter_id, func)
        reg = registry

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with (reg or default_registry).acquire(resolve(args, kwargs), timeout=timeout, cost=cost):
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with (reg or default_registry).acquire(resolve(args, kwargs), timeout=timeout, cost=cost):
                return func(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def _id_resolver(
    limiter_id: str | Callable[..., str], func: Callable[..., Any]
) -> Callable[[tuple[Any, ...], dict[str, Any]], str]:
    if callable(limiter_id):
        make = limiter_id
        return lambda args, kwargs: make(*args, **kwargs)
    fields = [f for _, f, _, _ in string.Formatter().parse(limiter_id) if f]
    if not fields:
        fixed = limiter_id
        return lambda args, kwargs: fixed
    signature = inspect.signature(func)
    names = {f.split(".")[0].split("[")[0] for f in fields}
    missing = names - set(signature.parameters)
    if missing:
        raise ConfigurationError(
            f"rate_limited({limiter_id!r}) names {', '.join(sorted(missing))}, which "
            f"{func.__qualname__}() has no parameter for"
        )

    def resolve(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return limiter_id.format(**bound.arguments)

    return resolve
