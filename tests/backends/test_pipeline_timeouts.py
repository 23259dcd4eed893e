"""Every pipelined fan-out cut off by operation_timeout ends at it, as a point operation does (`_pipelined`).

The pieces of `query`, `get_many`, `update_where`/`delete_where` and exact row counts (`status`) run in psycopg
pipelines. One waiting past ``operation_timeout`` for another session's lock used to end after twice the timeout
(psycopg's exit from the pipeline waited again) with psycopg's "cannot exit pipeline mode while busy"; now each ends
at the timeout with `ServerUnavailable` naming it, the statement cancelled on the server, the session discarded and
the pool usable; a filter write says which of its pieces committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore

TIMEOUT = 1.0
BOUND = 1.6  # operation_timeout plus the grace for the cancelled pipeline's results (0.5 s at most) and some load


@contextlib.contextmanager
def locked(db: hvcore.Datastore, shard: int, sql: str) -> Iterator[None]:
    """``sql`` run in a transaction on ``shard`` held open by another thread for the block."""
    ready, done = threading.Event(), threading.Event()

    def holder() -> None:
        with db.transaction(shard) as tx:
            with tx.cursor() as cur:
                cur.execute(sql)
            ready.set()
            done.wait(15)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert ready.wait(5)
        yield
    finally:
        done.set()
        thread.join()


def waiting_sessions(settings: dict[str, Any]) -> int:
    """Sessions of the database waiting for a lock (a cancelled statement no longer does), once none is or after
    2 s (the cancel request is finished on a thread of its own)."""
    conninfo = {k: v for k, v in settings.items() if k != "shards"}
    deadline = time.monotonic() + 2
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            assert row is not None
            if not row[0] or time.monotonic() > deadline:
                return int(row[0])
            time.sleep(0.02)


def borrowed(db: hvcore.Datastore) -> int:
    return sum(entry["pool"]["borrowed"] for entry in db.status(rows="estimated"))


def timed(call: Callable[[], object]) -> tuple[float, hvcore.ServerUnavailable]:
    started = time.monotonic()
    with pytest.raises(hvcore.ServerUnavailable) as caught:
        call()
    return time.monotonic() - started, caught.value


def check_message(error: BaseException) -> str:
    message = str(error)
    assert message.count("operation_timeout=") == 1, message
    assert message.count("PostgreSQL server") == 1, message
    assert "pipeline" not in message, message
    return message


def test_a_filter_write_cut_off_after_some_pieces_says_which_committed(pg_fresh_db: dict[str, Any]) -> None:
    settings = {**pg_fresh_db, "shards": "0-48"}  # 48 shards: three pieces of 16 on one server
    db = hvcore.Datastore([settings], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        keys = {shard: db.put(shard, 1, n=0) for shard in range(48)}
        with locked(db, 40, f"SELECT 1 FROM shard0040.entities WHERE id = {int(keys[40])} FOR UPDATE"):
            elapsed, error = timed(lambda: db.update_where(set={"n": 1}, kind=1))
            assert waiting_sessions(settings) == 0  # the cut-off statement was cancelled on the server
        message = check_message(error)
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert "2 of the 3 piece(s) sent to this server committed (32 record(s))" in message, message
        assert "did not commit" in message, message
        assert any("32 record(s) in 32 shard(s)" in note for note in error.__notes__), error.__notes__
        assert [int(db.get(keys[s]).data["n"]) for s in range(48)] == [1] * 32 + [0] * 16  # type: ignore[union-attr]
        assert borrowed(db) == 0
        assert db.update_where(set={"n": 1}, kind=1) == 48  # the pool works; running the call again finishes
        assert db.delete_where(kind=1) == 48
    finally:
        db.close()


def test_property_a_cut_off_filter_write_reports_exactly_the_pieces_before_the_locked_shard(
    pg_fresh_db: dict[str, Any],
) -> None:
    """Whichever shard's row is locked, the pieces before its piece are the ones reported committed, and hold the
    write; its piece and the later ones do not."""
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-48"}], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        keys = {shard: db.put(shard, 1, n=0) for shard in range(48)}

        @settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.integers(0, 47))
        def cut_at(shard: int) -> None:
            with locked(db, shard, f"SELECT 1 FROM shard{shard:04d}.entities WHERE id = {int(keys[shard])} FOR UPDATE"):
                elapsed, error = timed(lambda: db.update_where(set={"n": 1}, kind=1))
            done = shard // 16
            message = check_message(error)
            assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
            assert f"{done} of the 3 piece(s) sent to this server committed ({16 * done} record(s))" in message
            assert [int(db.get(keys[s]).data["n"]) for s in range(48)] == [1] * (16 * done) + [0] * (48 - 16 * done)  # type: ignore[union-attr]
            assert db.update_where(set={"n": 0}, kind=1) == 48

        cut_at()
        assert borrowed(db) == 0
    finally:
        db.close()


def test_a_filter_write_cut_off_while_still_sending_ends_at_the_timeout_with_a_lower_bound(
    pg_fresh_db: dict[str, Any],
) -> None:
    """Statements of megabytes: the server, waiting for a lock, stops reading them and the client's sending waits;
    cut off there, the session is closed at once (psycopg's exit from the pipeline would wait again), and the count
    of committed pieces, from the replies read before, is said to be a lower bound, which it is."""
    settings = {**pg_fresh_db, "shards": "0-64"}
    db = hvcore.Datastore([settings], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        keys = [db.put(shard, 1, n=0) for shard in range(64)]
        with locked(db, 20, "LOCK TABLE shard0020.entities IN ACCESS EXCLUSIVE MODE"):
            elapsed, error = timed(lambda: db.update_where(set={"blob": "x" * 400_000}, kind=1))
            assert waiting_sessions(settings) == 0  # cancelled: nothing of the rest can commit once the lock is free
        message = check_message(error)
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert "that count is a lower bound" in message, message
        reported = int(message.split("committed (")[1].split(" record")[0])
        stored = sum("blob" in db.get(key).data for key in keys)  # type: ignore[union-attr]
        assert reported <= stored <= 16, (reported, stored)  # the locked shard's piece (16-31) and later: nothing
        assert borrowed(db) == 0
        assert db.update_where(set={"n": 1}, kind=1) == 64
    finally:
        db.close()


@pytest.mark.parametrize("call", ["get_many", "query", "row_counts"])
def test_a_read_fan_out_cut_off_ends_at_the_timeout(pg_fresh_db: dict[str, Any], call: str) -> None:
    settings = {**pg_fresh_db, "shards": "0-40"}
    db = hvcore.Datastore([settings], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        keys = [db.put(shard, 1, n=shard) for shard in range(40)]
        calls: dict[str, Callable[[], object]] = {
            "get_many": lambda: db.get_many(keys),  # 40 shards: three statements in one pipeline
            "query": lambda: list(db.query(1)),
            "row_counts": lambda: db.status(),
        }
        with locked(db, 35, "LOCK TABLE shard0035.entities IN ACCESS EXCLUSIVE MODE"):
            started = time.monotonic()
            if call == "row_counts":  # status() reports an unreachable server instead of raising
                (entry,) = db.status()
                elapsed = time.monotonic() - started
                assert entry["reachable"] is False, entry
                message = check_message(Exception(entry["error"]))
            else:
                elapsed, error = timed(calls[call])
                message = check_message(error)
            assert waiting_sessions(settings) == 0
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert "did not answer within operation_timeout=1.0 s" in message, message
        assert borrowed(db) == 0
        assert len(db.get_many(keys)) == 40 and len(list(db.query(1))) == 40
        assert db.status()[0]["rows"] == 40
    finally:
        db.close()


@pytest.mark.parametrize("call", ["update_where", "get_many", "query", "row_counts"])
def test_asyncio_a_fan_out_cut_off_ends_at_the_timeout(pg_fresh_db: dict[str, Any], call: str) -> None:
    async def scenario() -> None:
        settings = {**pg_fresh_db, "shards": "0-40"}
        async with hvcore.AsyncDatastore([settings], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT) as db:
            await db.provision()
            keys = [await db.put(shard, 1, n=shard) for shard in range(40)]
            ready, done = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                async with db.transaction(35) as tx:
                    async with tx.cursor() as cur:
                        await cur.execute(f"SELECT 1 FROM shard0035.entities WHERE id = {int(keys[35])} FOR UPDATE")
                        if call != "update_where":
                            await cur.execute("LOCK TABLE shard0035.entities IN ACCESS EXCLUSIVE MODE")
                    ready.set()
                    await asyncio.wait_for(done.wait(), 15)

            async def query() -> object:
                return [record async for record in db.query(1)]

            async def status() -> None:  # status() reports the server unreachable instead of raising
                (entry,) = await db.status()
                assert entry["reachable"] is False, entry
                raise hvcore.ServerUnavailable(entry["error"])

            calls: dict[str, Callable[[], Any]] = {
                "update_where": lambda: db.update_where(set={"n": -1}, kind=1),
                "get_many": lambda: db.get_many(keys),
                "query": query,
                "row_counts": status,
            }
            task = asyncio.ensure_future(holder())
            try:
                await asyncio.wait_for(ready.wait(), 5)
                started = time.monotonic()
                with pytest.raises(hvcore.ServerUnavailable) as caught:
                    await calls[call]()
                elapsed = time.monotonic() - started
            finally:
                done.set()
                await task
            message = check_message(caught.value)
            assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
            if call == "update_where":
                assert "2 of the 3 piece(s) sent to this server committed (32 record(s))" in message, message
            stats = await db.status(rows="estimated")
            assert stats[0]["pool"]["borrowed"] == 0
            assert len(await db.get_many(keys)) == 40

    asyncio.run(scenario())


@pytest.mark.parametrize("call", ["update_where", "query"])
def test_through_a_transaction_pooler_a_fan_out_cut_off_ends_at_the_timeout(
    _pg_factory_databases: Any, pgbouncer_transaction: Any, call: str
) -> None:
    """Behind PgBouncer (transaction mode) the cancel request goes through the pooler: the same end, on two servers
    at once (both cut off: the call still ends at one timeout, not one per server)."""
    servers = [dict(s) for s in _pg_factory_databases.empty("jsonb")]
    through = [
        {**server, "host": "127.0.0.1", "port": bouncer.port}
        for server, bouncer in zip(servers, pgbouncer_transaction[: len(servers)], strict=True)
    ]
    db = hvcore.Datastore(through, backend="jsonb", pool_max=2, operation_timeout=TIMEOUT)
    try:
        keys = {shard: db.put(shard, 1, n=0) for shard in range(16)}
        calls: dict[str, Callable[[], object]] = {
            "update_where": lambda: db.update_where(set={"n": 1}, kind=1),
            "query": lambda: list(db.query(1)),
        }
        lock = "SELECT 1 FROM shard{0:04d}.entities WHERE id = {1} FOR UPDATE"
        if call == "query":
            lock = "LOCK TABLE shard{0:04d}.entities IN ACCESS EXCLUSIVE MODE"
        with locked(db, 5, lock.format(5, int(keys[5]))), locked(db, 12, lock.format(12, int(keys[12]))):
            elapsed, error = timed(calls[call])
        message = check_message(error)
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert borrowed(db) == 0
        assert db.update_where(set={"n": 2}, kind=1) == 16
        assert len(list(db.query(1))) == 16
    finally:
        db.close()


def test_a_query_over_two_servers_both_cut_off_ends_at_one_timeout(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    """The finding's second case: it took 4x operation_timeout over two servers' shards (2x each, one after the
    other); each server's first round trip runs concurrently, and each now ends at the timeout. `status()`'s exact
    counts too (they were unbounded, then one timeout per server, one server after another)."""
    entries = [{**pg_fresh_db, "shards": "0-40"}, {**pg_fresh_db2, "shards": "40-80"}]
    db = hvcore.Datastore(entries, backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    try:
        db.provision()
        for shard in range(80):
            db.put(shard, 1, n=shard)
        with (
            locked(db, 35, "LOCK TABLE shard0035.entities IN ACCESS EXCLUSIVE MODE"),
            locked(db, 75, "LOCK TABLE shard0075.entities IN ACCESS EXCLUSIVE MODE"),
        ):
            elapsed, error = timed(lambda: list(db.query(1)))
            started = time.monotonic()
            entries = db.status()  # exact counts: the servers are counted at once
            status_seconds = time.monotonic() - started
        message = check_message(error)
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert [entry["reachable"] for entry in entries] == [False, False], entries
        assert status_seconds < BOUND, f"status() took {status_seconds:.2f} s"
        assert borrowed(db) == 0
        assert len(list(db.query(1))) == 80
    finally:
        db.close()


@pytest.mark.parametrize("where", ["cursor", "transaction", "lent pipeline", "transaction pipeline"])
def test_user_pipelines_cut_off_raise_the_timeout_not_psycopgs_pipeline_error(
    pg_fresh_db: dict[str, Any], where: str
) -> None:
    """psycopg runs ``executemany`` in a pipeline of its own, and user code may open one (``conn.pipeline()``):
    cut off by operation_timeout either raised psycopg's bare OperationalError "cannot exit pipeline mode while
    busy"; now the timeout's `ServerUnavailable`, as execute(), and the session is not reused."""
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT)
    statement = "UPDATE entities SET kind = kind WHERE id = %s"

    def run() -> None:
        if where == "cursor":
            with db.cursor(5) as cur:
                cur.executemany(statement, [(1,), (2,)])
        elif where == "transaction":
            with db.transaction(5) as tx, tx.cursor() as cur:
                cur.executemany(statement, [(1,), (2,)])
        elif where == "lent pipeline":
            conn = db.get_connection(5)
            try:
                with conn.pipeline():
                    conn.execute(statement, (1,))
                    conn.execute("SELECT 1")
            finally:
                db.put_connection(conn)
        else:
            with db.transaction(5) as tx, tx.cursor() as cur, cur.connection.pipeline():
                cur.execute(statement, (1,))

    try:
        db.provision()
        with locked(db, 5, "LOCK TABLE shard0005.entities IN ACCESS EXCLUSIVE MODE"):
            elapsed, error = timed(run)
        message = check_message(error)
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert borrowed(db) == 0
        run()  # the pool works
    finally:
        db.close()


@pytest.mark.parametrize("where", ["executemany", "lent pipeline"])
def test_asyncio_user_pipelines_cut_off_raise_the_timeout(pg_fresh_db: dict[str, Any], where: str) -> None:
    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-16"}], backend="jsonb", pool_max=4, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            ready, done = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                async with db.transaction(5) as tx, tx.cursor() as cur:
                    await cur.execute("LOCK TABLE shard0005.entities IN ACCESS EXCLUSIVE MODE")
                    ready.set()
                    await asyncio.wait_for(done.wait(), 15)

            task = asyncio.ensure_future(holder())
            try:
                await asyncio.wait_for(ready.wait(), 5)
                with pytest.raises(hvcore.ServerUnavailable) as caught:
                    if where == "executemany":
                        async with db.cursor(5) as cur:
                            await cur.executemany("UPDATE entities SET kind = kind WHERE id = %s", [(1,), (2,)])
                    else:
                        conn = await db.get_connection(5)
                        try:
                            async with conn.pipeline():
                                await conn.execute("UPDATE entities SET kind = kind WHERE id = 1")
                        finally:
                            await db.put_connection(conn)
            finally:
                done.set()
                await task
            check_message(caught.value)
            stats = await db.status(rows="estimated")
            assert stats[0]["pool"]["borrowed"] == 0

    asyncio.run(scenario())


@pytest.mark.parametrize("call", ["update_where", "get_many"])
def test_a_frozen_session_cut_off_is_closed_after_a_short_grace(fault_pg: FaultServers, call: str) -> None:
    """The pooled session's server process stopped (SIGSTOP): the cancel cannot take effect, the pipeline's replies
    never come; after operation_timeout and a grace of a quarter of it the session is closed unread, the filter
    write's count said to be a lower bound, and the pool goes on with a new session.

    The session is one of a server the suite started (`fault_pg`): the machine's shared PostgreSQL is never stopped."""
    settings = fault_pg.fresh_db(0)
    db = hvcore.Datastore([{**settings, "shards": "0-40"}], backend="jsonb", pool_max=1, operation_timeout=TIMEOUT)
    try:
        db.provision()
        keys = [db.put(shard, 1, n=0) for shard in range(40)]
        with db.cursor(0) as cur:  # the pool's one session
            row = cur.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        calls: dict[str, Callable[[], object]] = {
            "update_where": lambda: db.update_where(set={"n": 1}, kind=1),
            "get_many": lambda: db.get_many(keys),
        }
        with fault_pg.frozen_session(0, pid):
            elapsed, error = timed(calls[call])
        message = check_message(error)
        print(f"\nfrozen session, {call}: {elapsed:.2f} s: {message}")
        assert elapsed < TIMEOUT * 1.25 + 0.35, f"{elapsed:.2f} s: {message}"
        if call == "update_where":
            assert "0 of the 3 piece(s)" in message and "that count is a lower bound" in message, message
        assert borrowed(db) == 0
        assert len(db.get_many(keys)) == 40
    finally:
        db.close()
