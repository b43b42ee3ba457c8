"""RateLimitedAdapter / RateLimitedSession with a mock requests adapter (urllib3 responses, fake clock)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import BaseAdapter
from rs_testing import ManualClock

import ratesync
from ratesync import MemoryStore, RateLimitTimeout
from ratesync_http import RateLimitedAdapter, RateLimitedSession

pytestmark = pytest.mark.http


def approx(value: Any) -> Any:
    return pytest.approx(value, abs=0.01)


Answer = Callable[[requests.PreparedRequest, int], tuple[int, dict[str, str], bytes]]


class MockAdapter(BaseAdapter):
    """Answers from a script with real urllib3 responses (unread until requests reads them)."""

    def __init__(self, clock: ManualClock, answer: Answer | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.answer: Answer = answer or (lambda request, n: (200, {}, b"ok"))
        self.calls: list[tuple[float, str, str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.closed = False

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        self.calls.append((self.clock.now, request.method or "", request.url or ""))
        self.kwargs.append({"stream": stream, "timeout": timeout, "verify": verify, "cert": cert, "proxies": proxies})
        status, headers, body = self.answer(request, len(self.calls))
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(body), headers=headers, status=status, preload_content=False, decode_content=False
        )
        response = requests.Response()
        response.status_code = status
        response.headers = requests.structures.CaseInsensitiveDict(headers)
        response.raw = raw
        response.url = request.url or ""
        response.request = request
        response.reason = "OK" if status < 400 else "Error"
        return response

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1000.0)


def session(clock: ManualClock, mock: MockAdapter, registry: ratesync.Registry | None = None, **options: Any) -> Any:
    return RateLimitedSession(
        mock, registry=registry or ratesync.Registry(), store=MemoryStore(clock=clock), sleep=clock.sleep, **options
    )


def test_send_arguments_are_forwarded(clock: ManualClock) -> None:
    mock = MockAdapter(clock)
    with session(clock, mock) as s:
        s.get("https://api.example.com/", timeout=(1, 2), verify="/ca.pem", cert="/c.pem", stream=True)
        s.get("https://api.example.com/", proxies={"https": "http://proxy:1"})
    assert mock.kwargs[0] == {"stream": True, "timeout": (1, 2), "verify": "/ca.pem", "cert": "/c.pem", "proxies": {}}
    assert mock.kwargs[1]["proxies"] == {"https": "http://proxy:1"}
    assert mock.closed


def test_host_rule_spaces_requests(clock: ManualClock) -> None:
    mock = MockAdapter(clock)
    with session(clock, mock, hosts={"api.example.com": {"rate_per_second": 4}}) as s:
        for _ in range(3):
            assert s.get("https://api.example.com:443/a").text == "ok"
        s.get("http://api.example.com:8080/")  # another authority: not under the rule
    assert [t for t, _, _ in mock.calls] == [1000.0, approx(1000.25), approx(1000.5), approx(1000.5)]
    assert s.get_metrics().waits == 2


def test_lease_held_until_body_read_or_closed(clock: ManualClock) -> None:
    mock = MockAdapter(clock, lambda request, n: (200, {}, b"x" * 5000))
    with session(clock, mock, hosts={"api.example.com": {"max_concurrent": 1}}, timeout=0) as s:
        streamed = s.get("https://api.example.com/", stream=True)
        assert s.get_metrics().leases_held == 1
        with pytest.raises(RateLimitTimeout):
            s.get("https://api.example.com/")
        assert len(b"".join(streamed.iter_content(1000))) == 5000
        assert s.get_metrics().leases_held == 0
        # Closed without reading.
        streamed = s.get("https://api.example.com/", stream=True)
        streamed.close()
        assert s.get_metrics().leases_held == 0
        # Not streamed: requests reads the body, which gives the lease back.
        for _ in range(3):
            assert len(s.get("https://api.example.com/").content) == 5000
        assert s.get_metrics().leases_held == 0
        # raw.read() to the end also releases.
        streamed = s.get("https://api.example.com/", stream=True)
        while streamed.raw.read(4096):
            pass
        assert s.get_metrics().leases_held == 0


def test_retry_after_429_for_idempotent_requests(clock: ManualClock) -> None:
    seen: set[str] = set()

    def answer(request: requests.PreparedRequest, n: int) -> tuple[int, dict[str, str], bytes]:
        # Each URL is refused the first time it is seen.
        first = request.url not in seen
        seen.add(request.url or "")
        return (429, {"Retry-After": "2"}, b"slow down") if first else (200, {}, b"ok")

    mock = MockAdapter(clock, answer)
    with session(clock, mock) as s:
        assert s.get("https://api.example.com/get").status_code == 200
        assert clock.slept == [approx(2.0)]
        assert s.post("https://api.example.com/post", data=b"x").status_code == 429
        key = {"Idempotency-Key": "k"}
        assert s.post("https://api.example.com/post-key", data=b"x", headers=key).status_code == 200
        assert s.put("https://api.example.com/put-stream", data=iter([b"a"])).status_code == 429
        assert s.put("https://api.example.com/put", data=b"a").status_code == 200
    assert s.get_metrics().retries == 3
    assert [url.rsplit("/", 1)[1] for _, _, url in mock.calls] == [
        "get",
        "get",
        "post",
        "post-key",
        "post-key",
        "put-stream",
        "put",
        "put",
    ]


def test_retries_bounded_last_response_readable(clock: ManualClock) -> None:
    mock = MockAdapter(clock, lambda request, n: (503, {"Retry-After": "1", "X-N": str(n)}, b"busy"))
    with session(clock, mock, retries=2) as s:
        response = s.get("https://api.example.com/")
    assert response.status_code == 503
    assert response.headers["X-N"] == "3"
    assert response.text == "busy"


def test_timeout_raises_before_sending(clock: ManualClock) -> None:
    mock = MockAdapter(clock, lambda request, n: (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "60"}, b""))
    with session(clock, mock, timeout=10) as s:
        s.get("https://api.example.com/")
        with pytest.raises(RateLimitTimeout) as err:
            s.get("https://api.example.com/")
    assert len(mock.calls) == 1
    assert err.value.retry_after == approx(60.0)


def test_per_request_control_on_the_session(clock: ManualClock) -> None:
    registry = ratesync.Registry()
    registry.configure_limiter("slow", rate_per_second=0.5)
    mock = MockAdapter(clock)
    with session(clock, mock, registry=registry, hosts={"api.example.com": {"rate_per_second": 0.001}}) as s:
        s.get("https://api.example.com/")
        s.get("https://api.example.com/", ratesync={"skip": True})
        assert clock.slept == []
        with pytest.raises(ratesync.ConfigurationError):
            s.get("https://api.example.com/", ratesync={"skipp": True})
        assert len(mock.calls) == 2
        assert s.get_metrics().skipped == 1


def test_adapter_mounted_on_a_plain_session(clock: ManualClock) -> None:
    mock = MockAdapter(clock)
    adapter = RateLimitedAdapter(
        mock,
        registry=ratesync.Registry(),
        store=MemoryStore(clock=clock),
        sleep=clock.sleep,
        hosts={"api.example.com": {"rate_per_second": 1}},
    )
    with requests.Session() as s:
        s.mount("https://", adapter)
        s.get("https://api.example.com/")
        s.get("https://api.example.com/")
    assert clock.slept == [approx(1.0)]
    assert mock.closed
