"""Helpers shared by the tests (importable as ``rs_testing``: ``tests/`` is on pytest's pythonpath)."""

from __future__ import annotations

import os
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICES = {
    "redis": ("127.0.0.1", 6379),
    "postgres": ("127.0.0.1", 5432),
    "nats": ("127.0.0.1", 4222),
}


def service_available(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str) -> tuple[str, int]:
    """Skip (or, under CI, fail) unless service ``name`` answers on its port."""
    host, port = SERVICES[name]
    if not service_available(host, port):
        message = f"{name} is not reachable at {host}:{port}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing service is a failure; scripts/test.sh starts it)")
        pytest.skip(message)
    return host, port


class ManualClock:
    """A clock a test sets by hand (``clock.now += 1.0``), for stores that take ``clock=``.

    ``sleep`` / ``asleep`` (for code that takes ``sleep=``) move it on instead of waiting, and
    record each pause in ``slept``.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)
