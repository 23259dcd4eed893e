"""Inputs that used to pass a check and fail later: stored exactly, or a typed error that writes nothing.

Every backend (memory, hstore, jsonb) through both APIs; the memory backend follows jsonb's rules here (its default).
"""

from __future__ import annotations

import collections
import types
from typing import Any

import pytest
from fixtures.datastores import TEXT_ONLY_BACKENDS, THROUGH_PGBOUNCER

import hvcore

HUGE = 10**5000  # more digits than Python converts to text by default (4300)


def rows(store: Any) -> int:
    return sum(1 for _ in store.query())


def stored(store: Any, key: hvcore.Key) -> dict[str, Any]:
    record = store.get(key)
    assert record is not None
    data: dict[str, Any] = record.data
    return data


@pytest.mark.parametrize(
    "nested",
    [collections.UserDict({"a": 1}), types.MappingProxyType({"a": 1}), collections.ChainMap({"a": 1})],
    ids=["UserDict", "MappingProxyType", "ChainMap"],
)
def test_mappings_that_are_not_dicts_are_stored_as_dicts(datastore: Any, backend_name: str, nested: Any) -> None:
    if backend_name in TEXT_ONLY_BACKENDS:
        with pytest.raises(hvcore.InvalidData):
            datastore.put(1, 1, m=nested)
        with pytest.raises(hvcore.InvalidData):
            datastore.put_many(1, 1, [{"m": nested}])
        assert rows(datastore) == 0
        return
    key = datastore.put(1, 1, m=nested, deep=[{"m": nested}])
    assert stored(datastore, key) == {"m": {"a": 1}, "deep": [{"m": {"a": 1}}]}
    (batch,) = datastore.put_many(2, 1, [{"m": nested}])
    assert stored(datastore, batch) == {"m": {"a": 1}}
    assert datastore.update(key, more=nested)
    assert stored(datastore, key)["more"] == {"a": 1}
    assert [r.key for r in datastore.query(where={"m": nested})] == [key, batch]
    rowset = collections.UserDict({"m": nested})  # a row that is itself a UserDict
    (third,) = datastore.put_many(3, 1, [rowset])
    assert stored(datastore, third) == {"m": {"a": 1}}


@pytest.mark.parametrize("value", [HUGE, -HUGE, [HUGE], {"n": HUGE}], ids=["int", "negative", "list", "dict"])
def test_ints_beyond_4300_digits_are_invalid_data_everywhere(datastore: Any, backend_name: str, value: Any) -> None:
    for call in (
        lambda: datastore.put(1, 1, n=value),
        lambda: datastore.put_many(1, 1, [{"n": value}]),
        lambda: list(datastore.query(where={"n": value})),
    ):
        with pytest.raises(hvcore.InvalidData) as info:
            call()
        expected = "text only" if backend_name in TEXT_ONLY_BACKENDS else f"more than {4300} digits"
        assert expected in str(info.value)  # the message itself formats (repr of such an int raises)
    key = datastore.put(1, 1, n="x")
    with pytest.raises(hvcore.InvalidData):
        datastore.update(key, n=value)
    assert rows(datastore) == 1 and stored(datastore, key) == {"n": "x"}


def test_ints_up_to_4300_digits_round_trip(datastore: Any, backend_name: str) -> None:
    if backend_name in TEXT_ONLY_BACKENDS:
        pytest.skip("hstore stores text only")
    big = 10**4299 + 7
    key = datastore.put(1, 1, n=big, m=[-big])
    assert stored(datastore, key) == {"n": big, "m": [-big]}


def test_negative_zero_is_refused_not_turned_into_zero(datastore: Any) -> None:
    with pytest.raises(hvcore.InvalidData):
        datastore.put(1, 1, z=-0.0)
    with pytest.raises(hvcore.InvalidData):
        datastore.put_many(1, 1, [{"z": [1.5, -0.0]}])
    assert rows(datastore) == 0


def test_where_true_does_not_match_one(datastore: Any, backend_name: str) -> None:
    if backend_name in TEXT_ONLY_BACKENDS:
        pytest.skip("hstore stores text only")
    one = datastore.put(1, 1, x=1)
    true = datastore.put(1, 1, x=True)
    one_float = datastore.put(1, 1, x=1.0)
    nested = datastore.put(1, 1, x=[1, True])
    assert [r.key for r in datastore.query(where={"x": True})] == [true]
    assert [r.key for r in datastore.query(where={"x": 1})] == [one, one_float]  # 1 == 1.0, as numbers
    assert [r.key for r in datastore.query(where={"x": [True, 1]})] == []
    assert [r.key for r in datastore.query(where={"x": [1, True]})] == [nested]
    assert [r.key for r in datastore.query(where={"x": [1.0, True]})] == [nested]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": 2**63}, hvcore.InvalidQuery),
        ({"limit": -1}, hvcore.InvalidQuery),
        ({"limit": True}, hvcore.InvalidQuery),
        pytest.param({"limit": HUGE}, hvcore.InvalidQuery, id="limit-huge"),
        ({"shards": [1, "a"]}, hvcore.InvalidShard),
        ({"shards": [1, None]}, hvcore.InvalidShard),
        ({"shards": 5}, hvcore.InvalidQuery),
        ({"shards": [[1]]}, hvcore.InvalidShard),
        ({"shards": [1, 2.0]}, hvcore.InvalidShard),
        ({"shards": {"a": 1}}, hvcore.InvalidQuery),
        pytest.param({"shards": [HUGE]}, hvcore.InvalidShard, id="shards-huge"),
        ({"shards": [99]}, hvcore.ShardNotFound),
        pytest.param({"where": {HUGE: 1}}, hvcore.InvalidQuery, id="where-huge-name"),
        pytest.param({"since": HUGE}, hvcore.InvalidQuery, id="since-huge"),
        pytest.param({"kind": HUGE}, hvcore.InvalidKind, id="kind-huge"),
    ],
)
def test_query_arguments_are_typed_errors(datastore: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        datastore.query(**kwargs)


def test_query_limit_at_the_bigint_maximum_works(datastore: Any) -> None:
    key = datastore.put(1, 1, a="b")
    assert [r.key for r in datastore.query(limit=2**63 - 1)] == [key]


@pytest.mark.parametrize("keys", [5, 2.5, None, "12", b"12", {1: 2}, pytest.param([HUGE], id="huge"), [None], [[1]]])
def test_get_many_of_something_else_is_invalid_key(datastore: Any, keys: Any) -> None:
    with pytest.raises((hvcore.InvalidKey, hvcore.InvalidShard)):
        datastore.get_many(keys)


@pytest.mark.parametrize("bodies", [5, None, 2.5, "ab", b"ab", {"a": 1}, [5], [None], [[("a", 1)]]])
def test_put_many_of_something_else_is_invalid_data_and_writes_nothing(datastore: Any, bodies: Any) -> None:
    with pytest.raises(hvcore.InvalidData):
        datastore.put_many(1, 1, bodies)
    assert rows(datastore) == 0


@pytest.mark.parametrize(
    ("shard", "kind", "error"),
    [
        pytest.param(HUGE, 1, hvcore.InvalidShard, id="shard-huge"),
        pytest.param(1, HUGE, hvcore.InvalidKind, id="kind-huge"),
        ("1", 1, hvcore.InvalidShard),
    ],
)
def test_huge_or_odd_shards_and_kinds_are_typed_errors(datastore: Any, shard: Any, kind: Any, error: Any) -> None:
    with pytest.raises(error):
        datastore.put(shard, kind, a="b")
    with pytest.raises(error):
        datastore.put_many(shard, kind, [{"a": "b"}])
    assert rows(datastore) == 0


@pytest.mark.parametrize("key", [pytest.param(HUGE, id="huge"), -1, pytest.param("1" * 5000, id="digits"), 2**63])
def test_huge_keys_are_invalid_key(datastore: Any, key: Any) -> None:
    for call in (datastore.get, datastore.delete, lambda k: datastore.update(k, a="b")):
        with pytest.raises(hvcore.InvalidKey):
            call(key)
    with pytest.raises(hvcore.InvalidKey):
        hvcore.Key.parse("1" * 5000)


_OPERATOR_TYPOS = ["=>", "=<", "gt", "gte", "lt", "LTE", "!=", "<>", "=", "==", "$gt", "$in", "~"]


@pytest.mark.parametrize(
    ("typo", "indexed"),
    [*((typo, False) for typo in _OPERATOR_TYPOS), *((typo, True) for typo in ("=>", "gt"))],
)
def test_a_mistyped_range_operator_is_invalid_query_not_an_empty_result(
    datastore: Any, backend_name: str, typo: str, indexed: bool
) -> None:
    """``where={"age": {"=>": 18}}`` used to be an equality filter on an object (matching nothing, silently)."""
    if indexed:
        if backend_name.endswith(THROUGH_PGBOUNCER):
            pytest.skip("indexes are made directly, not through a transaction-mode pooler (test_pgbouncer_store.py)")
        datastore.create_index(1, "age", type="bigint")
    try:
        datastore.put(1, 1, age="30" if backend_name in TEXT_ONLY_BACKENDS else 30)
        for where in ({"age": {typo: 5}}, {"age": {">=": 5, typo: 1}}, {"age": {">=": 5, "x": 1}}):
            with pytest.raises(hvcore.InvalidQuery, match=r"operators >, >=, <, <=") as info:
                datastore.query(kind=1, where=where)
            assert repr(typo if typo in where["age"] else "x") in str(info.value)
    finally:
        if indexed:
            datastore.drop_index(1, "age")


def test_an_object_value_without_operator_keys_is_still_an_equality_filter(datastore: Any, backend_name: str) -> None:
    if backend_name in TEXT_ONLY_BACKENDS:
        pytest.skip("hstore stores text only")
    key = datastore.put(1, 1, addr={"city": "Oslo", "in": 1})
    datastore.put(1, 1, addr={"city": "Bergen"})
    assert [r.key for r in datastore.query(kind=1, where={"addr": {"city": "Oslo", "in": 1}})] == [key]
