"""PostgreSQL store: acquires per second on one key against asyncpg ``SELECT 1``, measured in one run.

    python bench/bench_postgres.py [--url postgresql://root@127.0.0.1:5432/test] [--seconds 0.5] [--rounds 7]
                                   [--no-batch] [--quick]

For each durability setting (logged or UNLOGGED tables; synchronous_commit on or off) the store's
``aacquire`` on ONE key (a token bucket that never refuses, so every call writes) runs
sequentially and from 50 concurrent tasks; the baseline is ``SELECT 1`` through the same pool
(same size, same number of tasks). Targets (issue #4): >= 0.6x sequential, >= 0.4x with 50 tasks.
The sync API (through the portal thread) is measured too, for reference. Every setting uses a
schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from ratesync import TokenBucket
from ratesync._stores.postgres import PostgresStore

SETTINGS = [
    ("logged, sync commit on", False, "on"),
    ("logged, sync commit off", False, "off"),
    ("unlogged, sync commit on", True, "on"),
    ("unlogged, sync commit off", True, "off"),
]


async def rate(op: Callable[[], Awaitable[Any]], tasks: int, seconds: float) -> float:
    """Calls per second of ``op`` from ``tasks`` concurrent tasks over about ``seconds``."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < deadline:
            for _ in range(20):
                await op()
            n += 20
        count += n

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return count / (time.perf_counter() - start)


def medians(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Median baseline rate, median store rate and median ratio of (baseline, store) pairs."""
    return (
        statistics.median(b for b, _ in pairs),
        statistics.median(m for _, m in pairs),
        statistics.median(m / b for b, m in pairs),
    )


def sync_rate(op: Callable[[], Any], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            op()
        count += 20
    return count / (time.perf_counter() - start)


async def bench_setting(
    url: str, label: str, unlogged: bool, sync_commit: str, seconds: float, pool_size: int, rounds: int, batch: bool
) -> list[Any]:
    schema = f"rs_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    store = PostgresStore(
        url,
        schema=schema,
        unlogged=unlogged,
        synchronous_commit=sync_commit,
        pool_size=pool_size,
        batch=batch,
        name="bench",
    )
    rows = []
    try:
        await store.ainitialize()
        pool = await store._pool()
        # A bucket that never refuses and whose state stays live (its TAT runs ahead of the
        # clock, as a busy limiter's does): every call reads, decides and writes the row.
        slots = [("{bench:one}#0", TokenBucket(rate_per_second=1.0, burst=1_000_000_000))]

        async def select_one() -> None:
            # The pool of the running loop, as the store's own calls use (the portal has its own).
            async with (await store._pool()).acquire() as conn:
                await conn.fetchrow("SELECT 1")

        async def acquire() -> None:
            d = await store.aacquire(slots)
            assert d.allowed

        # Warm up: connections made, statements prepared, the row exists.
        await rate(select_one, 50, 0.3)
        await rate(acquire, 50, 0.3)
        # Baseline and store alternate in short pairs, ``rounds`` times; each pair gives a ratio
        # and the table shows the medians: a load spike from elsewhere on the machine then skews
        # one pair, not the result.
        for tasks in (1, 50):
            pairs = []
            for _ in range(rounds):
                pairs.append((await rate(select_one, tasks, seconds), await rate(acquire, tasks, seconds)))
            rows.append((label, f"async, {tasks} task{'s' if tasks > 1 else ''}", *medians(pairs)))
        pairs = []
        for _ in range(rounds):
            base = await asyncio.to_thread(sync_rate, lambda: store._sync(select_one), seconds)
            pairs.append((base, await asyncio.to_thread(sync_rate, lambda: store.acquire(slots), seconds)))
        rows.append((label, "sync (portal), 1 thread", *medians(pairs)))
    finally:
        conn = await pool.acquire()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await pool.release(conn)
        await store.aclose()
        store.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("RATESYNC_PG_URL", "postgresql://root@127.0.0.1:5432/test"))
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one measurement")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7, help="alternating (baseline, store) pairs per cell")
    parser.add_argument("--no-batch", action="store_true", help="every call its own statement (batch = false)")
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement, 3 rounds")
    args = parser.parse_args()
    seconds = 0.3 if args.quick else args.seconds
    rounds = 3 if args.quick else args.rounds
    rows = []
    for label, unlogged, sync_commit in SETTINGS:
        rows.extend(
            await bench_setting(
                args.url, label, unlogged, sync_commit, seconds, args.pool_size, rounds, not args.no_batch
            )
        )
    print(
        f"pool_size={args.pool_size}, batch={not args.no_batch}, medians of {rounds} pairs of {seconds:.1f} s, "
        "one key (every call admitted and written)"
    )
    print()
    print(f"| {'setting':<26} | {'mode':<24} | {'SELECT 1 /s':>11} | {'acquire /s':>10} | {'ratio':>5} |")
    print(f"|{'-' * 28}|{'-' * 26}|{'-' * 13}|{'-' * 12}|{'-' * 7}|")
    for label, mode, base, mine, ratio in rows:
        print(f"| {label:<26} | {mode:<24} | {base:>11,.0f} | {mine:>10,.0f} | {ratio:>5.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
