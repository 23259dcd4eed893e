"""A cancellation at any await point of an `AsyncDatastore` call leaves the datastore as it found it.

The class of the seventh newcomer's findings: an ``asyncio.timeout``, a ``task.cancel()`` or a ``TaskGroup`` sibling
failing reaches a call at an awkward await (a spawned read still waiting for its pool, psycopg entering a
pipeline, a COMMIT's reply on its way), and the datastore's state goes wrong afterwards. The property: for a drawn
operation among put/get/get_many/query/put_many/update_where/transaction over two servers (``pool_max=1``, so the
same sessions serve every call), cancelled at its N-th suspension (a real ``task.cancel()``, or an
``asyncio.timeout`` expiring there: `CancelAt`),

- the call raises the cancellation (``CancelledError``, or ``TimeoutError`` for the timeout), never another error;
- once it has ended, none of its work is left: no hypervault task alive but returns of connections finishing
  (shielded), no caller waiting in a pool (``stats()["waiting"] == 0``) and none borrowed (``borrowed == 0``);
- every idle pooled session is clean (autocommit, idle, out of pipeline mode: what the pool hands out);
- every later call on the same datastore succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

import hvcore

ROOT = Path(__file__).resolve().parents[2]
OURS = tuple(str(ROOT / folder) + os.sep for folder in ("hvcore", "backends", "plugins"))
RETURNS = {"_return_to_pool", "_note_write"}  # shielded on purpose: they finish the call's clean-up on their own
BACKGROUND = {"_Pool.worker"}  # psycopg_pool's maintenance workers, one set per pool for its whole life
OPERATIONS = ["put", "get", "get_many", "query", "put_many", "update_where", "transaction"]


class CancelAt:
    """Await ``coro`` in the current task and cancel the task at the coroutine's ``step``-th suspension.

    The cancellation is the real one: ``task.cancel()`` (or the ``asyncio.timeout`` ``timeout`` expiring now) is
    called as the coroutine hands the future it waits for to the task, so asyncio cancels that future and throws
    ``CancelledError`` in at exactly that await, with ``Task.cancelling()`` counted as for any cancellation.
    """

    def __init__(
        self,
        coro: Coroutine[Any, Any, Any],
        step: int,
        timeout: asyncio.Timeout | None = None,
        then: Callable[[], object] = lambda: None,
        ended: Callable[[], object] = lambda: None,
    ) -> None:
        self.coro, self.step, self.timeout, self.then, self.ended = coro, step, timeout, then, ended
        self.delivered = False

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, count = self.coro, 0
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coro.throw(throw) if throw is not None else coro.send(send)
            except StopIteration as stop:
                self.ended()
                return stop.value
            except BaseException:
                self.ended()  # the state the call leaves, seen as it ends (before anything else runs)
                raise
            count += 1
            if count == self.step:
                self.delivered = True
                if self.timeout is not None:
                    self.timeout.reschedule(asyncio.get_running_loop().time())
                else:
                    task = asyncio.current_task()
                    assert task is not None
                    task.cancel()
                self.then()
            try:
                send, throw = (yield yielded), None
            except BaseException as exc:  # what the task throws in (the cancellation) goes to the coroutine
                send, throw = None, exc


def _ours(task: asyncio.Task[Any]) -> str | None:
    """The qualified name of the coroutine ``task`` runs if it is hypervault code, else None."""
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    if code is None or not code.co_filename.startswith(OURS):
        return None
    name = str(getattr(coro, "__qualname__", code.co_name))
    return None if name in BACKGROUND else name


def _returning(name: str | None) -> bool:
    """True for a shielded return of the call's clean-up (``AsyncPostgresServerStore._return_to_pool``...)."""
    return name is not None and name.rsplit(".", 1)[-1] in RETURNS


def _pool_state(db: hvcore.AsyncDatastore) -> list[str]:
    """What is wrong with the servers' pools now: callers waiting or connections borrowed, unclean idle sessions."""
    wrong = []
    for index, store in enumerate(db.servers):
        stats = store.stats()
        if stats["waiting"] or stats["borrowed"]:
            wrong.append(f"server #{index}: waiting {stats['waiting']}, borrowed {stats['borrowed']}")
        pool = store._pool  # type: ignore[attr-defined]
        for conn in list(pool._pool) if pool is not None else []:
            pgconn = conn.pgconn
            status = pq.TransactionStatus(pgconn.transaction_status).name
            pipeline = pq.PipelineStatus(pgconn.pipeline_status).name
            if not conn.autocommit or status != "IDLE" or pipeline != "OFF" or conn._pipeline is not None:
                wrong.append(
                    f"server #{index}: idle pooled session not clean: transaction {status}, pipeline {pipeline}, "
                    f"psycopg pipeline {conn._pipeline!r}, autocommit {conn.autocommit}"
                )
    return wrong


def _operations(db: hvcore.AsyncDatastore, keys: list[hvcore.Key]) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
    async def put() -> Any:
        return await db.put(3, 1, n=1)

    async def get() -> Any:
        return await db.get(keys[0])

    async def get_many() -> Any:
        return await db.get_many(keys)

    async def query() -> Any:
        return [record async for record in db.query(kind=1, limit=20)]

    async def put_many() -> Any:
        return await db.put_many(12, 3, [{"n": n} for n in range(3)])

    async def update_where() -> Any:
        return await db.update_where(set={"seen": True}, kind=2)

    async def transaction() -> Any:
        async with db.transaction(5) as tx:
            key = await tx.put(3, n=2)
            return await tx.get(key)

    return {
        "put": put,
        "get": get,
        "get_many": get_many,
        "query": query,
        "put_many": put_many,
        "update_where": update_where,
        "transaction": transaction,
    }


async def _settle(current: asyncio.Task[Any] | None) -> list[str]:
    """Wait (at most 10 s) for shielded returns to finish; the hypervault tasks still alive after, by name."""
    for _ in range(1000):
        alive = [t for t in asyncio.all_tasks() if t is not current and not t.done() and _returning(_ours(t))]
        if not alive:
            break
        await asyncio.sleep(0.01)
    return sorted(str(_ours(t)) for t in asyncio.all_tasks() if t is not current and not t.done() and _ours(t))


async def _example(
    db: hvcore.AsyncDatastore, keys: list[hvcore.Key], operation: str, step: int, how: str, busy: int | None
) -> None:
    calls = _operations(db, keys)
    current = asyncio.current_task()
    loop = asyncio.get_running_loop()
    # server ``busy``'s one connection held by another caller (a slow request) until the cancellation, or 50 ms
    held = await db.get_connection(3 if busy == 0 else 12) if busy is not None else None
    releases: list[asyncio.Task[None]] = []

    def release() -> None:
        if held is not None and not releases:
            releases.append(loop.create_task(db.put_connection(held)))

    timer = loop.call_later(0.05, release)
    left: list[str] = []

    def ended() -> None:
        """Seen as the call ends: its tasks still alive (but shielded returns), callers waiting, sessions lent."""
        for t in asyncio.all_tasks():
            if t.done() or t is asyncio.current_task() or t in releases:  # the test's own
                continue
            if (name := _ours(t)) is not None and not _returning(name):
                left.append(f"task {name} alive")
        for index, store in enumerate(db.servers):
            stats = store.stats()
            lent = int(held is not None and busy == index and not (releases and releases[0].done()))
            if stats["waiting"] or stats["borrowed"] > lent:
                left.append(f"server #{index}: waiting {stats['waiting']}, borrowed {stats['borrowed']}")

    outcome: str
    cut: CancelAt
    try:
        if how == "timeout":
            async with asyncio.timeout(None) as timeout:
                cut = CancelAt(calls[operation](), step, timeout, release, ended)
                await cut
        else:

            async def run() -> None:
                nonlocal cut
                cut = CancelAt(calls[operation](), step, then=release, ended=ended)
                await cut

            await asyncio.ensure_future(run())
        outcome = "returned"
    except (asyncio.CancelledError, TimeoutError) as exc:
        outcome = type(exc).__name__
    except Exception as exc:  # every other error is a finding
        outcome = f"{type(exc).__name__}: {exc}"
    finally:
        timer.cancel()
        release()
        for task in releases:
            await asyncio.shield(task)
    expected = ("TimeoutError" if how == "timeout" else "CancelledError") if cut.delivered else "returned"
    assert outcome == expected, f"{operation} cancelled at suspension {step} ({how}, busy {busy}): {outcome}"
    # as the call ended: no work of it left waiting or running (shielded returns of connections may be finishing)
    assert left == [], f"{operation} cancelled at suspension {step} ({how}, busy {busy}), as it ended: {left}"
    alive = await _settle(current)
    assert alive == [], f"{operation} cancelled at suspension {step}: hypervault tasks still alive: {alive}"
    assert _pool_state(db) == [], f"{operation} cancelled at suspension {step}: {_pool_state(db)}"
    for name, call in calls.items():  # every later call succeeds, on the same sessions
        try:
            await call()
        except Exception as exc:
            pytest.fail(f"after {operation} cancelled at suspension {step} ({how}), {name} failed: {exc!r}")
    assert _pool_state(db) == [], f"after {operation} cancelled at suspension {step}: {_pool_state(db)}"


def test_a_cancelled_call_leaves_the_datastore_as_it_was(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}, {**pg_fresh_db2, "shards": "8-16"}]
    with asyncio.Runner() as runner:
        db = hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=10, worker=None)

        async def setup() -> list[hvcore.Key]:
            await db.open()
            await db.provision()
            keys = [await db.put(3, 1, n=0), await db.put(12, 1, n=0)]
            await db.put_many(3, 2, [{"n": n} for n in range(3)])
            return keys

        keys = runner.run(setup())
        try:

            @settings(
                max_examples=int(os.environ.get("HV_CANCEL_EXAMPLES", "200")),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(
                operation=st.sampled_from(OPERATIONS),
                step=st.integers(1, 6),
                how=st.sampled_from(["cancel", "timeout"]),
                busy=st.sampled_from([None, 0, 1]),
            )
            def check(operation: str, step: int, how: str, busy: int | None) -> None:
                runner.run(_example(db, keys, operation, step, how, busy))

            check()
        finally:
            with contextlib.suppress(Exception):
                runner.run(db.close())
