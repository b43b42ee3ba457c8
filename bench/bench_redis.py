"""The Redis store's acquire against the cheapest possible Redis round trip.

Baselines, both redis-py ``EVALSHA`` of ``return 1`` (a loaded script doing nothing):
  * stock:     a plain ``redis.Redis`` with redis-py's own connection pool;
  * same pool: the store's own client, so it shares the store's connection (sequential) or pool
               (concurrent) and only the script and the store's code differ.
Rounds of each alternate and the medians are compared, so a noisy machine shifts all alike.

    python bench/bench_redis.py [--url redis://127.0.0.1:6379/0] [--n 4000] [--rounds 7] [--tasks 100]

Rows (targets from the issue, against the stock call):
  sequential       one thread, calls/s (>= 0.95x)
  client CPU       time.process_time per call (<= 1.1x)
  N tasks          N asyncio tasks on one pool, each its own key (>= 1.0x)
  N tasks, 1 key   the same on one hot key (reservations queue on one bucket)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import redis
import redis.asyncio

import ratesync
from ratesync._stores.redis import RedisStore

#: A bucket no benchmark reaches: every call is admitted and writes its new state.
SPEC = ratesync.TokenBucket(rate_per_second=1e9, burst=1_000_000)
RETURN_1 = "return 1"


def timed(n: int, call: Callable[[], object]) -> tuple[float, float]:
    """(calls per second, CPU seconds of this process per call)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n


def sequential(store: RedisStore, url: str, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    slots = ratesync.Limiter("bench", store, [SPEC])._slots("seq")[0]
    own = store._sync().client
    stock = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, max_connections=10))
    sha = stock.script_load(RETURN_1)
    calls: dict[str, Callable[[], object]] = {
        "stock": lambda: stock.evalsha(sha, 0),
        "same pool": lambda: own.evalsha(sha, 0),
        "acquire": lambda: store.acquire(slots, 1, 0.0),
    }
    for call in calls.values():  # connect, load the scripts, warm up
        for _ in range(300):
            call()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    try:
        for _ in range(rounds):
            for name, call in calls.items():
                out[name].append(timed(n, call))
    finally:
        stock.close()
        stock.connection_pool.disconnect()
    return out


def concurrent(store: RedisStore, url: str, n: int, rounds: int, tasks: int, hot: bool) -> dict[str, list[float]]:
    async def main() -> dict[str, list[float]]:
        limiter = ratesync.Limiter("bench", store, [SPEC])
        slots = [limiter._slots("hot" if hot else f"t{i}")[0] for i in range(tasks)]
        own = store._async().client
        stock = redis.asyncio.Redis(
            connection_pool=redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=tasks)
        )
        sha = await stock.script_load(RETURN_1)
        per_task = max(1, n // tasks)

        def raw(client: redis.asyncio.Redis) -> Callable[[int], Awaitable[None]]:
            async def task(_: int) -> None:
                for _ in range(per_task):
                    await client.evalsha(sha, 0)  # type: ignore[misc]

            return task

        async def acquire(i: int) -> None:
            s = slots[i]
            for _ in range(per_task):
                await store.aacquire(s, 1, 0.0)

        async def run(task: Callable[[int], Awaitable[None]]) -> float:
            started = time.perf_counter()
            await asyncio.gather(*(task(i) for i in range(tasks)))
            return per_task * tasks / (time.perf_counter() - started)

        calls = {"stock": raw(stock), "same pool": raw(own), "acquire": acquire}
        out: dict[str, list[float]] = {name: [] for name in calls}
        try:
            for task in calls.values():  # open the pools' connections, load the scripts
                await run(task)
            for _ in range(rounds):
                for name, task in calls.items():
                    out[name].append(await run(task))
        finally:
            await stock.aclose()
            await stock.connection_pool.disconnect()
            await store.aclose()
        return out

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=4000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=100, help="concurrent tasks (0: sequential rows only)")
    args = parser.parse_args()

    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    # Opening a hundred connections at once on a busy machine can take longer than the default
    # half-second connect timeout; this measures throughput, not outages.
    store = RedisStore(
        args.url, key_prefix=prefix, pool_size=max(1, args.tasks), connect_timeout=5.0, socket_timeout=5.0
    )
    rows: list[tuple[str, float, float, float, str, str]] = []
    try:
        seq = sequential(store, args.url, args.n, args.rounds)
        rate = {name: statistics.median(r for r, _ in v) for name, v in seq.items()}
        cpu = {name: statistics.median(c for _, c in v) * 1e6 for name, v in seq.items()}
        rows.append(("sequential (calls/s)", rate["stock"], rate["same pool"], rate["acquire"], ">= 0.95x", "{:,.0f}"))
        rows.append(("client CPU per call (us)", cpu["stock"], cpu["same pool"], cpu["acquire"], "<= 1.1x", "{:.1f}"))
        for hot in (False, True) if args.tasks else ():
            res = concurrent(store, args.url, args.n, args.rounds, args.tasks, hot)
            med = {name: statistics.median(v) for name, v in res.items()}
            label = f"{args.tasks} tasks, {'one hot key' if hot else 'a key each'} (calls/s)"
            target = "(>= 2x stretch)" if hot else ">= 1.0x"
            rows.append((label, med["stock"], med["same pool"], med["acquire"], target, "{:,.0f}"))
    finally:
        client = store._sync().client
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        store.close()

    print(f"RedisStore.acquire vs redis-py EVALSHA 'return 1' ({args.url}, median of {args.rounds} rounds)")
    header = ("scenario", "stock", "same pool", "acquire", "vs stock", "vs same pool", "target (vs stock)")
    table = [header]
    for label, stock, same, ours, target, form in rows:
        table.append(
            (
                label,
                form.format(stock),
                form.format(same),
                form.format(ours),
                f"{ours / stock:.2f}x",
                f"{ours / same:.2f}x",
                target,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
