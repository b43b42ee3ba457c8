"""The NATS JetStream KV store beyond the shared contract: layout, CAS, clocks, configuration, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from rs_multiprocess import max_in_any_window
from rs_testing import require_service

import ratesync
from ratesync import ConfigurationError, FixedWindow, SlidingWindow, StoreError, TokenBucket
from ratesync._stores import create_store
from ratesync._stores.nats import NatsStore, entry_name, escape_key, hash_tag, redact_nats_url, unescape_key

URL = "nats://127.0.0.1:4222"


# -- pure helpers: no server needed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "{api:42}#0",
        "{api:42}#lease",
        "plain",
        "with space/and slash",
        "dots.in.the.key.",
        ".",
        "=3D",
        "ünïcödé ✓",
        "*>wild",
        "",
    ],
)
def test_escaped_keys_are_valid_kv_keys_and_round_trip(key: str) -> None:
    from nats.js.kv import _is_key_valid

    escaped = escape_key(key)
    assert _is_key_valid("s." + escaped), escaped
    assert "." not in escaped
    assert unescape_key(escaped) == key


def test_escaping_is_injective() -> None:
    keys = ["a b", "a_b", "a=20b", "a.b", "a/b", "a=2Eb", "=", "", "==", "{a}", "a"]
    assert len({escape_key(k) for k in keys}) == len(keys)


def test_hash_tag_follows_redis_cluster() -> None:
    assert hash_tag("{api:42}#0") == "api:42"
    assert hash_tag("x{user}y{other}") == "user"
    assert hash_tag("{}#0") == "{}#0"  # an empty tag: the whole key
    assert hash_tag("no-tag") == "no-tag"
    assert hash_tag("{unclosed") == "{unclosed"
    assert entry_name("{api:42}#0") == entry_name("{api:42}#1") == "s.api=3A42"
    assert entry_name("{api:43}#0") != entry_name("{api:42}#0")


def test_urls_are_redacted() -> None:
    assert "secret" not in redact_nats_url("nats://alice:secret@host:4222")
    assert "alice" in redact_nats_url("nats://alice:secret@host:4222")
    # A user name without a password is a token in NATS.
    assert "tok3n" not in redact_nats_url("tls://tok3n@host:4222")
    both = redact_nats_url("nats://a:pw1@h1:4222, nats://tok2@h2:4222")
    assert "pw1" not in both and "tok2" not in both and "h1" in both and "h2" in both
    assert redact_nats_url("nats://host:4222") == "nats://host:4222"


def test_options_are_converted_and_checked() -> None:
    store = create_store(
        "n",
        "nats",
        {
            "url": "nats://u:hunter2@127.0.0.1:4222",
            "bucket": "limits",
            "max_age": "3600",
            "connect_timeout": 0.5,
            "request_timeout": 2,
            "sync_clock": "false",
            "password": "pw-option",
            "token": "tok-option",
            "on_error": "open",
            "retry_interval": 0.25,
        },
    )
    assert isinstance(store, NatsStore)
    assert store.max_age == 3600.0 and store.request_timeout == 2.0 and not store.sync_clock
    assert store.on_error == "open" and store.retry_interval == 0.25
    for text in (store.describe(), repr(store)):
        assert "hunter2" not in text and "pw-option" not in text and "tok-option" not in text
        assert "limits" in text
    assert NatsStore.OPTIONS == ratesync._stores.ENGINE_OPTIONS["nats"]
    with pytest.raises(ConfigurationError, match="bucket"):
        NatsStore(bucket="no.dots")
    with pytest.raises(ConfigurationError) as excinfo:
        create_store("n", "nats", {"max_age": "soon"})
    assert excinfo.value.key == "max_age"
    with pytest.raises(ConfigurationError) as excinfo:
        create_store("n", "nats", {"nonsense": 1})
    assert excinfo.value.key == "nonsense"


async def test_secrets_never_reach_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # Nothing listens on port 1: every attempt fails, through every logging path.
    store = NatsStore(
        "nats://alice:hunter2@127.0.0.1:1,nats://tok3n@127.0.0.1:1",
        bucket="b",
        password="pw-option",
        token="tok-option",
        retry_interval=0.0,
    )
    try:
        with pytest.raises(StoreError) as sync_error:
            store.acquire([("{k}#0", TokenBucket(1.0))])
        with pytest.raises(StoreError) as async_error:
            await store.aacquire([("{k}#0", TokenBucket(1.0))])
    finally:
        store.close()
        await store.aclose()
    texts = [str(sync_error.value), str(async_error.value), repr(store), caplog.text]
    texts += [str(r.args) for r in caplog.records]
    for text in texts:
        for secret in ("hunter2", "tok3n", "pw-option", "tok-option"):
            assert secret not in text, text
    assert store.errors == 2


# -- against the server -------------------------------------------------------------------------------


@pytest.fixture
def bucket() -> Iterator[str]:
    require_service("nats")
    from stores.backend_nats import delete_bucket

    name = f"rs_t_{uuid.uuid4().hex[:10]}"
    yield name
    delete_bucket(name)


@pytest.fixture
async def make(bucket: str) -> AsyncIterator[Callable[..., NatsStore]]:
    """Stores on the test's bucket, each with connections of its own; all closed afterwards."""
    made: list[NatsStore] = []

    def factory(**kw: Any) -> NatsStore:
        store = NatsStore(URL, bucket=bucket, **kw)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()
        await store.aclose()


async def raw_entries(bucket: str) -> dict[str, Any]:
    """Every live entry of ``bucket``, decoded, read with a client of its own."""
    import nats
    import nats.js.errors

    nc = await nats.connect(URL)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            names = await kv.keys()
        except nats.js.errors.NoKeysError:
            return {}
        out = {}
        for name in names:
            entry = await kv.get(name)
            out[name] = json.loads(entry.value) if entry.value else None
        return out
    finally:
        await nc.close()


@pytest.mark.nats
async def test_bucket_is_created_with_history_one_and_max_age(make: Callable[..., NatsStore], bucket: str) -> None:
    import nats

    store = make(max_age=1234.0)
    await store.ainitialize()
    nc = await nats.connect(URL)
    try:
        info = await nc.jetstream().stream_info(f"KV_{bucket}")
    finally:
        await nc.close()
    assert info.config.max_msgs_per_subject == 1
    assert info.config.max_age == pytest.approx(1234.0)
    # A second store finds the bucket as it is.
    other = make(max_age=99.0)
    await other.ainitialize()
    assert (await other.aacquire([("{x}#0", TokenBucket(5.0))])).allowed


@pytest.mark.nats
async def test_slots_of_one_call_share_one_entry(make: Callable[..., NatsStore], bucket: str) -> None:
    store = make()
    slots = [("{user 7/a.b}#0", TokenBucket(10.0, 5)), ("{user 7/a.b}#1", FixedWindow(3, 3600.0))]
    assert (await store.aacquire(slots)).allowed
    entries = await raw_entries(bucket)
    state_entries = {k: v for k, v in entries.items() if k.startswith("s.")}
    assert list(state_entries) == [entry_name("{user 7/a.b}#0")]
    fields = state_entries[entry_name("{user 7/a.b}#0")]
    assert set(fields) == {"{user 7/a.b}#0", "{user 7/a.b}#1"}
    expires_at, kind, window = fields["{user 7/a.b}#1"]
    assert kind == "fw" and window[1] == 1
    assert expires_at > store.now()


@pytest.mark.nats
async def test_awkward_keys_are_isolated(make: Callable[..., NatsStore]) -> None:
    store = make()
    keys = ["{a b}#0", "{a_b}#0", "{a.b}#0", "{a/b}#0", "{a=2Eb}#0", "{ü}#0", "{u}#0", "no tag at all"]
    spec = FixedWindow(1, 3600.0)
    for k in keys:
        assert (await store.aacquire([(k, spec)])).allowed, k
    for k in keys:
        assert not (await store.aacquire([(k, spec)])).allowed, k


@pytest.mark.nats
async def test_two_clients_conflict_but_never_over_admit(make: Callable[..., NatsStore]) -> None:
    a, b = make(), make()
    slots = [("{hot}#0", SlidingWindow(40, 3600.0)), ("{hot}#1", TokenBucket(0.001, 1000))]

    async def burst(store: NatsStore) -> list[bool]:
        return [d.allowed for d in await asyncio.gather(*(store.aacquire(slots) for _ in range(50)))]

    # Two processes' worth of clients (a connection each), plus a thread on the sync side of one.
    sync_side = asyncio.to_thread(lambda: [a.acquire(slots).allowed for _ in range(20)])
    results = await asyncio.gather(burst(a), burst(b), sync_side)
    admitted = sum(sum(r) for r in results)
    assert admitted == 40
    # Both limits were charged all-or-nothing: exactly the admitted calls left the bucket.
    assert (await a.apeek([slots[1]])).remaining == 1000 - 40
    assert (await b.apeek([slots[0]])).remaining == 0


@pytest.mark.nats
async def test_cached_revision_is_never_trusted_blindly(make: Callable[..., NatsStore]) -> None:
    # A writes alone long enough to write from its cached copy; B's writes in between must be seen.
    a, b = make(), make()
    slots = [("{c}#0", FixedWindow(10, 3600.0))]
    order = "aaaabaaabbaaaaab"
    remaining = []
    for who in order:
        store = a if who == "a" else b
        d = await store.aacquire(slots)
        remaining.append(d.remaining if d.allowed else None)
    assert remaining[:10] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert remaining[10:] == [None] * 6
    await a.areset(["{c}#0"])
    # A reset by another client shows up even where A would otherwise write from its cache.
    assert (await b.aacquire(slots)).remaining == 9
    assert (await a.aacquire(slots)).remaining == 8


@pytest.mark.nats
async def test_endless_conflicts_end_in_a_store_error(
    make: Callable[..., NatsStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    import nats.js.errors

    store = make(max_attempts=5)
    await store.ainitialize()
    conn = store._conns[asyncio.get_running_loop()]

    async def always_conflicting(*args: Any, **kwargs: Any) -> int:
        raise nats.js.errors.KeyWrongLastSequenceError(description="wrong last sequence")

    monkeypatch.setattr(conn.kv, "update", always_conflicting)
    started = time.monotonic()
    with pytest.raises(StoreError, match="conflicting writes"):
        await store.aacquire([("{x}#0", TokenBucket(5.0))])
    assert store.conflicts == 5  # five writes tried, all conflicting
    assert time.monotonic() - started < 1.0


@pytest.mark.nats
async def test_dead_holders_lease_returns_to_another_client(make: Callable[..., NatsStore]) -> None:
    holder, waiter = make(), make()
    assert (await holder.alease_acquire("{j}#lease", 1, 0.3, "dead")).acquired
    await holder.aclose()  # the holder dies without releasing
    assert not (await waiter.alease_acquire("{j}#lease", 1, 30.0, "w")).acquired
    await asyncio.sleep(0.45)
    got = await waiter.alease_acquire("{j}#lease", 1, 30.0, "w")
    assert got.acquired and got.active == 1


@pytest.mark.nats
async def test_reset_forgets_leases_too(make: Callable[..., NatsStore]) -> None:
    store = make()
    assert (await store.alease_acquire("{r}#lease", 1, 30.0, "a")).acquired
    await store.areset(["{r}#lease", "{r}#0"])
    assert (await store.alease_acquire("{r}#lease", 1, 30.0, "b")).acquired


@pytest.mark.nats
async def test_state_longer_than_max_age_is_warned_about(
    make: Callable[..., NatsStore], caplog: pytest.LogCaptureFixture
) -> None:
    store = make(max_age=60.0)
    for _ in range(3):
        await store.aacquire([("{w}#0", SlidingWindow(5, 3600.0))])
    warnings = [r for r in caplog.records if "max_age" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.nats
def test_each_event_loop_gets_its_own_connection(make: Callable[..., NatsStore]) -> None:
    store = make()
    slots = [("{loops}#0", FixedWindow(3, 3600.0))]

    async def once() -> bool:
        try:
            return (await store.aacquire(slots)).allowed
        finally:
            await store.aclose()

    assert asyncio.run(once()) and asyncio.run(once())
    assert store.acquire(slots).allowed  # the portal's loop
    assert not asyncio.run(once())


# -- the clock -------------------------------------------------------------------------------------


@pytest.mark.nats
async def test_calibration_corrects_a_skewed_client_clock(make: Callable[..., NatsStore]) -> None:
    # The server runs on this machine, so its clock is time.time(); the clients' clocks are 90 s
    # fast and 40 s slow, and their calibrated clocks agree with the server's anyway.
    fast = make(clock=lambda: time.time() + 90.0)
    slow = make(clock=lambda: time.time() - 40.0)
    await fast.ainitialize()
    await slow.ainitialize()
    assert fast.clock_error is not None and fast.clock_error < 0.05
    assert abs(fast.now() - time.time()) < 0.05
    assert abs(slow.now() - time.time()) < 0.05
    # The slow client fills a window; to the fast one those calls are just as recent.
    slots = [("{calibrated}#0", SlidingWindow(5, 60.0))]
    for _ in range(5):
        assert (await slow.aacquire(slots)).allowed
    refused = await fast.aacquire(slots)
    assert not refused.allowed
    assert refused.wait == pytest.approx(60.0, abs=1.0)


@pytest.mark.nats
async def test_without_calibration_the_same_skew_over_admits(make: Callable[..., NatsStore]) -> None:
    # The counterpart of the test above, showing what calibration prevents.
    fast = make(sync_clock=False, clock=lambda: time.time() + 90.0)
    slow = make(sync_clock=False, clock=lambda: time.time() - 40.0)
    slots = [("{uncalibrated}#0", SlidingWindow(5, 60.0))]
    for _ in range(5):
        assert (await slow.aacquire(slots)).allowed
    # To the fast client those calls are 130 s old: it admits a whole second window's worth.
    assert all([(await fast.aacquire(slots)).allowed for _ in range(5)])


class FakeClock:
    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t + self.offset


@pytest.mark.nats
@pytest.mark.parametrize("skew", [0.0, 0.3, 1.0])
async def test_uncalibrated_skew_over_admits_at_most_skew_times_rate(
    make: Callable[..., NatsStore], skew: float
) -> None:
    # Without calibration the client clocks are used as they are. Time is simulated: a client
    # with a right clock reserves its place in a 10/s bucket (burst 1) alone for 2 s, then a
    # client whose clock is ``skew`` seconds fast joins; both reserve up to 1 s ahead. The fast
    # client sees every reservation ``skew`` seconds earlier than it is: the worst case.
    rate, burst, step = 10.0, 1, 0.02
    clock_right, clock_fast = FakeClock(), FakeClock(skew)
    right = make(sync_clock=False, clock=clock_right)
    fast = make(sync_clock=False, clock=clock_fast)
    slots = [(f"{{skew-{skew}}}#0", TokenBucket(rate, burst))]
    goes: list[float] = []
    for i in range(200):
        t = i * step
        clock_right.t = clock_fast.t = 1_000_000.0 + t
        for store in (fast, right) if t >= 2.0 else (right,):
            d = await store.aacquire(slots, 1, 1.0)
            if d.allowed:
                goes.append(t + d.wait)
    goes.sort()
    busiest = max_in_any_window(goes, 1.0)
    assert busiest <= rate + burst + skew * rate + 1e-9, busiest
    if skew == 0.0:
        assert busiest <= rate + burst


@pytest.mark.nats
async def test_limiters_in_two_registries_share_rate_and_concurrency(bucket: str) -> None:
    # Two registries (as two processes would have) configured from the same rate-sync.toml shape.
    config = {
        "stores": {"shared": {"engine": "nats", "url": URL, "bucket": bucket}},
        "limiters": {
            "jobs": {
                "store": "shared",
                "algorithm": "sliding_window",
                "limit": 3,
                "window_seconds": 3600,
                "max_concurrent": 1,
            },
        },
    }
    first, second = ratesync.Registry(config=config), ratesync.Registry(config=config)
    try:
        held = await first.atry_acquire("jobs", key="tenant 1")
        assert held
        # The concurrency slot is taken in the other registry's eyes too...
        assert not await second.atry_acquire("jobs", key="tenant 1")
        await held.arelease()
        # ...and given back: the second registry gets it, and the window counts both.
        again = await second.atry_acquire("jobs", key="tenant 1")
        assert again
        await again.arelease()
        state = await second.get_limiter("jobs").astate("tenant 1")
        assert state.remaining == 1
    finally:
        await first.aclose()
        await second.aclose()
        first.close()
        second.close()
