"""Redis Cluster specifics on a real 3-node cluster (started once per session on spare ports)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from stores.backend_redis import cluster, delete_prefix

import ratesync
from ratesync import FixedWindow, SlidingWindow, TokenBucket

pytestmark = pytest.mark.redis_cluster

pytest.importorskip("redis")

from ratesync._stores.redis import RedisStore  # noqa: E402


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    s = RedisStore(cluster().url, key_prefix=f"rs-cl:{uuid.uuid4().hex[:8]}:")
    try:
        yield s
    finally:
        delete_prefix(s)
        s.close()
        await s.aclose()


def node_of(store: RedisStore, key: str) -> str:
    client = store._sync().client
    return str(client.get_node_from_key(key).name)


async def test_limiter_keys_spread_over_the_nodes_and_keep_their_tag(store: RedisStore) -> None:
    limiter = ratesync.Limiter("api", store, [TokenBucket(100.0, 50), FixedWindow(10, 60.0)], max_concurrent=2)
    nodes = set()
    for user in range(24):
        slot_keys = [store.key_prefix + k for k in limiter.store_keys(str(user))]
        # Both limits and the lease set of one key share one slot, whatever the prefix.
        assert len({node_of(store, k) for k in slot_keys}) == 1
        client = store._sync().client
        assert len({client.keyslot(k) for k in slot_keys}) == 1
        nodes.add(node_of(store, slot_keys[0]))
        async with limiter.acquire(str(user)):
            pass
        with limiter.try_acquire(str(user)) as attempt:  # both limits charged in one script, one node
            assert attempt.allowed
        assert (await limiter.astate(str(user))).remaining == 8
    assert len(nodes) == 3, "24 keys should land on all three masters"
    # A reset of several keys works although they live in different slots.
    limiter.reset("1")
    assert (await limiter.astate("1")).remaining == 10


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_scripts_reload_after_a_flush_on_every_node(store: RedisStore, mode: str) -> None:
    slots = [("{flush}#0", SlidingWindow(5, 60.0))]
    first = store.acquire(slots) if mode == "sync" else await store.aacquire(slots)
    assert first.allowed and first.remaining == 4
    admin = store._sync().client
    admin.script_flush()  # sent to every primary
    sha = store._sync().acquire.sha
    assert admin.script_exists(sha) == [False]
    # NOSCRIPT on the next call: redis-py's script object loads it again and retries once.
    again = store.acquire(slots) if mode == "sync" else await store.aacquire(slots)
    assert again.allowed and again.remaining == 3 and not again.degraded
    assert store.errors == 0


async def test_cluster_option_selects_the_cluster_client() -> None:
    url = cluster().url.replace("redis+cluster://", "redis://")
    registry = ratesync.Registry(
        config={
            "stores": {"c": {"engine": "redis", "url": url, "cluster": True, "key_prefix": "rs-clopt:"}},
            "limiters": {"api": {"store": "c", "rate_per_second": 1, "burst": 2}},
        }
    )
    try:
        store = registry.get_store("c")
        assert isinstance(store, RedisStore) and store.cluster
        assert "redis cluster" in store.describe()
        key = uuid.uuid4().hex
        assert registry.try_acquire("api", key=key)
        assert (await registry.get_limiter("api").atry_acquire(key)).allowed
        assert not registry.try_acquire("api", key=key)
        delete_prefix(store)
    finally:
        registry.close()
        await registry.aclose()


async def test_batched_calls_on_the_cluster(store: RedisStore) -> None:
    limiter = ratesync.Limiter("hot", store, [FixedWindow(limit=30, window_seconds=3600.0)])
    attempts = await asyncio.gather(*(limiter.atry_acquire("k") for _ in range(80)))
    assert sum(a.allowed for a in attempts) == 30
    assert (await limiter.astate("k")).remaining == 0
