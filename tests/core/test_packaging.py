"""Packaging promises: the core needs only the standard library; missing extras say what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ratesync
from ratesync import MissingDependencyError, Registry

OPTIONAL = ["redis", "asyncpg", "nats", "aiosqlite", "httpx", "requests", "http_sf", "hiredis"]


def test_import_ratesync_loads_no_optional_dependency() -> None:
    code = (
        "import sys, ratesync\n"
        "ratesync.configure_limiter('x', rate_per_second=1)\n"
        "with ratesync.acquire('x'): pass\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_py_typed_is_shipped() -> None:
    assert (Path(ratesync.__file__).parent / "py.typed").is_file()


def test_missing_client_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hide every client library: each engine must say which extra to install.
    for name in ["redis", "redis.asyncio", "asyncpg", "nats", "aiosqlite"]:
        monkeypatch.setitem(sys.modules, name, None)
    for module in [m for m in sys.modules if m.startswith("ratesync._stores.") and m != "ratesync._stores.memory"]:
        monkeypatch.delitem(sys.modules, module)
    cases = {
        "redis": {"url": "redis://localhost:6379"},
        "postgres": {"url": "postgresql://localhost/test"},
        "nats": {"url": "nats://localhost:4222"},
    }

    def use(engine: str, options: dict[str, str]) -> None:
        store = Registry().configure_store(f"s-{engine}", engine=engine, **options)
        store.initialize()

    for engine, options in cases.items():
        with pytest.raises(MissingDependencyError) as info:
            use(engine, options)
        extra = "postgres" if engine == "postgres" else engine
        assert f"rate-sync[{extra}]" in str(info.value)
        assert isinstance(info.value, ImportError)
