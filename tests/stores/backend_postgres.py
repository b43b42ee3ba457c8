"""The PostgreSQL store in the contract suite: one schema per test session, dropped at exit."""

from __future__ import annotations

import asyncio
import atexit
import os
import uuid

import pytest
from rs_testing import require_service

import ratesync

NAME = "postgres"
MARKS = [pytest.mark.postgres]

URL = "postgresql://root@127.0.0.1:5432/test"
SCHEMA = f"rs_contract_{os.getpid()}_{uuid.uuid4().hex[:6]}"
_used = False


def make_store(prefix: str) -> ratesync.Store:
    global _used
    require_service("postgres")
    from ratesync._stores.postgres import PostgresStore

    _used = True
    return PostgresStore(URL, schema=SCHEMA, name="contract", application_name="ratesync-contract")


async def _drop() -> None:
    import asyncpg

    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    finally:
        await conn.close()


@atexit.register
def _drop_schema() -> None:
    if _used and os.getpid() == _PID:
        try:
            asyncio.run(_drop())
        except Exception as exc:  # the server may be gone by now; nothing to clean then
            print(f"could not drop schema {SCHEMA}: {exc}")


_PID = os.getpid()


# -- helpers shared with tests/postgres ------------------------------------------------------------


def new_schema(tag: str) -> str:
    """A schema name of this test session, unique per call (the caller drops it)."""
    return f"rs_{tag}_{os.getpid()}_{uuid.uuid4().hex[:6]}"


def make_isolated(tag: str, **kwargs: object) -> ratesync.Store:
    """A PostgresStore in a fresh schema of its own; drop it with ``drop(store)``."""
    require_service("postgres")
    from ratesync._stores.postgres import PostgresStore

    kwargs.setdefault("name", tag)
    return PostgresStore(URL, schema=new_schema(tag), **kwargs)  # type: ignore[arg-type]


def drop(store: ratesync.Store) -> None:
    """Drop the store's schema (through its sync side), then close the store."""
    from ratesync._stores.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    try:
        store._sync(lambda: store._fetch(f"DROP SCHEMA IF EXISTS {store.schema} CASCADE"))
    finally:
        store.close()
