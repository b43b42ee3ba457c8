"""Routing: host globs and ports, endpoint templates, plans and their store keys (no key explosion)."""

from __future__ import annotations

import pytest

import ratesync
from ratesync import MemoryStore, Quota, TokenBucket
from ratesync_http import HttpRule, RateLimitedTransport, parse_http_config
from ratesync_http._policy import Control, HttpPolicy
from ratesync_http._routing import Router, compile_route, split_authority

pytestmark = pytest.mark.http

R1 = HttpRule(specs=(TokenBucket(1.0, 1),))
R2 = HttpRule(specs=(TokenBucket(2.0, 1),))
R3 = HttpRule(specs=(TokenBucket(3.0, 1),))


def router(**table: object) -> Router:
    config = parse_http_config(table)
    return Router(config.hosts, config.endpoints, config.default)


@pytest.mark.parametrize(
    ("authority", "pattern"),
    [
        ("api.github.com", "api.github.com"),
        ("api.github.com:8443", "api.github.com"),
        ("x.example.com", "*.example.com"),
        ("a.b.example.com", "*.example.com"),
        ("example.com", None),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("127.0.0.1:9090", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("localhost:7001", "localhost:*"),
        ("localhost", None),
        ("api-v2.service.io", "api-v?.service.io"),
        ("[::1]:8080", "[::1]"),
    ],
)
def test_host_patterns(authority: str, pattern: str | None) -> None:
    r = Router(
        {
            "api.github.com": R1,
            "*.example.com": R2,
            "127.0.0.1:8080": R3,
            "127.0.0.1": R1,
            "localhost:*": R2,
            "api-v?.service.io": R3,
            "[::1]": R1,
        }
    )
    assert r.host_rule(authority)[0] == pattern


def test_exact_beats_glob_and_globs_go_in_order() -> None:
    r = Router({"*.example.com": R1, "api.example.com": R2, "*.b.example.com": R3})
    assert r.host_rule("api.example.com") == ("api.example.com", R2)
    assert r.host_rule("x.b.example.com") == ("*.example.com", R1)


def test_default_rule() -> None:
    r = Router({"a.io": R1}, default=R2)
    assert r.host_rule("a.io") == ("a.io", R1)
    assert r.host_rule("b.io") == ("default", R2)


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        ("/repos/{owner}/{repo}/issues", "/repos/a/b/issues", True),
        ("/repos/{owner}/{repo}/issues", "/repos/a/b/issues/", True),
        ("/repos/{owner}/{repo}/issues", "/repos/a/issues", False),
        ("/repos/{owner}/{repo}/issues", "/repos/a/b/c/issues", False),
        ("/repos/{owner}/{repo}/issues", "/repos/a/b/issues/1", False),
        ("/files/{rest:path}", "/files/a/b/c.txt", True),
        ("/files/{rest:path}", "/files/", False),
        ("/v{version}/items", "/v2/items", True),
        ("/a.b/{x}", "/aXb/1", False),
        ("/", "/", True),
    ],
)
def test_route_templates(template: str, path: str, matches: bool) -> None:
    assert (compile_route(template).fullmatch(path) is not None) is matches


def test_endpoints_match_host_method_and_path() -> None:
    r = router(
        hosts={"api.github.com": {"rate_per_second": 10}},
        endpoints=[
            {"host": "api.github.com", "route": "GET /repos/{owner}/{repo}/issues", "rate_per_second": 1},
            {"host": "*.github.com", "route": "* /repos/{path:path}", "rate_per_second": 2},
            {"host": "uploads.github.com", "route": "POST /x", "rate_per_second": 3},
        ],
    )
    route = r.route("GET", "api.github.com", "/repos/o/r/issues")
    assert route.host_pattern == "api.github.com"
    assert [e.route for e in route.endpoints] == ["GET /repos/{owner}/{repo}/issues", "* /repos/{path:path}"]
    assert [e.route for e in r.route("POST", "api.github.com", "/repos/o/r/issues").endpoints] == [
        "* /repos/{path:path}"
    ]
    assert r.route("GET", "api.github.com", "/user").endpoints == ()
    assert r.has_endpoints("GET", "api.github.com")
    assert not r.has_endpoints("GET", "example.org")
    assert r.route("POST", "uploads.github.com", "/x").host_rule is None


def test_split_authority() -> None:
    assert split_authority("a.io:80") == ("a.io", "80")
    assert split_authority("a.io") == ("a.io", None)
    assert split_authority("[::1]:8080") == ("[::1]", "8080")
    assert split_authority("[::1]") == ("[::1]", None)


def test_route_cache_is_bounded() -> None:
    r = Router({"*.io": R1})
    r.CACHE_SIZE = 10
    for i in range(50):
        r.route("GET", f"h{i}.io", "/")
    assert len(r._host_cache) <= 10


def plan_keys(policy: HttpPolicy, method: str, authority: str, path: str) -> list[str]:
    plan = policy.plan(method, authority, path)
    return [k for call in plan.calls for k, _ in call.slots] + [lease.key for lease in plan.leases]


def test_plan_keys_use_the_template_never_the_url() -> None:
    transport = RateLimitedTransport(
        registry=ratesync.Registry(),
        store=MemoryStore(),
        hosts={"api.github.com": {"rate_per_second": 10, "max_concurrent": 4}},
        endpoints=[{"host": "api.github.com", "route": "GET /repos/{owner}/{repo}/issues", "rate_per_second": 1}],
    )
    policy = transport.policy
    keys = plan_keys(policy, "GET", "api.github.com", "/repos/python/cpython/issues")
    assert keys == [
        "{http:api.github.com}#host:0",
        "{http:api.github.com}#GET /repos/{owner}/{repo}/issues:0",
        "{http:api.github.com}#GET /repos/{owner}/{repo}/issues:quota",
        "{http:api.github.com}#host:lease",
    ]
    assert plan_keys(policy, "GET", "api.github.com", "/repos/pallets/flask/issues") == keys
    # One store call: every key shares the host's hash tag.
    plan = policy.plan("GET", "api.github.com", "/repos/a/b/issues")
    assert len(plan.calls) == 1
    assert {k.split("}")[0] for k, _ in plan.calls[0].slots} == {"{http:api.github.com"}
    assert plan.calls[0].slots[-1][1] == Quota(3600.0)
    # Plans are cached per (method, host) when no endpoint rule could match, per path otherwise.
    assert policy.plan("GET", "api.github.com", "/user") is policy.plan("GET", "api.github.com", "/user")


def test_plan_for_a_named_limiter_is_a_separate_call() -> None:
    registry = ratesync.Registry()
    other = MemoryStore()
    registry.configure_store("elsewhere", other)
    registry.configure_limiter("partner", "elsewhere", rate_per_second=1, max_concurrent=2)
    transport = RateLimitedTransport(
        registry=registry, store=MemoryStore(), hosts={"*.partner.io": {"limiter": "partner"}}
    )
    plan = transport.policy.plan("GET", "a.partner.io", "/")
    assert [(call.store is other, [k for k, _ in call.slots]) for call in plan.calls] == [
        (False, ["{http:a.partner.io}#quota"]),
        (True, ["{partner}#0"]),
    ]
    assert [(lease.key, lease.limit) for lease in plan.leases] == [("{partner}#lease", 2)]


def test_plan_with_controls() -> None:
    transport = RateLimitedTransport(registry=ratesync.Registry(), store=MemoryStore(), learn=False)
    policy = transport.policy
    assert policy.plan("GET", "a.io", "/").passthrough
    assert not policy.plan("GET", "a.io", "/", Control(learn=True)).passthrough
    skip = policy.plan("GET", "a.io", "/", Control(skip=True, learn=True))
    assert skip.calls == () and skip.quota_key == "{http:a.io}#quota"
    assert "no rule" in policy.describe("GET", "a.io", "/")
