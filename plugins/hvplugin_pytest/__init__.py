"""pytest plugin shipped with hypervault: ready-made datastores for users' own tests.

Fixtures:

- ``hv_datastore``: an empty in-memory `Datastore` (shards 0-16 over two pretend servers), closed afterwards.
- ``hv_make_datastore``: a factory, ``hv_make_datastore(shards=("0-8", "8-16"), **options)``, for other maps or
  options (``layout=``, ``pool_max=``...); every store it makes is closed after the test.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import hvcore

__all__ = ["hv_datastore", "hv_make_datastore"]

_runs = itertools.count()


@pytest.fixture
def hv_make_datastore() -> Iterator[Callable[..., hvcore.Datastore]]:
    """Factory of empty in-memory datastores, closed after the test."""
    made: list[hvcore.Datastore] = []

    def make(shards: Sequence[str] = ("0-8", "8-16"), **options: Any) -> hvcore.Datastore:
        run = next(_runs)
        options.setdefault("backend", "memory")
        servers = [dict(shards=spec, name=f"pytest-{run}-{i}") for i, spec in enumerate(shards)]
        store = hvcore.Datastore(servers, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def hv_datastore(hv_make_datastore: Callable[..., hvcore.Datastore]) -> hvcore.Datastore:
    """An empty in-memory datastore over shards 0-16."""
    return hv_make_datastore()
