"""Eighth newcomer: a ``get_connection()`` connection handed to a task made with ``asyncio.create_task`` after the
borrow (or to a thread running in ``contextvars.copy_context()``, as ``asyncio.to_thread`` and thread-pool helpers
of web frameworks do) is not "held by whoever uses it": the lender's plain call waiting for a row lock the task
took there raises `SelfDeadlock` at once, although the task commits on its own and the wait would end.

README (Transactions): "A ``get_connection()`` connection handed to another thread or task is held by whoever uses
it"; "a wait for another thread's transaction ... is ordinary contention and still waits". The suite's test of the
hand-over starts its task *before* the borrow and passes the connection through a queue; the usual way to hand a
connection to a task, ``asyncio.create_task(work(conn))`` after ``get_connection()``, copies the lender's context
with its hold, and the lender is then taken for the holder of what the task does.

Reproduce: ``conn = await db.get_connection(5)``; ``task = asyncio.create_task(worker())`` where the worker runs
``SELECT ... FOR UPDATE`` of a row on ``conn``, sleeps 1 s and commits; the lender's ``await db.update(key, ...)``
raises ``SelfDeadlock: ... waited for a lock held by this asyncio task's own open transaction on shard 5`` after
0.16 s. The same with a ``threading.Thread(target=contextvars.copy_context().run, args=(worker,))``; a plain
thread (no copied context) waits 1 s and succeeds.
Expected: the lender's call waits for the task's (thread's) commit and succeeds, as with a plain thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import hvcore

FOR_UPDATE = "SELECT * FROM entities WHERE id = %s FOR UPDATE"


def test_asyncio_lender_waits_for_a_task_it_handed_its_connection_to(pg_fresh_db: dict[str, Any]) -> None:
    async def scenario() -> tuple[str, float]:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None, operation_timeout=10) as db:
            await db.provision()
            key = await db.put(5, 1, n=0)
            conn = await db.get_connection(5)
            locked = asyncio.Event()

            async def worker() -> None:
                await conn.execute(FOR_UPDATE, (int(key),))
                locked.set()
                await asyncio.sleep(1.0)
                await conn.commit()

            task = asyncio.create_task(worker())
            try:
                await asyncio.wait_for(locked.wait(), 10)
                started = time.monotonic()
                try:
                    await db.update(key, n=1)
                    outcome = "updated"
                except hvcore.SelfDeadlock as exc:
                    outcome = f"SelfDeadlock: {exc}"
                waited = time.monotonic() - started
                await task
            finally:
                await db.put_connection(conn)
            return outcome, waited

    outcome, waited = asyncio.run(scenario())
    assert outcome == "updated" and waited >= 0.8, f"{outcome} after {waited:.2f} s"


def test_lender_waits_for_a_copied_context_thread_it_handed_its_connection_to(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=10) as db:
        db.provision()
        key = db.put(5, 1, n=0)
        conn = db.get_connection(5)
        locked = threading.Event()

        def worker() -> None:
            conn.execute(FOR_UPDATE, (int(key),))
            locked.set()
            time.sleep(1.0)
            conn.commit()

        thread = threading.Thread(target=contextvars.copy_context().run, args=(worker,))
        thread.start()
        try:
            assert locked.wait(10)
            started = time.monotonic()
            try:
                db.update(key, n=1)
                outcome = "updated"
            except hvcore.SelfDeadlock as exc:
                outcome = f"SelfDeadlock: {exc}"
            waited = time.monotonic() - started
        finally:
            thread.join(10)
            db.put_connection(conn)
    assert outcome == "updated" and waited >= 0.8, f"{outcome} after {waited:.2f} s"
