"""The client's map of the server's clock: a reservation's wait counts from the server's decision."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("redis")

from ratesync._stores.redis import _ServerClock

OFFSET = 1_795_000_000.0  # server clock minus monotonic clock


def test_the_tightest_round_trip_sets_the_offset() -> None:
    clock = _ServerClock()
    # Sent at 10.0, read at 10.2: the server decided somewhere in between.
    assert clock.offset(10.0, 10.2, OFFSET + 10.05) == pytest.approx(OFFSET - 0.05)
    # A tighter sample wins...
    assert clock.offset(11.0, 11.002, OFFSET + 11.001) == pytest.approx(OFFSET)
    # ...and a looser one consistent with it changes nothing.
    assert clock.offset(12.0, 12.5, OFFSET + 12.4) == pytest.approx(OFFSET)


def test_a_sample_that_contradicts_the_estimate_replaces_it() -> None:
    clock = _ServerClock()
    clock.offset(1.0, 1.001, OFFSET + 1.0005)
    # The server's clock was set back 2 s: the old offset lies outside what this reply allows.
    assert clock.offset(2.0, 2.01, OFFSET - 2.0 + 2.005) == pytest.approx(OFFSET - 2.0)


def test_old_estimates_give_way_to_fresh_ones() -> None:
    clock = _ServerClock()
    clock.offset(0.0, 0.001, OFFSET + 0.0005)
    # 100 s later a 20 ms sample: the old one's bound grew by 100 s x 1e-4 = 10 ms: still better.
    assert clock.offset(100.0, 100.02, OFFSET + 100.0005 + 0.001) == pytest.approx(OFFSET)
    # 1000 s later its bound is 100 ms: a 20 ms sample is now the better one.
    assert clock.offset(1000.0, 1000.02, OFFSET + 1000.011) == pytest.approx(OFFSET + 0.001)


def test_a_late_reader_sleeps_only_what_is_left() -> None:
    clock = _ServerClock()
    now = time.monotonic()
    clock.offset(now - 0.001, now, OFFSET + now - 0.0005)  # calibrated: server = local + OFFSET
    # The server reserved a slot 0.5 s ahead, 0.3 s ago (the reply sat unread): 0.2 s remain.
    decided = OFFSET + time.monotonic() - 0.3
    assert clock.wait(time.monotonic() - 0.31, decided, 0.5) == pytest.approx(0.2, abs=0.02)
    # Never more than the server said, never less than nothing.
    # (A reply 5 s "ahead" contradicts the estimate: it is taken as the new one, minus half the
    # round trip.)
    assert 0.49 <= clock.wait(time.monotonic(), OFFSET + time.monotonic() + 5.0, 0.5) <= 0.5
    assert clock.wait(time.monotonic() - 2.0, OFFSET + time.monotonic() - 1.9, 0.5) == 0.0
