"""Arguments of ``Datastore.transaction`` and of its calls, generated: accepted exactly, or a typed error before any
I/O that leaves the transaction usable (memory backend; the PostgreSQL checks are the same façade code)."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_memory import MemoryServerStore
from hvcore._atransaction import ISOLATION_LEVELS, check_isolation_level
from hvcore._backend import SupportsTransactions

SHARD = 3
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.sampled_from(["Serializable", "REPEATABLE_READ", "read-committed", "  read   committed ", "read uncommitted"]),
)


class Level(enum.Enum):
    """An enum spelled like psycopg's ``IsolationLevel``."""

    REPEATABLE_READ = 3
    READ_UNCOMMITTED = 1


@settings(max_examples=300, deadline=None)
@given(level=st.one_of(anything, st.sampled_from(list(Level))))
def test_an_isolation_level_is_one_of_three_or_a_config_error(level: Any) -> None:
    try:
        checked = check_isolation_level(level)
    except hvcore.ConfigError as exc:
        assert "isolation_level must be one of" in str(exc)
        return
    assert checked is None or checked in ISOLATION_LEVELS
    if checked is not None:
        assert checked == " ".join(
            str(getattr(level, "name", level)).replace("_", " ").replace("-", " ").lower().split()
        )


@pytest.fixture(scope="module")
def db() -> Iterator[hvcore.Datastore]:
    with hvcore.Datastore([dict(shards="0-8"), dict(shards="8-16")], backend="memory") as store:
        yield store


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(anything, st.integers(min_value=0, max_value=2**64)), read_only=anything)
def test_keys_and_options_are_accepted_or_refused_with_a_typed_error(
    db: hvcore.Datastore, key: Any, read_only: Any
) -> None:
    try:
        manager = db.transaction(SHARD, read_only=read_only)
    except hvcore.ConfigError:
        assert type(read_only) is not bool
        return
    with manager as tx:
        try:
            found = tx.get(key)
        except hvcore.InvalidKey:
            pass
        else:
            assert found is None
            assert hvcore.Key(key).shard_id == SHARD
        assert tx.state == "open"  # refused before any I/O: the transaction goes on
        assert tx.get_many([]) == {}


class NoTransactions:
    """A third-party store without `SupportsTransactions`: the memory store minus ``transaction``."""

    def __init__(self, settings: Any, options: Any) -> None:
        self._inner = MemoryServerStore(settings, options)

    def __getattr__(self, name: str) -> Any:
        if name == "transaction":
            raise AttributeError(name)
        return getattr(self._inner, name)


class PlainPlugin:
    """Registers the ``plain`` backend."""

    @hvcore.hookimpl
    def hypervault_register_backends(self, register: Any) -> None:
        register("plain", NoTransactions)


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint."""

    name = "plain"

    def load(self) -> object:
        return PlainPlugin()


def test_a_backend_without_transactions_is_a_config_error_naming_it() -> None:
    registry = hvcore.PluginRegistry(entry_points=[FakeEntryPoint()])
    with hvcore.Datastore([dict(shards="0-16")], backend="plain", registry=registry) as db:
        assert not isinstance(db.servers[0], SupportsTransactions)
        key = db.put(SHARD, 1, name="x")
        with pytest.raises(hvcore.ConfigError, match="the 'plain' backend has no transactions"):
            db.transaction(SHARD)
        assert db.get(key) is not None
