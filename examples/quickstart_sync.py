"""Plain threads: the same limiter, the same ``acquire``, in synchronous code.

``python examples/quickstart_sync.py``
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ratesync
from ratesync import acquire

os.chdir(Path(__file__).parent)


def call_api(i: int) -> float:
    with acquire("api"):
        time.sleep(0.02)
        return time.monotonic()


def main() -> None:
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(call_api, range(30)))
    elapsed = max(done) - start
    m = ratesync.get_limiter("api").get_metrics()
    print(f"30 calls from 8 threads in {elapsed:.2f} s; peak in flight {m.peak_concurrent} (max 4)")
    assert m.acquisitions == 30 and m.peak_concurrent <= 4
    # The combined limiter: 50/s and 5000/h, both enforced; the rate comes from ${GITHUB_RATE:-50}.
    github = ratesync.get_limiter("github")
    print("github limiter:", github)
    print("state:", github.state())


if __name__ == "__main__":
    main()
