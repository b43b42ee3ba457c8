"""The Redis store in the contract suite, against the server at 127.0.0.1:6379.

The suite runs every test in a sync and an async mode, which drive the store's sync client
(``redis``) and its async client (``redis.asyncio``) respectively.

Also the helpers the Redis tests share (import them as ``stores.backend_redis``): a
``redis-server`` of a test's own on a spare loopback port (for outages and passwords), and a
3-node Redis Cluster started once per test session and shut down when it ends.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from rs_testing import IN_CI, require_service

import ratesync

NAME = "redis"
MARKS = [pytest.mark.redis]


def make_store(prefix: str) -> ratesync.Store:
    from ratesync._stores.redis import RedisStore

    host, port = require_service("redis")
    # Generous timeouts: the contract is about behaviour, and a loaded CI machine can take more than
    # the production default of 0.5 s to accept a burst of new connections.
    return RedisStore(
        f"redis://{host}:{port}/0",
        key_prefix=f"rs-test:{prefix}",
        name="contract",
        connect_timeout=5.0,
        socket_timeout=5.0,
    )


def cleanup(store: ratesync.Store) -> None:
    delete_prefix(store)


def delete_prefix(store: ratesync.Store) -> None:
    """Delete every key under the store's prefix (on every node of a cluster)."""
    from ratesync._stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    client = store._sync().client
    if store.cluster:
        import redis

        for node in client.get_primaries():
            # A client of our own per node, closed here: the cluster client's per-node clients
            # would keep their sockets open past the store's close().
            conn = redis.Redis(host=node.host, port=node.port)
            try:
                for key in conn.scan_iter(match=f"{store.key_prefix}*", count=1000):
                    conn.delete(key)
            finally:
                conn.close()
        return
    keys = list(client.scan_iter(match=f"{store.key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)


# -- servers of our own ------------------------------------------------------------------------


def require_binaries() -> None:
    """Skip (fail under CI) unless redis-server and redis-cli are installed."""
    missing = [b for b in ("redis-server", "redis-cli") if shutil.which(b) is None]
    if missing:
        message = f"{', '.join(missing)} not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def spare_port(*, cluster: bool = False) -> int:
    """A loopback port nobody listens on (and, for a cluster node, its bus port +10000 too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if cluster and port + 10000 > 65535:
            continue
        if not cluster or _free(port + 10000):
            return port
    raise RuntimeError("no spare port found")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` this test started (and stops, by its own process id)."""

    def __init__(self, port: int | None = None, *, args: Sequence[str] = (), cluster: bool = False) -> None:
        self.port = port or spare_port(cluster=cluster)
        self.args = list(args)
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="rs-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir,
            "--logfile",
            "redis.log",
            *self.args,
        ]
        if self.cluster:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = Path(self.dir, "redis.log")
                raise RuntimeError(f"redis-server on port {self.port} did not start: {_tail(log)}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Kill the server (SIGKILL: no save, no goodbye, like a crash) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-800:]
    except OSError:
        return "(no log)"


# -- the cluster -----------------------------------------------------------------------------


class Cluster:
    """Three masters on spare loopback ports, all 16384 slots assigned, no replicas."""

    def __init__(self) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(3)]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=30,
            )
            deadline = time.monotonic() + 20
            while not all(self._ok(p) for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster never reached cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _ok(port: int) -> bool:
        out = subprocess.run(
            ["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=5
        ).stdout
        return "cluster_state:ok" in out and "cluster_slots_assigned:16384" in out and "cluster_known_nodes:3" in out

    def stop(self) -> None:
        for node in self.nodes:
            node.remove()


_cluster: Cluster | None = None
_cluster_lock = threading.Lock()


def cluster() -> Cluster:
    """The session's cluster, started on first use and shut down when the test process exits."""
    global _cluster
    require_binaries()
    with _cluster_lock:
        if _cluster is None:
            started = Cluster().start()
            owner = os.getpid()

            def stop() -> None:
                if os.getpid() == owner:  # not in a forked child
                    started.stop()

            atexit.register(stop)
            _cluster = started
        return _cluster
