"""Redis store configuration, URL forms, one pool per store, and passwords kept out of sight."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import pytest
from rs_testing import require_service
from stores.backend_redis import RedisServer, require_binaries

import ratesync
from ratesync import ConfigurationError, StoreError, TokenBucket
from ratesync._stores import ENGINE_OPTIONS, create_store

pytestmark = pytest.mark.redis

redis = pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402

PASSWORD = "s3cr3t-Pa55-7f1c"


def test_options_match_the_engine_table() -> None:
    assert RedisStore.OPTIONS == ENGINE_OPTIONS["redis"]


def test_from_options_converts_and_validates() -> None:
    store = create_store(
        "r",
        "redis",
        {
            "url": "rediss://cache.example:6380/2",
            "key_prefix": "app:",
            "pool_size": "8",
            "socket_timeout": 0.25,
            "connect_timeout": "0.1",
            "on_error": "local",
            "retry_interval": 2,
            "batch": "false",
        },
    )
    assert isinstance(store, RedisStore)
    assert (store.pool_size, store.socket_timeout, store.connect_timeout) == (8, 0.25, 0.1)
    assert (store.key_prefix, store.on_error, store.retry_interval, store.cluster) == ("app:", "local", 2.0, False)
    assert store.batch is False
    assert store.describe() == "redis rediss://cache.example:6380/2 prefix 'app:'"
    defaults = create_store("d", "redis", {})
    assert isinstance(defaults, RedisStore)
    assert (defaults.url, defaults.key_prefix) == ("redis://127.0.0.1:6379/0", "ratesync:")
    assert (defaults.connect_timeout, defaults.socket_timeout, defaults.pool_size) == (0.5, 1.0, 50)
    assert defaults.batch is True
    assert create_store("c", "redis", {"url": "redis+cluster://10.0.0.1:7000"}).cluster  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"url": "http://example.com"}, "url"),
        ({"url": 6379}, "url"),
        ({"pool_size": 0}, "pool_size"),
        ({"socket_timeout": -1}, "socket_timeout"),
        ({"connect_timeout": "soon"}, "connect_timeout"),
        ({"key_prefix": "{app}:"}, "key_prefix"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "cluster"),
        ({"url": "redis+cluster://h:7000", "cluster": False}, "cluster"),
        ({"cluster": "maybe"}, "cluster"),
        ({"batch": 2}, "batch"),
        ({"database": 3}, "database"),
    ],
)
def test_bad_options_name_their_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        create_store("r", "redis", options)
    assert info.value.key == key


def test_toml_file(tmp_path: Any) -> None:
    path = tmp_path / "rate-sync.toml"
    path.write_text(
        """
[stores.shared]
engine = "redis"
url = "redis://127.0.0.1:6379/0"
key_prefix = "myapp:"
pool_size = 20
connect_timeout = 0.5
socket_timeout = 1.0
on_error = "local"

[limiters.api]
store = "shared"
rate_per_second = 10
burst = 5
"""
    )
    registry = ratesync.Registry(config=path)
    try:
        store = registry.get_store("shared")
        assert isinstance(store, RedisStore) and store.pool_size == 20 and store.on_error == "local"
    finally:
        registry.close()


async def test_one_pool_per_store_shared_by_every_limiter_and_key() -> None:
    require_binaries()
    with RedisServer() as server:
        registry = ratesync.Registry(
            config={
                "stores": {"r": {"engine": "redis", "url": server.url}},
                "limiters": {
                    "a": {"store": "r", "rate_per_second": 1000, "burst": 100},
                    "b": {"store": "r", "algorithm": "sliding_window", "limit": 100, "window_seconds": 60},
                },
            }
        )
        clone = registry.clone_limiter("a", "c", burst=50)
        try:
            store = registry.get_store("r")
            assert registry.get_limiter("a").store is store is registry.get_limiter("b").store is clone.store
            for i in range(30):
                for limiter_id in ("a", "b", "c"):
                    assert registry.try_acquire(limiter_id, key=str(i))
                    assert await registry.atry_acquire(limiter_id, key=str(i))
            client = redis.Redis.from_url(server.url)
            try:
                # One sync and one async connection served 180 sequential calls on 90 keys
                # (plus this one, asking).
                assert len(client.client_list()) == 3
            finally:
                client.close()
        finally:
            registry.close()
            await registry.aclose()


async def test_unix_socket(tmp_path: Any) -> None:
    require_binaries()
    sock = os.path.join(tmp_path, "r.sock")
    with RedisServer(args=["--unixsocket", sock, "--unixsocketperm", "700"]):
        store = RedisStore(f"unix://{sock}?db=0", key_prefix="rs-unix:")
        try:
            slots = [("{u}#0", TokenBucket(1.0, 2))]
            assert store.acquire(slots).remaining == 1
            assert (await store.aacquire(slots)).remaining == 0
            assert store.describe().startswith("redis unix://")
        finally:
            store.close()
            await store.aclose()


async def test_passwords_never_show(caplog: pytest.LogCaptureFixture) -> None:
    require_binaries()
    caplog.set_level(logging.DEBUG)
    with RedisServer(args=["--requirepass", PASSWORD]) as server:
        urls = [
            f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0",
            f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/0",
            f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}",
        ]
        for url in urls:
            store = RedisStore(url, key_prefix="rs-pw:")
            try:
                assert store.acquire([("{pw}#0", TokenBucket(1.0, 5))]).allowed
                assert await store.aacquire([("{pw}#0", TokenBucket(1.0, 5))])
                for text in (repr(store), store.describe(), str(store), store.url):
                    assert PASSWORD not in text and "***" in text
            finally:
                store.close()
                await store.aclose()
        # A wrong password, and a right one to a dead port: the errors and logs keep it hidden.
        wrong = "Wr0ng-pa55-a8d2"
        dead = RedisServer()  # never started
        for url, secret in (
            (f"redis://:{wrong}@127.0.0.1:{server.port}/0", wrong),
            (f"redis://user:{PASSWORD}@127.0.0.1:{dead.port}/0", PASSWORD),
            (f"redis://127.0.0.1:{dead.port}/0?password={PASSWORD}", PASSWORD),
        ):
            store = RedisStore(url, key_prefix="rs-pw:")
            try:
                with pytest.raises(StoreError) as sync_error:
                    store.acquire([("{pw}#0", TokenBucket(1.0, 5))])
                store.retry_interval = 0.0
                with pytest.raises(StoreError) as async_error:
                    await store.aacquire([("{pw}#0", TokenBucket(1.0, 5))])
                for text in (str(sync_error.value), str(async_error.value), repr(store)):
                    assert secret not in text and "***" in text
            finally:
                store.close()
                await store.aclose()
        dead.remove()
    with pytest.raises(ConfigurationError) as bad:
        RedisStore(f"http://:{PASSWORD}@example.com/")
    assert PASSWORD not in str(bad.value)
    assert PASSWORD not in caplog.text
    assert "failed" in caplog.text  # the failures above were logged, redacted


def test_default_server_round_trip() -> None:
    host, port = require_service("redis")
    store = RedisStore(f"redis://{host}:{port}/0", key_prefix=f"rs-cfg:{uuid.uuid4().hex[:8]}:")
    try:
        store.initialize()  # connects and loads the scripts: no NOSCRIPT on the first call
        assert store._sync().client.script_exists(store._sync().acquire.sha) == [True]
        assert store.acquire([("{x}#0", TokenBucket(1.0, 1))]).allowed
        store.reset(["{x}#0"])
    finally:
        store.close()


@pytest.mark.parametrize("value", ["true", "false"])
async def test_replies_stay_bytes_whatever_the_url_says(value: str) -> None:
    # The acquire scripts answer in packed doubles, which a decoding client would turn into text
    # (or fail on); redis-py also reads "false" from a URL as true. The store drops the option.
    host, port = require_service("redis")
    prefix = f"rs-dec:{uuid.uuid4().hex[:8]}:"
    store = RedisStore(f"redis://{host}:{port}/0?decode_responses={value}&db=0", key_prefix=prefix)
    # A token per 100 s: nothing refills during the test.
    slots = [("{d}#0", TokenBucket(0.01, 2))]
    # A tuple, as limiters pass: the store batches calls on the same tuple (not on lists).
    both = (("{e}#0", TokenBucket(0.01, 3)), ("{e}#1", ratesync.FixedWindow(5, 60.0)))
    try:
        assert store._sync().client.connection_pool.connection_kwargs.get("decode_responses") is None
        assert store.acquire(slots).remaining == 1  # the standalone token bucket script
        assert store.peek(slots).remaining == 1  # the general script, peeking
        assert store.acquire(both).remaining == 2  # the general script, two limits
        assert (await store.aacquire(slots)).remaining == 0
        reserved = store.acquire(slots, max_wait=200.0)  # a reservation: six fields
        assert reserved.allowed and 99.0 < reserved.wait <= 100.0 and not reserved.degraded
        # Async calls of one key while one is in flight: the queued ones decided by one batch.
        decisions = await asyncio.gather(*(store.aacquire(both) for _ in range(5)))
        assert [(d.allowed, d.remaining) for d in decisions] == [(True, 1), (True, 0), *[(False, 0)] * 3]
        assert store.errors == 0
    finally:
        store.reset(["{d}#0", "{e}#0", "{e}#1"])
        store.close()
        await store.aclose()


def _certificates(folder: str) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: fast to make)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=rs-test-ca")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(folder, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf",
    )  # fmt: skip
    return (os.path.join(folder, n) for n in ("ca.pem", "server.pem", "server.key"))  # type: ignore[return-value]


async def test_tls(tmp_path: Any) -> None:
    require_binaries()
    import shutil

    from stores.backend_redis import spare_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca, cert, key = _certificates(str(tmp_path))
    tls_port = spare_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", cert, "--tls-key-file", key]
    args += ["--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
    with RedisServer(args=args):
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        store = RedisStore(url, key_prefix="rs-tls:")
        try:
            slots = [("{tls}#0", TokenBucket(1.0, 2))]
            assert store.acquire(slots).remaining == 1
            assert (await store.aacquire(slots)).remaining == 0
            assert store.describe().startswith("redis rediss://127.0.0.1")
        finally:
            store.close()
            await store.aclose()
        # A server whose certificate does not check out is a failure, not a silent plaintext.
        untrusted = RedisStore(f"rediss://127.0.0.1:{tls_port}/0?ssl_cert_reqs=required", key_prefix="rs-tls:")
        try:
            with pytest.raises(StoreError):
                untrusted.acquire([("{tls}#0", TokenBucket(1.0, 2))])
        finally:
            untrusted.close()


async def test_initialize_follows_the_policy() -> None:
    require_binaries()
    dead = RedisServer()  # never started
    closed = RedisStore(dead.url, on_error="closed")
    opened = RedisStore(dead.url, on_error="open")
    async_closed = RedisStore(dead.url, retry_interval=0.0)
    try:
        with pytest.raises(StoreError):
            closed.initialize()
        opened.initialize()  # no exception: the store is marked down, calls answer by the policy
        assert not opened.healthy
        assert opened.acquire([("{x}#0", TokenBucket(1.0, 1))]).degraded
        with pytest.raises(StoreError):
            await async_closed.ainitialize()
    finally:
        closed.close()
        opened.close()
        await async_closed.aclose()
        dead.remove()
