"""rate-sync.toml: discovery, ${VAR} expansion, and errors that name the file, table and key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ratesync
from ratesync import ConfigurationError, Registry, SlidingWindow, TokenBucket

ISSUE_EXAMPLE = """
[stores.local]
engine = "memory"
[limiters.api]
store = "local"
rate_per_second = 10.0
max_concurrent = 5
timeout = 30.0
[limiters.login]
store = "local"
algorithm = "sliding_window"
limit = 5
window_seconds = 300
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_the_documented_example_works_unchanged(tmp_path: Path) -> None:
    reg = Registry(config=write(tmp_path / "rate-sync.toml", ISSUE_EXAMPLE))
    api = reg.get_limiter("api")
    assert api.specs == (TokenBucket(10.0, 1),)
    assert api.max_concurrent == 5 and api.timeout == 30.0 and api.store_id == "local"
    login = reg.get_limiter("login")
    assert login.specs == (SlidingWindow(5, 300.0),)
    assert api.store is login.store


def test_found_in_the_working_directory_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "rate-sync.toml", ISSUE_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    with ratesync.acquire("login"):
        pass
    assert ratesync.list_limiters() == ["api", "login"]
    assert ratesync.default_registry.config_path == str(tmp_path / "rate-sync.toml")


def test_found_in_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "config" / "rate-sync.toml", ISSUE_EXAMPLE)
    monkeypatch.chdir(tmp_path)
    assert ratesync.try_acquire("api").allowed


def test_env_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "rate-sync.toml", ISSUE_EXAMPLE)
    other = write(tmp_path / "elsewhere.toml", "[limiters.only]\nrate_per_second = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RATE_SYNC_CONFIG", str(other))
    assert ratesync.list_limiters() == ["only"]


def test_env_variable_naming_a_missing_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RATE_SYNC_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigurationError, match="RATE_SYNC_CONFIG"):
        ratesync.list_limiters()


def test_nothing_is_read_at_import_time(tmp_path: Path) -> None:
    write(tmp_path / "rate-sync.toml", "this is not toml")
    code = "import ratesync, ratesync._registry as r; print(r.default_registry._loaded)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_env_expansion_then_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURST", "4")
    monkeypatch.delenv("RATE", raising=False)
    path = write(
        tmp_path / "r.toml",
        """
        [limiters.api]
        rate_per_second = "${RATE:-10}"
        burst = "${BURST}"
        """,
    )
    assert Registry(config=path).get_limiter("api").specs == (TokenBucket(10.0, 4),)
    monkeypatch.setenv("RATE", "2.5")
    assert Registry(config=path).get_limiter("api").specs == (TokenBucket(2.5, 4),)


def test_combined_limits_in_toml(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.toml",
        """
        [limiters.github]
        rate_per_second = 10
        [[limiters.github.limits]]
        algorithm = "fixed_window"
        limit = 5000
        window_seconds = 3600
        """,
    )
    lim = Registry(config=path).get_limiter("github")
    assert len(lim.specs) == 2 and lim.specs[1] == ratesync.FixedWindow(5000, 3600.0)


@pytest.mark.parametrize(
    ("text", "table", "key", "match"),
    [
        ("[limiters.api]\nrate_per_second = 0\n", "limiters.api", "rate_per_second", "greater than zero"),
        ("[limiters.api]\nrate_per_second = -3\n", "limiters.api", "rate_per_second", "greater than zero"),
        ('[limiters.api]\nrate_per_second = "ten"\n', "limiters.api", "rate_per_second", "expected a number"),
        ("[limiters.api]\nrate_per_secnd = 1\n", "limiters.api", "rate_per_secnd", "unknown option"),
        ('[limiters.api]\nstore = "nope"\nrate_per_second = 1\n', "limiters.api", "store", "not defined"),
        ('[stores.s]\nengine = "mongo"\n', "stores.s", "engine", "unknown store engine"),
        ("[stores.s]\ncapacity = 5\n", "stores.s", "engine", "missing engine"),
        ('[stores.s]\nengine = "memory"\nurl = "x"\n', "stores.s", "url", "unknown option"),
        ('[stores.s]\nengine = "memory"\non_error = "maybe"\n', "stores.s", "on_error", "must be one of"),
        ('[stores.s]\nengine = "memory"\ncapacity = 0\n', "stores.s", "capacity", "at least 1"),
        (
            '[limiters.l]\nalgorithm = "sliding_window"\nlimit = 5\nwindow_seconds = 1\nrate_per_second = 2\n',
            "limiters.l",
            "rate_per_second",
            "belongs to token_bucket",
        ),
        ('[limiters.api]\nrate_per_second = "${NOPE_NOT_SET}"\n', "limiters.api", "rate_per_second", "NOPE_NOT_SET"),
        (
            '[limiters.g]\nrate_per_second = 1\n[[limiters.g.limits]]\nalgorithm = "fixed_window"\nlimit = 0\n'
            "window_seconds = 1\n",
            "limiters.g",
            "limits[0].limit",
            "at least 1",
        ),
    ],
)
def test_errors_name_file_table_and_key(tmp_path: Path, text: str, table: str, key: str, match: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigurationError, match=match) as info:
        Registry(config=path)
    err = info.value
    assert err.path == str(path) and err.table == table and err.key == key
    message = str(err)
    assert str(path) in message and f"[{table}]" in message and repr(key) in message


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[limiters.api\nrate = 1\n")
    with pytest.raises(ConfigurationError, match="malformed TOML") as info:
        Registry(config=path)
    assert str(path) in str(info.value)


def test_unknown_top_level_table(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[limiter.api]\nrate_per_second = 1\n")
    with pytest.raises(ConfigurationError, match="unknown table") as info:
        Registry(config=path)
    assert info.value.table == "limiter"


def test_strategy_is_accepted_as_engine(tmp_path: Path) -> None:
    path = write(
        tmp_path / "r.toml", '[stores.s]\nstrategy = "memory"\n[limiters.a]\nstore = "s"\nmax_concurrent = 2\n'
    )
    assert Registry(config=path).get_store("s").engine == "memory"


def test_http_table_is_kept_for_ratesync_http(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", '[http]\nlearn = true\n[http.hosts."api.github.com"]\nrate_per_second = 10\n')
    reg = Registry(config=path)
    assert reg.http_config["hosts"]["api.github.com"]["rate_per_second"] == 10
