"""Multi-process accuracy harness: several processes share one limiter through a store.

Each process loads the same configuration (a dict shaped like rate-sync.toml), then runs
``tasks_per_process`` asyncio tasks (or threads, ``mode="sync"``) that acquire in a loop until the
deadline, recording the wall-clock time of every admission. The parent gets every admission
time of every process, to check that no one-second window holds more than the limit allows.
"""

from __future__ import annotations

import asyncio
import bisect
import multiprocessing
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["max_in_any_window", "run_processes", "summarize"]


def _worker(
    config: dict[str, Any],
    limiter_id: str,
    tasks: int,
    start: Any,
    duration: float,
    mode: str,
    out: Any,
) -> None:
    import ratesync

    registry = ratesync.Registry(config=config)
    times: list[float] = []
    try:
        limiter = registry.get_limiter(limiter_id)
        # Ready (imported, configured): wait for every process, so a slow start loses no time.
        out.put(("ready", None))
        start_at = start.get()
        deadline = start_at + duration
        if mode == "async":

            async def task() -> None:
                while True:
                    left = deadline - time.time()
                    if left <= 0:
                        return
                    try:
                        await limiter.acquire(timeout=left)
                    except ratesync.RateLimitTimeout:
                        return
                    now = time.time()
                    if now <= deadline:
                        times.append(now)

            async def main() -> None:
                await asyncio.sleep(max(0.0, start_at - time.time()))
                await asyncio.gather(*(task() for _ in range(tasks)))
                for store_id in registry.list_stores():
                    await registry.get_store(store_id).aclose()

            asyncio.run(main())
        else:
            lock = threading.Lock()

            def thread() -> None:
                time.sleep(max(0.0, start_at - time.time()))
                while True:
                    left = deadline - time.time()
                    if left <= 0:
                        return
                    try:
                        with limiter.acquire(timeout=left):
                            pass
                    except ratesync.RateLimitTimeout:
                        return
                    now = time.time()
                    if now <= deadline:
                        with lock:
                            times.append(now)

            threads = [threading.Thread(target=thread) for _ in range(tasks)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        out.put(("ok", times))
    except BaseException as exc:  # report anything to the parent instead of dying silently
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        registry.close()


def run_processes(
    config: dict[str, Any],
    limiter_id: str,
    *,
    processes: int = 4,
    tasks_per_process: int = 10,
    duration: float = 3.0,
    mode: str = "async",
    startup: float = 0.3,
) -> list[float]:
    """Admission times (``time.time()``) of all processes, sorted. Raises if a process failed.

    Every process first reports ready; then all start together ``startup`` seconds later.
    """
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(config, limiter_id, tasks_per_process, start, duration, mode, out))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    results = []
    try:
        ready = 0
        while ready < len(procs):
            kind, payload = out.get(timeout=120)
            if kind == "ready":
                ready += 1
            else:
                results.append((kind, payload))
                if kind == "error":
                    raise AssertionError(f"worker process failed before the start: {payload}")
        start_at = time.time() + startup
        for _ in procs:
            start.put(start_at)
        while len(results) < len(procs):
            results.append(out.get(timeout=startup + duration + 60))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (out, start):
            q.close()
            q.join_thread()
    errors = [r[1] for r in results if r[0] == "error"]
    if errors:
        raise AssertionError(f"worker process failed: {errors}")
    return sorted(t for _, times in results for t in times)


def max_in_any_window(times: Sequence[float], window: float = 1.0) -> int:
    """The largest number of admissions inside any half-open interval ``[t, t + window)``."""
    best = 0
    for i, t in enumerate(times):
        j = bisect.bisect_left(times, t + window, lo=i)
        best = max(best, j - i)
    return best


def summarize(times: Sequence[float], duration: float) -> dict[str, float]:
    """Rate achieved over the run and the busiest one-second window, for assertion messages."""
    return {
        "admitted": float(len(times)),
        "rate": len(times) / duration if duration else 0.0,
        "max_1s": float(max_in_any_window(times, 1.0)),
    }
