"""Cancelled tasks and operation_timeout: connections come back, calls stop, errors are typed (a new user's report)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest

import hvcore


def test_cancelled_transactions_keep_no_connection(pg_fresh_db: dict[str, Any]) -> None:
    """Tasks cancelled in AsyncDatastore.transaction() (in BEGIN, a statement, COMMIT) give every connection back."""

    async def main() -> dict[str, Any]:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        hvcore.Datastore(servers, backend="jsonb").provision()
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=4, pool_block_timeout=2) as db:
            await db.put(6, 1, warm=1)

            async def body() -> None:
                async with db.transaction(6) as tx:
                    await tx.put(1, tag="cancelled")

            for turns in range(1, 20):
                for _ in range(3):
                    task = asyncio.create_task(body())
                    for _ in range(turns):
                        await asyncio.sleep(0)
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await asyncio.sleep(0.5)
            pool: dict[str, Any] = (await db.status())[0]["pool"]
            await db.put(1, 1, after="cancellations")  # PoolTimeout once every connection leaked
            return pool

    pool = asyncio.run(main())
    assert pool["borrowed"] == 0, pool


def test_cancel_while_waiting_for_a_connection_is_not_lost(pg_fresh_db: dict[str, Any]) -> None:
    """A task cancelled as the pool hands it a connection ends with CancelledError, not running on (Python 3.11's
    asyncio.wait_for, which psycopg_pool waits with, drops a cancellation arriving as the wait ends: gh-86296)."""

    async def main() -> list[int]:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        hvcore.Datastore(servers, backend="jsonb").provision()
        swallowed: list[int] = []
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=5) as db:
            await db.put(1, 1, warm=1)
            for attempt in range(60):
                hold = asyncio.Event()

                async def holder(hold: asyncio.Event = hold) -> None:
                    async with db.cursor(1):
                        await hold.wait()

                async def waiter() -> None:
                    async with db.cursor(1):
                        pass

                held = asyncio.create_task(holder())
                await asyncio.sleep(0.02)
                waiting = asyncio.create_task(waiter())
                await asyncio.sleep(0.02)
                hold.set()
                for _ in range(attempt % 12):
                    await asyncio.sleep(0)
                finished_first = waiting.done()
                waiting.cancel()
                await held
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                if not finished_first and not waiting.cancelled():
                    swallowed.append(attempt % 12)
        return swallowed

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("how", ["cursor", "get_connection", "transaction"])
def test_operation_timeout_in_user_sql_is_server_unavailable(pg_fresh_db: dict[str, Any], how: str) -> None:
    """Raw statements past operation_timeout raised psycopg's private ``_WaitTimeout``."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", operation_timeout=0.5) as db:
        db.provision()
        with pytest.raises(hvcore.ServerUnavailable, match=r"operation_timeout=0\.5 s"):
            if how == "cursor":
                with db.cursor(2) as cur:
                    cur.execute("SELECT pg_sleep(3)")
            elif how == "get_connection":
                conn = db.get_connection(2)
                try:
                    conn.execute("SELECT pg_sleep(3)")
                finally:
                    db.put_connection(conn)
            else:
                with db.transaction(2) as tx, tx.cursor() as cur:
                    cur.execute("SELECT pg_sleep(3)")
        assert db.get(db.put(2, 1, after="timeout")) is not None  # the pool serves on


def test_async_operation_timeout_in_a_cursor_is_server_unavailable(pg_fresh_db: dict[str, Any]) -> None:
    async def main() -> None:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", operation_timeout=0.5) as db:
            await db.provision()
            with pytest.raises(hvcore.ServerUnavailable, match="operation_timeout"):
                async with db.cursor(2) as cur:
                    await cur.execute("SELECT pg_sleep(3)")

    asyncio.run(main())


def test_a_write_timed_out_on_a_lock_wait_is_cancelled_not_committed_later(pg_fresh_db: dict[str, Any]) -> None:
    """operation_timeout gave up on the client only: an update waiting on a row lock went on and committed once
    the lock was released, after its caller was told the outcome was unknown. A cancel request now stops it."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", operation_timeout=0.5, pool_max=4) as db:
        db.provision()
        key = db.put(2, 5, a=1)
        locked, release = threading.Event(), threading.Event()

        def holder() -> None:  # another thread's transaction (one's own would be a SelfDeadlock: test_self_lock_pg)
            with db.transaction(2) as tx:
                tx.update(key, a=2)  # holds the row lock
                locked.set()
                release.wait(30)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert locked.wait(30)
            with pytest.raises(hvcore.ServerUnavailable):
                db.update(key, a=3)
            time.sleep(0.5)  # the cancel request travels on its own thread
        finally:
            release.set()
            thread.join(30)
        time.sleep(0.5)
        record = db.get(key)
        assert record is not None and record.data == {"a": 2}
