"""The Redis store in the contract suite, against the server at 127.0.0.1:6379.

The suite runs every test in a sync and an async mode, which drive the store's sync client
(``redis``) and its async client (``redis.asyncio``) respectively.
"""

from __future__ import annotations

import pytest
from rs_testing import require_service

import ratesync

NAME = "redis"
MARKS = [pytest.mark.redis]


def make_store(prefix: str) -> ratesync.Store:
    from ratesync._stores.redis import RedisStore

    host, port = require_service("redis")
    return RedisStore(f"redis://{host}:{port}/0", key_prefix=f"rs-test:{prefix}", name="contract")


def cleanup(store: ratesync.Store) -> None:
    from ratesync._stores.redis import RedisStore

    assert isinstance(store, RedisStore)
    client = store._sync().client
    keys = list(client.scan_iter(match=f"{store.key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
