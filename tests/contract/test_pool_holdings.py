"""A caller waiting for a connection it holds itself (an open query stream, a borrowed connection) gets a
`PoolTimeout` saying so, on every backend; the memory backend runs out of connections where PostgreSQL would."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import hvcore

WAITED_FOR_ITSELF = "waited for itself"


def _text(error: BaseException) -> str:
    return " ".join([str(error), *getattr(error, "__notes__", [])])


def test_a_write_inside_a_query_loop_needs_no_second_connection(make_datastore, api) -> None:
    """A query stream holds no connection between its records (it reads pages by key, each on a connection borrowed
    for that round trip): a write inside the loop works with a pool of one (was: `PoolTimeout`, waited for itself)."""
    db = make_datastore(pool_max=1, pool_block_timeout=0.2)
    db.put_many(3, 1, [{"n": str(i)} for i in range(3)])
    for record in db.query(kind=1, shards=[3]):
        assert db.update(record.key, seen="yes")
    assert [r.data.get("seen") for r in db.query(kind=1)] == ["yes", "yes", "yes"]


def test_a_borrowed_connection_is_named_and_other_callers_are_not_blamed(make_datastore, api) -> None:
    db = make_datastore(pool_max=1, pool_block_timeout=0.2)
    key = db.put(3, 1, n="1")
    conn = db.get_connection(3)
    try:
        with pytest.raises(hvcore.PoolTimeout) as caught:
            db.get(key)
        if api == "sync":
            assert "borrowed connections (get_connection(), cursor()): 1" in _text(caught.value)
    finally:
        db.put_connection(conn)
    assert db.get(key) is not None
    # a plain timeout with nothing held by this caller says nothing of the kind
    with db.cursor(3):
        pass
    held = db.get_connection(4)
    try:
        other: list[BaseException] = []

        def elsewhere() -> None:
            try:
                db.get(key)
            except hvcore.PoolTimeout as exc:
                other.append(exc)

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        assert len(other) == 1 and WAITED_FOR_ITSELF not in _text(other[0])
    finally:
        db.put_connection(held)


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_async_one_task_writing_inside_its_query_loop(backend: str, request: pytest.FixtureRequest) -> None:
    """Real asyncio code (one task iterates and writes) with a pool of one: the stream holds no connection between
    records, so the writes get the one connection (was: `PoolTimeout` naming the stream)."""
    if backend == "memory":
        servers: list[dict[str, Any]] = [dict(shards="0-8")]
    else:
        servers = [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}]

    async def main() -> list[str | None]:
        async with hvcore.AsyncDatastore(servers, backend=backend, pool_max=1, pool_block_timeout=0.2) as db:
            await db.provision()
            await db.put_many(3, 1, [{"n": "a"}, {"n": "b"}])
            async for record in db.query(kind=1):
                assert await db.update(record.key, seen="yes")
            keys = await asyncio.gather(*(db.put(3, 1, n=str(i)) for i in range(20)))
            assert len(keys) == 20
            return [r.data.get("seen") async for r in db.query(kind=1, limit=2)]

    assert asyncio.run(main()) == ["yes", "yes"]


def test_memory_tasks_share_a_small_pool_without_timing_out() -> None:
    """The memory backend's pretend connections are taken per call and waited for without blocking the loop."""

    async def main() -> int:
        async with hvcore.AsyncDatastore([dict(shards="0-8")], backend="memory", pool_max=1) as db:

            async def reader() -> int:
                return sum([1 async for _ in db.query(kind=1)])

            await db.put(3, 1, n="x")
            counts = await asyncio.gather(*(reader() for _ in range(50)), *(db.put(3, 1, n="y") for _ in range(50)))
            return len(counts)

    assert asyncio.run(main()) == 100
