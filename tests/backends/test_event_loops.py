"""An AsyncDatastore used from one ``asyncio.run()`` after another (a script per step, a test loop per test)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from typing import Any

import pytest

import hvcore


def _servers(backend: str, pg_fresh_db: dict[str, Any]) -> list[dict[str, Any]]:
    if backend == "memory":
        return [dict(shards="0-8")]
    return [{**pg_fresh_db, "shards": "0-8"}]


@pytest.mark.parametrize("backend", ["memory", "jsonb", "hstore"])
def test_a_store_opened_in_one_event_loop_works_and_closes_in_the_next(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    db = hvcore.AsyncDatastore(_servers(backend, pg_fresh_db), backend=backend, pool_max=3)

    async def first() -> hvcore.Key:
        await db.open()
        await db.provision()
        return await db.put(1, 1, a="b")

    key = asyncio.run(first())  # the loop its pools' workers ran on is closed after this

    async def second() -> list[hvcore.Record | None]:
        # more calls at once than the pool holds: connections are made (and waited for) on the new loop
        return await asyncio.gather(*(db.get(key) for _ in range(12)), db.put(2, 1, c="d"))  # type: ignore[arg-type]

    *records, other = asyncio.run(second())
    assert all(r is not None and r.data == {"a": "b"} for r in records)

    async def third() -> None:
        assert await db.get(other) is not None  # type: ignore[arg-type]
        await db.close()  # was: RuntimeError('Event loop is closed') from the pool's workers of the first loop

    asyncio.run(third())
    assert all(store.stats().get("borrowed", 0) == 0 for store in db._stores)


def test_closing_from_a_later_event_loop(pg_fresh_db: dict[str, Any]) -> None:
    db = hvcore.AsyncDatastore(_servers("jsonb", pg_fresh_db), backend="jsonb")

    async def first() -> None:
        await db.open()
        await db.provision()
        await db.put(1, 1, a="b")

    asyncio.run(first())
    asyncio.run(db.close())  # was: RuntimeError('Event loop is closed')
    asyncio.run(db.open())  # and it opens again in yet another loop
    asyncio.run(db.close())


def test_a_redis_sequence_follows_the_event_loop(pg_fresh_db: dict[str, Any], redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    db = hvcore.AsyncDatastore(_servers("jsonb", pg_fresh_db), backend="jsonb", sequence=f"{url}?key_prefix={prefix}")

    async def put() -> hvcore.Key:
        await db.open()
        await db.provision()
        return await db.put(1, 1, a="b")

    keys = [asyncio.run(put()) for _ in range(3)]  # was: RuntimeError('Event loop is closed') from the second on
    assert len(set(keys)) == 3
    asyncio.run(db.close())
    with warnings.catch_warnings():  # the first loops' Redis sockets could not be closed without their loop
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


_ROUNDS = """
import asyncio, os, sys, threading, time, hvcore
settings = eval(sys.argv[1])
progress = [time.monotonic()]
def watchdog():
    while time.monotonic() - progress[0] < 20:
        time.sleep(0.5)
    print("HUNG", flush=True)
    os._exit(3)
threading.Thread(target=watchdog, daemon=True).start()
for _ in range(20):
    db = hvcore.AsyncDatastore([dict(settings, shards="0-8")], backend="jsonb", pool_max=3, worker=None)
    async def first():
        await db.open(); await db.provision(); return await db.put(1, 1, a="b")
    key = asyncio.run(first())
    async def second():  # growing the pool on this loop; asyncio.run then cancels its workers mid-connect
        return await asyncio.gather(*(db.get(key) for _ in range(12)), db.put(2, 1, c="d"))
    asyncio.run(second())
    asyncio.run(db.close())
    progress[0] = time.monotonic()
print("all ok", flush=True)
"""


def test_every_asyncio_run_ends_though_the_pool_grows_as_it_ends(pg_fresh_db: dict[str, Any]) -> None:
    """newcomer3's finding: psycopg_pool's worker swallowed the cancellation asyncio.run() sends at its end while it
    opened a connection, and asyncio.run() waited forever (about one round in six); `_Pool.worker` now stops."""
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS, repr(pg_fresh_db)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "all ok" in done.stdout, (done.returncode, done.stdout[-300:], done.stderr[-600:])


@pytest.mark.parametrize("backend", ["jsonb", "memory"])
def test_two_running_event_loops_sharing_one_store_fail_fast(backend: str, pg_fresh_db: dict[str, Any]) -> None:
    """An AsyncDatastore belongs to one event loop at a time: used from a second loop while the first still runs
    (two threads, each with its own loop) it raises WrongEventLoop at once (was: 5 s for 100 gets, each waiting for
    a pool timeout), and the first loop's use goes on unharmed. The memory backend holds nothing of a loop's."""
    import threading
    import time

    db = hvcore.AsyncDatastore(_servers(backend, pg_fresh_db), backend=backend, pool_max=2)
    ready = threading.Event()
    stop = threading.Event()
    keys: list[hvcore.Key] = []
    first_errors: list[BaseException] = []

    async def first() -> None:
        await db.open()
        await db.provision()
        keys.append(await db.put(1, 1, a="b"))
        ready.set()
        while not stop.is_set():  # the first loop keeps running, and keeps using the store
            assert await db.get(keys[0]) is not None
            await asyncio.sleep(0.01)
        await db.close()

    def run_first() -> None:
        try:
            asyncio.run(first())
        except BaseException as exc:
            first_errors.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        assert ready.wait(30)

        async def second() -> list[hvcore.Record | None]:
            return [await db.get(keys[0]) for _ in range(100)]

        started = time.monotonic()
        if backend == "memory":
            records = asyncio.run(second())
            assert all(r is not None for r in records)
        else:
            with pytest.raises(hvcore.WrongEventLoop, match=r"one event loop at a time.*one per event loop"):
                asyncio.run(second())
            assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        thread.join(30)
    assert not first_errors


def test_a_redis_sequence_refuses_a_second_running_event_loop(
    pg_fresh_db: dict[str, Any], redis_prefix: tuple[str, str]
) -> None:
    """The Redis sequence's client belongs to the loop that made it, as the pools do: a put from a second running
    loop fails at once with WrongEventLoop (was: the client switched loops under the first one's feet)."""
    import threading

    url, prefix = redis_prefix
    db = hvcore.AsyncDatastore(_servers("jsonb", pg_fresh_db), backend="jsonb", sequence=f"{url}?key_prefix={prefix}")
    ready, stop = threading.Event(), threading.Event()

    async def first() -> None:
        await db.open()
        await db.provision()
        await db.put(1, 1, a="b")
        ready.set()
        while not stop.is_set():
            await db.put(1, 1, a="b")
            await asyncio.sleep(0.01)
        await db.close()

    thread = threading.Thread(target=asyncio.run, args=(first(),))
    thread.start()
    try:
        assert ready.wait(30)
        with pytest.raises(hvcore.WrongEventLoop, match="Redis sequence"):
            asyncio.run(db.put(2, 1, c="d"))
    finally:
        stop.set()
        thread.join(30)
