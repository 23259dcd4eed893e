"""Sixth newcomer: the memory backend's lent connection does not support ``with``, unlike PostgreSQL's.

README (Testing your code): the memory backend is for unit tests of code that runs on PostgreSQL in production, and
keeps its pool rules. ``with db.get_connection(3) as conn:`` (psycopg's idiom: commit at the end of the block) works
on the PostgreSQL backends; on the memory backend it raises ``TypeError: 'MemoryConnection' object does not support
the context manager protocol``, so a unit test fails where production works (and code written against the memory
backend first avoids an idiom production supports).

With `AsyncDatastore`, the memory backend's cursor and connection are not awaitable at all: ``async with
adb.cursor(3) as cur: await cur.execute("SELECT 1")`` -- the README's own example of what memory cursors answer --
raises ``TypeError: object MemoryCursor can't be used in 'await' expression``, as do ``await conn.execute(...)``,
``await conn.commit()`` and ``await conn.rollback()`` on a lent connection: async code written for PostgreSQL cannot
be unit-tested on the memory backend.
"""

from __future__ import annotations

import asyncio

import pytest

import hvcore


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_memory_connection_works_as_a_context_manager(api: str) -> None:
    servers = [dict(shards="0-8")]
    if api == "sync":
        with hvcore.Datastore(servers, backend="memory") as db:
            conn = db.get_connection(3)
            try:
                with conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            finally:
                db.put_connection(conn)
        return

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="memory") as adb:
            aconn = await adb.get_connection(3)
            try:
                async with aconn:
                    pass
            finally:
                await adb.put_connection(aconn)

    asyncio.run(main())


@pytest.mark.parametrize("borrow", ["cursor", "get_connection"])
def test_async_memory_cursors_and_connections_are_awaitable(borrow: str) -> None:
    async def main() -> None:
        async with hvcore.AsyncDatastore([dict(shards="0-8")], backend="memory") as adb:
            if borrow == "cursor":
                async with adb.cursor(3) as cur:
                    await cur.execute("SELECT 1")
                    assert await cur.fetchone() == (1,)
                return
            conn = await adb.get_connection(3)
            try:
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
                await conn.commit()
            finally:
                await adb.put_connection(conn)

    asyncio.run(main())
