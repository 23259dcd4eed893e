"""Fifth newcomer: `SelfDeadlock` missed a plain call whose statement runs on a fan-out worker (fixed).

With two servers, ``db.update_where``/``db.delete_where``/``db.get_many`` run the piece of each further server on a
thread of the fan-out pool (sync) or a new asyncio task (async), and on Python 3.11 ``asyncio.wait_for`` runs its
awaitable as a new task. The watch used to ask whether the *current owner* (thread or task) held a transaction, so a
piece on a worker waiting for the caller's own transaction's row lock was not watched: the call hung for
``operation_timeout`` and then blamed the server (`ServerUnavailable`). A ``with db.cursor(5)`` block's session was
not registered at all. What a caller holds now lives in its contextvars context (``hvcore._holdings.Hold``), which
the fan-out's threads and tasks copy, and every way of holding a session registers (``_selflock``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import hvcore

TIMEOUT = 3


def _entries(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**a, "shards": "0-8"}, {**b, "shards": "8-16"}]


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
