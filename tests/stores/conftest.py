"""The store contract suite runs once per backend module ``backend_*.py`` in this folder.

A backend module defines ``NAME`` (str), ``MARKS`` (a list of pytest marks) and
``make_store(prefix: str) -> ratesync.Store``: a fresh store whose keys live under ``prefix`` (or
are otherwise isolated from other tests), needing its server to be up (call
``tests.conftest.require_service``). It may define ``cleanup(store)`` too, which is called after
the test; the fixture calls ``store.close()`` and ``await store.aclose()`` itself.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import ratesync

HERE = Path(__file__).parent


def _load_backends() -> list[ModuleType]:
    modules = []
    for path in sorted(HERE.glob("backend_*.py")):
        spec = importlib.util.spec_from_file_location(f"_ratesync_test_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


BACKENDS = _load_backends()


@pytest.fixture(params=[pytest.param(b, id=b.NAME, marks=b.MARKS) for b in BACKENDS])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ratesync.Store]:
    backend: Any = request.param
    s: ratesync.Store = backend.make_store(f"t{uuid.uuid4().hex[:12]}:")
    try:
        yield s
    finally:
        cleanup = getattr(backend, "cleanup", None)
        if cleanup is not None:
            cleanup(s)
        s.close()
        await s.aclose()
