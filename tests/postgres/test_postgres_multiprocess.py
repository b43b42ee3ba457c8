"""Four processes share one 100/s limiter through the PostgreSQL store: never over, nearly all of it."""

from __future__ import annotations

import asyncio

import pytest
from rs_multiprocess import max_in_any_window, run_processes, summarize
from rs_testing import require_service
from stores.backend_postgres import URL, new_schema

pytestmark = [pytest.mark.postgres, pytest.mark.realtime]

RATE = 100
BURST = 1
DURATION = 3.0


async def _drop(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_four_processes_share_one_limit(mode: str) -> None:
    require_service("postgres")
    schema = new_schema("mp")
    config = {
        "stores": {"shared": {"engine": "postgres", "url": URL, "schema": schema, "pool_size": 4}},
        "limiters": {"api": {"store": "shared", "algorithm": "token_bucket", "rate_per_second": RATE, "burst": BURST}},
    }
    try:
        # Three tasks per process keep the limiter's queue full (each waits its turn by reservation)
        # without crowding two cores: the check counts the moments callers woke up, so a wake-up
        # late by more than one interval (10 ms) shows as an extra admission in some window.
        times = run_processes(
            config, "api", processes=4, tasks_per_process=3, duration=DURATION, mode=mode, startup=3.0
        )
    finally:
        asyncio.run(_drop(schema))
    stats = summarize(times, DURATION)
    # Never more than the limit (plus the burst) in any one-second window, across all processes...
    assert max_in_any_window(times, 1.0) <= RATE + BURST, stats
    # ...and the processes together still get at least 90% of it.
    assert len(times) >= 0.9 * RATE * DURATION, stats
