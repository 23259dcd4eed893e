"""A fourth newcomer's findings on `update_where` / `delete_where` filters.

Their docstrings say at least one filter must be given ("to change every record say so with shards=range(8192)"),
and a call with none is refused. An empty ``where`` mapping, what a web handler builds from a request with no
filter parameters (``where={k: v for k, v in params.items() if k in FIELDS}``), is not a filter at all, yet it
passes that check and the call rewrites or deletes every record of every shard.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import hvcore


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_delete_where_with_an_empty_where_is_refused_not_a_wipe(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "memory":
        db = hvcore.Datastore([dict(shards="0-16")], backend="memory")
    else:
        fresh: dict[str, Any] = request.getfixturevalue("pg_fresh_db")
        db = hvcore.Datastore([{**fresh, "shards": "0-16"}], backend="jsonb", pool_max=2)
        db.provision()
    try:
        keys = [db.put(shard, 1, n=shard) for shard in range(16)]
        with pytest.raises(hvcore.InvalidQuery):
            db.delete_where()  # refused today, as documented
        filters: dict[str, Any] = {}  # e.g. built from a request that named no filter
        with contextlib.suppress(hvcore.InvalidQuery):
            db.delete_where(where=filters)
        assert len(db.get_many(keys)) == 16, "delete_where(where={}) deleted records without any filter"
    finally:
        db.close()


def test_update_where_with_an_empty_where_is_refused() -> None:
    db = hvcore.Datastore([dict(shards="0-16")], backend="memory")
    try:
        keys = [db.put(shard, 1, n=shard) for shard in range(16)]
        with contextlib.suppress(hvcore.InvalidQuery):
            db.update_where(set={"status": "banned"}, where={})
        changed = [k for k, rec in db.get_many(keys).items() if "status" in rec.data]
        assert not changed, f"update_where(where={{}}) changed {len(changed)} records without any filter"
    finally:
        db.close()


@pytest.mark.parametrize("call", ["update_where", "delete_where"])
def test_an_empty_where_beside_kind_is_refused_too(call: str) -> None:
    """newcomer5: ``delete_where(kind=K, where={})`` wrote every record of kind K (a handler passing its kind and a
    where built from request parameters); an explicit empty where is refused whatever else is given."""
    db = hvcore.Datastore([dict(shards="0-16")], backend="memory")
    try:
        keys = [db.put(shard, 1, n=shard) for shard in range(16)]
        extra = {"set": {"status": "banned"}} if call == "update_where" else {}
        with pytest.raises(hvcore.InvalidQuery, match="empty where"):
            getattr(db, call)(kind=1, where={}, **extra)
        assert all("status" not in rec.data for rec in db.get_many(keys).values())
        assert len(db.get_many(keys)) == 16
        assert getattr(db, call)(kind=1, where={"n": 3}, **extra) == 1  # a real filter still works
    finally:
        db.close()
