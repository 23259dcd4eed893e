"""Fixtures of the core tests: each test holds worker numbers as if it were a process of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hvcore import _worker


@pytest.fixture(autouse=True)
def fresh_worker_claims() -> Iterator[None]:
    """Forget the worker numbers earlier tests held (their fake clocks' milliseconds would be floors here)."""
    saved = list(_worker._claims)
    _worker._claims.clear()
    yield
    _worker._claims[:] = saved
