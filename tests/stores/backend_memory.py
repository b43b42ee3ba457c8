"""The memory store in the contract suite."""

from __future__ import annotations

import pytest

import ratesync

NAME = "memory"
MARKS = [pytest.mark.memory]


def make_store(prefix: str) -> ratesync.Store:
    return ratesync.MemoryStore(name="contract")
