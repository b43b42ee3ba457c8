"""The shape shared by stores whose client is async-only (asyncpg, nats-py).

Each such store writes its operations once, as coroutines (``_run_acquire`` and the rest); the
async side awaits them on the caller's loop, the sync side runs them on a :class:`Portal`, a
background loop started on first use.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .._algorithms import Decision, LeaseDecision, Observation, Quota
from .._portal import Portal
from ._base import Slot, Store

__all__ = ["PortalStore"]

T = TypeVar("T")


class PortalStore(Store):
    """A :class:`Store` over coroutines; subclasses set ``_portal = None``, ``_lock`` and ``_call_timeout``."""

    _portal: Portal | None
    _lock: threading.Lock
    #: Longest a sync caller waits for the portal's answer (``None``: no bound).
    _call_timeout: float | None

    def _sync(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` on this store's portal loop, from synchronous code."""
        portal = self._portal
        if portal is None:
            with self._lock:
                if self._portal is None:
                    self._portal = Portal(name=f"ratesync-{self.engine}-{self.name}")
                portal = self._portal

        async def run() -> T:
            return await factory()

        return portal.call(run, self._call_timeout)

    def close(self) -> None:
        """Close the sync side's connections (on the portal's loop) and stop that loop."""
        portal = self._portal
        if portal is not None:
            portal.close(self._close_current)

    async def aclose(self) -> None:
        """Close the running loop's connections (each loop's are closed on that loop)."""
        await self._close_current()

    # -- what a subclass implements, once, as coroutines ------------------------------------------

    @abstractmethod
    async def _close_current(self) -> None:
        """Close the connections (pool) of the running loop."""

    @abstractmethod
    async def _run_acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision: ...
    @abstractmethod
    async def _run_peek(self, slots: Sequence[Slot]) -> Decision: ...
    @abstractmethod
    async def _run_observe(self, key: str, spec: Quota, obs: Observation) -> None: ...
    @abstractmethod
    async def _run_lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision: ...
    @abstractmethod
    async def _run_lease_release(self, key: str, lease_id: str) -> None: ...
    @abstractmethod
    async def _run_reset(self, keys: Sequence[str]) -> None: ...

    # -- the Store protocol ----------------------------------------------------------------------

    def _acquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        return self._sync(lambda: self._run_acquire(slots, cost, max_wait))

    async def _aacquire(self, slots: Sequence[Slot], cost: int, max_wait: float) -> Decision:
        return await self._run_acquire(slots, cost, max_wait)

    def _peek(self, slots: Sequence[Slot]) -> Decision:
        return self._sync(lambda: self._run_peek(slots))

    async def _apeek(self, slots: Sequence[Slot]) -> Decision:
        return await self._run_peek(slots)

    def _observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self._sync(lambda: self._run_observe(key, spec, obs))

    async def _aobserve(self, key: str, spec: Quota, obs: Observation) -> None:
        await self._run_observe(key, spec, obs)

    def _lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return self._sync(lambda: self._run_lease_acquire(key, limit, lease_seconds, lease_id))

    async def _alease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> LeaseDecision:
        return await self._run_lease_acquire(key, limit, lease_seconds, lease_id)

    def _lease_release(self, key: str, lease_id: str) -> None:
        self._sync(lambda: self._run_lease_release(key, lease_id))

    async def _alease_release(self, key: str, lease_id: str) -> None:
        await self._run_lease_release(key, lease_id)

    def _reset(self, keys: Sequence[str]) -> None:
        self._sync(lambda: self._run_reset(keys))

    async def _areset(self, keys: Sequence[str]) -> None:
        await self._run_reset(keys)
