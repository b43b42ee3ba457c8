"""NATS JetStream KV store: acquires per second against a raw KV ``get`` + ``update`` pair, in one run.

    python bench/bench_nats.py [--url nats://127.0.0.1:4222] [--seconds 3] [--rounds 5] [--quick]

The baseline is what every acquire must do at least once: read an entry and write it back with
the revision read (``kv.get`` + ``kv.update(last=revision)``), on the store's own connection.
The store's ``aacquire`` uses a token bucket that never refuses, so every call writes.

Scenarios: one task on one key (the store writes from its cached copy while nobody else writes
the entry: one round trip), the same with that fast path off (read + write, like the baseline),
20 tasks on a key each (both ways), 20 tasks on ONE key (against a baseline that retries its
conflicts, and one that queues its tasks behind a lock as the store does), and the sync API
through the portal thread. Target (issue
#6): >= 0.8x. A bucket of its own, deleted at the end.
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
from ratesync._stores.nats import NatsStore, entry_name

Op = Callable[[int], Awaitable[Any]]


async def rate(op: Callable[[int], Awaitable[Any]], tasks: int, seconds: float) -> float:
    """Calls per second of ``op(task_number)`` from ``tasks`` concurrent tasks over about ``seconds``."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal count
        n = 0
        while time.perf_counter() < deadline:
            for _ in range(20):
                await op(i)
            n += 20
        count += n

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return count / (time.perf_counter() - start)


def sync_rate(op: Callable[[], Any], seconds: float) -> float:
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            op()
        count += 20
    return count / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("RATESYNC_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--seconds", type=float, default=3.0, help="per side and scenario, split into rounds")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per scenario")
    parser.add_argument("--quick", action="store_true", help="1 s per side and scenario")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds

    import nats.js.errors

    bucket = f"rs_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    store = NatsStore(args.url, bucket=bucket, name="bench")
    # Never refuses, and every call moves the state by 1 us (representable next to epoch seconds).
    spec = TokenBucket(rate_per_second=1e6, burst=10**9)
    rows: list[tuple[str, float, float, float]] = []
    try:
        await store.ainitialize()
        conn = await store._conn()

        async def raw_pair(name: str) -> None:
            # The least a compare-and-set acquire does: read, then write with the revision read,
            # on the store's connection for the running loop (the portal's loop has its own).
            kv = (await store._conn()).kv
            while True:
                try:
                    entry = await kv.get(name, validate_keys=False)
                    revision = entry.revision
                except nats.js.errors.KeyNotFoundError:
                    revision = 0
                try:
                    await kv.update(name, b'{"x":[1,"tb",1.0]}', last=revision, validate_keys=False)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another task won: read again (conflicts are part of the baseline's cost)

        def own_key(i: int) -> str:
            return f"{{bench:{i}}}#0"

        async def base_own(i: int) -> None:
            await raw_pair(entry_name(own_key(i)) + ".raw")

        async def base_one(i: int) -> None:
            await raw_pair("s.bench-one.raw")

        async def store_own(i: int) -> None:
            d = await store.aacquire([(own_key(i), spec)])
            assert d.allowed

        async def store_one(i: int) -> None:
            d = await store.aacquire([("{bench:one}#0", spec)])
            assert d.allowed

        # Warm up: connection, bucket, entries, caches.
        await rate(base_own, 20, 0.3)
        await rate(store_own, 20, 0.3)
        await rate(store_one, 20, 0.3)

        one_lock = asyncio.Lock()

        async def base_one_serialized(i: int) -> None:
            async with one_lock:
                await raw_pair("s.bench-one.raw")

        async def compare(label: str, base: Op, mine: Op, tasks: int, cached: bool = True, sync: bool = False) -> None:
            # Rounds alternate baseline and store, so load from elsewhere on the machine hits both
            # alike; the table shows medians (rates, and the ratio of each back-to-back pair).
            bases, mines, ratios = [], [], []
            for _ in range(args.rounds):
                store._write_from_cache = True
                if sync:
                    b = await asyncio.to_thread(sync_rate, lambda: store._sync(lambda: base(0)), per_round)
                    store._write_from_cache = cached
                    # The public sync API: the outage policy's guard, then the portal.
                    m = await asyncio.to_thread(sync_rate, lambda: store.acquire([(own_key(0), spec)]), per_round)
                else:
                    b = await rate(base, tasks, per_round)
                    store._write_from_cache = cached
                    m = await rate(mine, tasks, per_round)
                bases.append(b)
                mines.append(m)
                ratios.append(m / b)
            store._write_from_cache = True
            rows.append((label, statistics.median(bases), statistics.median(mines), statistics.median(ratios)))

        per_round = seconds / args.rounds
        await compare("async, 1 task, 1 key (cached revision)", base_own, store_own, 1)
        await compare("async, 20 tasks, a key each (cached revision)", base_own, store_own, 20)
        await compare("async, 1 task, 1 key (read + write)", base_own, store_own, 1, cached=False)
        await compare("async, 20 tasks, a key each (read + write)", base_own, store_own, 20, cached=False)
        await compare("async, 20 tasks, one key (base: conflicts)", base_one, store_one, 20)
        await compare("async, 20 tasks, one key (base: a lock)", base_one_serialized, store_one, 20)
        await compare("sync (portal), 1 thread, 1 key", base_own, store_own, 1, sync=True)
    finally:
        try:
            await conn.js.delete_key_value(bucket)
        finally:
            await store.aclose()
            store.close()

    print(
        f"nats-server at {args.url}; {args.rounds} alternating rounds of {seconds / args.rounds:.2f} s per side "
        "and scenario (medians); every acquire admitted and written"
    )
    print()
    print(f"| {'scenario':<46} | {'get+update /s':>13} | {'acquire /s':>10} | {'ratio':>5} |")
    print(f"|{'-' * 48}|{'-' * 15}|{'-' * 12}|{'-' * 7}|")
    for label, b, mine, ratio in rows:
        print(f"| {label:<46} | {b:>13,.0f} | {mine:>10,.0f} | {ratio:>5.2f} |")
    print()
    print(f"conflicting writes retried by the store: {store.conflicts}")


if __name__ == "__main__":
    asyncio.run(main())
