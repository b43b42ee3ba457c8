"""What one request costs the store, and the caches that keep the rest cheap.

A request is one store call to be admitted (every limit of its host's hash tag, the learned quota
included) and, when its response is read and teaches something, one more to learn it; a response
without rate-limit headers costs nothing more. Plans are cached per route shape, not per URL.
These tests read every response (``learn_interval=0``); test_http_read_less.py covers the
responses that go unread while a quota is far from exhausted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import requests

import ratesync
from ratesync import MemoryStore, Observation, Quota
from ratesync_http import RateLimitedAdapter, RateLimitedTransport, parse_rate_limit_headers
from ratesync_http._headers import rate_limit_lines
from ratesync_http._policy import Control
from ratesync_http._runtime import NO_PERMIT
from ratesync_http.testing import HeaderStyle, LocalUpstream

pytestmark = pytest.mark.http

HEADERS = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "4000", "X-RateLimit-Reset-After": "60"}
RULE = {"api.example.com": {"rate_per_second": 1000, "burst": 100}}


class CountingStore(MemoryStore):
    """A memory store that records the calls made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def acquire(self, slots: Sequence[tuple[str, Any]], cost: int = 1, max_wait: float = 0.0) -> ratesync.Decision:
        self.calls.append("acquire")
        return super().acquire(slots, cost, max_wait)

    def observe(self, key: str, spec: Quota, obs: Observation) -> None:
        self.calls.append("observe")
        super().observe(key, spec, obs)

    def lease_acquire(self, key: str, limit: int, lease_seconds: float, lease_id: str) -> Any:
        self.calls.append("lease_acquire")
        return super().lease_acquire(key, limit, lease_seconds, lease_id)


def transport_with(store: CountingStore, headers: dict[str, str], **options: Any) -> RateLimitedTransport:
    mock = httpx.MockTransport(lambda request: httpx.Response(200, headers=headers, content=b"ok"))
    options.setdefault("hosts", RULE)
    return RateLimitedTransport(mock, registry=ratesync.Registry(), store=store, **options)


@pytest.mark.parametrize(("headers", "per_request"), [(HEADERS, ["acquire", "observe"]), ({}, ["acquire"])])
def test_store_calls_per_request(headers: dict[str, str], per_request: list[str]) -> None:
    store = CountingStore()
    transport = transport_with(store, headers, learn_interval=0)
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/first")
        store.calls.clear()
        for i in range(5):
            assert client.get(f"https://api.example.com/items/{i}").status_code == 200
    assert store.calls == per_request * 5
    assert transport.get_metrics().learned == (6 if headers else 0)


async def test_async_store_calls_per_request() -> None:
    store = CountingStore()
    transport = transport_with(store, HEADERS, learn_interval=0)
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            await client.get("https://api.example.com/")
    assert store.calls == ["acquire", "observe"] * 3


def test_adapter_store_calls_per_request() -> None:
    store = CountingStore()

    class Canned(requests.adapters.BaseAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
            response = requests.Response()
            response.status_code = 200
            response.headers.update(HEADERS)
            response.request = request
            return response

        def close(self) -> None:
            pass

    with requests.Session() as session:
        session.mount(
            "https://",
            RateLimitedAdapter(Canned(), registry=ratesync.Registry(), store=store, hosts=RULE, learn_interval=0),
        )
        for _ in range(3):
            assert session.get("https://api.example.com/").status_code == 200
    assert store.calls == ["acquire", "observe"] * 3


def test_requests_without_a_lease_share_one_released_permit() -> None:
    assert not NO_PERMIT.holds_lease
    NO_PERMIT.release()  # a no-op, however often
    assert not NO_PERMIT.holds_lease
    store = CountingStore()
    transport = transport_with(store, {}, hosts={"api.example.com": {"max_concurrent": 2}})
    with httpx.Client(transport=transport) as client:
        client.get("https://api.example.com/")
    assert store.calls.count("lease_acquire") == 1
    assert transport.get_metrics().leases_held == 0


def test_plans_are_cached_per_route_shape_not_per_url() -> None:
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)),
        registry=ratesync.Registry(),
        store=MemoryStore(),
        hosts={"api.github.com": {"rate_per_second": 100}},
        endpoints=[{"host": "api.github.com", "route": "GET /repos/{owner}/{repo}/issues", "rate_per_second": 10}],
    )
    policy = transport.policy
    issues = {id(policy.plan("GET", "api.github.com", f"/repos/o{i}/r{i}/issues")) for i in range(50)}
    others = {id(policy.plan("GET", "api.github.com", f"/users/u{i}")) for i in range(50)}
    assert len(issues) == 1
    assert len(others) == 1
    assert issues != others
    assert len(policy._plans) == 2
    # The host has endpoint rules for GET: its path always matters, so nothing is cached by host alone.
    assert policy.cached_plan("GET", "api.github.com") is None
    # ... but for POST it does not.
    post = policy.plan("POST", "api.github.com", "/repos/o/r/issues")
    assert policy.cached_plan("POST", "api.github.com") is post
    # Per-request control builds its own plan, never cached.
    controlled = policy.plan("GET", "api.github.com", "/repos/o/r/issues", Control(cost=2))
    assert controlled is not policy.plan("GET", "api.github.com", "/repos/o/r/issues", Control(cost=2))
    assert len(policy._plans) == 3


def test_plan_cache_is_bounded() -> None:
    transport = RateLimitedTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)),
        registry=ratesync.Registry(),
        store=MemoryStore(),
        default={"rate_per_second": 100},
    )
    policy = transport.policy
    for i in range(5000):
        policy.plan("GET", f"h{i}.example.com", "/")
    assert 0 < len(policy._plans) <= 4096


@pytest.mark.parametrize(
    ("style", "source", "window"),
    [
        ("ietf", "ietf", 60.0),
        ("x-ratelimit", "x-ratelimit", None),
        ("github", "x-ratelimit", None),
        ("ietf-structured", "ietf-structured", 60.0),
    ],
)
def test_local_upstream_header_styles_are_read(style: HeaderStyle, source: str, window: float | None) -> None:
    with LocalUpstream(limit=100, window=60.0, headers=style) as upstream, httpx.Client() as client:
        client.get(upstream.url)
        response = client.get(upstream.url)
    info = parse_rate_limit_headers(response.headers, status=response.status_code)
    assert (info.source, info.limit, info.remaining, info.window) == (source, 100, 98, window)
    assert info.reset_after is not None and 0 < info.reset_after <= 61


def test_local_upstream_without_headers() -> None:
    with LocalUpstream(limit=100, headers="none") as upstream, httpx.Client() as client:
        response = client.get(upstream.url)
    assert rate_limit_lines(response.headers) == {}


def test_requests_urls_are_split_once_and_the_cache_is_bounded() -> None:
    from ratesync_http import _requests

    assert _requests._authority_and_path("https://API.example.com:443/a?b=1") == ("api.example.com", "/a")
    assert _requests._authority_and_path("http://127.0.0.1:8080") == ("127.0.0.1:8080", "/")
    url = "http://[::1]:9000/x"
    assert _requests._authority_and_path(url) is _requests._authority_and_path(url)  # cached
    for i in range(5000):
        _requests._authority_and_path(f"https://h{i}.example.com/")
    assert 0 < len(_requests._AUTHORITY_CACHE) <= 4096
