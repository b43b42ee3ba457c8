"""``python -m ratesync_http.demo`` (a short run) and the HTTP examples, which CI also runs directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ratesync_http import demo

pytestmark = [pytest.mark.http, pytest.mark.realtime]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_demo_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--requests", "40", "--workers", "20", "--rate", "40"]) == 0
    out = capsys.readouterr().out
    assert "429s received        0" in out
    assert "40 ok of 40" in out
    assert "OK: no request was refused." in out


def test_demo_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        demo.main(["--requests", "0"])


def test_demo_runs_as_a_module_without_a_config_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ratesync_http.demo", "--requests", "20", "--rate", "40"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "achieved rate" in result.stdout
