"""`SelfDeadlock` where the waiting statement runs on a session the caller holds itself, and who holds a lent one.

A transaction on another shard of the same server opened inside another of the caller's (a nested one on the same
shard is a savepoint of it: one session) waiting, through ``tx.cursor()`` SQL or its own ``tx.`` calls, for the outer
transaction's lock waits for itself: its statement is cancelled and named, as a plain call's is.
A connection from ``get_connection()`` handed to another thread or task is held by whoever uses it: the borrower's
plain call waiting for what the other thread's SQL there locked is ordinary contention (it waits), and the other
thread's own plain call waiting for it is the other thread's `SelfDeadlock`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import hvcore
from hvcore import SelfDeadlock

pytestmark = pytest.mark.postgres

BACKENDS = ["jsonb", "hstore"]
TIMEOUT = 30  # operation_timeout: the error must come long before it
FAST = 10.0  # seconds: well under operation_timeout, without a tight figure for a loaded machine


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, pg_fresh_db: dict[str, Any]) -> Iterator[hvcore.Datastore]:
    store = hvcore.Datastore(
        [{**pg_fresh_db, "shards": "0-8"}], backend=request.param, pool_max=4, operation_timeout=TIMEOUT
    )
    try:
        store.provision()
        yield store
    finally:
        store.close()


# -- a nested transaction on the same server waiting for the outer one ----------------------------------------------


@pytest.mark.parametrize("via", ["cursor", "update"])
def test_a_nested_transaction_waiting_for_the_outer_transactions_lock_fails_fast(
    db: hvcore.Datastore, via: str
) -> None:
    key, inner_key = db.put(5, 1, balance="100"), db.put(6, 1, n="1")
    with db.transaction(5) as outer:
        outer.update(key, balance="70")
        if via == "update":  # the inner transaction's own call waits for the outer one's table lock
            with outer.cursor() as cur:
                cur.execute('LOCK TABLE "shard0006".entities IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        with pytest.raises(SelfDeadlock) as caught, db.transaction(6) as inner:
            if via == "cursor":
                with inner.cursor() as cur:
                    cur.execute('UPDATE "shard0005".entities SET kind = 2 WHERE id = %s', (key,))
            else:
                inner.update(inner_key, n="2")
        assert time.monotonic() - started < FAST
        outer.update(key, seen="after")  # the outer transaction goes on
    message = str(caught.value)
    assert "nested db.transaction(6)" in message and "db.transaction(5)" in message, message
    assert ("UPDATE" if via == "cursor" else "UPDATE (tx.update") in message and "outer" in message, message
    record = db.get(key)
    assert record is not None and record.data == {"balance": "70", "seen": "after"} and record.kind == 1
    assert db.get(inner_key).data == {"n": "1"}  # type: ignore[union-attr]


def test_a_nested_transaction_waiting_for_another_threads_transaction_still_waits(db: hvcore.Datastore) -> None:
    """The nested transaction's statements are watched, but a wait for another thread's lock is contention."""
    key = db.put(5, 1, balance="100")
    other = db.put(6, 1, n="1")
    locked, release = threading.Event(), threading.Event()

    def holder() -> None:
        with db.transaction(5) as tx:
            tx.update(key, balance="50")
            locked.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(30)
    timer = threading.Timer(1.5, release.set)
    timer.start()
    try:
        with db.transaction(6) as outer:
            outer.update(other, n="2")
            started = time.monotonic()
            with db.transaction(5) as inner, inner.cursor() as cur:  # nested in (6): a session of its own
                cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
            waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
        timer.cancel()
    assert waited >= 1.0, f"{waited:.2f} s"
    record = db.get(key)
    assert record is not None and record.data == {"balance": "50"} and record.kind == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_a_nested_transaction_waiting_for_the_outer_transactions_lock_fails_fast(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend=backend, pool_max=4, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            key, inner_key = await db.put(5, 1, balance="100"), await db.put(6, 1, n="1")
            for via in ("cursor", "delete"):
                async with db.transaction(5) as outer:
                    await outer.update(key, balance="70")
                    if via == "delete":
                        async with outer.cursor() as cur:
                            await cur.execute('LOCK TABLE "shard0006".entities IN ACCESS EXCLUSIVE MODE')
                    started = time.monotonic()
                    with pytest.raises(SelfDeadlock, match=r"nested db\.transaction\(6\)"):
                        async with db.transaction(6) as inner:
                            if via == "cursor":
                                async with inner.cursor() as cur:
                                    await cur.execute('DELETE FROM "shard0005".entities WHERE id = %s', (key,))
                            else:
                                await inner.delete(inner_key)
                    assert time.monotonic() - started < FAST
                    await outer.update(key, balance="60")
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "60"}
            assert await db.get(inner_key) is not None

    asyncio.run(scenario())
