"""Every multi-shard statement the PostgreSQL stores build is bounded, for any shards, keys and filter (no I/O).

The class of failure in issue 14: one statement over thousands of shards locks thousands of relations (the shared
lock table overflows), nests too deeply (stack depth) or binds too many values (65,535). Hypothesis generates shard
sets, key sets and filter shapes and checks the statements `query` and `get_many` would send: at most
`SHARDS_PER_STATEMENT` shards (× `LOCKS_PER_SHARD` relations) and a bounded number of values each, covering every
shard or key exactly once, or `InvalidQuery` before any SQL when the filter alone is over the protocol's limit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres._fanout import (
    LOCKS_PER_SHARD,
    MAX_BIND_PARAMETERS,
    PARAMETER_BUDGET,
    SHARDS_PER_STATEMENT,
    group_pieces,
    limit_error,
)
from hvbackend_postgres._schema import shard_schema
from hvbackend_postgres._store import PostgresServerStore
from hvcore import Key, QuerySpec

SHARDS = 8192
LOCK_BUDGET = 64  # PostgreSQL's default max_locks_per_transaction

STORES = {
    backend: PostgresServerStore({"host": "127.0.0.1", "port": 1}, hvcore.BackendOptions(), backend=backend)
    for backend in ("jsonb", "hstore")
}
EXT = {"jsonb": None, "hstore": "public"}


@st.composite
def shard_sets(draw: st.DrawFn) -> list[int]:
    """Shard ids in any order: a few, a range, or a random sample of up to all 8192."""
    shape = draw(st.sampled_from(["few", "range", "sample"]))
    if shape == "few":
        return draw(st.lists(st.integers(0, SHARDS - 1), min_size=1, max_size=40, unique=True))
    if shape == "range":
        low = draw(st.integers(0, SHARDS - 1))
        return list(range(low, draw(st.integers(low + 1, SHARDS))))
    rng = draw(st.randoms(use_true_random=False))
    return rng.sample(range(SHARDS), draw(st.integers(1, SHARDS)))


@st.composite
def specs(draw: st.DrawFn, backend: str) -> QuerySpec:
    """Query filters of every shape: kind, key bounds, scalar and list fields (up to far past 65,535 values)."""
    scalars = draw(st.integers(0, 50))
    lists = draw(st.sampled_from([0, 1, 3, 200, 2_000, 32_767, 40_000]))
    if backend == "hstore":  # text values only: lists are not stored there
        scalars, lists = scalars + lists, 0
    where: dict[str, Any] = {f"s{i}": "v" if backend == "hstore" else i for i in range(scalars)}
    where.update({f"l{i}": [i, "x"] for i in range(lists)})
    return QuerySpec(
        kind=draw(st.none() | st.integers(0, 32767)),
        where=where or None,
        low=draw(st.none() | st.integers(0, 2**62)),
        high=draw(st.none() | st.integers(2**62, 2**63 - 1)),
        limit=draw(st.none() | st.integers(1, 10_000)),
    )


@pytest.mark.parametrize("backend", sorted(STORES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(data=st.data())
def test_query_statements_are_bounded_for_any_filter(backend: str, data: st.DataObject) -> None:
    """Each statement of a query: ≤ 16 shards (64 relations), ≤ the parameter budget, shards covered in order."""
    store = STORES[backend]
    shard_ids = data.draw(shard_sets())
    spec = data.draw(specs(backend))
    _, one = store._query_sql(shard_ids[:1], spec, EXT[backend])
    if len(one) > MAX_BIND_PARAMETERS:
        with pytest.raises(hvcore.InvalidQuery, match="65,535"):
            store._query_pieces_of(shard_ids, spec, EXT[backend])
        return
    pieces = store._query_pieces_of(shard_ids, spec, EXT[backend])
    assert [s for piece in pieces for s in piece] == shard_ids
    for piece in pieces[:40]:  # rendering thousands of statements of thousands of conditions each takes minutes
        assert 1 <= len(piece) <= SHARDS_PER_STATEMENT
        assert len(piece) * LOCKS_PER_SHARD <= LOCK_BUDGET
        query, params = store._query_sql(piece, spec, EXT[backend])
        assert len(params) <= max(PARAMETER_BUDGET, len(one)) <= MAX_BIND_PARAMETERS
        assert query.as_string(None).count(" UNION ALL ") == len(piece) - 1


@pytest.mark.parametrize("backend", sorted(STORES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(data=st.data())
def test_get_many_statements_are_bounded_for_any_keys(backend: str, data: st.DataObject) -> None:
    """Each get_many statement: ≤ 16 shards, one array value per shard; every key asked for exactly once."""
    store = STORES[backend]
    shard_ids = data.draw(shard_sets())
    rng = data.draw(st.randoms(use_true_random=False))
    count = data.draw(st.integers(1, 25_000))
    items = [
        (
            shard,
            Key.from_parts(timestamp_ms=1_800_000_000_000 + rng.randrange(10**6), shard_id=shard, added_id=i % 1024),
        )
        for i, shard in enumerate(rng.choice(shard_ids) for _ in range(count))
    ]
    statements = store._fetch_many_statements(items, EXT[backend])
    asked: list[int] = []
    for text, params in statements:
        assert 1 <= len(params) <= SHARDS_PER_STATEMENT
        assert text.count(" UNION ALL ") == len(params) - 1
        asked += [key for keys in params for key in keys]
    assert sorted(asked) == sorted(int(key) for _, key in items)


@pytest.mark.parametrize("backend", sorted(STORES))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(data=st.data())
def test_filter_write_pieces_are_bounded_for_any_filter(backend: str, data: st.DataObject) -> None:
    """update_where/delete_where: one statement per shard (one schema each), ≤ 16 shards per transaction, every
    shard once in order; a filter over the protocol's limit is InvalidQuery before any SQL."""
    store = STORES[backend]
    shard_ids = data.draw(shard_sets())
    spec = dataclasses.replace(data.draw(specs(backend)), limit=None)
    change = data.draw(st.none() | st.just({"seen": "yes"}))
    one = store._filter_sql(spec, EXT[backend])[1] + (list(store._body_params(change)) if change else [])
    if len(one) > MAX_BIND_PARAMETERS:
        with pytest.raises(hvcore.InvalidQuery, match="65,535"):
            store._write_where_pieces(shard_ids, spec, EXT[backend], change)
        return
    statements, pieces = store._write_where_pieces(shard_ids, spec, EXT[backend], change)
    assert [s for piece in pieces for s in piece] == shard_ids
    assert all(1 <= len(piece) <= SHARDS_PER_STATEMENT for piece in pieces)
    for shard in shard_ids[:40]:
        text, params = statements[shard]
        assert text.startswith("UPDATE " if change else "DELETE ")
        assert text.count('"shard') == 1 and f'"{shard_schema(shard)}"' in text
        assert len(params) == len(one) <= MAX_BIND_PARAMETERS


@given(st.lists(st.integers(0, 300), max_size=2_000))
def test_group_pieces_keeps_each_shard_in_one_piece(shards: list[int]) -> None:
    """Items of one shard land in one piece (so its keys share one array), ≤ 16 shards per piece, order kept."""
    pieces = group_pieces(list(enumerate(shards)), lambda item: item[1])
    seen: dict[int, int] = {}
    for index, piece in enumerate(pieces):
        assert len({shard for _, shard in piece}) <= SHARDS_PER_STATEMENT
        for _, shard in piece:
            assert seen.setdefault(shard, index) == index
        assert [i for i, _ in piece] == sorted(i for i, _ in piece)
    assert sorted(i for piece in pieces for i, _ in piece) == list(range(len(shards)))


def test_limit_error_ignores_other_errors() -> None:
    """Only PostgreSQL's limits become ServerLimitReached; anything else is left to the usual translation."""
    import psycopg

    assert limit_error(ValueError("x"), "s") is None
    assert limit_error(psycopg.OperationalError("server closed the connection unexpectedly"), "s") is None
    error = limit_error(psycopg.OperationalError("number of parameters must be between 0 and 65535"), "s:1/db")
    assert isinstance(error, hvcore.ServerLimitReached) and error.limit == "bind parameters"
    assert error.server == "s:1/db"
