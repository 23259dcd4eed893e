"""Issue 13: cancelled async calls and signal-handler exceptions never lose a pool connection.

After a storm of interruptions at random moments the pool serves ``pool_max`` borrowers at once again, its size
is back to at most its maximum, ``size == available + borrowed`` once it settles, and every call works.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.pgbouncer import PgBouncerSet

import hvcore

SHARDS = [0, 1, 2, 3, 8, 9, 10, 11]


@pytest.fixture(params=["direct", "transaction"])
def storm_servers(request: pytest.FixtureRequest, _pg_factory_databases: Any) -> list[dict[str, Any]]:
    """The emptied jsonb factory databases, directly or through the transaction-mode poolers."""
    servers = [dict(s) for s in _pg_factory_databases.empty("jsonb")]
    if request.param == "direct":
        return servers
    bouncers: PgBouncerSet = request.getfixturevalue("pgbouncer_transaction")
    return [{**s, "host": "127.0.0.1", "port": b.port} for s, b in zip(servers, bouncers, strict=False)]


def _body(rnd: random.Random) -> dict[str, str]:
    size = rnd.choice([10, 1000, 50_000, 200_000])
    return {"blob": "x" * size, "n": str(rnd.random())}


def _settled(stats_of: Any, pool_max: int, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until nothing is being returned or replaced; the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = stats_of()
        if (stats["replacing"] == 0 and stats["borrowed"] == 0) or time.monotonic() > deadline:
            return stats  # type: ignore[no-any-return]
        time.sleep(0.02)


async def _one_call(db: hvcore.AsyncDatastore, rnd: random.Random, keys: list[hvcore.Key]) -> None:
    shard = rnd.choice(SHARDS)
    op = rnd.choice(["put", "get", "get_many", "update", "cursor", "query", "borrow", "put_many", "transaction"])
    if op == "put" or not keys:
        keys.append(await db.put(shard, 1, **_body(rnd)))
    elif op == "get":
        await db.get(rnd.choice(keys))
    elif op == "get_many":
        await db.get_many(rnd.sample(keys, min(4, len(keys))))
    elif op == "update":
        await db.update(rnd.choice(keys), touched="1")
    elif op == "cursor":
        async with db.cursor(shard) as cur:
            await cur.execute("SELECT count(*), pg_sleep(0.001) FROM entities")
            await cur.fetchone()
    elif op == "query":
        async for _ in db.query(kind=1, shards=[shard], limit=20):
            pass
    elif op == "put_many":
        await db.put_many(shard, 1, [{"i": str(i)} for i in range(50)])
    elif op == "transaction":  # a cancel can land in BEGIN, a statement, COMMIT or the rollback
        async with db.transaction(shard) as tx:
            keys.append(await tx.put(1, **_body(rnd)))
    else:
        conn = await db.get_connection(shard)
        try:
            await conn.execute("SELECT 1")
        finally:
            await db.put_connection(conn)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool_max", [1, 2])
def test_cancellation_storm_loses_no_connection(storm_servers: list[dict[str, Any]], pool_max: int) -> None:
    calls = 1000  # x 4 parameter sets: 4,000 cancelled calls
    rnd = random.Random(pool_max)
    unexpected: list[str] = []

    async def main() -> None:
        async with hvcore.AsyncDatastore(storm_servers, pool_max=pool_max, backend="jsonb") as db:
            keys: list[hvcore.Key] = [await db.put(s, 1, seed="1") for s in SHARDS]
            cancelled = 0
            for _ in range(0, calls, 3):
                tasks = [asyncio.ensure_future(_one_call(db, rnd, keys)) for _ in range(3)]
                await asyncio.sleep(rnd.uniform(0, 0.005))
                for task in tasks:
                    task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, asyncio.CancelledError):
                        cancelled += 1
                    elif isinstance(result, BaseException) and not isinstance(result, hvcore.PoolTimeout):
                        unexpected.append(f"{type(result).__name__}: {result}")
            # the storm really happened: how many calls end before their cancel depends on how fast calls are
            # (writes got faster this session; an idle CI run had 325 of 1,000 cancelled, under the old bound of 333)
            assert cancelled > calls // 5, f"only {cancelled} of {calls} calls were cancelled"
            for store in db.servers:
                stats = await asyncio.to_thread(_settled, store.stats, pool_max)
                assert stats["size"] <= pool_max, stats
                assert stats["size"] == stats["available"] + stats["borrowed"], stats
            # the whole pool serves again: pool_max borrowers at once on every server, then ordinary calls
            for shard in (0, 8):
                conns = [await db.get_connection(shard) for _ in range(pool_max)]
                for conn in conns:
                    await db.put_connection(conn)
            key = await db.put(5, 1, after="storm")
            assert (await db.get(key)) is not None
            for store in db.servers:
                assert store.stats()["borrowed"] == 0

    asyncio.run(main())
    assert unexpected == []


class Storm(BaseException):
    """Raised by the test's SIGUSR1 handler: a BaseException, like KeyboardInterrupt."""


def _blocked(frame: Any) -> bool:
    """True if ``frame`` (where the handler interrupted the main thread) is one of the waits a call blocks in: the
    pool's wait for a connection (`SignalSafeWaiter.wait`, through ``threading.Condition.wait``) or psycopg's wait
    for the server (``Connection.wait``)."""
    if frame is not None and frame.f_code.co_filename.endswith("threading.py"):
        frame = frame.f_back  # Condition.wait: judged by its caller (the stdlib's futures are not signal-safe)
    if frame is None or frame.f_code.co_name != "wait":
        return False
    filename = frame.f_code.co_filename.replace("\\", "/")
    return bool(filename.endswith(("/_poolguard.py", "/psycopg/connection.py")))


@contextlib.contextmanager
def _signal_storm(interval: float) -> Iterator[list[int]]:
    """SIGUSR1 to the main thread every ``interval`` s (from a thread: SIGALRM is pytest-timeout's); while
    ``state[0]`` is set and the main thread is blocked, the handler disarms it and raises `Storm`.
    ``state``: ``[armed, fired, raised]``.

    Raised only in blocking waits, where a thread spends its time and a real Ctrl-C lands: pure-Python code has
    interruption points at every call, and no library (psycopg_pool's return path included) is safe from an
    exception raised between two of its statements; arming only around the library's calls keeps the storm out
    of the test's own bookkeeping.
    """
    state = [0, 0, 0]
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        state[1] += 1
        if state[0] and _blocked(frame):
            state[0] = 0
            state[2] += 1
            raise Storm

    def sender(target: int) -> None:
        while not stop.wait(interval):
            signal.pthread_kill(target, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, handler)
    thread = threading.Thread(target=sender, args=(threading.get_ident(),), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state[0] = 0
        stop.set()
        thread.join()
        signal.signal(signal.SIGUSR1, previous)


def _sync_call(db: hvcore.Datastore, rnd: random.Random, keys: list[hvcore.Key]) -> None:
    shard = rnd.choice(SHARDS)
    op = rnd.choice(["put", "get", "get_many", "cursor", "borrow", "query", "transaction"])
    if op == "put":
        keys.append(db.put(shard, 1, n=str(rnd.random())))
    elif op == "get":
        db.get(rnd.choice(keys))
    elif op == "get_many":
        db.get_many(rnd.sample(keys, min(4, len(keys))))
    elif op == "cursor":
        with db.cursor(shard) as cur:
            cur.execute("SELECT 1")
    elif op == "query":
        for _ in db.query(kind=1, shards=[shard], limit=5):
            pass
    elif op == "transaction":
        with db.transaction(shard) as tx:
            tx.put(1, n=str(rnd.random()))
    else:
        conn = db.get_connection(shard)
        try:
            conn.execute("SELECT 1")
        finally:
            db.put_connection(conn)


# psycopg's Connection.wait is also entered for work that does not block (closing a server cursor whose
# transaction is gone): interrupted there, the cursor object is left unclosed on the client (the server's cursor
# went with its transaction) and warns when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(180)
@pytest.mark.parametrize("pool_max", [1, 2])
def test_signal_storm_loses_no_connection(storm_servers: list[dict[str, Any]], pool_max: int) -> None:
    assert threading.current_thread() is threading.main_thread()
    rnd = random.Random(pool_max)
    with hvcore.Datastore(storm_servers, pool_max=pool_max, pool_block_timeout=2, backend="jsonb") as db:
        keys = [db.put(s, 1, seed="1") for s in SHARDS]
        stop = threading.Event()

        def hog() -> None:  # keeps the pools busy, so the main thread often waits in getconn
            while not stop.is_set():
                conns = [db.get_connection(shard) for shard in (0, 8)]
                time.sleep(0.003)
                for conn in conns:
                    db.put_connection(conn)

        hogger = threading.Thread(target=hog)
        hogger.start()
        interrupted = done = 0
        deadline = time.monotonic() + 4.0
        try:
            with _signal_storm(0.002) as state:
                while time.monotonic() < deadline:
                    try:
                        state[0] = 1
                        _sync_call(db, rnd, keys)
                        state[0] = 0
                        done += 1
                    except Storm:
                        interrupted += 1
                    except hvcore.PoolTimeout:
                        state[0] = 0
        finally:
            stop.set()
            hogger.join()
        assert state[1] > 100 and interrupted > 50, (state, interrupted, done)
        for store in db.servers:
            stats = _settled(store.stats, pool_max)
            assert stats["size"] <= pool_max, stats
            assert stats["size"] == stats["available"] + stats["borrowed"], stats
            assert stats["borrowed"] == 0, stats
        for shard in (0, 8):
            conns = [db.get_connection(shard) for _ in range(pool_max)]
            for conn in conns:
                db.put_connection(conn)
        assert db.get(db.put(4, 1, after="storm")) is not None
