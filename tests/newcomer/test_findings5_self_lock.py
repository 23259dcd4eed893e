"""Fifth newcomer: `SelfDeadlock` misses a plain call whose statement runs on a fan-out worker.

With two servers, ``db.update_where``/``db.delete_where``/``db.get_many`` run the piece of each further server on a
thread of the fan-out pool (sync) or a new asyncio task (async). The watch asks whether the *current owner* (thread
or task) holds a transaction, so a piece on a worker waiting for the caller's own transaction's row lock is not
watched: the call hangs for ``operation_timeout`` and then blames the server (`ServerUnavailable`), exactly the
slip `SelfDeadlock` was made for.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

import hvcore

TIMEOUT = 3


def _entries(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**a, "shards": "0-8"}, {**b, "shards": "8-16"}]


@pytest.mark.xfail(
    strict=True,
    reason="update_where over two servers inside one's own transaction: the piece run on a fan-out thread is not "
    "watched, so it waits operation_timeout and raises ServerUnavailable; it should raise SelfDeadlock at once",
)
def test_update_where_over_two_servers_waiting_for_own_transaction_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    db = hvcore.Datastore(_entries(pg_fresh_db, pg_fresh_db2), backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        key = db.put(5, 1, balance=100)
        db.put(12, 1, balance=100)
        started = time.monotonic()
        with pytest.raises(hvcore.HypervaultError) as caught, db.transaction(5) as tx:
            tx.update(key, balance=70)
            db.update_where(set={"note": "x"}, kind=1)  # the slip: a filter write over every shard
        elapsed = time.monotonic() - started
        assert isinstance(caught.value, hvcore.SelfDeadlock), f"{caught.value!r} after {elapsed:.1f} s"
    finally:
        db.close()


@pytest.mark.xfail(
    strict=True,
    reason="async update_where over two servers inside the task's own transaction: the piece spawned as another "
    "task is not watched, waits operation_timeout and raises ServerUnavailable; it should raise SelfDeadlock",
)
def test_async_update_where_over_two_servers_waiting_for_own_transaction_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    async def main() -> BaseException | None:
        db = hvcore.AsyncDatastore(
            _entries(pg_fresh_db, pg_fresh_db2), backend="jsonb", pool_max=4, operation_timeout=TIMEOUT
        )
        await db.open()
        try:
            await db.provision()
            key = await db.put(5, 1, balance=100)
            await db.put(12, 1, balance=100)
            try:
                async with db.transaction(5) as tx:
                    await tx.update(key, balance=70)
                    await db.update_where(set={"note": "x"}, kind=1)
            except hvcore.HypervaultError as exc:
                return exc
            return None
        finally:
            await db.close()

    error = asyncio.run(main())
    assert isinstance(error, hvcore.SelfDeadlock), repr(error)


@pytest.mark.xfail(
    sys.version_info < (3, 12),
    strict=True,
    reason="on Python 3.11 asyncio.wait_for runs its awaitable as a new task, so `await asyncio.wait_for(db.update("
    "key, ...), 10)` inside the task's own transaction is not watched: it waits operation_timeout and raises "
    "ServerUnavailable blaming the server (asyncio.timeout() gets SelfDeadlock at once); it should be SelfDeadlock",
)
def test_async_plain_call_under_wait_for_waiting_for_own_transaction_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any],
) -> None:
    async def main() -> BaseException | None:
        db = hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT
        )
        await db.open()
        try:
            await db.provision()
            key = await db.put(5, 1, balance=100)
            try:
                async with db.transaction(5) as tx:
                    await tx.update(key, balance=70)
                    await asyncio.wait_for(db.update(key, note="x"), 10)
            except hvcore.HypervaultError as exc:
                return exc
            return None
        finally:
            await db.close()

    error = asyncio.run(main())
    assert isinstance(error, hvcore.SelfDeadlock), repr(error)


@pytest.mark.xfail(
    strict=True,
    reason="get_many([near, far]) inside one's own transaction that locked far's shard table (tx.cursor() LOCK "
    "TABLE): the read of the second server runs on a fan-out thread, is not watched, and waits operation_timeout "
    "(ServerUnavailable); get_many([far, near]) gets SelfDeadlock at once (the first server is read by the caller); "
    "both should",
)
def test_get_many_over_two_servers_waiting_for_own_table_lock_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    db = hvcore.Datastore(_entries(pg_fresh_db, pg_fresh_db2), backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        near = db.put(5, 1, balance=100)
        far = db.put(12, 1, balance=100)
        started = time.monotonic()
        with pytest.raises(hvcore.HypervaultError) as caught, db.transaction(12) as tx:
            with tx.cursor() as cur:
                cur.execute("LOCK TABLE shard0012.entities IN ACCESS EXCLUSIVE MODE")
            db.get_many([near, far])
        elapsed = time.monotonic() - started
        assert isinstance(caught.value, hvcore.SelfDeadlock), f"{caught.value!r} after {elapsed:.1f} s"
    finally:
        db.close()


@pytest.mark.xfail(
    strict=True,
    reason="a `with db.cursor(5) as cur:` block is one transaction (README), but a plain db.update waiting for the "
    "row lock of the caller's own open cursor block is not a SelfDeadlock: it hangs operation_timeout and raises "
    "ServerUnavailable blaming the server; it should fail fast as inside db.transaction()",
)
def test_a_plain_write_waiting_for_the_callers_own_cursor_block_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any],
) -> None:
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        key = db.put(5, 1, balance=100)
        started = time.monotonic()
        with pytest.raises(hvcore.HypervaultError) as caught, db.cursor(5) as cur:
            cur.execute("UPDATE entities SET kind = kind WHERE id = %s", (key,))
            db.update(key, note="x")  # the same slip as inside db.transaction()
        elapsed = time.monotonic() - started
        assert isinstance(caught.value, hvcore.SelfDeadlock), f"{caught.value!r} after {elapsed:.1f} s"
    finally:
        db.close()
