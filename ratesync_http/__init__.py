"""rate-sync for HTTP clients: keep outbound requests inside the limits of the APIs they call.

::

    import httpx
    from ratesync_http import RateLimitedTransport

    client = httpx.Client(transport=RateLimitedTransport())        # rules from rate-sync.toml
    aclient = httpx.AsyncClient(transport=RateLimitedTransport())  # the same class, async

    import requests
    from ratesync_http import RateLimitedAdapter, RateLimitedSession

    session = RateLimitedSession()                                 # or: session.mount("https://", RateLimitedAdapter())

Rules route requests by host (exact or glob) and by endpoint (method and path template) to limits
given inline or to limiters of ``[limiters.*]``; what upstreams say in their rate-limit headers is
learned into the store, so every process sharing the store acts on it. See docs/http.md.

``RateLimitedTransport`` needs httpx (``pip install "rate-sync[httpx]"``), ``RateLimitedAdapter``
and ``RateLimitedSession`` need requests (``pip install "rate-sync[requests]"``); each is imported
only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._config import EndpointRule, HttpConfig, HttpRule, parse_http_config
from ._headers import RateLimitInfo, parse_rate_limit_headers
from ._policy import IDEMPOTENT_METHODS, RETRY_STATUSES, Control, HttpMetrics, HttpPolicy, make_policy

if TYPE_CHECKING:
    from ._httpx import RateLimitedTransport
    from ._requests import RateLimitedAdapter, RateLimitedSession

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "Control",
    "EndpointRule",
    "HttpConfig",
    "HttpMetrics",
    "HttpPolicy",
    "HttpRule",
    "RateLimitInfo",
    "RateLimitedAdapter",
    "RateLimitedSession",
    "RateLimitedTransport",
    "make_policy",
    "parse_http_config",
    "parse_rate_limit_headers",
]

_LAZY = {
    "RateLimitedTransport": "._httpx",
    "RateLimitedAdapter": "._requests",
    "RateLimitedSession": "._requests",
}


def __getattr__(name: str) -> Any:
    # httpx and requests are optional: each shell is imported the first time it is asked for.
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ratesync_http' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
