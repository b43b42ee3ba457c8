"""A background event loop for async-only clients (asyncpg, nats-py) used from synchronous code.

Synchronous callers submit coroutines to a loop running in a daemon thread and block on the
result. The loop starts on first use, stops cleanly at interpreter exit, is rebuilt in a child
after ``fork()`` (the parent's thread does not exist there), and refuses, with a clear error, a
call made from inside its own loop (which would otherwise wait for itself forever).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["Portal"]

T = TypeVar("T")

_portals: weakref.WeakSet[Portal] = weakref.WeakSet()


class Portal:
    """One event loop in one daemon thread, shared by the sync side of a store."""

    def __init__(self, name: str = "ratesync-portal") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _portals.add(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running background loop (started if needed)."""
        return self._ensure()

    def in_portal(self) -> bool:
        """True when called from the portal's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, factory: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        """Run ``factory()`` on the background loop and return its result (or raise its error).

        ``timeout`` bounds the wait; on expiry the coroutine is cancelled and ``TimeoutError`` raised.
        """
        if self.in_portal():
            raise RuntimeError(
                f"{self.name}: a synchronous call from inside the portal's own event loop would wait for itself; "
                "use the async API there"
            )
        loop = self._ensure()
        future = asyncio.run_coroutine_threadsafe(factory(), loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"{self.name}: no answer within {timeout}s") from None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid() and not loop.is_closed():
            return loop
        with self._lock:
            if self._pid != os.getpid():
                # After fork: the parent's loop thread is gone; its objects must not be touched.
                self._loop = None
                self._thread = None
                self._pid = os.getpid()
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=self._run, args=(loop, ready), name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            assert self._loop is not None
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def close(self, cleanup: Callable[[], Coroutine[Any, Any, None]] | None = None, timeout: float = 5.0) -> None:
        """Run ``cleanup()`` on the loop (closing pools opened there), then stop the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid() or loop.is_closed():
                self._loop = self._thread = None
                return
            self._loop = self._thread = None
        if cleanup is not None and thread.is_alive():
            # Closing must not fail the caller: a pool that cannot close cleanly is dropped with the loop.
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cleanup(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        if threading.current_thread() is not thread:
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._loop is not None and self._pid == os.getpid() and not self._loop.is_closed()


@atexit.register
def _close_all() -> None:
    for portal in list(_portals):
        portal.close()
