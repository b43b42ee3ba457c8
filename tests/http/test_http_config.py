"""The [http] table: parsing, strict validation (errors name file, table and key), overrides in code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ratesync
from ratesync import ConfigurationError, FixedWindow, SlidingWindow, TokenBucket
from ratesync_http import HttpConfig, HttpRule, RateLimitedTransport, parse_http_config

pytestmark = pytest.mark.http

FULL = """
[stores.shared]
engine = "memory"

[limiters.partner]
rate_per_second = 5
max_concurrent = 2

[http]
store = "shared"
learn = true
max_cooldown = 600
retries = 3
timeout = 30
backoff = 0.5
probe_wait = 1
default = { rate_per_second = 20 }

[http.hosts."api.github.com"]
rate_per_second = 10
burst = 5
max_concurrent = 8

[http.hosts."*.example.com"]
limiter = "partner"

[http.hosts."uploads.example.org"]
algorithm = "sliding_window"
limit = 100
window_seconds = 60
[[http.hosts."uploads.example.org".limits]]
algorithm = "fixed_window"
limit = 1000
window_seconds = 3600

[[http.endpoints]]
host = "api.github.com"
route = "GET /repos/{owner}/{repo}/issues"
rate_per_second = 1

[[http.endpoints]]
host = "api.github.com"
route = "/search/{kind}"
limit = 30
window_seconds = 60
algorithm = "sliding_window"
learn = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rate-sync.toml"
    path.write_text(text)
    return path


def test_full_table_from_the_file(tmp_path: Path) -> None:
    write(tmp_path, FULL)
    # No arguments: the default registry loads ./rate-sync.toml (the tests run in tmp_path's sibling).
    registry = ratesync.Registry(config=tmp_path / "rate-sync.toml")
    transport = RateLimitedTransport(registry=registry)
    config = transport.policy.config
    assert config.store == "shared" and transport.policy.store is registry.get_store("shared")
    assert (config.learn, config.max_cooldown, config.retries, config.timeout) == (True, 600.0, 3, 30.0)
    assert (config.backoff, config.probe_wait) == (0.5, 1.0)
    assert config.default == HttpRule(specs=(TokenBucket(20.0, 1),))
    github = config.hosts["api.github.com"]
    assert github.specs == (TokenBucket(10.0, 5),) and github.max_concurrent == 8
    assert config.hosts["*.example.com"] == HttpRule(limiter="partner")
    assert config.hosts["uploads.example.org"].specs == (SlidingWindow(100, 60.0), FixedWindow(1000, 3600.0))
    first, second = config.endpoints
    assert (first.host, first.route, first.rule.specs) == (
        "api.github.com",
        "GET /repos/{owner}/{repo}/issues",
        (TokenBucket(1.0, 1),),
    )
    assert second.route == "* /search/{kind}" and second.rule.learn is False
    assert config.path == str(tmp_path / "rate-sync.toml")


def test_default_registry_autoloads_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, '[http.hosts."api.github.com"]\nrate_per_second = 3\n')
    monkeypatch.chdir(tmp_path)
    transport = RateLimitedTransport()
    assert transport.policy.config.hosts["api.github.com"].specs == (TokenBucket(3.0, 1),)
    assert transport.policy.store is ratesync.default_registry.get_store("default")


def test_no_file_means_learning_only() -> None:
    transport = RateLimitedTransport()
    config = transport.policy.config
    assert config.hosts == {} and config.learn and config.retries == 2


@pytest.mark.parametrize(
    ("text", "table", "key"),
    [
        ("[http]\ncolour = 1\n", "http", "colour"),
        ("[http]\nretries = -1\n", "http", "retries"),
        ('[http]\nlearn = "maybe"\n', "http", "learn"),
        ("[http]\nmax_cooldown = 0\n", "http", "max_cooldown"),
        ('[http]\nstore = "nope"\n', "http", "store"),
        ('[http.hosts."api.github.com"]\nrate = 1\n', 'http.hosts."api.github.com"', "rate"),
        ('[http.hosts."api.github.com"]\nrate_per_second = "fast"\n', 'http.hosts."api.github.com"', "rate_per_second"),
        ('[http.hosts."api.github.com"]\nburst = 0\nrate_per_second = 1\n', 'http.hosts."api.github.com"', "burst"),
        ('[http.hosts."api.github.com"]\nstore = "x"\nrate_per_second = 1\n', 'http.hosts."api.github.com"', "store"),
        ('[http.hosts."api.github.com"]\n', 'http.hosts."api.github.com"', "rate_per_second"),
        ('[http.hosts."api.github.com"]\nlimit = 5\nwindow_seconds = 1\n', 'http.hosts."api.github.com"', "algorithm"),
        ('[http.hosts."a.io"]\nlimiter = "partner"\nrate_per_second = 1\n', 'http.hosts."a.io"', "rate_per_second"),
        ('[http.hosts."a.io"]\nlimiter = "ghost"\n', 'http.hosts."a.io"', "limiter"),
        ('[http.hosts."a.io"]\nkey = "k"\nrate_per_second = 1\n', 'http.hosts."a.io"', "key"),
        ('[http.hosts."https://a.io"]\nrate_per_second = 1\n', 'http.hosts."https://a.io"', None),
        ('[http.hosts."a io"]\nrate_per_second = 1\n', 'http.hosts."a io"', None),
        ("[http]\ndefault = { rate_per_second = -1 }\n", "http.default", "rate_per_second"),
        ('[[http.endpoints]]\nhost = "a.io"\nrate_per_second = 1\n', "http.endpoints[0]", "route"),
        ('[[http.endpoints]]\nroute = "GET /"\nrate_per_second = 1\n', "http.endpoints[0]", "host"),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "GET"\nrate_per_second = 1\n', "http.endpoints[0]", "route"),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "GET /a/{b"\nrate_per_second = 1\n', "http.endpoints[0]", "route"),
        (
            '[[http.endpoints]]\nhost = "a.io"\nroute = "GET /{rest:path}/x"\nrate_per_second = 1\n',
            "http.endpoints[0]",
            "route",
        ),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "get! /"\nrate_per_second = 1\n', "http.endpoints[0]", "route"),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "GET /"\n', "http.endpoints[0]", "rate_per_second"),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "GET /"\nlearn = false\n', "http.endpoints[0]", "rate_per_second"),
        ('[[http.endpoints]]\nhost = "a.io"\nroute = "GET /"\nrps = 1\n', "http.endpoints[0]", "rps"),
        ('[http]\nendpoints = { host = "a.io" }\n', "http", "endpoints"),
        ('[http]\nhosts = ["a.io"]\n', "http.hosts", None),
    ],
)
def test_mistakes_name_file_table_and_key(tmp_path: Path, text: str, table: str, key: str | None) -> None:
    path = write(tmp_path, "[limiters.partner]\nrate_per_second = 1\n" + text)
    registry = ratesync.Registry(config=path)
    with pytest.raises(ConfigurationError) as err:
        RateLimitedTransport(registry=registry)
    assert err.value.path == str(path)
    assert err.value.table == table
    assert err.value.key == key
    assert str(path) in str(err.value) and f"[{table}]" in str(err.value)


def test_env_expansion_in_http_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_RPS", "7")
    path = write(tmp_path, '[http.hosts."api.github.com"]\nrate_per_second = "${GITHUB_RPS}"\n')
    transport = RateLimitedTransport(registry=ratesync.Registry(config=path))
    assert transport.policy.config.hosts["api.github.com"].specs == (TokenBucket(7.0, 1),)


def test_rules_in_code_replace_the_files(tmp_path: Path) -> None:
    path = write(tmp_path, '[http]\nretries = 5\n[http.hosts."api.github.com"]\nrate_per_second = 3\n')
    registry = ratesync.Registry(config=path)
    transport = RateLimitedTransport(
        registry=registry,
        hosts={"API.Example.com": HttpRule(specs=(TokenBucket(2.0, 1),)), "b.io": {"rate_per_second": 1}},
        endpoints=[{"host": "b.io", "route": "POST /x", "rate_per_second": 1}],
        default={"max_concurrent": 4},
        learn=False,
    )
    config = transport.policy.config
    assert set(config.hosts) == {"api.example.com", "b.io"}
    assert config.retries == 5 and config.learn is False
    assert config.default == HttpRule(max_concurrent=4)
    assert config.endpoints[0].route == "POST /x"


def test_config_mapping_in_code() -> None:
    transport = RateLimitedTransport(
        config={"hosts": {"a.io": {"rate_per_second": 2}}, "retries": 0}, registry=ratesync.Registry()
    )
    assert transport.policy.config.retries == 0
    with pytest.raises(ConfigurationError) as err:
        RateLimitedTransport(config={"hosts": {"a.io": {"rate_per_sec": 2}}}, registry=ratesync.Registry())
    assert (err.value.table, err.value.key, err.value.path) == ('http.hosts."a.io"', "rate_per_sec", None)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"retries": -2}, "retries"), ({"timeout": -1.0}, "timeout"), ({"max_cooldown": 0.0}, "max_cooldown")],
)
def test_keyword_settings_are_checked(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        RateLimitedTransport(registry=ratesync.Registry(), **kwargs)
    assert err.value.key == key


def test_parse_http_config_directly() -> None:
    config = parse_http_config({"hosts": {"a.io:8080": {"rate_per_second": 1, "learn": False}}})
    assert isinstance(config, HttpConfig)
    assert config.hosts["a.io:8080"].learn is False
    assert parse_http_config(None) == HttpConfig()
    with pytest.raises(ConfigurationError):
        parse_http_config("not a table")  # type: ignore[arg-type]
