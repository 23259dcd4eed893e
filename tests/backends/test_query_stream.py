"""The PostgreSQL query stream: growing fetches, limits read exactly, records as before, connections returned."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import hvbackend_postgres._astore as astore_module
import hvbackend_postgres._common as common
import hvbackend_postgres._store as store_module
import hvcore
from hvcore import Key, Record

pytestmark = pytest.mark.postgres
SHARDS = (0, 1, 8, 9)  # two shards on each of the factory's two servers


@pytest.fixture
def small_fetches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fetch sizes 2, 8, then 20 per round trip, so a few dozen rows cross several batch boundaries."""
    monkeypatch.setattr(common, "QUERY_FETCH_FIRST", 2)
    monkeypatch.setattr(common, "QUERY_FETCH_GROWTH", 4)
    monkeypatch.setattr(common, "QUERY_FETCH_MAX", 20)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Every page a query over one piece of shards reads, sync or async: (rows asked for, rows received). A page is
    one statement (``id > last ORDER BY id LIMIT n``) on a connection borrowed for that round trip."""
    seen: list[tuple[int, int]] = []
    asked: list[int] = []
    for module in (astore_module, store_module):
        sizes, records = module.query_fetch_sizes, module.query_records

        def counted_sizes(*args: Any, _sizes: Any = sizes) -> Iterator[int]:
            for size in _sizes(*args):
                asked.append(size)  # drawn just before its page is read
                yield size

        def counted_records(rows: Any, *args: Any, _records: Any = records) -> Any:
            seen.append((asked[-1], len(rows)))
            return _records(rows, *args)

        monkeypatch.setattr(module, "query_fetch_sizes", counted_sizes)
        monkeypatch.setattr(module, "query_records", counted_records)
    yield seen


def fill(db: hvcore.Datastore, shards: tuple[int, ...], per_shard: int) -> list[Key]:
    """Rows with varied bodies in these shards (kinds 1 and 2 alternating); their keys."""
    keys: list[Key] = []
    for shard in shards:
        rows = [{"n": str(i), "shard": str(shard), "text": "é" * (i % 5), "empty": ""} for i in range(per_shard)]
        for kind in (1, 2):
            keys += db.put_many(shard, kind, rows[kind - 1 :: 2])
    return keys


def query_async(db: hvcore.Datastore, backend: str, **kwargs: Any) -> list[Record]:
    """``query(**kwargs)`` through an `AsyncDatastore` on the same servers."""

    async def main() -> list[Record]:
        async with hvcore.AsyncDatastore(list(db._config.servers), backend=backend) as adb:
            out = [record async for record in adb.query(**kwargs)]
            for server in adb.servers:
                assert server.stats()["borrowed"] == 0
            return out

    return asyncio.run(main())


def query_with(db: hvcore.Datastore, backend: str, api: str, **kwargs: Any) -> list[Record]:
    if api == "sync":
        return list(db.query(**kwargs))
    return query_async(db, backend, **kwargs)


# -- fetch sizes ---------------------------------------------------------------------------------------------


def test_fetch_sizes_default_grow_to_the_cap_and_limits_are_exact() -> None:
    assert common.QUERY_FETCH_FIRST < common.QUERY_FETCH_MAX
    sizes = common.query_fetch_sizes(None)
    first = [next(sizes) for _ in range(6)]
    assert first[0] == common.QUERY_FETCH_FIRST
    assert first[-1] == common.QUERY_FETCH_MAX
    assert all(b == min(a * common.QUERY_FETCH_GROWTH, common.QUERY_FETCH_MAX) for a, b in itertools.pairwise(first))
    for limit in (1, 5, 99, 100, 101, 501, 1234):
        got = list(common.query_fetch_sizes(limit))
        assert sum(got) == limit and all(size > 0 for size in got)
        assert got[:-1] == first[: len(got) - 1]
    assert list(common.query_fetch_sizes(0)) == []


@pytest.mark.usefixtures("small_fetches")
@pytest.mark.parametrize("api", ["sync", "async"])
def test_fetch_sizes_grow_geometrically_up_to_the_cap(
    pg_datastore_factory: Any, fetches: list[tuple[int, int]], api: str
) -> None:
    db = pg_datastore_factory("jsonb")
    keys = fill(db, (3,), 60)
    records = query_with(db, "jsonb", api, shards=[3])
    assert [r.key for r in records] == sorted(keys)
    # 2 + 8 + 20 + 20 = 50 rows, then a fetch of 20 brings the last 10: short, so no further round trip
    assert fetches == [(2, 2), (8, 8), (20, 20), (20, 20), (20, 10)]


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_limit_below_the_first_fetch_reads_only_the_limit(
    pg_datastore_factory: Any, fetches: list[tuple[int, int]], api: str
) -> None:
    db = pg_datastore_factory("jsonb")
    keys = fill(db, (3,), 300)
    assert common.QUERY_FETCH_FIRST > 5
    records = query_with(db, "jsonb", api, shards=[3], limit=5)
    assert [r.key for r in records] == sorted(keys)[:5]
    assert fetches == [(5, 5)]  # one round trip asking for exactly the limit; none to find the end


@pytest.mark.usefixtures("small_fetches")
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_limit_across_fetches_asks_for_what_is_still_needed(
    pg_datastore_factory: Any, fetches: list[tuple[int, int]], api: str
) -> None:
    db = pg_datastore_factory("jsonb")
    keys = fill(db, (3,), 60)
    records = query_with(db, "jsonb", api, shards=[3], limit=13)
    assert [r.key for r in records] == sorted(keys)[:13]
    assert fetches == [(2, 2), (8, 8), (3, 3)]


# -- results -------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_fetches")
@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_results_are_the_stored_records_in_key_order(pg_datastore_factory: Any, backend: str, api: str) -> None:
    db = pg_datastore_factory(backend)
    keys = fill(db, SHARDS, 41)  # odd sizes: batches end mid-shard and mid-merge
    stored = db.get_many(keys)  # another code path (fetch_many): the reference
    everything = [stored[key] for key in sorted(keys)]
    cases: list[dict[str, Any]] = [
        {},
        {"kind": 2},
        {"where": {"n": "7"}},
        {"since": keys[10], "until": keys[-10]},
        {"limit": 17},
        {"kind": 1, "limit": 33},
    ]
    for kwargs in cases:
        spec = hvcore.QuerySpec(kind=kwargs.get("kind"), where=kwargs.get("where"))
        expected = [r for r in everything if spec.matches(r)]
        if "since" in kwargs:
            expected = [r for r in expected if kwargs["since"] <= r.key < kwargs["until"]]
        if "limit" in kwargs:
            expected = expected[: kwargs["limit"]]
        got = query_with(db, backend, api, **kwargs)
        assert got == expected, kwargs
        for record in got:
            assert type(record) is Record and type(record.key) is Key and type(record.kind) is int
            assert type(record.data) is dict
            assert dataclasses.astuple(record) == (record.key, record.kind, record.data)
    assert len(query_with(db, backend, api)) == len(keys) == 4 * 41


def test_records_are_frozen_and_compare_like_constructed_ones(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    key = db.put(0, 3, a=1, b=[1, 2], c={"d": None})
    (record,) = db.query(shards=[0])
    assert record == Record(key, 3, {"a": 1, "b": [1, 2], "c": {"d": None}})
    assert repr(record) == repr(Record(key, 3, {"a": 1, "b": [1, 2], "c": {"d": None}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.kind = 4


def test_a_negative_id_is_still_refused_as_a_key(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    with db.cursor(0) as cur:
        cur.execute("INSERT INTO entities (id, kind, body) VALUES (-5, 1, '{}')")
    with pytest.raises(hvcore.errors.InvalidKey):
        list(db.query(shards=[0]))
    assert all(server.stats()["borrowed"] == 0 for server in db.servers)


# -- connections ---------------------------------------------------------------------------------------------


def _idle_pool_connection(server: Any) -> None:
    """The server's only pooled connection is idle, autocommit again, with no cursor left on the server."""
    conn = server._pool.getconn(timeout=5)
    try:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.autocommit
        assert conn.execute("SELECT count(*) FROM pg_catalog.pg_cursors").fetchone() == (0,)
    finally:
        server._pool.putconn(conn)


@pytest.mark.usefixtures("small_fetches")
def test_a_stream_left_open_holds_no_connection(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb", pool_max=1)
    keys = fill(db, (3,), 60)
    server = db.store_for(3)
    stream = db.query(shards=[3])
    first = [next(stream) for _ in range(15)]  # into the third page
    assert [r.key for r in first] == sorted(keys)[:15]
    assert server.stats()["borrowed"] == 0  # between round trips a stream holds no connection
    assert len(list(db.query(shards=[3]))) == 60  # pool_max=1: another stream meanwhile
    stream.close()
    assert server.stats()["borrowed"] == 0
    _idle_pool_connection(server)
    assert len(list(db.query(shards=[3]))) == 60  # pool_max=1: the same connection serves the next stream


@pytest.mark.usefixtures("small_fetches")
def test_an_async_stream_left_open_holds_no_connection(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    keys = fill(db, (3,), 60)

    async def main() -> None:
        async with hvcore.AsyncDatastore(list(db._config.servers), backend="jsonb", pool_max=1) as adb:
            server: Any = adb.store_for(3)
            stream = adb.query(shards=[3])
            first = [await anext(stream) for _ in range(15)]
            assert [r.key for r in first] == sorted(keys)[:15]
            assert server.stats()["borrowed"] == 0  # between round trips a stream holds no connection
            await stream.aclose()  # type: ignore[attr-defined]
            assert server.stats()["borrowed"] == 0
            conn = await server._pool.getconn(timeout=5)
            try:
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                assert conn.autocommit
                cur = await conn.execute("SELECT count(*) FROM pg_catalog.pg_cursors")
                assert await cur.fetchone() == (0,)
            finally:
                await server._pool.putconn(conn)
            assert len([r async for r in adb.query(shards=[3])]) == 60

    asyncio.run(main())
