"""Which rules a request goes through: host patterns and endpoint templates (sans I/O).

Patterns and templates are compiled once, when the rules are loaded; a request costs dictionary
look-ups, plus one precompiled match per endpoint rule of its host and method.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._config import EndpointRule, HttpRule

__all__ = ["Route", "Router", "compile_host_pattern", "compile_route", "split_authority"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")
_PORT = re.compile(r":(\d+|\*)$")


@dataclass(frozen=True, slots=True)
class Route:
    """The rules that apply to one request."""

    #: The host rule (a ``[http.hosts]`` entry or the default rule), or ``None``.
    host_rule: HttpRule | None
    #: The pattern of the host rule that matched (``"default"`` for the default rule).
    host_pattern: str | None
    #: Every endpoint rule whose host, method and path match, in the order they were given.
    endpoints: tuple[EndpointRule, ...] = ()


def split_authority(authority: str) -> tuple[str, str | None]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", "8080")``; IPv6 literals keep their brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1 and authority[end + 1 : end + 2] == ":":
            return authority[: end + 1], authority[end + 2 :]
        return authority, None
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, port
    return authority, None


def _has_port(pattern: str) -> bool:
    return pattern.endswith((":*",)) or (bool(_PORT.search(pattern)) and not pattern.endswith("]"))


def compile_host_pattern(pattern: str) -> re.Pattern[str] | None:
    """A regex for a glob pattern (``*`` any run of characters, dots included; ``?`` one); None if literal."""
    if "*" not in pattern and "?" not in pattern:
        return None
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out))


def compile_route(path_template: str) -> re.Pattern[str]:
    """A regex for ``/repos/{owner}/{repo}/issues``: ``{name}`` is one segment, ``{name:path}`` the rest."""
    out = []
    pos = 0
    for m in _PARAM.finditer(path_template):
        out.append(re.escape(path_template[pos : m.start()]))
        out.append(".+" if m.group(2) else "[^/]+")
        pos = m.end()
    out.append(re.escape(path_template[pos:]))
    body = "".join(out)
    if body.endswith("/") and len(body) > 1:
        body = body[:-1]
    return re.compile(body + "/?")


@dataclass(frozen=True, slots=True)
class _Endpoint:
    rule: EndpointRule
    host_literal: str | None
    host_regex: re.Pattern[str] | None
    host_has_port: bool
    method: str
    path: re.Pattern[str]


class Router:
    """Matches requests to rules; results per ``(method, authority)`` are cached (bounded)."""

    #: Entries kept per cache before it is cleared (bounds memory under many distinct hosts).
    CACHE_SIZE = 4096

    def __init__(
        self,
        hosts: Mapping[str, HttpRule],
        endpoints: Sequence[EndpointRule] = (),
        default: HttpRule | None = None,
    ) -> None:
        self.default = default
        self._exact: dict[str, tuple[str, HttpRule]] = {}
        self._globs: list[tuple[str, re.Pattern[str], bool, HttpRule]] = []
        for pattern, rule in hosts.items():
            regex = compile_host_pattern(pattern)
            if regex is None:
                self._exact[pattern] = (pattern, rule)
            else:
                self._globs.append((pattern, regex, _has_port(pattern), rule))
        self._endpoints = [
            _Endpoint(
                rule=e,
                host_literal=None if compile_host_pattern(e.host) is not None else e.host,
                host_regex=compile_host_pattern(e.host),
                host_has_port=_has_port(e.host),
                method=e.method,
                path=compile_route(e.path),
            )
            for e in endpoints
        ]
        self._host_cache: dict[tuple[str, str], tuple[Route, tuple[_Endpoint, ...]]] = {}

    def host_rule(self, authority: str) -> tuple[str | None, HttpRule | None]:
        """The first host rule matching ``authority``: exact (with port, then without), then globs in order."""
        hit = self._exact.get(authority)
        if hit is None:
            hostname, port = split_authority(authority)
            if port is not None:
                hit = self._exact.get(hostname)
            if hit is None:
                for pattern, regex, with_port, rule in self._globs:
                    if regex.fullmatch(authority if with_port else hostname):
                        hit = (pattern, rule)
                        break
        if hit is not None:
            return hit
        if self.default is not None:
            return "default", self.default
        return None, None

    def _endpoint_hosts_match(self, e: _Endpoint, authority: str) -> bool:
        hostname, _ = split_authority(authority)
        target = authority if e.host_has_port else hostname
        if e.host_literal is not None:
            return e.host_literal == target
        assert e.host_regex is not None
        return e.host_regex.fullmatch(target) is not None

    def _for_host(self, method: str, authority: str) -> tuple[Route, tuple[_Endpoint, ...]]:
        key = (method, authority)
        hit = self._host_cache.get(key)
        if hit is not None:
            return hit
        pattern, rule = self.host_rule(authority)
        candidates = tuple(
            e
            for e in self._endpoints
            if (e.method == "*" or e.method == method) and self._endpoint_hosts_match(e, authority)
        )
        result = (Route(rule, pattern), candidates)
        if len(self._host_cache) >= self.CACHE_SIZE:
            self._host_cache.clear()
        self._host_cache[key] = result
        return result

    def route(self, method: str, authority: str, path: str) -> Route:
        """The rules for one request (``authority`` lower-case, without the default port)."""
        base, candidates = self._for_host(method, authority)
        if not candidates:
            return base
        matched = tuple(e.rule for e in candidates if e.path.fullmatch(path) is not None)
        if not matched:
            return base
        return Route(base.host_rule, base.host_pattern, matched)

    def has_endpoints(self, method: str, authority: str) -> bool:
        """Whether the path matters for this method and host (some endpoint rule could match)."""
        return bool(self._for_host(method, authority)[1])
