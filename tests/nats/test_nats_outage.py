"""A NATS server of our own is killed mid-run and started again: the outage policy holds, then recovers."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratesync import FixedWindow, StoreError, TokenBucket
from ratesync._stores import OnError
from ratesync._stores.nats import NatsStore

pytestmark = [pytest.mark.nats, pytest.mark.realtime]


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``nats-server -js`` on a spare loopback port with a store directory that survives restarts."""

    def __init__(self, store_dir: Path) -> None:
        self.port = spare_port()
        self.store_dir = store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if shutil.which("nats-server") is None:
        pytest.skip("nats-server is not installed")
    srv = Server(tmp_path / "js")
    srv.start()
    yield srv
    srv.kill()


async def test_policy_holds_while_down_and_recovers_by_itself(server: Server) -> None:
    policies: tuple[OnError, ...] = ("closed", "open", "local")
    stores = {
        policy: NatsStore(server.url, bucket="outage", on_error=policy, retry_interval=0.2) for policy in policies
    }
    window = [("{w}#0", FixedWindow(3, 3600.0))]
    bucket = [("{b}#0", TokenBucket(1000.0, 1000))]
    try:
        for store in stores.values():
            first = await store.aacquire(window)
            assert first.allowed and not first.degraded
            assert store.acquire(bucket).allowed  # the sync side has a connection of its own

        server.kill()

        # closed: every call raises, the first one because the backend failed, the next ones
        # without touching it (known down).
        closed = stores["closed"]
        with pytest.raises(StoreError):
            await closed.aacquire(window)
        with pytest.raises(StoreError):
            closed.acquire(window)
        assert not closed.healthy

        # open: admitted, marked degraded.
        for _ in range(5):
            d = await stores["open"].aacquire(window)
            assert d.allowed and d.degraded
        assert stores["open"].acquire(window).degraded

        # local: the in-process fallback enforces the same limits (3 per window).
        local = [await stores["local"].aacquire(window) for _ in range(4)]
        assert [d.allowed for d in local] == [True, True, True, False]
        assert all(d.degraded for d in local)

        # While known down, a call skips the backend: microseconds, not a connect timeout.
        started = time.perf_counter()
        for _ in range(20):
            await stores["open"].aacquire(window)
        assert (time.perf_counter() - started) / 20 < 0.005
        assert stores["open"].errors >= 1 and stores["open"].fallbacks >= 6

        # A probe while the server stays down costs milliseconds (connection refused).
        await asyncio.sleep(0.25)
        started = time.perf_counter()
        with pytest.raises(StoreError):
            await closed.aacquire(window)
        assert time.perf_counter() - started < 0.5

        server.start()  # same port, same store directory: the bucket and its state are back

        deadline = time.monotonic() + 5.0
        pending = dict(stores)
        while pending and time.monotonic() < deadline:
            for policy, store in list(pending.items()):
                try:
                    a = await store.aacquire(bucket)
                    s = store.acquire(bucket)
                except StoreError:
                    continue
                if not a.degraded and not s.degraded:
                    del pending[policy]
            await asyncio.sleep(0.05)
        assert not pending, f"not recovered: {sorted(pending)}"
        for store in stores.values():
            assert store.healthy
        # The state written before the outage survived it (JetStream file storage): one call
        # was charged in each store's window before the kill, shared in one bucket: 3 in all.
        after = await stores["closed"].apeek(window)
        assert not after.degraded
        assert after.remaining == 0
    finally:
        for store in stores.values():
            store.close()
            await store.aclose()
