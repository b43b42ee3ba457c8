"""Per-user limits under one definition: ``key=``, ``"login:<user>"``, ``rate_limited`` templates.

``python examples/per_user_keys.py``
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ratesync import RateLimitTimeout, acquire, rate_limited, try_acquire

os.chdir(Path(__file__).parent)


def login(email: str) -> str:
    attempt = try_acquire("login", key=email)  # never waits: 3 tries per 5 minutes per email
    if not attempt:
        return f"{email}: locked, retry in {attempt.retry_after:.0f} s"
    return f"{email}: checking password ({attempt.remaining:.0f} tries left)"


@rate_limited("api:{tenant}", timeout=0.5)
async def report(tenant: str) -> str:
    return f"report for {tenant}"


async def main() -> None:
    for _ in range(4):
        print(login("alice@example.com"))
    print(login("bob@example.com"))  # bob has his own window

    # Each tenant gets its own 20/s bucket (burst 5) and 4 slots.
    print(await asyncio.gather(*(report(t) for t in ["acme", "globex", "acme"])))

    # A wait longer than the timeout raises at once, reserving nothing.
    for _ in range(5):
        async with acquire("api:initech"):
            pass
    try:
        async with acquire("api:initech", timeout=0.001):
            pass
    except RateLimitTimeout as exc:
        print(f"initech: would wait {exc.retry_after:.3f} s > timeout: {exc}")
    else:
        raise AssertionError("expected a timeout")


if __name__ == "__main__":
    asyncio.run(main())
