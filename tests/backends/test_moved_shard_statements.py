"""Every kind of statement a stale process sends to a moved shard's old server is `ShardMoved` (newcomer findings 3, 5).

The old server keeps a forwarding stub (`hvbackend_postgres._schema.stub_sql`: a view over a function, with an
INSTEAD OF trigger) whose function and trigger raise ``ZHV01``. Some statements never reach them: PostgreSQL refuses
them while planning (``ON CONFLICT (id)`` finds no unique index on a view: 42P10; TRUNCATE of a view: 42809...).
Here every transaction method, and raw SQL of both kinds through ``tx.cursor()``, ``cursor()`` and
``get_connection()``, sync and async, on jsonb and hstore, must raise `ShardMoved`; afterwards the datastore knows
the new server (transactions: run again; ``cursor``/``get_connection``: the next one goes there).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

import hvcore
from hvcore import ShardMoved

pytestmark = pytest.mark.postgres

MOVED = 3
_names = itertools.count()


class Moved:
    """Two databases of the machine's PostgreSQL (servers 0 and 1), shard 3 moved from 0 to 1, one row in it."""

    def __init__(self, pg_main: dict[str, Any], backend: str) -> None:
        self.backend = backend
        self.names = [f"hv_movedsql_{os.getpid()}_{next(_names)}" for _ in range(2)]
        self.pg_main = pg_main
        with psycopg.connect(**pg_main, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f"CREATE DATABASE {name}")
        self.servers = [
            {**pg_main, "dbname": self.names[0], "shards": "0-8"},
            {**pg_main, "dbname": self.names[1], "shards": "8-16"},
        ]
        with self.stale() as mover:
            mover.provision()
            self.key = mover.put(MOVED, 1, n="before")
            mover.move_shard(MOVED, 1)

    def stale(self) -> hvcore.Datastore:
        """A Datastore with the config from before the move."""
        return hvcore.Datastore([dict(s) for s in self.servers], backend=self.backend)

    def astale(self) -> hvcore.AsyncDatastore:
        """The same, asyncio."""
        return hvcore.AsyncDatastore([dict(s) for s in self.servers], backend=self.backend)

    def drop(self) -> None:
        with psycopg.connect(**self.pg_main, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module", params=["jsonb", "hstore"])
def moved(request: pytest.FixtureRequest, pg_main: dict[str, Any]) -> Iterator[Moved]:
    setup = Moved(pg_main, str(request.param))
    try:
        yield setup
    finally:
        setup.drop()


# Each call runs one statement of its kind in a transaction on the moved shard (``tx``; ``key`` is its row).
TX_CALLS: dict[str, Callable[[Any, hvcore.Key], Any]] = {
    "put": lambda tx, key: tx.put(1, n="x"),
    "put_many": lambda tx, key: tx.put_many(1, [{"n": "x"}, {"n": "y"}]),
    "get": lambda tx, key: tx.get(key),
    "get_many": lambda tx, key: tx.get_many([key]),
    "update": lambda tx, key: tx.update(key, n="y"),
    "replace": lambda tx, key: tx.replace(key, n="y"),
    "delete": lambda tx, key: tx.delete(key),
    "query": lambda tx, key: list(tx.query(kind=1)),
}
RAW_SQL = {
    "read": "SELECT count(*) FROM entities",  # reaches the stub's function: ZHV01
    "write": "UPDATE entities SET kind = 2",  # the stub's trigger (per row: the view's rows are read first)
    "on_conflict": "INSERT INTO entities (id, kind, body) SELECT 1, 1, body FROM entities LIMIT 0 "
    "ON CONFLICT (id) DO NOTHING",  # refused while planning: 42P10
    "truncate": "TRUNCATE entities",  # refused while planning: 42809
}


@pytest.mark.parametrize("call", sorted(TX_CALLS))
def test_every_transaction_method_on_a_moved_shard_is_shard_moved_then_runs_there(moved: Moved, call: str) -> None:
    with moved.stale() as db:
        with pytest.raises(ShardMoved, match="run it again"), db.transaction(MOVED) as tx:
            TX_CALLS[call](tx, moved.key)
        assert tx.state == "rolled back"
        with db.transaction(MOVED, read_only=True) as tx:  # the datastore learnt the move: the new server
            assert tx.get(moved.key) is not None


async def _alist(stream: Any) -> list[Any]:
    return [r async for r in stream]


ASYNC_TX_CALLS: dict[str, Callable[[Any, hvcore.Key], Awaitable[Any]]] = {
    **{name: call for name, call in TX_CALLS.items() if name != "query"},
    "query": lambda tx, key: _alist(tx.query(kind=1)),
}


@pytest.mark.parametrize("call", sorted(ASYNC_TX_CALLS))
def test_every_async_transaction_method_on_a_moved_shard_is_shard_moved(moved: Moved, call: str) -> None:
    async def scenario() -> None:
        async with moved.astale() as db:
            with pytest.raises(ShardMoved, match="run it again"):
                async with db.transaction(MOVED) as tx:
                    await ASYNC_TX_CALLS[call](tx, moved.key)
            async with db.transaction(MOVED, read_only=True) as tx:
                assert await tx.get(moved.key) is not None

    asyncio.run(scenario())


@pytest.mark.parametrize("statement", sorted(RAW_SQL))
def test_raw_sql_in_a_transaction_on_a_moved_shard_is_shard_moved(moved: Moved, statement: str) -> None:
    with moved.stale() as db:
        with pytest.raises(ShardMoved), db.transaction(MOVED) as tx, tx.cursor() as cur:
            cur.execute(RAW_SQL[statement])
        assert tx.state == "rolled back"
        with db.transaction(MOVED, read_only=True) as tx:
            assert tx.get(moved.key) is not None


@pytest.mark.parametrize("statement", sorted(RAW_SQL))
def test_raw_sql_through_cursor_on_a_moved_shard_is_shard_moved_then_followed(moved: Moved, statement: str) -> None:
    with moved.stale() as db:
        with pytest.raises(ShardMoved) as caught, db.cursor(MOVED) as cur:
            cur.execute(RAW_SQL[statement])
        assert "the next cursor(3) goes to" in "\n".join(getattr(caught.value, "__notes__", []))
        with db.cursor(MOVED) as cur:  # the new server: the row is there (nothing was committed above)
            cur.execute("SELECT count(*) FROM entities")
            assert cur.fetchone()[0] == 1  # type: ignore[index]
        assert db.servers[0].stats()["borrowed"] == 0


@pytest.mark.parametrize("statement", sorted(RAW_SQL))
def test_raw_sql_through_get_connection_on_a_moved_shard_is_shard_moved(moved: Moved, statement: str) -> None:
    """At the statement itself (``conn.execute`` and cursors); returning the connection teaches the datastore."""
    with moved.stale() as db:
        conn = db.get_connection(MOVED)
        try:
            with pytest.raises(ShardMoved):
                conn.execute(RAW_SQL[statement])
            conn.rollback()
            with pytest.raises(ShardMoved), conn.cursor() as cur:
                cur.execute(RAW_SQL[statement])
        finally:
            db.put_connection(conn)
        conn = db.get_connection(MOVED)
        try:
            assert conn.execute("SELECT count(*) FROM entities").fetchone()[0] == 1  # type: ignore[index]
        finally:
            db.put_connection(conn)


def test_async_raw_sql_through_cursor_on_a_moved_shard_is_shard_moved_then_followed(moved: Moved) -> None:
    async def scenario() -> None:
        async with moved.astale() as db:
            for statement in sorted(RAW_SQL):
                with pytest.raises(ShardMoved):
                    async with db.cursor(MOVED) as cur:
                        await cur.execute(RAW_SQL[statement])
                db.shard_map = db.shard_map.moved(MOVED, 0)  # forget the move again for the next statement
                db._versions().clear()
            with pytest.raises(ShardMoved):
                async with db.transaction(MOVED) as tx, tx.cursor() as cur:
                    await cur.execute(RAW_SQL["truncate"])

    asyncio.run(scenario())


def test_a_planning_error_on_a_live_shard_stays_the_drivers_error(moved: Moved) -> None:
    """A statement failing for its own reasons on a shard that did not move is not mistaken for a move."""
    with moved.stale() as db:
        with pytest.raises(psycopg.errors.UndefinedColumn), db.cursor(2) as cur:
            cur.execute("SELECT no_such_column FROM entities")
        with pytest.raises(psycopg.errors.InvalidColumnReference), db.transaction(2) as tx, tx.cursor() as cur:
            cur.execute("INSERT INTO entities SELECT * FROM entities LIMIT 0 ON CONFLICT (kind) DO NOTHING")
