"""Sixth newcomer: ``tx.cursor()``'s ``cur.connection`` is the raw pooled connection, usable after the block.

``db.cursor(shard)`` and ``get_connection()`` lend a guarded handle: once the block ends (the connection goes back),
``cur.connection.execute(...)`` raises `ConnectionMisuse` instead of running in whoever borrowed that session next.
A cursor of ``db.transaction(shard)`` (``with tx.cursor() as cur:``) hands out the pooled psycopg connection itself:
kept past the transaction block (a helper that stored ``cur.connection``, a closure), it runs statements in the next
borrower's session -- here a ``ROLLBACK`` undoes another request's open transaction, silently.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hvcore


def test_a_transaction_cursors_connection_is_refused_after_the_block(pg_fresh_db: dict[str, Any]) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        with db.transaction(5) as tx, tx.cursor() as cur:
            cur.execute("SELECT 1")
            kept = cur.connection
        theirs = db.get_connection(6)  # the next request: the same pooled session (pool_max=1)
        try:
            theirs.execute("CREATE TEMP TABLE theirs (x int)")
            with pytest.raises(hvcore.ConnectionMisuse):
                kept.execute("ROLLBACK")
            assert theirs.execute("SELECT count(*) FROM theirs").fetchone() == (0,)
        finally:
            theirs.rollback()
            db.put_connection(theirs)


def test_an_async_transaction_cursors_connection_is_refused_after_the_block(pg_fresh_db: dict[str, Any]) -> None:
    async def main() -> None:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, worker=None) as db:
            await db.provision()
            async with db.transaction(5) as tx, tx.cursor() as cur:
                await cur.execute("SELECT 1")
                kept = cur.connection
            theirs = await db.get_connection(6)
            try:
                await theirs.execute("CREATE TEMP TABLE theirs (x int)")
                with pytest.raises(hvcore.ConnectionMisuse):
                    await kept.execute("ROLLBACK")
            finally:
                await theirs.rollback()
                await db.put_connection(theirs)

    asyncio.run(main())
