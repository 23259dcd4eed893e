"""Seventh newcomer: a cancelled ``AsyncDatastore.get_many`` leaves its reads of the other servers running.

``get_many`` over keys of two servers reads the first server in the calling task and the others in spawned tasks
(``AsyncDatastore._fetch_by_server``). When the caller is cancelled while its own read is still in progress (an
``asyncio.timeout`` around the call, a request handler's deadline, a ``TaskGroup`` sibling failing), the spawned
reads are left running: they keep queueing for the other servers' pooled connections and run their statements
later, for nobody. Under the load where timeouts fire (both servers busy), every timed-out ``get_many`` adds a ghost
waiter to the other server's pool, ahead of the callers still alive (psycopg_pool serves waiters in order), and a
retrying client multiplies them: cancellation sheds no load. The README promises "a cancelled call disturbs no
other"; its docstring says spawned reads "finish on their own", which holds for a failure but is the wrong answer to
a cancellation.

Reproduce: two servers, ``pool_max=1``; hold each server's one connection (``get_connection``); run 20 ``get_many``
of a key on each server, each under ``asyncio.timeout(0.05)``: all raise ``TimeoutError``, yet server #1's pool
then counts 20 waiting requests (``stats()["waiting"]``) and 20 ``_fetch_by_server.<locals>.read`` tasks are alive.
Expected: once the callers are cancelled, none of their work is left waiting (``waiting == 0``, no such task),
as for ``update_where``, whose ``asyncio.gather`` cancels its pieces with the caller.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hvcore


def test_a_cancelled_get_many_leaves_nothing_waiting(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> None:
    async def main() -> tuple[int, int]:
        servers = [{**pg_fresh_db, "shards": "0-8"}, {**pg_fresh_db2, "shards": "8-16"}]
        async with hvcore.AsyncDatastore(
            servers, backend="jsonb", pool_max=1, pool_block_timeout=10, worker=None
        ) as db:
            await db.provision()
            first, second = await db.put(3, 1, x=1), await db.put(12, 1, x=2)
            busy = [await db.get_connection(3), await db.get_connection(12)]  # both servers busy, e.g. slow requests
            try:
                for _ in range(20):
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await db.get_many([first, second])
                await asyncio.sleep(0.05)
                waiting = db.servers[1].stats()["waiting"]
                ghosts = sum(
                    "_fetch_by_server" in task.get_coro().__qualname__  # type: ignore[union-attr]
                    for task in asyncio.all_tasks()
                )
            finally:
                for conn in busy:
                    await db.put_connection(conn)
            await asyncio.sleep(0.2)  # let any ghost read finish before the store closes
            return waiting, ghosts

    waiting, ghosts = asyncio.run(main())
    assert (waiting, ghosts) == (0, 0), f"{waiting} request(s) still waiting on server #1, {ghosts} read task(s) alive"
