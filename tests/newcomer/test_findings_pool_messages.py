"""A newcomer's findings on what a PoolTimeout says when the caller itself holds the connections."""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_writing_inside_a_query_loop_with_a_small_pool_works(backend: str, request: pytest.FixtureRequest) -> None:
    """``for r in db.query(...): db.update(r.key, ...)`` with pool_max=1. The newcomer found the PoolTimeout blamed a
    put_connection() the code never needed (the stream held the server's only connection); the note then named the
    open query. Now a stream holds no connection between its records (pages by key, a connection per round trip):
    the loop simply works."""
    if backend == "memory":
        servers: list[dict[str, Any]] = [dict(shards="0-8")]
    else:
        servers = [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}]
    with hvcore.Datastore(servers, backend=backend, pool_max=1, pool_block_timeout=0.3) as db:
        db.provision()
        db.put_many(3, 1, [{"n": str(i)} for i in range(3)])
        for record in db.query(kind=1):
            assert db.update(record.key, seen="yes")
        assert [r.data["seen"] for r in db.query(kind=1)] == ["yes"] * 3


def test_callers_that_timed_out_are_not_counted_as_waiting(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=0.2, worker=None) as db:
        db.provision()
        held = db.get_connection(3)
        try:
            for _ in range(3):
                with pytest.raises(hvcore.PoolTimeout):
                    db.get_connection(4)
            assert db.servers[0].stats()["waiting"] == 0
        finally:
            db.put_connection(held)
