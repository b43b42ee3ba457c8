"""The NATS JetStream KV store in the contract suite: one bucket per test session, deleted at exit."""

from __future__ import annotations

import asyncio
import atexit
import os
import uuid

import pytest

import ratesync

NAME = "nats"
MARKS = [pytest.mark.nats]

URL = "nats://127.0.0.1:4222"
#: One bucket for the whole session (keys are unique per test); removed when the session ends.
BUCKET = f"rs_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
_used = False


def make_store(prefix: str) -> ratesync.Store:
    from rs_testing import require_service

    require_service("nats")
    from ratesync._stores.nats import NatsStore

    global _used
    _used = True
    # The contract checks a real backend's clock: calibration against the server stays on.
    # Generous timeouts: a loaded CI machine is slow, and the contract is about behaviour.
    return NatsStore(URL, bucket=BUCKET, name="contract", connect_timeout=5.0, request_timeout=5.0)


def delete_bucket(bucket: str, url: str = URL) -> None:
    """Remove ``bucket`` (used at exit and by the NATS tests for their own buckets)."""

    async def run() -> None:
        import nats
        import nats.js.errors

        nc = await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            try:
                await nc.jetstream().delete_key_value(bucket)
            except nats.js.errors.NotFoundError:
                pass
        finally:
            await nc.close()

    asyncio.run(run())


@atexit.register
def _delete_session_bucket() -> None:
    if _used:
        try:
            delete_bucket(BUCKET)
        except Exception:  # the server may be gone already at exit; nothing to clean then
            pass
