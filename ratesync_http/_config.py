"""The ``[http]`` table of rate-sync.toml (or the same shape in code), validated strictly.

Every mistake raises :class:`ratesync.ConfigurationError` naming the file, the table and the key,
as the core does for ``[stores]`` and ``[limiters]``: an unknown key is an error, never ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ratesync import ConfigurationError, FixedWindow, SlidingWindow, Spec, TokenBucket
from ratesync._config import LIMIT_KEYS, limiter_config
from ratesync._convert import as_bool, as_float, as_int, as_str

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_MAX_COOLDOWN",
    "DEFAULT_PROBE_WAIT",
    "DEFAULT_RETRIES",
    "EndpointRule",
    "HttpConfig",
    "HttpRule",
    "parse_http_config",
    "parse_rule",
]

DEFAULT_MAX_COOLDOWN = 3600.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 1.0
DEFAULT_PROBE_WAIT = 2.0
DEFAULT_LEARN_INTERVAL = 0.05
DEFAULT_LEASE_SECONDS = 60.0

#: Keys of ``[http]`` itself.
SETTINGS_KEYS = frozenset(
    {
        "store",
        "learn",
        "learn_interval",
        "max_cooldown",
        "retries",
        "timeout",
        "backoff",
        "probe_wait",
        "default",
        "hosts",
        "endpoints",
    }
)
#: Keys a rule may carry besides its limits.
RULE_KEYS = LIMIT_KEYS | frozenset({"limits", "limiter", "key", "max_concurrent", "lease_seconds", "timeout", "learn"})
_INLINE_EXTRA = frozenset({"limits", "max_concurrent", "lease_seconds"})
ENDPOINT_KEYS = RULE_KEYS | frozenset({"host", "route"})

_HOST_PATTERN = re.compile(r"[a-z0-9*?.\-_\[\]:]+")
_METHOD = re.compile(r"[A-Z]+|\*")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True, slots=True)
class HttpRule:
    """How requests matched by one rule are limited.

    Either ``limiter`` names a limiter of the registry (``[limiters.NAME]``; its own state is used,
    shared with every other use of that limiter), or ``specs`` / ``max_concurrent`` give the limits
    inline (their state is kept per host, under the host's hash tag, in the ``[http]`` store).
    """

    specs: tuple[Spec, ...] = ()
    max_concurrent: int | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    #: A limiter of the registry instead of inline limits.
    limiter: str | None = None
    #: The key of ``limiter`` to use (``acquire(limiter, key=...)``); only with ``limiter``.
    key: str | None = None
    #: Longest wait for a permit under this rule (seconds); ``None``: the ``[http]`` timeout.
    timeout: float | None = None
    #: Learn from this host's (endpoint's) headers; ``None``: the ``[http]`` setting.
    learn: bool | None = None

    @property
    def limited(self) -> bool:
        return self.limiter is not None or bool(self.specs) or self.max_concurrent is not None


@dataclass(frozen=True, slots=True)
class EndpointRule:
    """A rule for one route of a host pattern: ``"GET /repos/{owner}/{repo}/issues"``."""

    host: str
    route: str
    rule: HttpRule

    @property
    def method(self) -> str:
        return self.route.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.route.split(" ", 1)[1]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The validated ``[http]`` table."""

    #: Store id (``[stores.ID]``) for inline rules and learned quotas; ``None``: the default store.
    store: str | None = None
    learn: bool = True
    max_cooldown: float = DEFAULT_MAX_COOLDOWN
    retries: int = DEFAULT_RETRIES
    #: Longest wait for a permit, in seconds; ``None`` waits as long as the limits say.
    timeout: float | None = None
    #: Wait after a 429/503 that says nothing about when to come back (doubles per retry).
    backoff: float = DEFAULT_BACKOFF
    #: How long other requests to a host wait for the first response's headers (0: don't).
    probe_wait: float = DEFAULT_PROBE_WAIT
    #: While a learned quota is far from exhausted, responses are read at most this often per
    #: quota (seconds; 0: every response). Near exhaustion every response is read.
    learn_interval: float = DEFAULT_LEARN_INTERVAL
    default: HttpRule | None = None
    hosts: Mapping[str, HttpRule] = field(default_factory=dict)
    endpoints: tuple[EndpointRule, ...] = ()
    #: The file the table came from (for error messages).
    path: str | None = None

    def with_overrides(self, **changes: Any) -> HttpConfig:
        """A copy with the given settings replaced (``None`` values are left as they are)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _host_table(pattern: str) -> str:
    return f'http.hosts."{pattern}"'


def parse_http_config(table: Mapping[str, Any] | None, *, path: str | None = None) -> HttpConfig:
    """Validate an ``[http]`` table (from rate-sync.toml or a dict of the same shape)."""
    if table is None:
        return HttpConfig(path=path)
    if not isinstance(table, Mapping):
        raise ConfigurationError("must be a table", path=path, table="http")
    for key in table:
        if key not in SETTINGS_KEYS:
            raise ConfigurationError(
                f"unknown key; known keys: {', '.join(sorted(SETTINGS_KEYS))}", path=path, table="http", key=key
            )
    try:
        store = table.get("store")
        store = None if store is None else as_str(store, "store")
        learn = as_bool(table.get("learn", True), "learn")
        max_cooldown = as_float(table.get("max_cooldown", DEFAULT_MAX_COOLDOWN), "max_cooldown")
        retries = as_int(table.get("retries", DEFAULT_RETRIES), "retries", minimum=0)
        timeout = table.get("timeout")
        timeout = None if timeout is None else as_float(timeout, "timeout", allow_zero=True)
        backoff = as_float(table.get("backoff", DEFAULT_BACKOFF), "backoff", allow_zero=True)
        probe_wait = as_float(table.get("probe_wait", DEFAULT_PROBE_WAIT), "probe_wait", allow_zero=True)
        learn_interval = as_float(
            table.get("learn_interval", DEFAULT_LEARN_INTERVAL), "learn_interval", allow_zero=True
        )
    except ConfigurationError as exc:
        raise ConfigurationError(exc.detail, path=path, table="http", key=exc.key) from None

    default = None
    if table.get("default") is not None:
        default = parse_rule(table["default"], path=path, table="http.default")

    hosts_raw = table.get("hosts", {})
    if not isinstance(hosts_raw, Mapping):
        raise ConfigurationError(
            'must be a table of host patterns ([http.hosts."HOST"])', path=path, table="http.hosts"
        )
    hosts: dict[str, HttpRule] = {}
    for pattern, raw in hosts_raw.items():
        name = check_host_pattern(pattern, path=path, table=_host_table(pattern))
        hosts[name] = parse_rule(raw, path=path, table=_host_table(pattern))

    endpoints_raw = table.get("endpoints", [])
    if isinstance(endpoints_raw, Mapping) or not isinstance(endpoints_raw, Iterable):
        raise ConfigurationError(
            "must be an array of tables ([[http.endpoints]])", path=path, table="http", key="endpoints"
        )
    endpoints = tuple(
        parse_endpoint(raw, path=path, table=f"http.endpoints[{i}]") for i, raw in enumerate(endpoints_raw)
    )
    return HttpConfig(
        store=store,
        learn=learn,
        max_cooldown=max_cooldown,
        retries=retries,
        timeout=timeout,
        backoff=backoff,
        probe_wait=probe_wait,
        learn_interval=learn_interval,
        default=default,
        hosts=hosts,
        endpoints=endpoints,
        path=path,
    )


def parse_rule(
    raw: Any, *, path: str | None = None, table: str = "http", allowed: frozenset[str] = RULE_KEYS
) -> HttpRule:
    """Validate one rule: a table with ``limiter = "NAME"`` or inline limits (an :class:`HttpRule` passes)."""
    if isinstance(raw, HttpRule):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"must be a table, got {type(raw).__name__}", path=path, table=table)
    for key in raw:
        if key not in allowed:
            hint = ""
            if key in ("store", "store_id"):
                hint = " (a rule uses the [http] store; name a limiter to use another)"
            raise ConfigurationError(
                f"unknown key{hint}; known keys: {', '.join(sorted(allowed))}", path=path, table=table, key=key
            )
    try:
        timeout = raw.get("timeout")
        timeout = None if timeout is None else as_float(timeout, "timeout", allow_zero=True)
        learn = raw.get("learn")
        learn = None if learn is None else as_bool(learn, "learn")
        limiter = raw.get("limiter")
        if limiter is not None:
            limiter = as_str(limiter, "limiter")
            for key in raw:
                if key in LIMIT_KEYS or key in _INLINE_EXTRA:
                    raise ConfigurationError(
                        f"a rule either names a limiter or gives its limits inline, not both (remove {key!r} or "
                        "limiter; the named limiter's own limits apply)",
                        key=key,
                    )
            key_value = raw.get("key")
            return HttpRule(
                limiter=limiter,
                key=None if key_value is None else as_str(key_value, "key"),
                timeout=timeout,
                learn=learn,
            )
        if "key" in raw:
            raise ConfigurationError("key only goes with limiter (it picks the key of the named limiter)", key="key")
        options = {k: v for k, v in raw.items() if k in LIMIT_KEYS or k in _INLINE_EXTRA}
        if not options:
            if learn is not None or timeout is not None:
                # A rule that only changes learning or the timeout for this host is fine.
                return HttpRule(timeout=timeout, learn=learn)
            raise ConfigurationError(
                "no limit: give rate_per_second, limit with window_seconds and algorithm, max_concurrent, "
                'or limiter = "NAME"',
                key="rate_per_second",
            )
        cfg = limiter_config("http", options)
        return HttpRule(
            specs=cfg.specs,
            max_concurrent=cfg.max_concurrent,
            lease_seconds=cfg.lease_seconds or DEFAULT_LEASE_SECONDS,
            timeout=timeout,
            learn=learn,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(exc.detail, path=path, table=table, key=exc.key) from None


def parse_endpoint(raw: Any, *, path: str | None = None, table: str = "http.endpoints") -> EndpointRule:
    """Validate one ``[[http.endpoints]]`` entry (an :class:`EndpointRule` passes)."""
    if isinstance(raw, EndpointRule):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigurationError(f"must be a table, got {type(raw).__name__}", path=path, table=table)
    for needed in ("host", "route"):
        if needed not in raw:
            raise ConfigurationError(
                f'missing {needed} (e.g. host = "api.github.com", route = "GET /repos/{{owner}}/{{repo}}")',
                path=path,
                table=table,
                key=needed,
            )
    try:
        host = check_host_pattern(as_str(raw["host"], "host"), key="host")
        route = check_route(as_str(raw["route"], "route"))
    except ConfigurationError as exc:
        raise ConfigurationError(exc.detail, path=path, table=table, key=exc.key) from None
    rule = parse_rule(
        {k: v for k, v in raw.items() if k not in ("host", "route")}, path=path, table=table, allowed=RULE_KEYS
    )
    if not rule.limited:
        raise ConfigurationError(
            "an endpoint rule needs a limit: rate_per_second, limit with window_seconds, max_concurrent "
            'or limiter = "NAME"',
            path=path,
            table=table,
            key="rate_per_second",
        )
    return EndpointRule(host, route, rule)


def check_host_pattern(
    pattern: Any, *, path: str | None = None, table: str | None = None, key: str | None = None
) -> str:
    """A host pattern: ``api.github.com``, ``*.example.com``, ``127.0.0.1:8080`` (lower-cased)."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError("a host pattern must be a non-empty string", path=path, table=table, key=key)
    name = pattern.strip().lower().rstrip(".")
    if "://" in name or "/" in name:
        raise ConfigurationError(
            f"{pattern!r} is not a host: give the host name only (no scheme, no path), e.g. api.github.com",
            path=path,
            table=table,
            key=key,
        )
    if not _HOST_PATTERN.fullmatch(name):
        raise ConfigurationError(
            f"{pattern!r} is not a host pattern "
            "(letters, digits, dots, dashes, an optional :port, and * or ? as wildcards)",
            path=path,
            table=table,
            key=key,
        )
    return name


def check_route(route: str) -> str:
    """``"METHOD /path/{param}/..."``: METHOD is upper-case or ``*``; a final ``{name:path}`` takes the rest."""
    parts = route.strip().split()
    if len(parts) == 1 and parts[0].startswith("/"):
        parts = ["*", parts[0]]
    if len(parts) != 2:
        raise ConfigurationError(
            f'route {route!r} must be "METHOD /path", e.g. "GET /repos/{{owner}}/{{repo}}/issues"', key="route"
        )
    method, tmpl = parts
    method = method.upper()
    if not _METHOD.fullmatch(method):
        raise ConfigurationError(f"route {route!r}: {method!r} is not an HTTP method (or *)", key="route")
    if not tmpl.startswith("/"):
        raise ConfigurationError(f"route {route!r}: the path must start with /", key="route")
    segments = tmpl.split("/")[1:]
    for i, segment in enumerate(segments):
        stripped = _PARAM.sub("", segment)
        if "{" in stripped or "}" in stripped:
            raise ConfigurationError(
                f"route {route!r}: segment {segment!r} has an unbalanced or invalid {{parameter}}", key="route"
            )
        for m in _PARAM.finditer(segment):
            if m.group(2) and (i != len(segments) - 1 or m.group(0) != segment):
                raise ConfigurationError(
                    f"route {route!r}: {{{m.group(1)}:path}} must be a whole last segment", key="route"
                )
    return f"{method} {tmpl}"


def describe_rule(rule: HttpRule) -> str:
    """A short description of a rule's limits, for reprs and logs."""
    if rule.limiter is not None:
        return f"limiter {rule.limiter!r}" + (f" key {rule.key!r}" if rule.key else "")
    parts = []
    for spec in rule.specs:
        if isinstance(spec, TokenBucket):
            parts.append(f"{spec.rate_per_second:g}/s burst {spec.burst}")
        elif isinstance(spec, SlidingWindow | FixedWindow):
            parts.append(f"{spec.limit} per {spec.window_seconds:g}s")
    if rule.max_concurrent is not None:
        parts.append(f"max_concurrent {rule.max_concurrent}")
    return ", ".join(parts) or "no limit"


def min_timeout(values: Sequence[float | None]) -> float | None:
    """The strictest of several timeouts (``None`` means no timeout)."""
    known = [v for v in values if v is not None]
    return min(known) if known else None


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
