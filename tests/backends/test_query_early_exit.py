"""Leaving a query stream early (``break``) gives nothing back late: no connection is held between records.

A user test: ``break`` out of ``async for record in db.query(...)``, then another ``asyncio.run()`` using the store,
printed three asyncio errors ("an error occurred during closing of asynchronous generator", "aclose(): asynchronous
generator is already running", "coroutine ... was never awaited"): the stream held a pooled connection (a
server-side cursor in an open transaction) until the generator was collected, and its clean-up ran as a task the
ending loop cancelled, then again at interpreter exit with no loop. Streams now read pages by key, each a statement
on a connection borrowed for that round trip only, so an early exit leaves nothing to give back.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import hvcore

_SCRIPT = r"""
import asyncio, sys
import hvcore
settings = eval(sys.argv[1])
shards = eval(sys.argv[2])
db = hvcore.AsyncDatastore([dict(settings, shards="0-40")], backend="jsonb", pool_max=2)

async def first():
    await db.open(); await db.provision()
    for i in range(300):
        await db.put(i % 40, 1, i=i)
    for _ in range(5):  # more early exits than the pool has connections
        async for record in db.query(shards=shards):
            break
        stats = db._stores[0].stats()
        assert stats["borrowed"] == 0, stats  # at once, with no await in between

async def second():
    assert len([r async for r in db.query(shards=shards)]) == sum(1 for i in range(300) if i % 40 in shards)
    stats = db._stores[0].stats()
    assert stats["borrowed"] == 0 and stats["connections_lost"] == 0, stats
    await db.close()

asyncio.run(first())
asyncio.run(second())
print("ok", flush=True)
"""

ASYNCIO_ERRORS = ("Task was destroyed", "error occurred during closing", "Exception ignored", "never awaited")


@pytest.mark.parametrize("shards", [[1], list(range(40))], ids=["one piece", "many pieces"])
def test_break_out_of_an_async_query_leaves_nothing_behind(pg_fresh_db: dict[str, Any], shards: list[int]) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", _SCRIPT, repr(pg_fresh_db), repr(shards)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    assert not [line for line in done.stderr.splitlines() if any(e in line for e in ASYNCIO_ERRORS)], done.stderr


@pytest.mark.parametrize("shards", [[1], list(range(16))], ids=["one piece", "many pieces"])
def test_break_out_of_a_sync_query_leaves_nothing_behind(pg_fresh_db: dict[str, Any], shards: list[int]) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", pool_max=2) as db:
        db.provision()
        for i in range(100):
            db.put(i % 16, 1, i=i)
        kept = []
        for _ in range(3):
            stream = db.query(shards=shards)  # kept alive: nothing collects it early
            for _record in stream:
                break
            kept.append(stream)
            assert db._stores[0].stats()["borrowed"] == 0
        assert sum(1 for _ in db.query(shards=shards)) == sum(1 for i in range(100) if i % 16 in shards)
        stats = db._stores[0].stats()
        assert stats["borrowed"] == 0 and stats["connections_lost"] == 0, stats
