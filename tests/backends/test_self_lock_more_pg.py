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


# -- a lent connection handed to another thread or task is held by whoever uses it ----------------------------------


def test_a_lent_connection_handed_to_another_thread_is_that_threads_hold(db: hvcore.Datastore) -> None:
    """The borrower hands its ``get_connection()`` connection to a worker thread, which locks a row there and
    commits later: the borrower's plain call waiting for that row waits (the worker, not the borrower, holds the
    session now) and succeeds after the commit; the worker's own plain call waiting for it is the worker's
    `SelfDeadlock`; once the borrower uses the connection again, it is the borrower's again."""
    key = db.put(5, 1, balance="100")
    conn = db.get_connection(5)
    locked, release = threading.Event(), threading.Event()
    seen: list[BaseException] = []

    def worker() -> None:
        try:
            conn.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
            try:
                db.update(key, note="worker")  # waits for its own statement's row lock
            except SelfDeadlock as exc:
                seen.append(exc)
            conn.execute("UPDATE entities SET kind = 3 WHERE id = %s", (key,))  # its transaction goes on
            locked.set()
            release.wait(30)
            conn.commit()
        except BaseException as exc:  # pragma: no cover (reported below)
            seen.append(exc)
            locked.set()

    thread = threading.Thread(target=worker)
    try:
        thread.start()
        assert locked.wait(30)
        timer = threading.Timer(1.5, release.set)
        timer.start()
        started = time.monotonic()
        assert db.update(key, note="borrower")  # the worker's lock: contention, it waits for the worker's commit
        waited = time.monotonic() - started
        thread.join(30)
        timer.cancel()
        assert len(seen) == 1 and isinstance(seen[0], SelfDeadlock), seen
        assert waited >= 1.0, f"{waited:.2f} s: it did not wait for the worker's commit"
        conn.execute("UPDATE entities SET kind = 4 WHERE id = %s", (key,))  # the borrower's own again
        with pytest.raises(SelfDeadlock, match=r"db\.get_connection\(5\)"):
            db.update(key, note="again")
    finally:
        release.set()
        thread.join(30)
        db.put_connection(conn)
    record = db.get(key)
    assert record is not None and record.data == {"balance": "100", "note": "borrower"} and record.kind == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_a_lent_connection_handed_to_another_task_is_that_tasks_hold(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    """A task started before the borrow (not a copy of the borrower's context) gets the connection through a
    queue: what it runs there is its own, as with a thread."""

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend=backend, pool_max=4, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            key = await db.put(5, 1, balance="100")
            handed: asyncio.Queue[Any] = asyncio.Queue()
            locked, release = asyncio.Event(), asyncio.Event()

            async def worker() -> BaseException | None:
                conn = await handed.get()
                await conn.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
                try:
                    await db.update(key, note="worker")
                except SelfDeadlock as exc:
                    found: BaseException | None = exc
                else:  # pragma: no cover (asserted below)
                    found = None
                locked.set()
                await release.wait()
                await conn.commit()
                return found

            task = asyncio.ensure_future(worker())
            await asyncio.sleep(0)
            conn = await db.get_connection(5)
            try:
                await handed.put(conn)
                await asyncio.wait_for(locked.wait(), FAST)
                asyncio.get_running_loop().call_later(1.5, release.set)
                started = time.monotonic()
                assert await db.update(key, note="borrower")  # waits for the worker's commit
                assert time.monotonic() - started >= 1.0
                assert isinstance(await task, SelfDeadlock)
                await conn.execute("UPDATE entities SET kind = 4 WHERE id = %s", (key,))  # the borrower's again
                with pytest.raises(SelfDeadlock, match=r"db\.get_connection\(5\)"):
                    await db.update(key, note="again")
            finally:
                release.set()
                await db.put_connection(conn)
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "100", "note": "borrower"} and record.kind == 2

    asyncio.run(scenario())
