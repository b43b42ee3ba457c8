"""The SQLite store in the contract suite: a fresh database file per test."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

import ratesync
from ratesync._stores.sqlite import SQLiteStore

NAME = "sqlite"
MARKS = [pytest.mark.sqlite]

# One directory for the whole run, removed at exit: a test's files stay readable while it runs,
# and the store (closed by the fixture after ``cleanup``) never sees its files vanish.
_ROOT = Path(tempfile.mkdtemp(prefix="ratesync-sqlite-contract-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def make_store(prefix: str) -> ratesync.Store:
    return SQLiteStore(_ROOT / f"{prefix.strip(':')}.db", name="contract")
