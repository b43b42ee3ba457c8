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
