"""Every error rate-sync raises derives from :class:`RateSyncError`."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ConcurrencyMisuseError",
    "MissingDependencyError",
    "RateLimitExceeded",
    "RateLimitTimeout",
    "RateSyncError",
    "StoreError",
    "StoreUnavailableError",
    "UnknownLimiterError",
    "UnknownStoreError",
]


class RateSyncError(Exception):
    """Base class of every rate-sync error."""


class ConfigurationError(RateSyncError, ValueError):
    """A configuration mistake: a bad value, a missing store, an unknown key.

    When it comes from a file, ``path``, ``table`` and ``key`` say where.
    """

    def __init__(self, message: str, *, path: str | None = None, table: str | None = None, key: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if table is not None:
            where.append(f"[{table}]")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)
        #: The message without the location.
        self.detail = message
        self.path = path
        self.table = table
        self.key = key


class UnknownLimiterError(RateSyncError, KeyError):
    """No limiter has this id; the message lists the known ones."""

    def __init__(self, limiter_id: str, known: list[str]):
        self.limiter_id = limiter_id
        self.known = known
        super().__init__(f"unknown limiter {limiter_id!r}; known limiters: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class UnknownStoreError(RateSyncError, KeyError):
    """No store has this id; the message lists the known ones."""

    def __init__(self, store_id: str, known: list[str]):
        self.store_id = store_id
        self.known = known
        super().__init__(f"unknown store {store_id!r}; known stores: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:
        return str(self.args[0])


class RateLimitExceeded(RateSyncError):
    """A call was refused. ``retry_after`` is how long until the same call would be admitted."""

    def __init__(self, message: str, *, limiter_id: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.limiter_id = limiter_id
        self.retry_after = retry_after


class RateLimitTimeout(RateLimitExceeded, TimeoutError):
    """Waiting would take longer than the timeout; nothing was reserved or charged."""


class ConcurrencyMisuseError(RateSyncError, TypeError):
    """A concurrency-limited acquire used in a form that cannot release its slot."""


class StoreError(RateSyncError):
    """The store's backend failed (connection refused, timeout, a server error).

    The message names the store with any password in its URL redacted.
    """


class StoreUnavailableError(StoreError, ConnectionError):
    """The backend is known to be down and the store's policy is ``on_error = "closed"``."""


class MissingDependencyError(RateSyncError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f'{feature} needs the {package!r} package, which is not installed: pip install "rate-sync[{extra}]"'
        )
        self.package = package
        self.extra = extra
