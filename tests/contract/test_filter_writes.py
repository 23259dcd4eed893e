"""Contract for update/delete by filter (`update_where`, `delete_where`, issue 14), on every backend, sync and async.

Every answer is compared with the reference semantics (`QuerySpec.matches`, as `query` filters) applied to the
records written; arguments are refused before any I/O with the errors `query` gives.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import pytest
from fixtures.datastores import TEXT_ONLY_BACKENDS, THROUGH_PGBOUNCER

import hvcore
from hvcore import DuplicateValue, InvalidData, InvalidKind, InvalidQuery, InvalidShard, Key, Record

CITIES = ("Oslo", "Rome", "Lima")


def _fill(db: hvcore.Datastore) -> list[Record]:
    """Six records in each of the 16 shards (two servers), kinds 1 and 2, text values (hstore takes them too)."""
    rng = random.Random(14)
    records: list[Record] = []
    for shard in range(16):
        for kind in (1, 2):
            bodies = [{"city": rng.choice(CITIES), "n": str(i), "shard": str(shard)} for i in range(3)]
            keys = db.put_many(shard, kind, bodies)
            records += [Record(key, kind, body) for key, body in zip(keys, bodies, strict=True)]
    return sorted(records, key=lambda r: int(r.key))


def _stored(db: hvcore.Datastore) -> list[tuple[int, int, dict[str, Any]]]:
    return [(int(r.key), r.kind, r.data) for r in db.query()]


def _expect(
    records: list[Record], match: Callable[[Record], bool], change: dict[str, Any] | None
) -> list[tuple[int, int, dict[str, Any]]]:
    """The records after merging ``change`` into (or, with None, deleting) those ``match`` selects."""
    out = []
    for r in records:
        if not match(r):
            out.append((int(r.key), r.kind, dict(r.data)))
        elif change is not None:
            out.append((int(r.key), r.kind, {**r.data, **change}))
    return out


def test_update_where_merges_into_every_match_across_servers(datastore: hvcore.Datastore) -> None:
    records = _fill(datastore)
    match = [r for r in records if r.kind == 1 and r.data["city"] == "Oslo"]
    shards = {r.key.shard_id for r in match}
    assert min(shards) < 8 <= max(shards) and len(shards) > 8  # both servers, many shards
    changed = datastore.update_where(kind=1, where={"city": "Oslo"}, set={"seen": "yes", "n": "x"})
    assert changed == len(match)
    expected = _expect(records, lambda r: r.kind == 1 and r.data["city"] == "Oslo", {"seen": "yes", "n": "x"})
    assert _stored(datastore) == expected
    # the same call again matches the same records and changes nothing more
    assert datastore.update_where(kind=1, where={"city": "Oslo"}, set={"seen": "yes", "n": "x"}) == len(match)
    assert _stored(datastore) == expected


def test_delete_where_deletes_exactly_the_matches(datastore: hvcore.Datastore) -> None:
    records = _fill(datastore)
    match = [r for r in records if r.kind == 2 and r.data["n"] == "1"]
    assert datastore.delete_where(kind=2, where={"n": "1"}) == len(match) == 16
    assert _stored(datastore) == _expect(records, lambda r: r.kind == 2 and r.data["n"] == "1", None)
    assert datastore.delete_where(kind=2, where={"n": "1"}) == 0
    assert datastore.status()[0]["rows"] + datastore.status()[1]["rows"] == len(records) - 16


def test_filters_since_until_and_shards(datastore: hvcore.Datastore) -> None:
    """since/until (keys and datetimes) and shards= select as they do in query."""
    records = _fill(datastore)
    since, until = records[20].key, records[70].key
    in_range = [r for r in records if since <= r.key < until]
    assert datastore.update_where(since=since, until=until, set={"r": "1"}) == len(in_range)
    assert _stored(datastore) == _expect(records, lambda r: since <= r.key < until, {"r": "1"})
    now = records[-1].key.created + dt.timedelta(milliseconds=1)
    assert datastore.delete_where(since=now) == 0  # nothing written after the last record
    assert datastore.delete_where(shards=[3, 12], kind=1) == 6
    left = {r.key.shard_id for r in datastore.query(kind=1)}
    assert left == set(range(16)) - {3, 12}
    assert datastore.update_where(shards=range(16), set={"all": "1"}) == len(records) - 6  # every shard, by name
    assert all(r.data["all"] == "1" for r in datastore.query())


def test_json_values_and_lists(datastore: hvcore.Datastore, backend_name: str) -> None:
    """jsonb: typed values in set and list values in where, exactly as query matches them; hstore: text only."""
    key_a = datastore.put(1, 3, tags=["a", "b"] if backend_name not in TEXT_ONLY_BACKENDS else "a,b")
    key_b = datastore.put(9, 3, tags=["b", "a"] if backend_name not in TEXT_ONLY_BACKENDS else "b,a")
    if backend_name in TEXT_ONLY_BACKENDS:
        with pytest.raises(InvalidData, match="'n'"):
            datastore.update_where(kind=3, set={"n": 2})
        assert datastore.update_where(where={"tags": "a,b"}, set={"n": "2"}) == 1
    else:
        assert datastore.update_where(where={"tags": ["a", "b"]}, set={"n": 2, "deep": {"x": [1]}}) == 1
    got_a, got_b = datastore.get(key_a), datastore.get(key_b)
    assert got_a is not None and got_b is not None
    assert got_a.data["n"] in (2, "2") and "n" not in got_b.data
    assert got_a.kind == 3  # kind and key never change


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda db: db.delete_where(), InvalidQuery, "without a filter"),
        (lambda db: db.update_where(set={"a": "1"}), InvalidQuery, "shards=range"),
        (lambda db: db.update_where(kind=1, set={}), InvalidData, "set is empty"),
        (lambda db: db.update_where(kind=1, set=[("a", "1")]), InvalidData, "set must be a mapping"),
        (lambda db: db.update_where(kind=1, set={3: "x"}), InvalidData, "3"),
        (lambda db: db.delete_where(kind=40_000), InvalidKind, "40000"),
        (lambda db: db.delete_where(where=["city"]), InvalidQuery, "where must be a mapping"),
        (lambda db: db.delete_where(shards=[99_999]), InvalidShard, "99999"),
        (lambda db: db.delete_where(since=Key(10**15), until=Key(10**14)), InvalidQuery, "after until"),
        (lambda db: db.delete_where(since=dt.datetime(2025, 1, 1)), InvalidQuery, "aware"),
        (lambda db: db.update_where(kind=1, where={"age": {">=": 1}}, set={"a": "1"}), InvalidQuery, "index"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_written(
    datastore: hvcore.Datastore, call: Callable[[Any], Any], error: type[Exception], match: str
) -> None:
    key = datastore.put(2, 1, city="Oslo")
    with pytest.raises(error, match=match):
        call(datastore)
    assert datastore.get(key) == Record(key, 1, {"city": "Oslo"})


def test_range_filter_on_an_index_and_unique_values(make_datastore: Any, backend_name: str) -> None:
    """A range filter on an indexed field selects as query does; a unique index refuses a value twice."""
    db = make_datastore()
    if backend_name.endswith(THROUGH_PGBOUNCER):  # no index can be built through it (test_indexes): refused
        with pytest.raises(InvalidQuery, match="index"):
            db.update_where(kind=4, where={"age": {">=": 5}}, set={"band": "mid"})
        return
    try:
        text = backend_name in TEXT_ONLY_BACKENDS
        for i in range(20):
            db.put(i % 16, 4, age=str(i) if text else i, code=f"c{i}")
        db.create_index(4, "age", type="bigint")
        db.create_index(4, "code", unique=True)
        assert db.update_where(kind=4, where={"age": {">=": 5, "<": 12}}, set={"band": "mid"}) == 7
        mid = sorted(int(r.data["age"]) for r in db.query(kind=4, where={"band": "mid"}))
        assert mid == list(range(5, 12))
        with pytest.raises(DuplicateValue):
            db.update_where(kind=4, where={"age": {"<": 17}}, shards=[0], set={"code": "same"})  # ages 0 and 16
        assert sorted(r.data["code"] for r in db.query(kind=4, shards=[0])) == ["c0", "c16"]  # the piece rolled back
        assert db.delete_where(kind=4, where={"age": {">": 15}}) == 4
    finally:
        for info in db.list_indexes():
            if info.index.kind is None or info.index.field is None:
                db.drop_body_index()
            else:
                db.drop_index(info.index.kind, info.index.field)
