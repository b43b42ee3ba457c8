"""httpx and requests are optional: importing ratesync_http needs neither; a missing one says which extra."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import ratesync

pytestmark = pytest.mark.http


def test_import_needs_neither_client() -> None:
    code = (
        "import sys, ratesync_http\n"
        "assert 'httpx' not in sys.modules and 'requests' not in sys.modules, sorted(sys.modules)\n"
        "ratesync_http.parse_rate_limit_headers({})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("package", "module", "name"),
    [
        ("httpx", "ratesync_http._httpx", "RateLimitedTransport"),
        ("requests", "ratesync_http._requests", "RateLimitedAdapter"),
    ],
)
def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch, package: str, module: str, name: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ratesync.MissingDependencyError) as err:
        importlib.import_module(module)
    assert err.value.extra == package
    assert f'pip install "rate-sync[{package}]"' in str(err.value)
    assert name in str(err.value)


def test_lazy_exports() -> None:
    import ratesync_http

    assert ratesync_http.RateLimitedSession.__name__ == "RateLimitedSession"
    assert set(ratesync_http.__all__) <= set(dir(ratesync_http)) | {"RateLimitedTransport", "RateLimitedAdapter"}
    with pytest.raises(AttributeError):
        ratesync_http.nothing_here
