"""asyncio: 40 tasks share a 20/s limiter (burst 5) with at most 4 in flight.

Run from anywhere: ``python examples/quickstart_async.py``. The limiter comes from
``examples/rate-sync.toml``, found because the script runs from its own folder, as your program
finds ``./rate-sync.toml`` with no setup code.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import ratesync
from ratesync import acquire

os.chdir(Path(__file__).parent)  # ./rate-sync.toml is found on first use


async def call_api(i: int) -> float:
    async with acquire("api"):  # waits for its turn, then holds one of 4 slots
        await asyncio.sleep(0.05)  # the work itself
        return time.monotonic()


async def main() -> None:
    start = time.monotonic()
    done = await asyncio.gather(*(call_api(i) for i in range(40)))
    elapsed = max(done) - start
    m = ratesync.get_limiter("api").get_metrics()
    print(f"40 calls in {elapsed:.2f} s ({40 / elapsed:.1f}/s, limit 20/s + burst 5)")
    print(f"waited {m.waits} times, max {m.wait_ms_max:.0f} ms; peak in flight {m.peak_concurrent} (max 4)")
    assert m.acquisitions == 40 and m.peak_concurrent <= 4 and m.concurrent == 0
    # 5 go at once (the burst), the other 35 one every 50 ms.
    assert elapsed >= 35 / 20 * 0.9


if __name__ == "__main__":
    asyncio.run(main())
