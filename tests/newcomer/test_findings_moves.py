"""A newcomer's findings on moved shards, seen from a process that still has the old config."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import hvcore

_names = itertools.count()


@pytest.fixture
def two_dbs(pg_main: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """Two new databases on the machine's PostgreSQL as servers 0 (shards 0-8) and 1 (8-16), provisioned."""
    names = [f"nc_moves_{os.getpid()}_{next(_names)}" for _ in range(2)]
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE DATABASE {name}")
    servers = [{**pg_main, "dbname": names[0], "shards": "0-8"}, {**pg_main, "dbname": names[1], "shards": "8-16"}]
    try:
        yield servers
    finally:
        with psycopg.connect(**pg_main, autocommit=True) as conn:
            for name in names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _move_shard_3(servers: list[dict[str, Any]]) -> hvcore.Key:
    """Provision, write one row to shard 3, move shard 3 to server 1; the row's key."""
    with hvcore.Datastore([dict(s) for s in servers], backend="jsonb") as mover:
        mover.provision()
        key = mover.put(3, 1, n="before")
        mover.move_shard(3, 1)
    return key


def test_a_put_in_a_transaction_on_a_moved_shard_is_shard_moved(two_dbs: list[dict[str, Any]]) -> None:
    """README: 'Moved shards ... the call raises ShardMoved and the block rolls back; the datastore has learnt the
    new placement, so running the transaction again goes to the new server.' tx.get/update/put_many do so."""
    _move_shard_3(two_dbs)
    with hvcore.Datastore([dict(s) for s in two_dbs], backend="jsonb") as stale:  # the config from before the move
        with pytest.raises(hvcore.ShardMoved), stale.transaction(3) as tx:
            tx.put(1, n="in a transaction")
        with stale.transaction(3) as tx:  # run again: the new server
            key = tx.put(1, n="in a transaction")
        assert stale.get(key) is not None


def test_async_put_in_a_transaction_on_a_moved_shard_is_shard_moved(two_dbs: list[dict[str, Any]]) -> None:
    """The asyncio form of the test above."""
    _move_shard_3(two_dbs)

    async def main() -> None:
        async with hvcore.AsyncDatastore([dict(s) for s in two_dbs], backend="jsonb") as stale:
            with pytest.raises(hvcore.ShardMoved):
                async with stale.transaction(3) as tx:
                    await tx.put(1, n="in a transaction")
            async with stale.transaction(3) as tx:
                key = await tx.put(1, n="in a transaction")
            assert await stale.get(key) is not None

    asyncio.run(main())


def test_raw_sql_through_cursor_on_a_moved_shard_is_shard_moved_then_followed(two_dbs: list[dict[str, Any]]) -> None:
    """ServerLimitReached shows raw cursor() errors are translated; the forwarding stub's refusal is not, and the
    datastore does not learn the new placement from it."""
    _move_shard_3(two_dbs)
    with hvcore.Datastore([dict(s) for s in two_dbs], backend="jsonb") as stale:
        with pytest.raises(hvcore.ShardMoved), stale.cursor(3) as cur:
            cur.execute("SELECT count(*) FROM entities")
        with stale.cursor(3) as cur:  # the datastore has learnt where shard 3 is now
            cur.execute("SELECT count(*) FROM entities")
            row = cur.fetchone()
            assert row is not None and row[0] == 1
