"""What get_connection(), cursor() and tx.cursor() lend has psycopg's shape on every backend, sync and async.

Code written for PostgreSQL is unit-tested on the memory backend (README, Testing your code), so the lent objects
answer the psycopg methods users call with the same sync/async shape (``await cur.execute(...)`` with
`AsyncDatastore`, ``with conn:`` / ``async with conn:``); and on every backend, every way to the lent connection
(``with conn as c``, ``cur.connection`` of each kind of cursor, a transaction's included) is the guarded handle,
refused with `ConnectionMisuse` once the borrow (or the ``tx.cursor()`` block) has ended.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import psycopg
import pytest

import hvcore
from hvbackend_memory import AsyncMemoryConnection, AsyncMemoryCursor, MemoryConnection, MemoryCursor

# psycopg's public names users call on a lent connection / cursor (closing a borrowed connection is not one: it is
# given back with put_connection)
CONNECTION_NAMES = ("cursor", "execute", "commit", "rollback", "transaction", "autocommit", "closed")
CURSOR_NAMES = (
    "execute",
    "executemany",
    "fetchone",
    "fetchmany",
    "fetchall",
    "close",
    "closed",
    "connection",
    "rowcount",
)
SYNC_PROTOCOL = ("__enter__", "__exit__")
ASYNC_PROTOCOL = ("__aenter__", "__aexit__")


def _shape(cls: type, name: str) -> str:
    """``"coroutine"``, ``"call"`` or ``"value"``: how ``name`` of ``cls`` is used."""
    attr = inspect.getattr_static(cls, name, None)
    if attr is None and name in ("closed", "autocommit", "connection", "rowcount"):
        return "value"  # set on the instance
    assert attr is not None, f"{cls.__name__} has no {name}"
    if isinstance(attr, property) or not callable(attr):
        return "value"
    return "coroutine" if inspect.iscoroutinefunction(attr) else "call"


@pytest.mark.parametrize(
    "theirs, ours, names",
    [
        (psycopg.Connection, MemoryConnection, CONNECTION_NAMES + SYNC_PROTOCOL),
        (psycopg.AsyncConnection, AsyncMemoryConnection, CONNECTION_NAMES + ASYNC_PROTOCOL),
        (psycopg.Cursor, MemoryCursor, CURSOR_NAMES + SYNC_PROTOCOL + ("__iter__",)),
        (psycopg.AsyncCursor, AsyncMemoryCursor, CURSOR_NAMES + ASYNC_PROTOCOL + ("__aiter__",)),
    ],
    ids=["Connection", "AsyncConnection", "Cursor", "AsyncCursor"],
)
def test_the_memory_backends_lent_objects_have_psycopgs_shape(theirs: type, ours: type, names: tuple[str, ...]) -> None:
    wrong = [
        f"{name}: psycopg's is a {_shape(theirs, name)}, the memory backend's a {_shape(ours, name)}"
        for name in names
        if _shape(theirs, name) != _shape(ours, name)
    ]
    assert not wrong, wrong


def _servers(backend: str, request: pytest.FixtureRequest) -> tuple[list[dict[str, Any]], str]:
    if backend == "memory":
        return [dict(shards="0-8")], "memory"
    return [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}], "jsonb"


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_lent_objects_work_as_psycopgs_and_refuse_after_the_borrow(
    backend: str, request: pytest.FixtureRequest
) -> None:
    servers, name = _servers(backend, request)
    with hvcore.Datastore(servers, backend=name, pool_max=1, worker=None) as db:
        db.provision()
        conn = db.get_connection(3)
        with conn as bound:  # psycopg's idiom: commits at the end; the connection stays borrowed
            assert bound is conn
            assert bound.execute("SELECT 1").fetchone() == (1,)
        with conn.cursor() as cur:
            assert cur.execute("SELECT 1") is cur
            assert cur.rowcount == 1
            assert cur.fetchmany(5) == [(1,)]
            assert cur.connection is conn
        with conn.transaction():
            assert list(conn.execute("SELECT 1")) == [(1,)]
        conn.commit()
        db.put_connection(conn)
        with db.cursor(4) as cur:
            assert cur.execute("SELECT 1").fetchall() == [(1,)]
            from_cursor = cur.connection
        with db.transaction(5) as tx, tx.cursor() as tcur:
            assert tcur.execute("SELECT 1").fetchone() == (1,)
            from_tx = tcur.connection
        for kept in (conn, bound, from_cursor, from_tx):
            with pytest.raises(hvcore.ConnectionMisuse):
                kept.execute("SELECT 1")
        with pytest.raises(hvcore.ConnectionMisuse), conn:
            pass


@pytest.mark.parametrize("backend", ["memory", "postgres"])
def test_async_lent_objects_work_as_psycopgs_and_refuse_after_the_borrow(
    backend: str, request: pytest.FixtureRequest
) -> None:
    servers, name = _servers(backend, request)

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend=name, pool_max=1, worker=None) as db:
            await db.provision()
            conn = await db.get_connection(3)
            async with conn as bound:
                assert bound is conn
                assert await (await bound.execute("SELECT 1")).fetchone() == (1,)
            async with conn.cursor() as cur:
                assert await cur.execute("SELECT 1") is cur
                assert cur.rowcount == 1
                assert await cur.fetchmany(5) == [(1,)]
                assert cur.connection is conn
            async with conn.transaction():
                assert [row async for row in await conn.execute("SELECT 1")] == [(1,)]
            await conn.commit()
            await conn.rollback()
            await db.put_connection(conn)
            async with db.cursor(4) as cur:
                assert await (await cur.execute("SELECT 1")).fetchall() == [(1,)]
                from_cursor = cur.connection
            async with db.transaction(5) as tx, tx.cursor() as tcur:
                assert await (await tcur.execute("SELECT 1")).fetchone() == (1,)
                from_tx = tcur.connection
            for kept in (conn, bound, from_cursor, from_tx):
                with pytest.raises(hvcore.ConnectionMisuse):
                    await kept.execute("SELECT 1")
            with pytest.raises(hvcore.ConnectionMisuse):
                async with conn:
                    pass

    asyncio.run(main())
