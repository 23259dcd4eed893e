"""Contract for batches, updates, deletes and queries (issue 5), on every backend, sync and async."""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Any

import pytest

import hvcore
from hvcore import InvalidData, InvalidKey, InvalidQuery, Key, ShardNotFound


def rows(n: int, **extra: str) -> list[dict[str, str]]:
    return [{"n": str(i), **extra} for i in range(n)]


def test_put_many_returns_keys_in_row_order(datastore: hvcore.Datastore) -> None:
    keys = datastore.put_many(3, 2, rows(50))
    assert len(keys) == len(set(keys)) == 50
    assert keys == sorted(keys)
    assert all(k.shard_id == 3 for k in keys)
    found = datastore.get_many(keys)
    assert [found[k].data["n"] for k in keys] == [str(i) for i in range(50)]
    assert {r.kind for r in found.values()} == {2}


def test_put_many_more_than_a_millisecond_of_ids(datastore: hvcore.Datastore) -> None:
    keys = datastore.put_many(1, 1, rows(2500))
    assert len(set(keys)) == 2500
    assert datastore.status()[0]["rows"] == 2500


def test_put_many_of_nothing(datastore: hvcore.Datastore) -> None:
    assert datastore.put_many(1, 1, []) == []


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ([{"a": "1"}, ["not", "a", "mapping"]], "row 1 is a list"),
        ([{"a": "1"}, {"b": "nul\x00"}], "row 1"),
        ([{"a": "1"}, {3: "x"}], "row 1"),
        ({"a": "1"}, "iterable of mappings"),
    ],
)
def test_put_many_rejects_bad_rows_and_writes_nothing(datastore: hvcore.Datastore, batch: Any, match: str) -> None:
    with pytest.raises(InvalidData, match=match):
        datastore.put_many(2, 1, batch)
    assert datastore.status()[0]["rows"] == 0


def test_put_many_hstore_needs_strings(datastore: hvcore.Datastore, backend_name: str) -> None:
    batch: list[dict[str, Any]] = [{"a": "1"}, {"a": 2}]
    if backend_name == "hstore":
        with pytest.raises(InvalidData, match="row 1: field 'a'"):
            datastore.put_many(2, 1, batch)
        assert datastore.status()[0]["rows"] == 0
    else:
        keys = datastore.put_many(2, 1, batch)
        assert datastore.get(keys[1]).data == {"a": 2}  # type: ignore[union-attr]


def test_get_many_across_servers_leaves_missing_out(datastore: hvcore.Datastore) -> None:
    keys = [datastore.put(s, 1, s=str(s)) for s in range(16)]
    missing = Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=5, added_id=5)
    found = datastore.get_many([*keys, missing])
    assert set(found) == set(keys)
    assert all(found[k].data == {"s": str(k.shard_id)} for k in keys)
    assert datastore.get_many([]) == {}


@pytest.mark.parametrize("bad", [["123"], [1.5], [Key(1), "2"], "123"])
def test_get_many_rejects_non_keys(datastore: hvcore.Datastore, bad: object) -> None:
    with pytest.raises(InvalidKey):
        datastore.get_many(bad)  # type: ignore[arg-type]


def test_get_many_rejects_unmapped_shards_before_io(datastore: hvcore.Datastore) -> None:
    key = datastore.put(1, 1, a="b")
    with pytest.raises(ShardNotFound):
        datastore.get_many([key, Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=99, added_id=0)])


def test_update_merges_replace_replaces(datastore: hvcore.Datastore) -> None:
    key = datastore.put(4, 3, a="1", b="2")
    assert datastore.update(key, b="two", c="3") is True
    assert datastore.get(key) == hvcore.Record(key, 3, {"a": "1", "b": "two", "c": "3"})
    assert datastore.replace(key, z="26") is True
    assert datastore.get(key) == hvcore.Record(key, 3, {"z": "26"})


def test_update_replace_delete_of_missing_keys(datastore: hvcore.Datastore) -> None:
    missing = Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=4, added_id=1)
    assert datastore.update(missing, a="b") is False
    assert datastore.replace(missing, a="b") is False
    assert datastore.delete(missing) is False


def test_delete(datastore: hvcore.Datastore) -> None:
    key = datastore.put(10, 1, a="b")
    assert datastore.delete(key) is True
    assert datastore.get(key) is None
    assert datastore.delete(key) is False


def test_update_checks_values_before_sql(datastore: hvcore.Datastore) -> None:
    key = datastore.put(4, 1, a="b")
    with pytest.raises(InvalidData):
        datastore.update(key, bad="nul\x00")
    assert datastore.get(key).data == {"a": "b"}  # type: ignore[union-attr]


def test_query_merges_all_shards_in_key_order(datastore: hvcore.Datastore) -> None:
    written = []
    for i in range(40):
        written.append(datastore.put(i % 16, i % 3, i=str(i)))
    records = list(datastore.query())
    assert [r.key for r in records] == sorted(written)


def test_query_filters(datastore: hvcore.Datastore) -> None:
    a = datastore.put(1, 1, colour="red", size="s")
    b = datastore.put(9, 1, colour="red", size="m")
    c = datastore.put(9, 2, colour="red", size="m")
    datastore.put(2, 1, colour="blue", size="m")
    assert [r.key for r in datastore.query(kind=1, where={"colour": "red"})] == [a, b]
    assert [r.key for r in datastore.query(where={"colour": "red", "size": "m"})] == [b, c]
    assert [r.key for r in datastore.query(where={"colour": "red"}, shards=[9])] == [b, c]
    assert [r.key for r in datastore.query(where={"colour": "red"}, limit=2)] == [a, b]
    assert list(datastore.query(where={"colour": "green"})) == []
    assert list(datastore.query(where={"no such field": "red"})) == []
    assert list(datastore.query(limit=0)) == []


def test_query_where_on_hostile_field_names(datastore: hvcore.Datastore) -> None:
    name = "x'); DROP TABLE entities; --\""
    key = datastore.put(3, 1, **{name: "v", "a": "b"})
    assert [r.key for r in datastore.query(where={name: "v"})] == [key]
    assert [r.key for r in datastore.query(where={"a": "b'; --"})] == []
    assert datastore.get(key) is not None


def test_query_time_range_uses_key_bounds(datastore: hvcore.Datastore) -> None:
    first = datastore.put(5, 1, n="first")
    last = datastore.put(12, 1, n="last")
    assert [r.key for r in datastore.query(since=first, until=last)] == [first]
    assert [r.key for r in datastore.query(since=first)] == [first, last]
    later = last.created + dt.timedelta(milliseconds=1)
    assert [r.key for r in datastore.query(since=first.created, until=later)] == [first, last]
    assert list(datastore.query(since=later)) == []
    assert list(datastore.query(until=first.created)) == []


@pytest.mark.parametrize("micros", [1, 500, 999])
def test_query_time_bounds_with_microseconds_hold_exactly(datastore: hvcore.Datastore, micros: int) -> None:
    """Keys carry whole milliseconds; a datetime bound with microseconds used to be cut to its millisecond, so
    ``since=t`` returned a record created before t and ``until=t`` left one out."""
    first = datastore.put(1, 1, n="a")
    while (second := datastore.put(1, 1, n="b")).created == first.created:
        datastore.delete(second)
    t = first.created + dt.timedelta(microseconds=micros)  # after first, before second
    assert [r.key for r in datastore.query(shards=[1], since=t)] == [second]
    assert [r.key for r in datastore.query(shards=[1], until=t)] == [first]
    assert [r.key for r in datastore.query(shards=[1], since=first.created)] == [first, second]
    assert [r.key for r in datastore.query(shards=[1], until=first.created)] == []
    for record in datastore.query(shards=[1]):
        assert (record.key.created >= t) == (record.key == second)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"since": dt.datetime(2030, 1, 2, tzinfo=dt.UTC), "until": dt.datetime(2030, 1, 1, tzinfo=dt.UTC)},
            InvalidQuery,
            "after until",
        ),
        ({"since": dt.datetime(2030, 1, 1)}, InvalidQuery, "aware"),
        ({"since": "yesterday"}, InvalidQuery, "datetime or a Key"),
        ({"limit": -1}, InvalidQuery, "limit"),
        ({"where": [("a", "b")]}, InvalidQuery, "mapping"),
        ({"where": {1: "a"}}, InvalidQuery, "strings"),
        ({"shards": [99]}, ShardNotFound, "99"),
        ({"shards": "12"}, InvalidQuery, "iterable"),
        ({"kind": 40000}, hvcore.InvalidKind, "32767"),
    ],
)
def test_query_bad_arguments_fail_before_io(
    datastore: hvcore.Datastore, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        datastore.query(**kwargs)  # type: ignore[arg-type]


def test_query_where_hstore_values_must_be_strings(datastore: hvcore.Datastore, backend_name: str) -> None:
    key = datastore.put(1, 1, a="1")
    if backend_name == "hstore":
        with pytest.raises(InvalidData):
            datastore.query(where={"a": 1})
    else:
        assert list(datastore.query(where={"a": 1})) == []
        assert [r.key for r in datastore.query(where={"a": "1"})] == [key]


def test_query_typed_where(datastore: hvcore.Datastore, backend_name: str) -> None:
    if backend_name == "hstore":  # text only: a typed filter is refused before any SQL, not silently unmatched
        with pytest.raises(InvalidData, match="'n'"):
            datastore.query(where={"n": 3})
        return
    key = datastore.put(1, 1, n=3, flag=True, tags=["a"])
    datastore.put(1, 1, n=4, flag=False)
    assert [r.key for r in datastore.query(where={"n": 3})] == [key]
    assert [r.key for r in datastore.query(where={"flag": True})] == [key]


def test_query_is_lazy_and_can_stop_early(datastore: hvcore.Datastore) -> None:
    datastore.put_many(1, 1, rows(300))
    datastore.put_many(9, 1, rows(300))
    stream = datastore.query()
    first = next(iter(stream))
    assert first.key.shard_id in (1, 9)
    stream.close()  # type: ignore[attr-defined]


def test_sync_and_async_apis_match() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in inspect.getmembers(cls)
            if not name.startswith("_") and callable(member)
        }

    sync, asynchronous = public(hvcore.Datastore), public(hvcore.AsyncDatastore)
    assert set(sync) == set(asynchronous)
    for name, signature in sync.items():
        if name in asynchronous:
            assert list(signature.parameters) == list(asynchronous[name].parameters), name
