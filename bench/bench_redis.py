"""The Redis store's acquire against the cheapest possible Redis round trip, on the same pool.

Baseline: redis-py ``EVALSHA`` of ``return 1`` (a loaded script doing nothing) through the store's
own client, so both sides share the connection (sequential) or the pool (concurrent). Rounds of
the baseline and of ``RedisStore.acquire`` alternate and the median of each is compared, so a
noisy machine shifts both alike. Prints a table of ratios with their targets.

    python bench/bench_redis.py [--url redis://127.0.0.1:6379/0] [--n 5000] [--rounds 5] [--tasks 100]

Rows:
  sequential       one thread, acquires/s vs calls/s (target >= 0.95x)
  client CPU       time.process_time per call, acquire vs baseline (target <= 1.1x)
  N tasks          N asyncio tasks on one pool, each its own key (target >= 1.0x)
  N tasks, 1 key   the same on one hot key (reservations queue on one bucket)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Callable

import ratesync
from ratesync._stores.redis import RedisStore

#: A bucket no benchmark reaches: every call is admitted and writes its new state.
SPEC = ratesync.TokenBucket(rate_per_second=1e9, burst=1_000_000)


def timed(n: int, call: Callable[[], object]) -> tuple[float, float]:
    """(calls per second, CPU seconds of this process per call)."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu / n


def sequential(store: RedisStore, n: int, rounds: int) -> dict[str, list[float]]:
    limiter = ratesync.Limiter("bench", store, [SPEC])
    slots = limiter._slots("seq")[0]
    side = store._sync()
    client = side.client
    sha = client.script_load("return 1")
    for _ in range(200):  # connect and load the scripts
        client.evalsha(sha, 0)
        store.acquire(slots, 1, 0.0)
    out: dict[str, list[float]] = {"raw": [], "ours": [], "raw_cpu": [], "ours_cpu": []}
    for _ in range(rounds):
        rate, cpu = timed(n, lambda: client.evalsha(sha, 0))
        out["raw"].append(rate)
        out["raw_cpu"].append(cpu)
        rate, cpu = timed(n, lambda: store.acquire(slots, 1, 0.0))
        out["ours"].append(rate)
        out["ours_cpu"].append(cpu)
    return out


def concurrent(store: RedisStore, n: int, rounds: int, tasks: int, hot: bool) -> dict[str, list[float]]:
    async def main() -> dict[str, list[float]]:
        limiter = ratesync.Limiter("bench", store, [SPEC])
        slots = [limiter._slots("hot" if hot else f"t{i}")[0] for i in range(tasks)]
        side = store._async()
        client = side.client
        sha = await client.script_load("return 1")
        per_task = max(1, n // tasks)

        async def raw_task(_: int) -> None:
            for _ in range(per_task):
                await client.evalsha(sha, 0)

        async def our_task(i: int) -> None:
            s = slots[i]
            for _ in range(per_task):
                await store.aacquire(s, 1, 0.0)

        async def run(task: Callable[[int], object]) -> float:
            started = time.perf_counter()
            await asyncio.gather(*(task(i) for i in range(tasks)))  # type: ignore[misc]
            return per_task * tasks / (time.perf_counter() - started)

        await run(raw_task)  # open the pool's connections, load the scripts
        await run(our_task)
        out: dict[str, list[float]] = {"raw": [], "ours": []}
        for _ in range(rounds):
            out["raw"].append(await run(raw_task))
            out["ours"].append(await run(our_task))
        await store.aclose()
        return out

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=5000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()

    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    store = RedisStore(args.url, key_prefix=prefix, pool_size=args.tasks)
    rows: list[tuple[str, str, str, float, str]] = []
    try:
        seq = sequential(store, args.n, args.rounds)
        raw, ours = statistics.median(seq["raw"]), statistics.median(seq["ours"])
        rows.append(("sequential (calls/s)", f"{raw:,.0f}", f"{ours:,.0f}", ours / raw, ">= 0.95x"))
        raw_cpu, ours_cpu = statistics.median(seq["raw_cpu"]), statistics.median(seq["ours_cpu"])
        rows.append(
            ("client CPU per call (us)", f"{raw_cpu * 1e6:.1f}", f"{ours_cpu * 1e6:.1f}", ours_cpu / raw_cpu, "<= 1.1x")
        )
        for hot in (False, True):
            res = concurrent(store, args.n, args.rounds, args.tasks, hot)
            raw, ours = statistics.median(res["raw"]), statistics.median(res["ours"])
            label = f"{args.tasks} tasks, {'one hot key' if hot else 'a key each'} (calls/s)"
            rows.append((label, f"{raw:,.0f}", f"{ours:,.0f}", ours / raw, ">= 1.0x" if not hot else "(>= 2x stretch)"))
    finally:
        client = store._sync().client
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        store.close()

    print(f"Redis store vs redis-py EVALSHA 'return 1' ({args.url}, median of {args.rounds} alternating rounds)")
    header = ("scenario", "EVALSHA return 1", "RedisStore.acquire", "ratio", "target")
    widths = [max(len(str(r[i])) if i != 3 else 6 for r in [*rows, header]) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for label, raw_s, ours_s, ratio, target in rows:
        cells = (label, raw_s, ours_s, f"{ratio:.2f}x", target)
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


if __name__ == "__main__":
    main()
