"""Shared fixtures. Service checks live in ``rs_testing`` (``require_service``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import ratesync


@pytest.fixture
def registry() -> Iterator[ratesync.Registry]:
    """A registry of its own, so tests never share limiters through globals."""
    reg = ratesync.Registry()
    yield reg
    reg.close()


@pytest.fixture(autouse=True)
def _clean_default_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    # The default registry reads rate-sync.toml from the working directory on first use; tests
    # run from an empty directory unless they set one up themselves.
    monkeypatch.delenv("RATE_SYNC_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    ratesync.default_registry.clear()
    yield
    ratesync.default_registry.clear()
