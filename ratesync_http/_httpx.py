"""``RateLimitedTransport``: rate limits for ``httpx.Client`` and ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from ratesync import MissingDependencyError, Registry, Store

try:
    import httpx
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("httpx", "httpx", "ratesync_http.RateLimitedTransport") from None

from ._config import EndpointRule, HttpConfig, HttpRule
from ._headers import RateLimitLines, rate_limit_lines, rate_limit_lines_raw
from ._policy import EXTENSION, NO_CONTROL, Control, HttpMetrics, HttpPolicy, Plan, make_policy, parse_control
from ._runtime import Permit, aacquire, acquire, alearn, await_gate, learn, wait_gate_sync

__all__ = ["RateLimitedTransport"]


def _authority(url: httpx.URL) -> str:
    host = url.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = url.port  # None when it is the scheme's default
    return host if port is None else f"{host}:{port}"


def _lines(headers: httpx.Headers) -> RateLimitLines:
    """The rate-limit lines of a response, read from the raw bytes when they allow it (no decoding)."""
    lines = rate_limit_lines_raw(headers.raw)
    return lines if lines is not None else rate_limit_lines(headers)


def _plan(policy: HttpPolicy, request: httpx.Request) -> tuple[Plan, Control]:
    raw = request.extensions.get(EXTENSION)
    url = request.url
    method = request.method
    authority = _authority(url)
    if raw is None:
        plan = policy.cached_plan(method, authority)
        if plan is None:
            plan = policy.plan(method, authority, url.path)
        return plan, NO_CONTROL
    control = parse_control(raw)
    return policy.plan(method, authority, url.path, control), control


def _retries(policy: HttpPolicy, request: httpx.Request, replayable: bool, control: Control) -> int:
    return policy.retries_for(request.method, "idempotency-key" in request.headers, replayable, control)


class _LeasedStream(httpx.SyncByteStream):
    """The response body, unchanged; closing it gives back the request's concurrency leases."""

    def __init__(self, stream: httpx.SyncByteStream, permit: Permit) -> None:
        self._stream = stream
        self._permit = permit

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._permit.release()


class _AsyncLeasedStream(httpx.AsyncByteStream):
    """Async twin of :class:`_LeasedStream`."""

    def __init__(self, stream: httpx.AsyncByteStream, permit: Permit) -> None:
        self._stream = stream
        self._permit = permit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            await self._permit.arelease()


class RateLimitedTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An httpx transport that keeps requests inside rate limits, for ``Client`` and ``AsyncClient`` alike.

    ::

        client = httpx.Client(transport=RateLimitedTransport())
        aclient = httpx.AsyncClient(transport=RateLimitedTransport())

    ``transport`` is the transport that sends (default: an ``httpx.HTTPTransport`` or
    ``httpx.AsyncHTTPTransport`` made on first use); ``close``/``aclose`` are passed on to it.
    With no other argument the rules come from the ``[http]`` table of rate-sync.toml; ``config``
    (an ``[http]``-shaped dict or :class:`HttpConfig`) replaces it, and the keyword arguments
    replace single settings: ``hosts`` (``{"api.github.com": {"rate_per_second": 10}}``),
    ``endpoints`` (``[{"host": ..., "route": "GET /repos/{owner}/{repo}", ...}]``), ``default``,
    ``store`` (a store id or a :class:`ratesync.Store`), ``learn``, ``retries``, ``max_cooldown``,
    ``timeout``, ``backoff``, ``probe_wait``, ``learn_interval``. ``registry`` resolves limiter and
    store names (default: :data:`ratesync.default_registry`).

    Per request: ``extensions={"ratesync": {"limiter": "name"}}`` or ``{"ratesync": {"skip": True}}``
    (see docs/http.md for every key). The body is never read here; a request holding a
    concurrency lease keeps it until its response is closed.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        *,
        config: HttpConfig | Mapping[str, Any] | None = None,
        hosts: Mapping[str, HttpRule | Mapping[str, Any]] | None = None,
        endpoints: Iterable[EndpointRule | Mapping[str, Any]] | None = None,
        default: HttpRule | Mapping[str, Any] | None = None,
        store: str | Store | None = None,
        learn: bool | None = None,
        retries: int | None = None,
        max_cooldown: float | None = None,
        timeout: float | None = None,
        backoff: float | None = None,
        probe_wait: float | None = None,
        learn_interval: float | None = None,
        registry: Registry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.policy: HttpPolicy = make_policy(
            config,
            registry=registry,
            store=store,
            hosts=hosts,
            endpoints=endpoints,
            default=default,
            learn=learn,
            retries=retries,
            max_cooldown=max_cooldown,
            timeout=timeout,
            backoff=backoff,
            probe_wait=probe_wait,
            learn_interval=learn_interval,
        )
        self._given = transport
        self._sync: httpx.BaseTransport | None = transport if isinstance(transport, httpx.BaseTransport) else None
        self._async: httpx.AsyncBaseTransport | None = (
            transport if isinstance(transport, httpx.AsyncBaseTransport) else None
        )
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RateLimitedTransport {self.policy!r}>"

    def get_metrics(self) -> HttpMetrics:
        """Counters since creation: requests, waits, retries, 429s, what was learned."""
        return self.policy.metrics()

    def reset_metrics(self) -> None:
        self.policy.reset_metrics()

    # -- inner transports ------------------------------------------------------------------------

    def _sync_inner(self) -> httpx.BaseTransport:
        inner = self._sync
        if inner is not None:
            return inner
        with self._lock:  # threads sharing a Client must not each make (and leak) a transport
            inner = self._sync
            if inner is not None:
                return inner
            if self._given is not None:
                raise TypeError(
                    f"RateLimitedTransport wraps {type(self._given).__name__}, which is not a sync transport: "
                    "use it with httpx.AsyncClient, or wrap an httpx.BaseTransport for httpx.Client"
                )
            inner = self._sync = httpx.HTTPTransport()
        return inner

    def _async_inner(self) -> httpx.AsyncBaseTransport:
        inner = self._async
        if inner is not None:
            return inner
        with self._lock:
            inner = self._async
            if inner is not None:
                return inner
            if self._given is not None:
                raise TypeError(
                    f"RateLimitedTransport wraps {type(self._given).__name__}, which is not an async transport: "
                    "use it with httpx.Client, or wrap an httpx.AsyncBaseTransport for httpx.AsyncClient"
                )
            inner = self._async = httpx.AsyncHTTPTransport()
        return inner

    def close(self) -> None:
        """Close the inner sync transport (``httpx.Client.close`` calls this)."""
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close the inner async transport (``httpx.AsyncClient.aclose`` calls this)."""
        if self._async is not None:
            await self._async.aclose()

    # -- sync ------------------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        policy.requests += 1
        plan, control = _plan(policy, request)
        inner = self._sync_inner()
        if plan.passthrough:
            policy.sent += 1
            return inner.handle_request(request)
        if control.skip:
            policy.skipped += 1
        # Told before sending: a transport that reads the body replaces the stream with a ByteStream.
        replayable = isinstance(request.stream, httpx.ByteStream)
        retries = -1  # worked out at the first response worth sending again
        attempt = 0
        while True:
            probing = False if control.skip else wait_gate_sync(policy, plan)
            try:
                permit = acquire(policy, plan, control.cost, self._sleep)
                try:
                    response = inner.handle_request(request)
                except BaseException:
                    permit.release()
                    raise
                try:
                    verdict = learn(policy, plan, response.status_code, response.headers, _lines, attempt)
                except BaseException:
                    try:
                        response.close()
                    finally:
                        permit.release()
                    raise
            finally:
                if probing:
                    policy.probe_exit(plan)
            if verdict.retry and retries < 0:
                retries = _retries(policy, request, replayable, control)
            if verdict.retry and attempt < retries and (plan.timeout is None or verdict.wait <= plan.timeout):
                try:
                    response.close()
                finally:
                    permit.release()
                attempt += 1
                policy.retries += 1
                if verdict.local_wait > 0.0:
                    policy.record_wait(verdict.local_wait)
                    self._sleep(verdict.local_wait)
                continue
            if permit.holds_lease:
                if response.is_closed:  # already read to the end by the inner transport
                    permit.release()
                else:
                    stream = response.stream
                    assert isinstance(stream, httpx.SyncByteStream)
                    response.stream = _LeasedStream(stream, permit)
            return response

    # -- async -----------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy = self.policy
        policy.requests += 1
        plan, control = _plan(policy, request)
        inner = self._async_inner()
        if plan.passthrough:
            policy.sent += 1
            return await inner.handle_async_request(request)
        if control.skip:
            policy.skipped += 1
        # Told before sending: a transport that reads the body replaces the stream with a ByteStream.
        replayable = isinstance(request.stream, httpx.ByteStream)
        retries = -1  # worked out at the first response worth sending again
        attempt = 0
        while True:
            probing = False if control.skip else await await_gate(policy, plan)
            try:
                permit = await aacquire(policy, plan, control.cost, self._async_sleep)
                try:
                    response = await inner.handle_async_request(request)
                except BaseException:
                    await permit.arelease()
                    raise
                try:
                    verdict = await alearn(policy, plan, response.status_code, response.headers, _lines, attempt)
                except BaseException:
                    try:
                        await response.aclose()
                    finally:
                        await permit.arelease()
                    raise
            finally:
                if probing:
                    policy.probe_exit(plan)
            if verdict.retry and retries < 0:
                retries = _retries(policy, request, replayable, control)
            if verdict.retry and attempt < retries and (plan.timeout is None or verdict.wait <= plan.timeout):
                try:
                    await response.aclose()
                finally:
                    await permit.arelease()
                attempt += 1
                policy.retries += 1
                if verdict.local_wait > 0.0:
                    policy.record_wait(verdict.local_wait)
                    await self._async_sleep(verdict.local_wait)
                continue
            if permit.holds_lease:
                if response.is_closed:  # already read to the end by the inner transport
                    await permit.arelease()
                else:
                    stream = response.stream
                    assert isinstance(stream, httpx.AsyncByteStream)
                    response.stream = _AsyncLeasedStream(stream, permit)
            return response
