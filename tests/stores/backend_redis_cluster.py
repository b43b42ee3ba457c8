"""The Redis store in the contract suite, against a 3-node Redis Cluster of the session's own.

The cluster (``stores.backend_redis.cluster()``) starts on spare loopback ports on first use and
is shut down when the test process exits. The store selects redis-py's cluster clients
(``redis.cluster.RedisCluster`` and ``redis.asyncio.cluster.RedisCluster``) from the
``redis+cluster://`` URL.
"""

from __future__ import annotations

import pytest

import ratesync

NAME = "redis-cluster"
MARKS = [pytest.mark.redis_cluster]


def make_store(prefix: str) -> ratesync.Store:
    from stores.backend_redis import cluster

    from ratesync._stores.redis import RedisStore

    return RedisStore(
        cluster().url, key_prefix=f"rs-test:{prefix}", name="contract-cluster", connect_timeout=5.0, socket_timeout=5.0
    )


def cleanup(store: ratesync.Store) -> None:
    from stores.backend_redis import delete_prefix

    delete_prefix(store)
