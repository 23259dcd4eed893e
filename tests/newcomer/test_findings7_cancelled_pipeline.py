"""Seventh newcomer: a cancellation landing as a pipelined read enters psycopg's pipeline poisons the pooled session.

Every fan-out read (a ``query`` page, ``get_many``, filter writes, row counts) runs in ``async with
conn.pipeline()`` (``AsyncPostgresServerStore._pipelined``). psycopg's ``AsyncPipeline.__aenter__`` puts libpq in
pipeline mode and counts the level (1) before its last await; a cancellation delivered there (an
``asyncio.timeout``, a request deadline, a ``TaskGroup`` sibling failing, ``task.cancel()``) leaves the block
without ``__aexit__``: ``conn._pipeline`` stays set at level 1 and libpq stays in pipeline mode. The connection is
then idle in autocommit, which is all ``_checkin``/``_return_to_pool`` check, so it goes back to the pool and is
reused: later pipelines nest into the stale one (never leaving it), the store's own point writes leave libpq's
pipeline mode under it, and the next users fail with errors that blame the server, their own code or their SQL:
``ServerUnavailable: ... flush request failed: another command is already in progress`` (``get_many`` after a
``put``), ``TransactionError: put: the transaction on shard 5 was aborted by an error`` (the first call of a fresh
``db.transaction()``), and ``SyntaxError: cannot insert multiple commands into a prepared statement`` (seen in the
stress: the ``BEGIN; SET LOCAL search_path`` of ``db.transaction()`` sent with the extended protocol because
psycopg believes it is in a pipeline). The root is psycopg's (``AsyncConnection.pipeline`` clears ``_pipeline``
only at level 0, and ``__aenter__`` is not undone when cancelled), but hypervault promises "a connection whose state
is unknown after an interruption ... is closed and replaced, never reused"; its return check does not look at
``conn._pipeline`` / ``pgconn.pipeline_status``.

Found by a stress of 40 tasks mixing get/get_many/put/query under random ``asyncio.timeout``s on two servers
(``pool_max=3``): most 30-round runs ended with one of those errors, and an instrumented run showed every poisoned
connection's pipeline log as ``enter-start level 0, enter raised CancelledError at level 1``. The test below
delivers that cancellation deterministically: a real ``task.cancel()`` of the task at an await inside
``AsyncPipeline.__aenter__``, after psycopg's own entry work, then uses the store normally (``pool_max=1``, so the
same session). Expected: a session whose pipeline state is not clean is closed and replaced, like one left in a
transaction; every later call succeeds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import pq
from psycopg._pipeline_async import AsyncPipeline

import hvcore


@pytest.mark.parametrize(
    "then",
    [
        pytest.param(("transaction", "put", "get_many", "query"), id="transaction-first"),
        pytest.param(("put", "get_many", "transaction", "query"), id="put-then-get_many"),
    ],
)
def test_a_cancel_inside_the_pipeline_entry_leaves_no_poisoned_session(
    pg_fresh_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch, then: tuple[str, ...]
) -> None:
    armed: list[bool] = []
    original = AsyncPipeline.__aenter__

    async def entering(self: AsyncPipeline) -> AsyncPipeline:
        entered = await original(self)
        if armed:  # the first pipeline entered once armed, whichever task of the call runs it
            armed.clear()
            armed_task = asyncio.current_task()
            assert armed_task is not None
            armed_task.cancel()  # the caller's deadline fires while psycopg enters the pipeline
            await asyncio.sleep(0)  # delivered here, at an await of the entry (level already 1)
        return entered

    monkeypatch.setattr(AsyncPipeline, "__aenter__", entering)

    async def main() -> list[str]:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", pool_max=1, worker=None
        ) as db:
            await db.provision()
            keys = [await db.put(shard, 1, n=shard) for shard in (3, 5, 12)]

            async def read_all() -> None:
                async for _ in db.query(kind=1):
                    pass

            task = asyncio.ensure_future(read_all())
            armed.append(True)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not armed, "the cancellation was not delivered inside the pipeline entry"

            failures: list[str] = []
            calls = {
                "transaction": lambda: _transaction(db),
                "put": lambda: db.put(3, 1, n=0),
                "get_many": lambda: db.get_many(keys),
                "query": read_all,
            }
            for _ in range(2):
                for name in then:
                    call = calls[name]
                    try:
                        await call()
                    except Exception as exc:  # every failure is the finding
                        failures.append(f"{name}: {type(exc).__name__}: {exc}")
            for conn in list(db.servers[0]._pool._pool):  # type: ignore[attr-defined]
                if conn._pipeline is not None or conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
                    failures.append(f"idle pooled session still in a pipeline: {conn._pipeline!r}")
            return failures

    failures = asyncio.run(main())
    assert failures == [], "\n".join(failures)


async def _transaction(db: hvcore.AsyncDatastore) -> None:
    async with db.transaction(5) as tx:
        await tx.put(1, n=1)
