"""Sixth newcomer: ``with db.get_connection(shard) as conn:`` hands out the pooled connection itself, unguarded.

psycopg's idiom for a connection is ``with psycopg.connect(...) as conn:``; a newcomer writes the same for a borrowed
one. `LentConnection` guards every attribute and method, but ``with`` (``__enter__``, from wrapt's ObjectProxy)
returns the wrapped pooled connection, not the handle. After ``put_connection``, statements through that name run
on the pooled session, which the pool has lent to the next borrower since: here a ``ROLLBACK`` silently undoes
another borrower's open transaction. The README says ``conn`` raises ``ConnectionMisuse`` after the return.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hvcore


def test_the_connection_bound_by_with_is_refused_after_the_return(pg_fresh_db: dict[str, Any]) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        with db.get_connection(3) as conn:  # psycopg's idiom: commits at the end of the block
            conn.execute("SELECT 1")
        db.put_connection(conn)
        theirs = db.get_connection(4)  # another request's borrow: the same pooled session (pool_max=1)
        try:
            theirs.execute("CREATE TEMP TABLE theirs (x int)")
            with pytest.raises(hvcore.ConnectionMisuse):
                conn.execute("ROLLBACK")  # a bug in the first request's code, after it gave the connection back
            assert theirs.execute("SELECT count(*) FROM theirs").fetchone() == (0,)
        finally:
            theirs.rollback()
            db.put_connection(theirs)


def test_the_async_connection_bound_by_async_with_is_refused_after_the_return(pg_fresh_db: dict[str, Any]) -> None:
    async def main() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None
        ) as db:
            await db.provision()
            handle = await db.get_connection(3)
            async with handle as conn:
                await conn.execute("SELECT 1")
            await db.put_connection(handle)
            theirs = await db.get_connection(4)
            try:
                await theirs.execute("CREATE TEMP TABLE theirs (x int)")
                with pytest.raises(hvcore.ConnectionMisuse):
                    await conn.execute("ROLLBACK")
            finally:
                await theirs.rollback()
                await db.put_connection(theirs)

    asyncio.run(main())
