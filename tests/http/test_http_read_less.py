"""Responses that go unread while a learned quota is far from exhausted (``learn_interval``).

While the upstream's last word left more than a quarter of its limit (and more than
``LEARN_MARGIN_MIN`` requests), the responses of that quota are read at most once per
``learn_interval`` and at most as many go unread as that margin leaves; near exhaustion, at the
tail of a window, and for 403/429/503 every response is read. The store's mirror still counts
every request of every process sharing it, so what a process skips is only what clients outside
the store spent meanwhile. Every clock here is a fake one: nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
from rs_testing import ManualClock

import ratesync
from ratesync import ConfigurationError, MemoryStore, Observation, Quota, RateLimitTimeout
from ratesync_http import RateLimitedAdapter, RateLimitedTransport
from ratesync_http._config import parse_http_config
from ratesync_http._policy import LEARN_MARGIN_MIN

pytestmark = pytest.mark.http

URL = "https://api.example.com/items"
QUOTA = "{http:api.example.com}#quota"
RULE = {"api.example.com": {"rate_per_second": 1e6, "burst": 1000}}


class CountingStore(MemoryStore):
    """A memory store that counts what is learned into it (``aobserve`` goes through ``observe``)."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.observed: list[Observation] = []

    def observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self.observed.append(obs)
        super().observe(key, spec, obs)


class Upstream:
    """Answers with whatever status and headers the test sets; counts the requests."""

    def __init__(self, headers: dict[str, str], status: int = 200) -> None:
        self.headers = headers
        self.status = status
        self.sent = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return httpx.Response(self.status, headers=self.headers, content=b"ok")


def github(remaining: int, limit: int | None = 5000, reset_after: float = 600.0) -> dict[str, str]:
    headers = {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset-After": str(reset_after)}
    if limit is not None:
        headers["X-RateLimit-Limit"] = str(limit)
    return headers


def transport(
    clock: ManualClock, store: MemoryStore, upstream: Callable[[httpx.Request], httpx.Response], **options: Any
) -> RateLimitedTransport:
    options.setdefault("hosts", RULE)
    t = RateLimitedTransport(
        httpx.MockTransport(upstream),
        registry=ratesync.Registry(),
        store=store,
        sleep=clock.sleep,
        async_sleep=clock.asleep,
        **options,
    )
    t.policy.clock = clock
    return t


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def store(clock: ManualClock) -> CountingStore:
    return CountingStore(clock)


def test_far_from_exhausted_one_response_is_read_per_interval(clock: ManualClock, store: CountingStore) -> None:
    up = Upstream(github(remaining=4000))
    t = transport(clock, store, up)
    with httpx.Client(transport=t) as client:
        for _ in range(10):
            assert client.get(URL).status_code == 200
        assert len(store.observed) == 1
        clock.now += 0.049
        client.get(URL)
        assert len(store.observed) == 1
        clock.now += 0.001  # learn_interval (0.05 s) has passed since the read
        client.get(URL)
        assert len(store.observed) == 2
    m = t.get_metrics()
    assert (m.requests, m.sent, m.learned, m.unread) == (12, 12, 2, 10)
    assert up.sent == 12


def test_a_read_budgets_what_goes_unread(clock: ManualClock, store: CountingStore) -> None:
    # The upstream counts down from 40 of a limit it does not state: 8 above the margin of 32, so
    # the 8 responses after the first go unread; from the next read on the quota is near its end
    # and every response is read. The mirror is charged for every request all along.
    def answer(request: httpx.Request) -> httpx.Response:
        up.sent += 1
        return httpx.Response(200, headers=github(remaining=41 - up.sent, limit=None), content=b"ok")

    up = Upstream({})
    t = transport(clock, store, answer)
    with httpx.Client(transport=t) as client:
        reads = []
        for i in range(14):
            before = len(store.observed)
            client.get(URL)
            if len(store.observed) > before:
                reads.append(i)
    assert reads == [0, 9, 10, 11, 12, 13]
    assert t.get_metrics().unread == 8
    assert store.peek([(QUOTA, Quota())]).remaining == 40 - 13


def test_near_exhaustion_every_response_is_read(clock: ManualClock, store: CountingStore) -> None:
    for headers in (github(remaining=1250), github(remaining=int(LEARN_MARGIN_MIN), limit=None), github(5, 10)):
        store.observed.clear()
        up = Upstream(headers)
        t = transport(clock, store, up)
        with httpx.Client(transport=t) as client:
            for _ in range(4):
                client.get(URL)
        assert len(store.observed) == 4, headers
        assert t.get_metrics().unread == 0


def test_the_tail_of_a_window_is_always_read(clock: ManualClock, store: CountingStore) -> None:
    # 0.1 s before the reset of a window of unstated length: within its tail guard.
    up = Upstream(github(remaining=4000, reset_after=0.1))
    t = transport(clock, store, up)
    with httpx.Client(transport=t) as client:
        for _ in range(3):
            client.get(URL)
    assert len(store.observed) == 3


def test_a_read_never_reaches_past_the_reset(clock: ManualClock, store: CountingStore) -> None:
    # 0.12 s before the reset: responses may go unread for 0.02 s only (0.12 - the 0.1 s tail).
    up = Upstream(github(remaining=4000, reset_after=0.12))
    t = transport(clock, store, up)
    with httpx.Client(transport=t) as client:
        client.get(URL)
        clock.now += 0.019
        client.get(URL)
        assert len(store.observed) == 1
        clock.now += 0.001
        client.get(URL)
        assert len(store.observed) == 2


@pytest.mark.parametrize("status", [403, 429, 503])
def test_refusals_are_always_read(clock: ManualClock, store: CountingStore, status: int) -> None:
    up = Upstream(github(remaining=4000))
    t = transport(clock, store, up, retries=0)
    with httpx.Client(transport=t) as client:
        client.get(URL)
        assert t.policy.unread_until  # unread from now on, for a while
        up.status = status
        up.headers = {**up.headers, "Retry-After": "30"}
        assert client.get(URL).status_code == status
    assert len(store.observed) == 2
    assert store.observed[-1].remaining == 0.0  # the cooldown, learned at once
    assert not t.policy.unread_until  # and the next response is read too


def test_a_sudden_drop_is_seen_within_one_interval(clock: ManualClock, store: CountingStore) -> None:
    # Clients outside the store spend the whole quota: what this process skips meanwhile is
    # bounded by the interval; the first read after it makes every process wait for the reset.
    up = Upstream(github(remaining=4000))
    t = transport(clock, store, up, timeout=1.0)
    with httpx.Client(transport=t) as client:
        client.get(URL)
        up.headers = github(remaining=0, reset_after=599.99)  # the same window as before
        client.get(URL)  # unread: within the interval
        clock.now += 0.05
        client.get(URL)  # read: the quota is exhausted
        with pytest.raises(RateLimitTimeout):
            client.get(URL)
    assert up.sent == 3


def test_processes_sharing_the_store_act_on_a_read_by_any_of_them(clock: ManualClock, store: CountingStore) -> None:
    # Two transports on one store stand for two processes: B is within its own unread interval
    # when A reads that the quota is exhausted; B waits for the reset all the same.
    up = Upstream(github(remaining=4000))
    a = transport(clock, store, up)
    b = transport(clock, store, up, timeout=1.0)
    with httpx.Client(transport=a) as ca, httpx.Client(transport=b) as cb:
        cb.get(URL)
        assert b.policy.unread_until
        ca.get(URL)
        up.headers = github(remaining=0, reset_after=599.95)
        clock.now += 0.05
        ca.get(URL)  # A reads the drop
        b.policy.unread_until[QUOTA].until = clock.now + 10  # B would not read for a long while
        with pytest.raises(RateLimitTimeout):
            cb.get(URL)


def test_learn_interval_zero_reads_every_response(clock: ManualClock, store: CountingStore) -> None:
    up = Upstream(github(remaining=4000))
    t = transport(clock, store, up, learn_interval=0)
    with httpx.Client(transport=t) as client:
        for _ in range(5):
            client.get(URL)
    assert len(store.observed) == 5
    assert t.get_metrics().unread == 0


async def test_async_client_reads_the_same_way(clock: ManualClock, store: CountingStore) -> None:
    up = Upstream(github(remaining=4000))
    t = transport(clock, store, up)
    async with httpx.AsyncClient(transport=t) as client:
        for _ in range(5):
            await client.get(URL)
        clock.now += 0.05
        await client.get(URL)
    assert len(store.observed) == 2
    assert t.get_metrics().unread == 4


def test_requests_adapter_reads_the_same_way(clock: ManualClock, store: CountingStore) -> None:
    class Canned(requests.adapters.BaseAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            response = requests.Response()
            response.status_code = 200
            response.headers.update(github(remaining=4000))
            response.request = request
            return response

        def close(self) -> None:
            pass

    adapter = RateLimitedAdapter(Canned(), registry=ratesync.Registry(), store=store, hosts=RULE)
    adapter.policy.clock = clock
    with requests.Session() as session:
        session.mount("https://", adapter)
        for _ in range(5):
            session.get(URL)
        clock.now += 0.05
        session.get(URL)
    assert len(store.observed) == 2
    assert adapter.get_metrics().unread == 4


def test_unread_budgets_do_not_grow_without_bound(clock: ManualClock, store: CountingStore) -> None:
    t = transport(clock, store, Upstream(github(remaining=4000)), hosts={"*": {"rate_per_second": 1e6}})
    from ratesync_http import _policy

    with httpx.Client(transport=t) as client:
        for i in range(5):
            client.get(f"https://h{i}.example.com/")
    assert len(t.policy.unread_until) == 5
    original = _policy._GATE_LIMIT
    try:
        _policy._GATE_LIMIT = 5
        with httpx.Client(transport=t) as client:
            client.get("https://h5.example.com/")
    finally:
        _policy._GATE_LIMIT = original
    assert len(t.policy.unread_until) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1, "must be zero or greater than zero"), ("soon", "expected a number"), (float("inf"), "finite")],
)
def test_learn_interval_is_validated(value: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as err:
        parse_http_config({"learn_interval": value}, path="rate-sync.toml")
    assert (err.value.path, err.value.table, err.value.key) == ("rate-sync.toml", "http", "learn_interval")
    with pytest.raises(ConfigurationError, match=message):
        RateLimitedTransport(registry=ratesync.Registry(), learn_interval=value)
    assert parse_http_config({"learn_interval": 0.5}).learn_interval == 0.5
    assert parse_http_config({}).learn_interval == 0.05
