"""Fixtures of the core tests: each test holds worker numbers and sequence tables as if it were a process of its
own."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import pytest

from hvcore import _sharedseq, _worker


@pytest.fixture(autouse=True)
def fresh_worker_claims() -> Iterator[None]:
    """Forget the worker numbers earlier tests held (their fake clocks' milliseconds would be floors here)."""
    saved = list(_worker._claims)
    _worker._claims.clear()
    yield
    _worker._claims[:] = saved


@pytest.fixture(autouse=True)
def fresh_sequence_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """New generators make new sequence tables: one table serves every clock, so a generator an earlier test left
    alive (or a table an earlier test forked, whose lanes are kept for good) would share its fake clock's
    milliseconds with this test's, and this test's keys would not start where it expects."""
    monkeypatch.setattr(_sharedseq, "_registry", weakref.WeakValueDictionary())
