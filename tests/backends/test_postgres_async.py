"""The native asyncio PostgreSQL store: parity with the sync store, no threads, pool limits, faults, concurrency."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg_pool
import pytest

import hvcore
from hvbackend_postgres import AsyncPostgresServerStore, PostgresServerStore

pytestmark = pytest.mark.postgres
SECRET_ROLE = "hv_secret"  # made by the pg_cluster fixture: logs in with a password (scram-sha-256)
SECRET_PASSWORD = "s3cr3t-Pa55word"
_dbs = itertools.count()


def servers_of(pg_datastore_factory: Any, backend: str) -> list[dict[str, Any]]:
    """Settings (with shards 0-8 / 8-16) of the suite's two provisioned, emptied servers."""
    return [dict(s) for s in pg_datastore_factory(backend)._config.servers]


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine function on a fresh event loop."""
    return asyncio.run(main())  # type: ignore[arg-type]


def fresh_db(cluster: Any, index: int) -> dict[str, Any]:
    """A new empty database on cluster server ``index``: its settings."""
    settings = cluster.settings(index)
    name = f"hva_{os.getpid()}_{next(_dbs)}"
    with psycopg.connect(**settings, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return {**settings, "dbname": name}


def terminate(settings: dict[str, Any], pid: int) -> None:
    """End one server session from outside, as an administrator would."""
    clean = {k: v for k, v in settings.items() if k != "shards"}
    with psycopg.connect(**clean, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def ticking(stop: asyncio.Event, ticks: list[float]) -> None:
    """Record loop wake-ups every 10 ms until ``stop``: a blocked loop shows up as missing ticks."""
    while not stop.is_set():
        ticks.append(time.monotonic())
        await asyncio.sleep(0.01)


def borrowed(db: hvcore.AsyncDatastore) -> list[int]:
    """Connections each server store lends right now."""
    return [int(s.stats()["borrowed"]) for s in db.servers]


# -- shape -----------------------------------------------------------------------------------------------------


def test_async_store_awaits_its_io() -> None:
    """Signatures and docstrings of the two stores are compared in tests/test_sync_async.py; here: what awaits."""

    def public(cls: type) -> dict[str, Any]:
        return {name: attr for name, attr in vars(cls).items() if not name.startswith("_")}

    asynchronous = public(AsyncPostgresServerStore)
    assert "shard_mover" in public(PostgresServerStore)  # moves run on the sync store (AsyncDatastore: in a thread)
    no_io = {"label", "after_fork_in_child", "check_data", "owns", "stats", "cursor", "query", "transaction"}
    no_io |= {"index_builder", "migrator"}  # blocking schema work, which AsyncDatastore runs in a worker thread
    no_io |= {"transaction"}  # like cursor(): returns an async context manager, which awaits its I/O
    no_io |= {"leases_across_processes"}  # a class attribute: its worker leases span processes (worker="auto")
    no_io |= {"written_position"}  # reads what the writes brought back (read-your-writes): no I/O of its own
    no_io |= {"holds_session"}  # whether the running code holds a session of the store (_selflock): a dict test
    for name, attr in asynchronous.items():
        if name not in no_io:
            assert inspect.iscoroutinefunction(attr), f"{name} should be a coroutine function"
    assert inspect.isasyncgenfunction(AsyncPostgresServerStore.query)
    assert isinstance(AsyncPostgresServerStore({}, hvcore.BackendOptions()), hvcore.AsyncServerStore)


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_native_pool_and_no_threads(pg_datastore_factory: Any, backend: str) -> None:
    servers = servers_of(pg_datastore_factory, backend)
    threads_before = threading.active_count()

    async def main() -> None:
        # worker=None: the default's start lease (worker="auto") renews on a thread of its own, by design (_lease)
        async with hvcore.AsyncDatastore(servers, backend=backend, worker=None) as db:
            keys = await db.put_many(3, 1, [{"n": str(i)} for i in range(20)])
            key = await db.put(12, 2, a="b")
            found = await db.get_many([*keys, key])
            assert len(found) == 21
            async with db.cursor(12) as cur:
                assert isinstance(cur, psycopg.AsyncCursor)
                await cur.execute("SELECT current_schema() AS s")
                assert await cur.fetchone() == {"s": "shard0012"}
            assert [r.key async for r in db.query(since=keys[0])] == sorted([*keys, key])
            for store in db.servers:
                assert isinstance(store._pool, psycopg_pool.AsyncConnectionPool)  # type: ignore[attr-defined]
            assert threading.active_count() == threads_before, "the async store started threads"
            loop = asyncio.get_running_loop()
            assert getattr(loop, "_default_executor", None) is None, "work was sent to the default executor"

    run(main)


# -- pool limits -----------------------------------------------------------------------------------------------


def test_pool_exhaustion_times_out_without_blocking_the_loop(pg_datastore_factory: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=0.4) as db:
            conn = await db.get_connection(1)
            stop, ticks = asyncio.Event(), list[float]()
            ticker = asyncio.create_task(ticking(stop, ticks))
            try:
                started = time.monotonic()
                with pytest.raises(hvcore.PoolTimeout, match="pool_max=1"):
                    await db.put(2, 1, a=1)
                waited = time.monotonic() - started
                assert 0.35 <= waited < 2
                await db.put(9, 1, a=1)  # the other server has its own pool
            finally:
                stop.set()
                await ticker
                await db.put_connection(conn)
            assert len(ticks) >= 20, f"the loop ran only {len(ticks)} times in {waited:.2f} s"
            gaps = [b - a for a, b in itertools.pairwise(ticks)]
            assert max(gaps) < 0.2
            await db.put(2, 1, a=1)
            assert borrowed(db) == [0, 0]

    run(main)


def test_waiting_task_gets_the_returned_connection(pg_datastore_factory: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=3) as db:
            conn = await db.get_connection(1)
            waiter = asyncio.create_task(db.put(2, 1, a=1))
            await asyncio.sleep(0.2)
            assert not waiter.done()
            await db.put_connection(conn)
            key = await asyncio.wait_for(waiter, 2)
            assert await db.get(key) is not None

    run(main)


# -- faults ----------------------------------------------------------------------------------------------------


def test_terminated_backend_next_operation_succeeds(pg_datastore_factory: Any, pg_cluster: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1) as db:
            await db.put(1, 1, a=1)
            async with db.cursor(1) as cur:
                await cur.execute("SELECT pg_backend_pid() AS pid")
                row = await cur.fetchone()
                assert row is not None
                pid = row["pid"]
            terminate(pg_cluster.settings(0), pid)
            await asyncio.sleep(0.05)
            key = await db.put(1, 1, a=2)  # the idle dead connection is noticed at checkout
            assert await db.get(key) is not None
            keys = await db.put_many(1, 1, [{"a": 3}, {"a": 4}])
            assert len(await db.get_many(keys)) == 2
            # killed while borrowed by a user: that statement fails, the pool heals
            conn = await db.get_connection(1)
            row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
            assert row is not None
            pid = row["pid"]
            await conn.rollback()
            terminate(pg_cluster.settings(0), pid)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 1")
            await db.put_connection(conn)
            key = await db.put(1, 1, a=5)
            assert await db.get(key) is not None
            assert borrowed(db) == [0, 0]

    run(main)


def test_lost_connection_mid_batch_is_retried_once(pg_datastore_factory: Any, pg_cluster: Any) -> None:
    servers = servers_of(pg_datastore_factory, "hstore")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="hstore", pool_max=1) as db:
            await db.put(1, 1, a="warm")
            store = db.store_for(1)
            conn, pool = await store._checkout()  # type: ignore[attr-defined]
            pid = conn.info.backend_pid
            await store._checkin(conn, pool)  # type: ignore[attr-defined]
            terminate(pg_cluster.settings(0), pid)
            # no sleep: the termination may or may not be visible at checkout; either way the batch lands once
            keys = await db.put_many(1, 1, [{"n": str(i)} for i in range(50)])
            assert len(await db.get_many(keys)) == 50
            assert borrowed(db) == [0, 0]

    run(main)


def test_server_down_then_back(pg_cluster: Any) -> None:
    up = fresh_db(pg_cluster, 0)
    down = {**fresh_db(pg_cluster, 2), "user": SECRET_ROLE, "password": SECRET_PASSWORD}
    servers = [dict(shards="0-8", **up), dict(shards="8-16", **down)]

    async def main() -> None:
        db = hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=2, pool_block_timeout=3)
        await db.open()
        try:
            await db.provision()
            await db.put(10, 1, a=1)
            pg_cluster.stop(2)
            try:
                stop, ticks = asyncio.Event(), list[float]()
                ticker = asyncio.create_task(ticking(stop, ticks))
                for _ in range(5):  # more failures than pool slots: none may leak
                    started = time.monotonic()
                    with pytest.raises(hvcore.ServerUnavailable) as info:
                        await db.put(10, 1, a=2)
                    assert time.monotonic() - started < 2.5
                    message = str(info.value)
                    assert f"127.0.0.1:{down['port']}/{down['dbname']}" in message
                    assert SECRET_PASSWORD not in message and SECRET_PASSWORD not in repr(info.value)
                stop.set()
                await ticker
                gaps = [b - a for a, b in itertools.pairwise(ticks)]
                assert not gaps or max(gaps) < 0.3, "a failed connection attempt blocked the loop"
                key = await db.put(3, 1, a=3)  # the other server keeps working
                assert await db.get(key) is not None
                status = await db.status()
                assert [s["reachable"] for s in status] == [True, False]
                assert SECRET_PASSWORD not in repr(status) and SECRET_PASSWORD not in repr(db)
            finally:
                pg_cluster.start(2)
            key = await db.put(10, 1, a=4)  # recovered: the first operation after the restart succeeds
            assert await db.get(key) is not None
            assert borrowed(db) == [0, 0]
        finally:
            await db.close()

    try:
        run(main)
    finally:
        pg_cluster.start(2)


def test_wrong_password_is_login_refused(pg_cluster: Any) -> None:
    wrong = "not-the-Pa55word-42"
    settings = {**pg_cluster.settings(2), "user": SECRET_ROLE, "password": wrong}

    async def main() -> None:
        async with hvcore.AsyncDatastore([dict(shards="0-4", **settings)], backend="jsonb", pool_block_timeout=3) as db:
            started = time.monotonic()
            with pytest.raises(hvcore.LoginRefused) as info:
                await db.put(1, 1, a=1)
            assert time.monotonic() - started < 2.5
            assert "password" in str(info.value) and wrong not in str(info.value)
            with pytest.raises(hvcore.LoginRefused) as info:
                await db.provision()
            assert wrong not in str(info.value) and wrong not in repr(db.servers[0])

    run(main)


def test_not_provisioned_is_typed(pg_cluster: Any) -> None:
    settings = fresh_db(pg_cluster, 0)

    async def main() -> None:
        async with hvcore.AsyncDatastore([dict(shards="0-4", **settings)], backend="hstore") as db:
            with pytest.raises(hvcore.NotProvisioned, match="hv init"):
                await db.put(1, 1, a="b")
            with pytest.raises(hvcore.NotProvisioned, match="hv init"):
                await db.put_many(1, 1, [{"a": "b"}])
            reports = await db.provision()
            assert reports[0].created == 4
            assert await db.store_for(1).provisioned([1, 2, 9]) == [1, 2]  # type: ignore[attr-defined]
            key = await db.put(1, 1, a="b")
            assert await db.get(key) is not None
            assert borrowed(db) == [0]

    run(main)


# -- concurrency -----------------------------------------------------------------------------------------------


def test_concurrent_tasks_share_a_small_pool(pg_datastore_factory: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=3, pool_block_timeout=10) as db:

            async def worker(index: int) -> hvcore.Key:
                shard = index % 16
                key = await db.put(shard, 1, index=index)
                await db.update(key, seen=True)
                record = await db.get(key)
                assert record is not None and record.data == {"index": index, "seen": True}
                return key

            keys = await asyncio.gather(*(worker(i) for i in range(200)))
            assert len(set(keys)) == 200
            batches = await asyncio.gather(*(db.put_many(s, 2, [{"s": s}] * 25) for s in range(16)))
            found = await db.get_many([k for batch in batches for k in batch] + list(keys))
            assert len(found) == 600
            assert all(s.stats()["size"] <= 3 for s in db.servers)
            assert borrowed(db) == [0, 0]

    run(main)


def test_cancelled_tasks_return_their_connections(pg_datastore_factory: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=2) as db:
            await db.put_many(1, 1, [{"i": i} for i in range(2000)])
            slow = [asyncio.create_task(_sleep_in_cursor(db)) for _ in range(2)]
            stream = db.query(shards=[1])
            await asyncio.sleep(0.1)
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
            first = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            assert first.data == {"i": 0}
            assert borrowed(db) == [0, 0]
            assert len([r async for r in db.query(shards=[1], limit=5)]) == 5
            assert len(await db.get_many(db.layout.key(0) for _ in range(1))) == 0

    run(main)


async def _sleep_in_cursor(db: hvcore.AsyncDatastore) -> None:
    async with db.cursor(1) as cur:
        await cur.execute("SELECT pg_sleep(5)")


# -- batches ---------------------------------------------------------------------------------------------------


AWKWARD = {
    "quote": 'say "hi"',
    "backslash": "C:\\path\\",
    "arrow": '"a"=>"b", NULL',
    "unicode": "żółw ✓ \u2028",
    "tab": "a\tb\nc\r",
    "empty": "",
    "none": None,
    'key "with" quotes': "v",
}


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_copy_batches_round_trip_awkward_text(pg_datastore_factory: Any, backend: str) -> None:
    servers = servers_of(pg_datastore_factory, backend)

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend=backend) as db:
            keys = await db.put_many(5, 3, [AWKWARD, {"i": "1"}])
            found = await db.get_many(keys)
            assert found[keys[0]].data == AWKWARD and found[keys[0]].kind == 3
            assert [r.data async for r in db.query(where={"quote": 'say "hi"'})] == [AWKWARD]
            store = db.store_for(5)
            with pytest.raises(hvcore.DuplicateKey, match="batch of 2"):
                await store.insert_many(5, [(db.generator.next_key(5), 1, {"x": "new"}), (keys[1], 1, {"x": "dup"})])
            assert [r.key async for r in db.query(shards=[5])] == keys  # nothing of the rejected batch
            assert borrowed(db) == [0, 0]

    run(main)


def test_logger_logs_statements_and_copies_never_password(pg_cluster: Any) -> None:
    logger = logging.getLogger(f"hvtest.async.{next(_dbs)}")
    logger.setLevel(logging.DEBUG)  # statements are logged at DEBUG
    logger.propagate = False
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    settings = {**fresh_db(pg_cluster, 2), "user": SECRET_ROLE, "password": SECRET_PASSWORD}

    async def main(log_values: bool) -> None:
        async with hvcore.AsyncDatastore(
            [dict(shards="0-4", **settings)], backend="jsonb", logger=logger, log_values=log_values
        ) as db:
            await db.provision()
            key = await db.put(1, 5, colour="red")
            await db.put_many(1, 5, [{"colour": "blue"}])
            await db.get(key)
            async with db.cursor(2) as cur:
                await cur.execute("SELECT %s::int AS x", (41,))
            assert key in [r.key async for r in db.query(where={"colour": "red"})]

    try:
        run(lambda: main(log_values=False))
        hidden = "\n".join(lines)
        lines.clear()
        run(lambda: main(log_values=True))
    finally:
        logger.removeHandler(handler)
    text = "\n".join(lines)
    assert "INSERT INTO" in hidden and "COPY" in hidden and "body @> %s" in hidden  # query() is logged too
    assert "red" not in hidden and "blue" not in hidden and "41" not in hidden  # values only when asked
    assert "INSERT INTO" in text and "red" in text and "COPY" in text and "blue" in text
    assert "SELECT kind, body" in text and "41" in text
    assert SECRET_PASSWORD not in text + hidden


# -- query plan ------------------------------------------------------------------------------------------------


def test_time_range_is_a_merge_of_index_scans(pg_datastore_factory: Any) -> None:
    servers = servers_of(pg_datastore_factory, "jsonb")
    shards = [0, 1, 2, 3]

    async def main() -> list[str]:
        async with hvcore.AsyncDatastore(servers, backend="jsonb") as db:
            since = hvcore.Key(0)
            for shard in shards:
                await db.put_many(shard, 1, [{"n": i} for i in range(3000)])
            store = db.store_for(0)
            async with db.cursor(0) as cur:
                await cur.execute("ANALYZE")
            by_server, spec = db._plan_query(None, None, since, None, shards, None)
            query, params = store._query_sql(by_server[0], spec, None)  # type: ignore[attr-defined]
            conn = await db.get_connection(0)
            try:
                cur = await conn.execute(
                    psycopg.sql.SQL("EXPLAIN DECLARE hv_query CURSOR FOR {}").format(query), params
                )
                plan = [str(next(iter(row.values()))) for row in await cur.fetchall()]
            finally:
                await db.put_connection(conn)
            assert [r.data["n"] async for r in db.query(shards=[2], limit=3)] == [0, 1, 2]  # one shard, a limit
            return plan

    plan = run(main)
    assert plan[0].startswith("Merge Append"), plan
    assert sum("Index Scan using entities_pkey" in line for line in plan) == len(shards), plan
    assert not any(re.match(r"\s*(->\s+)?Sort\s+\(", line) for line in plan), plan  # no Sort node at all
