"""The ``ratesync`` command."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratesync.__main__ import main

CONFIG = """
[stores.local]
engine = "memory"
[limiters.login]
store = "local"
algorithm = "fixed_window"
limit = 5
window_seconds = 300
"""


def test_check_lists_what_it_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rate-sync.toml"
    path.write_text(CONFIG)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok" in out and "limiter login" in out and "store local: memory" in out


def test_check_reports_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[limiters.api]\nrate_per_second = 0\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "[limiters.api]" in err and "rate_per_second" in err


def test_status_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rate-sync.toml"
    path.write_text(CONFIG)
    assert main(["status", "--config", str(path), "login", "--key", "bob"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("login"))
    assert line.split()[1:4] == ["bob", "5", "5"]
    assert main(["clear", "--config", str(path), "login", "--key", "bob"]) == 0
    assert "cleared login key 'bob'" in capsys.readouterr().out
