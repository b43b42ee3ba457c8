"""Four processes share one 50/s limiter through one SQLite file: never over, nearly all of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from rs_multiprocess import max_in_any_window, run_processes, summarize

pytestmark = [pytest.mark.sqlite, pytest.mark.realtime]

RATE = 50
BURST = 1
DURATION = 3.0


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_four_processes_share_one_limit(mode: str, tmp_path: Path) -> None:
    config = {
        # A "database is locked" reaching a caller would fail its worker (the harness reports it).
        "stores": {"shared": {"engine": "sqlite", "path": str(tmp_path / "limits.db"), "busy_timeout": 5}},
        "limiters": {"api": {"store": "shared", "algorithm": "token_bucket", "rate_per_second": RATE, "burst": BURST}},
    }
    times = run_processes(config, "api", processes=4, tasks_per_process=10, duration=DURATION, mode=mode)
    stats = summarize(times, DURATION)
    # Never more than the limit (plus the burst) in any one-second window, across all processes...
    assert max_in_any_window(times, 1.0) <= RATE + BURST, stats
    # ...and the processes together still get at least 90% of it.
    assert len(times) >= 0.9 * RATE * DURATION, stats
