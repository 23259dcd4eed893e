"""A second newcomer's findings: an AsyncDatastore opened in one event loop and used in another.

pytest-asyncio with a session-scoped store fixture and function-scoped loops, or an app that opens its store with
``asyncio.run(db.open())`` and then serves with ``asyncio.run(main())``, does exactly this.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hvcore


def _store(pg_fresh_db: dict[str, Any]) -> hvcore.AsyncDatastore:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as sync_db:
        sync_db.provision()
    return hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=4, pool_block_timeout=1, worker=None)


async def _close(db: hvcore.AsyncDatastore) -> str:
    try:
        await db.close()
    except RuntimeError as exc:  # 'Event loop is closed' today: the pool's workers belong to the first loop
        return f"close() in the second loop raised {exc!r}"
    return "closed"


def test_a_store_opened_in_another_event_loop_works_or_says_so_at_once(pg_fresh_db: dict[str, Any]) -> None:
    db = _store(pg_fresh_db)
    asyncio.run(db.open())

    async def use() -> tuple[str, float]:
        started = time.monotonic()
        try:
            key = await db.put(3, 1, a=1)
            assert (await db.get(key)) is not None
            return "ok", time.monotonic() - started
        except hvcore.PoolTimeout as exc:
            return f"PoolTimeout: {exc}", time.monotonic() - started
        except hvcore.HypervaultError as exc:
            return ("typed, names the loop" if "loop" in str(exc) else f"typed: {exc}"), time.monotonic() - started

    outcome, seconds = asyncio.run(use())
    closed = asyncio.run(_close(db))
    assert outcome in ("ok", "typed, names the loop"), outcome
    assert seconds < 0.9, seconds
    assert closed == "closed", closed


def test_a_store_used_in_a_second_event_loop_can_still_open_connections(pg_fresh_db: dict[str, Any]) -> None:
    db = _store(pg_fresh_db)

    async def first() -> None:
        await db.open()
        async with db.cursor(3) as cur:
            await cur.execute("SELECT 1")

    async def second() -> tuple[str, float]:
        started = time.monotonic()

        async def one() -> None:
            async with db.cursor(3) as cur:
                await cur.execute("SELECT pg_sleep(0.3)")

        try:
            await asyncio.gather(*(one() for _ in range(4)))
            return "ok", time.monotonic() - started
        except hvcore.PoolTimeout as exc:
            return f"PoolTimeout: {exc}", time.monotonic() - started
        except hvcore.HypervaultError as exc:
            return ("typed, names the loop" if "loop" in str(exc) else f"typed: {exc}"), time.monotonic() - started

    asyncio.run(first())
    outcome, seconds = asyncio.run(second())
    closed = asyncio.run(_close(db))
    if outcome == "ok":
        assert seconds < 0.8, f"four 0.3 s blocks on a pool of 4 took {seconds:.2f} s: they ran one at a time"
    else:
        assert outcome == "typed, names the loop", outcome
    assert closed == "closed", closed
