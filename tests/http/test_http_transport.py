"""RateLimitedTransport with httpx.MockTransport: limits, leases, extensions, learning, retries, timeouts.

Time is a fake clock shared by the memory store and the transport's sleep, so nothing here waits
for real time to pass.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from rs_testing import ManualClock

import ratesync
from ratesync import MemoryStore, Quota, RateLimitTimeout
from ratesync_http import RateLimitedTransport

pytestmark = pytest.mark.http


def approx(value: Any) -> Any:
    # Waits are measured from the fake clock minus the (tiny) real time the store call took.
    return pytest.approx(value, abs=0.01)


class Upstream:
    """A MockTransport handler recording calls (at the fake time) and answering from a script."""

    def __init__(self, clock: ManualClock, answer: Callable[[httpx.Request, int], httpx.Response] | None = None):
        self.clock = clock
        self.calls: list[tuple[float, str, str]] = []
        self.answer = answer or (lambda request, n: httpx.Response(200, content=b"ok"))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((self.clock.now, request.method, str(request.url)))
        return self.answer(request, len(self.calls))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def make(
    clock: ManualClock,
    store: MemoryStore,
    upstream: Upstream,
    registry: ratesync.Registry | None = None,
    **options: Any,
) -> RateLimitedTransport:
    return RateLimitedTransport(
        httpx.MockTransport(upstream),
        registry=registry or ratesync.Registry(),
        store=store,
        sleep=clock.sleep,
        async_sleep=clock.asleep,
        **options,
    )


def quota_wait(store: MemoryStore, key: str) -> float:
    d = store.peek([(key, Quota())])
    return 0.0 if d.allowed else d.wait


# -- limits and routing ----------------------------------------------------------------------


def test_host_rule_spaces_requests(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 2}})
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            assert client.get("https://api.example.com/a").status_code == 200
        # Another host has no rule: never waits.
        client.get("https://other.example.org/")
    times = [t for t, _, url in up.calls if "api.example.com" in url]
    assert times == approx([1000.0, 1000.5, 1001.0])
    assert transport.get_metrics().waits == 2
    assert "{http:api.example.com}#host:0" in store.keys()


def test_glob_rule_gives_each_host_its_own_budget(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(clock, store, up, hosts={"*.example.com": {"rate_per_second": 1}})
    with httpx.Client(transport=transport) as client:
        client.get("https://a.example.com/")
        client.get("https://b.example.com/")
        client.get("https://a.b.example.com/")
        assert clock.slept == []
        keys = set(store.keys())
        client.get("https://a.example.com/")
        assert clock.slept == [approx(1.0)]
        # The apex domain is not matched by *.example.com.
        client.get("https://example.com/")
        client.get("https://example.com/")
    assert clock.slept == [approx(1.0)]
    assert {"{http:a.example.com}#host:0", "{http:b.example.com}#host:0", "{http:a.b.example.com}#host:0"} <= keys


def test_endpoint_template_is_one_key_for_every_url(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    route = "GET /repos/{owner}/{repo}/issues"
    transport = make(
        clock, store, up, endpoints=[{"host": "api.github.com", "route": route, "rate_per_second": 1}], learn=False
    )
    with httpx.Client(transport=transport) as client:
        for owner, repo in [("a", "x"), ("b", "y"), ("c", "z")]:
            client.get(f"https://api.github.com/repos/{owner}/{repo}/issues", params={"page": owner})
        # Other methods and paths are not under the endpoint rule.
        client.post("https://api.github.com/repos/a/x/issues")
        client.get("https://api.github.com/repos/a/x/pulls")
    assert clock.slept == [approx(1.0), approx(1.0)]
    assert store.keys() == [f"{{http:api.github.com}}#{route}:0"]


def test_host_and_endpoint_rules_all_or_nothing(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(
        clock,
        store,
        up,
        hosts={"api.github.com": {"rate_per_second": 1, "burst": 2}},
        endpoints=[{"host": "api.github.com", "route": "GET /search/{kind}", "rate_per_second": 0.1}],
        timeout=0,
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://api.github.com/search/code")  # host 1/2, endpoint 1/1
        with pytest.raises(RateLimitTimeout):
            client.get("https://api.github.com/search/issues")  # endpoint refuses: nothing charged
        client.get("https://api.github.com/user")  # so the host still has its second permit
        with pytest.raises(RateLimitTimeout) as err:
            client.get("https://api.github.com/user")
    assert len(up.calls) == 2
    assert isinstance(err.value, TimeoutError)
    assert err.value.limiter_id == "api.github.com"
    assert transport.get_metrics().timeouts == 2


def test_default_rule_for_any_other_host(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(
        clock,
        store,
        up,
        hosts={"fast.example.com": {"rate_per_second": 100, "burst": 10}},
        default={"rate_per_second": 1},
    )
    with httpx.Client(transport=transport) as client:
        client.get("https://fast.example.com/")
        client.get("https://fast.example.com/")
        assert clock.slept == []
        client.get("https://x.example.net/")
        client.get("https://y.example.net/")  # its own budget
        client.get("https://x.example.net/")
    assert clock.slept == [approx(1.0)]


def test_rule_naming_a_limiter_uses_its_state(clock: ManualClock, store: MemoryStore) -> None:
    registry = ratesync.Registry()
    registry.configure_store("partner-store", store)
    registry.configure_limiter("partner", "partner-store", rate_per_second=1)
    up = Upstream(clock)
    transport = make(clock, store, up, registry=registry, hosts={"*.partner.io": {"limiter": "partner"}})
    with httpx.Client(transport=transport) as client:
        client.get("https://a.partner.io/")
        client.get("https://b.partner.io/")  # one budget for every host under the rule
    assert clock.slept == [approx(1.0)]
    # ... shared with code that acquires the same limiter.
    assert not registry.try_acquire("partner")
    assert "{partner}#0" in store.keys()


# -- per-request extensions ------------------------------------------------------------------


def test_extension_skip_sends_at_once_but_still_learns(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "30"})

    up = Upstream(clock, answer)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 0.01}})
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")
        for _ in range(3):
            client.get("https://api.example.com/", extensions={"ratesync": {"skip": True}})
    assert clock.slept == []
    assert len(up.calls) == 4
    assert transport.get_metrics().skipped == 3
    assert quota_wait(store, "{http:api.example.com}#quota") == approx(30.0)


def test_extension_names_a_limiter_instead_of_the_rules(clock: ManualClock, store: MemoryStore) -> None:
    registry = ratesync.Registry()
    registry.configure_store("s", store)
    registry.configure_limiter("slow", "s", rate_per_second=0.5)
    up = Upstream(clock)
    transport = make(clock, store, up, registry=registry, hosts={"api.example.com": {"rate_per_second": 0.001}})
    with httpx.Client(transport=transport) as client:
        for _ in range(2):
            client.get("https://api.example.com/", extensions={"ratesync": {"limiter": "slow", "key": "tenant-1"}})
        client.get("https://api.example.com/", extensions={"ratesync": {"limiter": "slow", "key": "tenant-2"}})
    # Through "slow" per key, not the host rule (which would have waited 1000 s).
    assert clock.slept == [approx(2.0)]
    assert "{slow:tenant-1}#0" in store.keys()


@pytest.mark.parametrize(
    ("control", "key"),
    [
        ({"skip": "yes"}, "ratesync.skip"),
        ({"limiter": 3}, "ratesync.limiter"),
        ({"colour": "red"}, "ratesync.colour"),
        ({"key": "k"}, "ratesync.key"),
        ({"cost": 0}, "ratesync.cost"),
        ({"timeout": -1}, "ratesync.timeout"),
        ({"retries": 1.5}, "ratesync.retries"),
        ("slow", "ratesync"),
    ],
)
def test_extension_mistakes_raise_naming_the_key(
    clock: ManualClock, store: MemoryStore, control: Any, key: str
) -> None:
    up = Upstream(clock)
    transport = make(clock, store, up)
    with httpx.Client(transport=transport) as client, pytest.raises(ratesync.ConfigurationError) as err:
        client.get("https://api.example.com/", extensions={"ratesync": control})
    assert err.value.key == key
    assert up.calls == []


def test_extension_unknown_limiter(clock: ManualClock, store: MemoryStore) -> None:
    transport = make(clock, store, Upstream(clock))
    with httpx.Client(transport=transport) as client, pytest.raises(ratesync.UnknownLimiterError):
        client.get("https://api.example.com/", extensions={"ratesync": {"limiter": "nope"}})


def test_extension_timeout_and_cost(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 1, "burst": 3}})
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/", extensions={"ratesync": {"cost": 3}})
        with pytest.raises(RateLimitTimeout):
            client.get("https://api.example.com/", extensions={"ratesync": {"timeout": 0.5}})
        client.get("https://api.example.com/", extensions={"ratesync": {"timeout": 1.0}})
    assert clock.slept == [approx(1.0)]


# -- concurrency leases ----------------------------------------------------------------------


class StreamedBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that is not in memory yet, as a real transport returns it (MockTransport's are pre-read)."""

    def __init__(self, data: bytes = b"x" * 1000) -> None:
        self.data = data
        self.closed = False

    def __iter__(self) -> Any:
        yield self.data

    async def __aiter__(self) -> Any:
        yield self.data

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def test_lease_held_until_streamed_response_is_closed(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, lambda request, n: httpx.Response(200, stream=StreamedBody()))
    transport = make(clock, store, up, hosts={"api.example.com": {"max_concurrent": 1}}, timeout=0)
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", "https://api.example.com/big") as response:
            assert transport.get_metrics().leases_held == 1
            transport.reset_metrics()  # counters start over; what is held is still held
            assert transport.get_metrics().leases_held == 1
            with pytest.raises(RateLimitTimeout):
                client.get("https://api.example.com/other")
            assert b"".join(response.iter_bytes()) == b"x" * 1000
        assert transport.get_metrics().leases_held == 0
        # Plain (non-streamed) requests release as soon as the body is read.
        for _ in range(3):
            assert client.get("https://api.example.com/").status_code == 200
        # A body already read by the inner transport holds nothing.
        up.answer = lambda request, n: httpx.Response(200, content=b"in memory")
        with client.stream("GET", "https://api.example.com/") as response:
            assert transport.get_metrics().leases_held == 0
    assert len(up.calls) == 5
    assert transport.get_metrics().leases_held == 0


async def test_lease_released_on_async_close(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, lambda request, n: httpx.Response(200, stream=StreamedBody()))
    transport = make(clock, store, up, hosts={"api.example.com": {"max_concurrent": 1}}, timeout=0)
    async with httpx.AsyncClient(transport=transport) as client:
        request = client.build_request("GET", "https://api.example.com/")
        response = await client.send(request, stream=True)
        with pytest.raises(RateLimitTimeout):
            await client.get("https://api.example.com/")
        await response.aclose()
        assert (await client.get("https://api.example.com/")).status_code == 200
    assert transport.get_metrics().leases_held == 0


def test_lease_released_when_sending_fails(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    up = Upstream(clock, answer)
    transport = make(clock, store, up, hosts={"api.example.com": {"max_concurrent": 1}}, timeout=0)
    with httpx.Client(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            client.get("https://api.example.com/")
        assert client.get("https://api.example.com/").status_code == 200
    assert transport.get_metrics().leases_held == 0


async def test_lease_waiters_wake_on_release(store: MemoryStore) -> None:
    # Real time: three requests share one slot; each holds it 20 ms.
    active = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200, stream=StreamedBody())

    transport = RateLimitedTransport(
        httpx.MockTransport(handler),
        registry=ratesync.Registry(),
        store=MemoryStore(),
        hosts={"api.example.com": {"max_concurrent": 1}},
        timeout=5,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        responses = await asyncio.gather(*(client.get("https://api.example.com/") for _ in range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert peak == 1
    assert transport.get_metrics().waits >= 1


# -- learning --------------------------------------------------------------------------------


def test_remaining_zero_makes_everyone_wait_for_the_reset(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(
            200, headers={"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "7.5"}
        )

    up = Upstream(clock, answer)
    first = make(clock, store, up)
    second = make(clock, store, up)  # another client on the same store (another process, for a shared store)
    with httpx.Client(transport=first) as a, httpx.Client(transport=second) as b:
        a.get("https://api.example.com/")
        assert quota_wait(store, "{http:api.example.com}#quota") == approx(7.5)
        b.get("https://api.example.com/x")
    assert clock.slept == [approx(7.5)]
    assert first.get_metrics().learned == 1


def test_hostile_reset_is_capped(clock: ManualClock, store: MemoryStore) -> None:
    ten_years = str(int(__import__("time").time()) + 10 * 365 * 86400)

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": ten_years})

    up = Upstream(clock, answer)
    transport = make(clock, store, up, max_cooldown=60)
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")
        client.get("https://api.example.com/")
    assert clock.slept == [approx(60.0)]


def test_malformed_headers_are_ignored_and_logged(
    clock: ManualClock, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(
            200, headers={"X-RateLimit-Remaining": "zero", "X-RateLimit-Reset": "soon", "Retry-After": "\x00"}
        )

    up = Upstream(clock, answer)
    transport = make(clock, store, up)
    caplog.set_level(logging.DEBUG, logger="ratesync_http")
    with httpx.Client(transport=transport) as client:
        for _ in range(3):
            assert client.get("https://api.example.com/").status_code == 200
    assert clock.slept == []
    assert any("x-ratelimit-remaining" in r.getMessage().lower() for r in caplog.records)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "ratesync_http")


def fixed_window_upstream(clock: ManualClock, limit: int, window: float) -> Upstream:
    counts: dict[float, int] = {}

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        start = math.floor(clock.now / window) * window
        used = counts[start] = counts.get(start, 0) + 1
        reset = start + window - clock.now
        headers = {
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(max(0, limit - used)),
            "RateLimit-Reset": f"{reset:.3f}",
            "RateLimit-Policy": f"{limit};w={window:g}",
        }
        return httpx.Response(200 if used <= limit else 429, headers=headers)

    return Upstream(clock, answer)


def max_per_window(times: list[float], window: float) -> int:
    counts: dict[float, int] = {}
    for t in times:
        start = math.floor(t / window + 1e-9) * window
        counts[start] = counts.get(start, 0) + 1
    return max(counts.values())


def test_advertised_lower_limit_tightens(clock: ManualClock, store: MemoryStore) -> None:
    up = fixed_window_upstream(clock, limit=5, window=1.0)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 100, "burst": 10}})
    with httpx.Client(transport=transport) as client:
        statuses = [client.get("https://api.example.com/").status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert max_per_window([t for t, _, _ in up.calls], 1.0) <= 5
    assert up.calls[-1][0] - up.calls[0][0] >= 3.0


def test_advertised_higher_limit_never_loosens(clock: ManualClock, store: MemoryStore) -> None:
    up = fixed_window_upstream(clock, limit=1000, window=1.0)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 2}})
    with httpx.Client(transport=transport) as client:
        for _ in range(5):
            client.get("https://api.example.com/")
    times = [t for t, _, _ in up.calls]
    assert [b - a for a, b in itertools.pairwise(times)] == approx([0.5] * 4)


def test_learning_can_be_switched_off(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "30"})

    up = Upstream(clock, answer)
    transport = make(clock, store, up, learn=False)
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")
        client.get("https://api.example.com/")
    assert clock.slept == []
    assert store.keys() == []
    # ... or per request.
    on = make(clock, store, up)
    with httpx.Client(transport=on) as client:
        client.get("https://api.example.com/", extensions={"ratesync": {"learn": False}})
    assert store.keys() == []


def test_endpoint_quota_is_learned_separately(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.startswith("/search"):
            return httpx.Response(429, headers={"Retry-After": "20"})
        return httpx.Response(200)

    up = Upstream(clock, answer)
    transport = make(
        clock,
        store,
        up,
        endpoints=[{"host": "api.github.com", "route": "GET /search/{kind}", "rate_per_second": 10}],
        retries=0,
    )
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.github.com/search/code").status_code == 429
        assert quota_wait(store, "{http:api.github.com}#GET /search/{kind}:quota") == approx(20.0)
        assert quota_wait(store, "{http:api.github.com}#quota") == 0.0
        client.get("https://api.github.com/user")  # the host's quota is not the endpoint's
        assert clock.slept == []
        client.get("https://api.github.com/search/issues")
    assert clock.slept == [approx(20.0)]


# -- retries ---------------------------------------------------------------------------------


def script(*responses: httpx.Response) -> Callable[[httpx.Request, int], httpx.Response]:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return responses[min(n, len(responses)) - 1]

    return answer


def test_429_is_retried_after_the_cooldown(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "2"}), httpx.Response(200)))
    transport = make(clock, store, up)
    with httpx.Client(transport=transport) as client:
        response = client.get("https://api.example.com/")
    assert response.status_code == 200
    assert [t for t, _, _ in up.calls] == [1000.0, approx(1002.0)]
    m = transport.get_metrics()
    assert (m.retries, m.responses_429, m.sent, m.requests) == (1, 1, 2, 1)


async def test_async_429_is_retried_after_the_cooldown(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(200)))
    transport = make(clock, store, up)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("https://api.example.com/")
    assert response.status_code == 200
    assert clock.slept == [approx(3.0)]


def test_503_without_retry_after_backs_off_locally(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(503), httpx.Response(503), httpx.Response(200)))
    transport = make(clock, store, up, backoff=0.5)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.example.com/").status_code == 200
    assert clock.slept == [approx(0.5), approx(1.0)]
    assert store.keys() == []  # nothing shared: a 503 without Retry-After says nothing of a quota


def test_post_is_not_retried_unless_idempotency_key(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(201)))
    transport = make(clock, store, up)
    with httpx.Client(transport=transport) as client:
        assert client.post("https://api.example.com/", content=b"{}").status_code == 429
        assert len(up.calls) == 1
        up.calls.clear()
        up.answer = script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(201))
        response = client.post("https://api.example.com/", content=b"{}", headers={"Idempotency-Key": "abc"})
    assert response.status_code == 201
    assert len(up.calls) == 2


def test_streamed_request_body_is_not_retried(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200)))
    transport = make(clock, store, up)

    def body() -> Any:
        yield b"part"

    with httpx.Client(transport=transport) as client:
        assert client.put("https://api.example.com/", content=body()).status_code == 429
    assert len(up.calls) == 1


def test_retries_are_bounded_and_last_response_returned(clock: ManualClock, store: MemoryStore) -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "1", "X-Attempt": str(n)}, content=b"slow down")

    up = Upstream(clock, answer)
    transport = make(clock, store, up, retries=3)
    with httpx.Client(transport=transport) as client:
        response = client.get("https://api.example.com/")
    assert response.status_code == 429
    assert response.headers["X-Attempt"] == "4"
    assert response.content == b"slow down"
    assert len(up.calls) == 4


def test_retries_switched_off(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(200)))
    transport = make(clock, store, up, retries=0)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.example.com/").status_code == 429
        assert client.get("https://api.example.com/", extensions={"ratesync": {"retries": 1}}).status_code == 200


def test_429_without_hint_sets_a_short_shared_cooldown(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429), httpx.Response(200)))
    transport = make(clock, store, up, backoff=2.0)
    with httpx.Client(transport=transport) as client:
        assert client.get("https://api.example.com/").status_code == 200
    assert clock.slept == [approx(2.0)]


def test_previous_response_is_closed_before_retrying(clock: ManualClock, store: MemoryStore) -> None:
    closed: list[int] = []

    class Body(httpx.SyncByteStream):
        def __init__(self, n: int) -> None:
            self.n = n

        def __iter__(self) -> Any:
            yield b"x"

        def close(self) -> None:
            closed.append(self.n)

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        status = 429 if n < 3 else 200
        return httpx.Response(status, headers={"Retry-After": "1"}, stream=Body(n))

    up = Upstream(clock, answer)
    transport = make(clock, store, up)
    with httpx.Client(transport=transport) as client:
        with client.stream("GET", "https://api.example.com/") as response:
            assert response.status_code == 200
            assert closed == [1, 2]
    assert closed == [1, 2, 3]


# -- timeouts --------------------------------------------------------------------------------


def test_wait_longer_than_timeout_raises_before_sending(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock, script(httpx.Response(429, headers={"Retry-After": "100"}), httpx.Response(200)))
    transport = make(clock, store, up, timeout=5)
    with httpx.Client(transport=transport) as client:
        # Retry-After beyond the timeout: no retry, the 429 comes back as it came.
        assert client.get("https://api.example.com/").status_code == 429
        with pytest.raises(RateLimitTimeout) as err:
            client.get("https://api.example.com/")
    assert len(up.calls) == 1
    assert err.value.retry_after == approx(100.0)
    assert clock.slept == []


def test_rule_timeout(clock: ManualClock, store: MemoryStore) -> None:
    up = Upstream(clock)
    transport = make(clock, store, up, hosts={"api.example.com": {"rate_per_second": 0.1, "timeout": 1}})
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")
        with pytest.raises(RateLimitTimeout):
            client.get("https://api.example.com/")


# -- the probe gate --------------------------------------------------------------------------


async def test_first_request_to_an_unknown_host_goes_alone() -> None:
    events: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        events.append("start")
        await asyncio.sleep(0.02)
        events.append("end")
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "50", "X-RateLimit-Reset-After": "10"})

    transport = RateLimitedTransport(httpx.MockTransport(handler), registry=ratesync.Registry(), store=MemoryStore())
    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(client.get("https://api.example.com/") for _ in range(5)))
    assert events[:2] == ["start", "end"]
    assert events.count("start") == 5
    # The others then ran together.
    assert events[2:4] == ["start", "start"]


# -- lifecycle -------------------------------------------------------------------------------


class Closing(httpx.MockTransport):
    def __init__(self) -> None:
        super().__init__(lambda request: httpx.Response(200))
        self.closed = 0
        self.aclosed = 0

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.aclosed += 1


def use_sync(transport: RateLimitedTransport) -> None:
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")


async def test_close_and_aclose_are_passed_on() -> None:
    inner = Closing()
    transport = RateLimitedTransport(inner, registry=ratesync.Registry(), store=MemoryStore())
    use_sync(transport)
    assert (inner.closed, inner.aclosed) == (1, 0)
    async with httpx.AsyncClient(transport=transport) as aclient:
        await aclient.get("https://api.example.com/")
    assert (inner.closed, inner.aclosed) == (1, 1)


async def test_sync_only_inner_transport_refuses_async_use() -> None:
    inner = httpx.HTTPTransport()
    transport = RateLimitedTransport(inner, registry=ratesync.Registry(), store=MemoryStore())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(TypeError, match="not an async transport"):
            await client.get("http://127.0.0.1:9/")
    inner.close()


def test_default_inner_transport_is_created_and_closed() -> None:
    transport = RateLimitedTransport(registry=ratesync.Registry(), store=MemoryStore())
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError):
        client.get("http://127.0.0.1:9/")
    assert transport._sync is not None
