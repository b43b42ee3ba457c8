"""``RateLimitedAdapter`` and ``RateLimitedSession``: rate limits for ``requests``."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from ratesync import MissingDependencyError, Registry, Store

try:
    import requests
    from requests.adapters import BaseAdapter, HTTPAdapter
    from requests.structures import CaseInsensitiveDict
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("requests", "requests", "ratesync_http.RateLimitedAdapter") from None

from ._config import EndpointRule, HttpConfig, HttpRule
from ._headers import RateLimitLines, rate_limit_lines, rate_limit_lines_lower
from ._policy import NO_CONTROL, HttpMetrics, HttpPolicy, make_policy, parse_control
from ._runtime import Permit, acquire, learn, wait_gate_sync

__all__ = ["RateLimitedAdapter", "RateLimitedSession"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

#: Per-request control set by ``RateLimitedSession.request(..., ratesync={...})``.
_CONTROL: contextvars.ContextVar[Any] = contextvars.ContextVar("ratesync_http_control", default=None)


_AUTHORITY_CACHE: dict[str, tuple[str, str]] = {}
_AUTHORITY_CACHE_SIZE = 4096


def _authority_and_path(url: str) -> tuple[str, str]:
    # Most programs ask the same few URLs again and again: split each once (bounded).
    hit = _AUTHORITY_CACHE.get(url)
    if hit is None:
        if len(_AUTHORITY_CACHE) >= _AUTHORITY_CACHE_SIZE:
            _AUTHORITY_CACHE.clear()
        hit = _AUTHORITY_CACHE[url] = _split(url)
    return hit


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    return host, parts.path or "/"


def _lines(headers: Any) -> RateLimitLines:
    """The rate-limit lines of a response, from the names requests has already lower-cased."""
    if type(headers) is CaseInsensitiveDict:
        lines = rate_limit_lines_lower(headers.lower_items())
        if lines is not None:
            return lines
    return rate_limit_lines(headers)


class _LeasedRaw:
    """Wraps ``response.raw``: the request's concurrency leases are given back when the body has been
    read to the end, or the response is closed, whichever comes first. Everything else is passed on."""

    def __init__(self, raw: Any, permit: Permit) -> None:
        self.__dict__["_raw"] = raw
        self.__dict__["_permit"] = permit

    def __getattr__(self, name: str) -> Any:
        raw = self.__dict__["_raw"]
        value = getattr(raw, name)
        if name == "stream" and callable(value):
            permit: Permit = self.__dict__["_permit"]

            def stream(*args: Any, **kwargs: Any) -> Iterator[bytes]:
                try:
                    yield from value(*args, **kwargs)
                finally:
                    permit.release()

            return stream
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_raw"], name, value)

    def read(self, *args: Any, **kwargs: Any) -> Any:
        data = self.__dict__["_raw"].read(*args, **kwargs)
        if not data:
            self.__dict__["_permit"].release()
        return data

    def close(self) -> None:
        try:
            self.__dict__["_raw"].close()
        finally:
            self.__dict__["_permit"].release()

    def release_conn(self) -> None:
        try:
            release = getattr(self.__dict__["_raw"], "release_conn", None)
            if release is not None:
                release()
        finally:
            self.__dict__["_permit"].release()


class RateLimitedAdapter(HTTPAdapter):
    """A requests transport adapter that keeps requests inside rate limits.

    ::

        session = requests.Session()
        session.mount("https://", RateLimitedAdapter())
        session.mount("http://", RateLimitedAdapter())

    It sends through ``adapter`` when given (any ``requests`` adapter), else through itself as a
    plain :class:`requests.adapters.HTTPAdapter` (``pool_connections``, ``pool_maxsize``,
    ``max_retries``, ``pool_block`` are passed on). Every ``send()`` argument (``stream``,
    ``timeout``, ``verify``, ``cert``, ``proxies``) is forwarded unchanged. The rules and settings
    are those of :class:`~ratesync_http.RateLimitedTransport`.
    """

    def __init__(
        self,
        adapter: BaseAdapter | None = None,
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
        policy: HttpPolicy | None = None,
        **adapter_options: Any,
    ) -> None:
        super().__init__(**adapter_options)
        self.policy: HttpPolicy = policy or make_policy(
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
        self._inner = adapter
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"<RateLimitedAdapter {self.policy!r}>"

    def __getstate__(self) -> dict[str, Any]:  # pragma: no cover - requests pickles adapters; ours hold stores
        raise TypeError("RateLimitedAdapter cannot be pickled (it holds a store connection)")

    def get_metrics(self) -> HttpMetrics:
        """Counters since creation: requests, waits, retries, 429s, what was learned."""
        return self.policy.metrics()

    def reset_metrics(self) -> None:
        self.policy.reset_metrics()

    def close(self) -> None:
        """Close the connection pools (and the wrapped adapter, if any)."""
        try:
            if self._inner is not None:
                self._inner.close()
        finally:
            super().close()

    def _send_once(
        self,
        request: requests.PreparedRequest,
        stream: bool,
        timeout: Any,
        verify: Any,
        cert: Any,
        proxies: Any,
    ) -> requests.Response:
        if self._inner is not None:
            return self._inner.send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Wait for a permit, send, learn from the response, retry a 429/503 when allowed."""
        policy = self.policy
        policy.requests += 1
        raw_control = _CONTROL.get()
        method = (request.method or "GET").upper()
        authority, path = _authority_and_path(request.url or "")
        if raw_control is None:
            control = NO_CONTROL
            plan = policy.cached_plan(method, authority) or policy.plan(method, authority, path)
        else:
            control = parse_control(raw_control)
            plan = policy.plan(method, authority, path, control)
        if plan.passthrough:
            policy.sent += 1
            return self._send_once(request, stream, timeout, verify, cert, proxies)
        if control.skip:
            policy.skipped += 1
        body = request.body
        replayable = body is None or isinstance(body, bytes | str)
        retries = -1  # worked out at the first response worth sending again
        attempt = 0
        while True:
            probing = False if control.skip else wait_gate_sync(policy, plan)
            try:
                permit = acquire(policy, plan, control.cost, self._sleep)
                try:
                    response = self._send_once(request, stream, timeout, verify, cert, proxies)
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
                retries = policy.retries_for(method, "Idempotency-Key" in request.headers, replayable, control)
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
                if response.raw is None:
                    permit.release()
                else:
                    response.raw = _LeasedRaw(response.raw, permit)
            return response


class RateLimitedSession(requests.Session):
    """A ``requests.Session`` with a :class:`RateLimitedAdapter` mounted for ``http://`` and ``https://``.

    Takes the adapter's arguments. Per request, ``session.get(url, ratesync={"limiter": "name"})``
    (the same keys as httpx's ``extensions={"ratesync": ...}``).
    """

    def __init__(self, adapter: BaseAdapter | None = None, **options: Any) -> None:
        super().__init__()
        self.adapter = RateLimitedAdapter(adapter, **options)
        self.mount("https://", self.adapter)
        self.mount("http://", self.adapter)

    def get_metrics(self) -> HttpMetrics:
        return self.adapter.get_metrics()

    def request(self, *args: Any, ratesync: Mapping[str, Any] | None = None, **kwargs: Any) -> requests.Response:
        """As :meth:`requests.Session.request`, plus ``ratesync=`` per-request control."""
        if ratesync is None:
            return super().request(*args, **kwargs)
        parse_control(ratesync)  # fail here, before anything is sent
        token = _CONTROL.set(ratesync)
        try:
            return super().request(*args, **kwargs)
        finally:
            _CONTROL.reset(token)
