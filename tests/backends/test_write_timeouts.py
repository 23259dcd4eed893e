"""Every write cut off by operation_timeout ends at about the timeout, saying what is known of its outcome.

A point write (put, coalesced or not, update, replace, delete) waiting past ``operation_timeout`` for another
session's table lock used to end after twice the timeout with `WriteOutcomeUnknown`: its settling read the rows on a
new connection, which waited for the same lock. The cancel request's reply (the statement's `QueryCanceled`, read
for a short grace) now settles it at the timeout: not committed. A coalesced group of puts cut off no longer runs
each row alone afterwards (one more timeout per row); a write whose session is frozen is settled within about 1.5x
the timeout, not `SETTLE_SECONDS` later; a server that accepts TCP but never answers is `ServerUnavailable`, not a
`PoolTimeout` telling to raise ``pool_max``; ``status()`` inside one's own transaction that locked a shard table ends
at the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers

import hvcore

TIMEOUT = 1.0
BOUND = 1.6  # the timeout, the grace for the cancel's reply (0.25 s for 1 s) and some load


@contextlib.contextmanager
def table_locked(settings: dict[str, Any], shard: int) -> Iterator[None]:
    """Another session holds ``shard``'s table in ACCESS EXCLUSIVE mode for the block (a long DDL)."""
    conninfo = {k: v for k, v in settings.items() if k != "shards"}
    with psycopg.connect(**conninfo) as locker:
        locker.execute(f'LOCK TABLE "shard{shard:04d}".entities IN ACCESS EXCLUSIVE MODE')
        try:
            yield
        finally:
            locker.rollback()


def lock_waiters(settings: dict[str, Any]) -> int:
    """Sessions of the database waiting for a lock."""
    conninfo = {k: v for k, v in settings.items() if k != "shards"}
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def borrowed(db: hvcore.Datastore) -> int:
    return sum(entry["pool"]["borrowed"] for entry in db.status(rows="estimated"))


def timed(call: Callable[[], object]) -> tuple[float, hvcore.ServerUnavailable]:
    started = time.monotonic()
    with pytest.raises(hvcore.ServerUnavailable) as caught:
        call()
    return time.monotonic() - started, caught.value


@pytest.mark.parametrize("call", ["put", "put alone", "update", "replace", "delete"])
def test_a_point_write_waiting_for_a_lock_is_settled_at_the_timeout(pg_fresh_db: dict[str, Any], call: str) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    coalesce = call != "put alone"
    with hvcore.Datastore(
        servers, backend="jsonb", worker=None, operation_timeout=TIMEOUT, coalesce_writes=coalesce
    ) as db:
        db.provision()
        key = db.put(5, 1, balance="100")
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: db.put(5, 1, balance="0"),
            "put alone": lambda: db.put(5, 1, balance="0"),
            "update": lambda: db.update(key, balance="0"),
            "replace": lambda: db.replace(key, balance="0"),
            "delete": lambda: db.delete(key),
        }
        with table_locked(pg_fresh_db, 5):
            elapsed, error = timed(calls[call])
            waiting = lock_waiters(pg_fresh_db)  # the cancelled statement no longer waits
        message = str(error)
        print(f"\n{call}: {elapsed:.2f} s: {message}")
        assert not isinstance(error, hvcore.WriteOutcomeUnknown), message
        assert elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert "operation_timeout=1.0 s" in message and "did not commit" in message, message
        assert "the server cancelled the write's statement" in message, message
        assert waiting == 0
        assert borrowed(db) == 0
        record = db.get(key)
        assert record is not None and record.data == {"balance": "100"}
        assert [r.data for r in db.query(shards=[5])] == [{"balance": "100"}]
        assert db.update(key, balance="1")  # the pool goes on


def test_asyncio_point_writes_waiting_for_a_lock_are_settled_at_the_timeout(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None, operation_timeout=TIMEOUT) as adb:
            await adb.provision()
            key = await adb.put(5, 1, balance="100")
            with table_locked(pg_fresh_db, 5):
                for call in (lambda: adb.put(5, 1, balance="0"), lambda: adb.update(key, balance="0")):
                    started = time.monotonic()
                    with pytest.raises(hvcore.ServerUnavailable) as caught:
                        await call()
                    elapsed = time.monotonic() - started
                    assert not isinstance(caught.value, hvcore.WriteOutcomeUnknown), str(caught.value)
                    assert "did not commit" in str(caught.value) and elapsed < BOUND, (elapsed, str(caught.value))
            record = await adb.get(key)
            assert record is not None and record.data == {"balance": "100"}

    asyncio.run(scenario())


def test_a_coalesced_group_cut_off_fails_its_callers_at_the_timeout(pg_fresh_db: dict[str, Any]) -> None:
    """Eight overlapping puts of one shard share a multi-row INSERT; cut off, each caller is told at the timeout
    (each row used to run again alone afterwards: one more timeout per row, 8 s here)."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None, operation_timeout=TIMEOUT) as adb:
            await adb.provision()
            await adb.put(5, 1, n=-1)

            async def one(n: int) -> BaseException | None:
                try:
                    await adb.put(5, 1, n=n)
                except hvcore.HypervaultError as exc:
                    return exc
                return None

            with table_locked(pg_fresh_db, 5):
                started = time.monotonic()
                outcomes = await asyncio.gather(*(one(n) for n in range(8)))
                elapsed = time.monotonic() - started
            print(f"\n8 coalesced puts cut off: {elapsed:.2f} s: {outcomes[0]}")
            assert all(isinstance(o, hvcore.ServerUnavailable) for o in outcomes), outcomes
            assert not any(isinstance(o, hvcore.WriteOutcomeUnknown) for o in outcomes), outcomes
            assert elapsed < BOUND + 0.4, f"{elapsed:.2f} s"
            stored = [r.data async for r in adb.query(shards=[5])]
            assert stored == [{"n": -1}]

    asyncio.run(scenario())


@pytest.mark.parametrize("call", ["update", "put"])
def test_a_point_write_whose_session_is_frozen_is_settled_within_a_bound(fault_pg: FaultServers, call: str) -> None:
    """The pooled session's server process stopped (SIGSTOP): no reply to the cancel; the session is ended and its
    end waited for at most half the timeout (not SETTLE_SECONDS, 10 s: the call took 11.3 s):
    `WriteOutcomeUnknown`, since the frozen session might still commit one day.

    The session is one of a server the suite started (`fault_pg`): the machine's shared PostgreSQL is never stopped."""
    servers = [{**fault_pg.fresh_db(0), "shards": "0-8"}]
    with hvcore.Datastore(
        servers, backend="jsonb", worker=None, operation_timeout=TIMEOUT, pool_max=1, coalesce_writes=False
    ) as db:
        db.provision()
        key = db.put(5, 1, balance="100")
        with db.cursor(0) as cur:  # the pool's one session
            row = cur.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        calls: dict[str, Callable[[], object]] = {
            "update": lambda: db.update(key, balance="0"),
            "put": lambda: db.put(5, 1, balance="0"),
        }
        with fault_pg.frozen_session(0, pid):
            elapsed, error = timed(calls[call])
        print(f"\nfrozen session, {call}: {elapsed:.2f} s: {error}")
        assert isinstance(error, hvcore.WriteOutcomeUnknown), str(error)
        assert elapsed < TIMEOUT * 2.2 + 0.3, f"{elapsed:.2f} s: {error}"
        record = db.get(key)
        assert record is not None and record.data == {"balance": "100"}  # ended before it could run


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts TCP connections (the kernel's backlog) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_server_that_never_answers_fails_at_connect_timeout_bounded_by_operation_timeout(
    silent_port: int, api: str
) -> None:
    """No connection yet; pool_block_timeout=5, operation_timeout=1: the connection attempt is bounded like every
    exchange (connect_timeout 2 s, libpq's least, was 5), and the error names the start-up and connect_timeout
    (it was a PoolTimeout "every one in use: raise pool_max")."""
    servers = [dict(shards="0-8", host="127.0.0.1", port=silent_port, dbname="app")]
    options: dict[str, Any] = dict(backend="jsonb", worker=None, operation_timeout=1, pool_block_timeout=5)

    async def async_put() -> None:
        async with hvcore.AsyncDatastore(servers, **options) as adb:
            await adb.put(3, 1, name="ada")

    started = time.monotonic()
    with pytest.raises(hvcore.HypervaultError) as caught:
        if api == "sync":
            with hvcore.Datastore(servers, **options) as db:
                db.put(3, 1, name="ada")
        else:
            asyncio.run(async_put())
    elapsed = time.monotonic() - started
    message = str(caught.value)
    print(f"\nsilent server, {api}: {elapsed:.2f} s: {message}")
    assert isinstance(caught.value, hvcore.ServerUnavailable), f"{type(caught.value).__name__}: {message}"
    assert f"127.0.0.1:{silent_port}/app" in message and "connect_timeout=2" in message, message
    assert "pool_max" not in message, message
    assert elapsed < 3.5, f"{elapsed:.2f} s"


def test_a_first_connection_not_answered_within_pool_block_timeout_is_server_unavailable(silent_port: int) -> None:
    """connect_timeout ends when pool_block_timeout does: the waiting caller used to lose the race with the pool's
    failing attempt and read "every one in use"; none was open or lent, so it is `ServerUnavailable`."""
    servers = [dict(shards="0-8", host="127.0.0.1", port=silent_port, dbname="app", connect_timeout=3)]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=5, pool_block_timeout=2) as db:
        with pytest.raises(hvcore.HypervaultError) as caught:
            db.put(3, 1, name="ada")
        assert db.store_for(3).stats()["borrowed"] == 0
    message = str(caught.value)
    assert isinstance(caught.value, hvcore.ServerUnavailable), f"{type(caught.value).__name__}: {message}"
    assert "pool_block_timeout=2" in message and "connect_timeout=3" in message and "pool_max" not in message, message


def test_status_inside_ones_own_transaction_that_locked_a_table_ends_at_the_bound(pg_fresh_db: dict[str, Any]) -> None:
    """Its exact counts wait for the caller's own lock: ended at operation_timeout, the server reported."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=TIMEOUT) as db:
        db.provision()
        with db.transaction(5) as tx:
            with tx.cursor() as cur:
                cur.execute("LOCK TABLE entities IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            try:
                entries = db.status()
                error = str(entries[0].get("error", ""))
            except hvcore.HypervaultError as exc:
                error = f"{type(exc).__name__}: {exc}"
            elapsed = time.monotonic() - started
        print(f"\nstatus inside its own locking transaction: {elapsed:.2f} s: {error}")
        assert elapsed < BOUND + 0.5, f"{elapsed:.2f} s"
        assert error, "the locked count should be reported, not silently missing"


@pytest.mark.parametrize("call", ["put", "update"])
def test_through_a_transaction_pooler_a_point_write_cut_off_is_settled_at_the_timeout(
    _pg_factory_databases: Any, pgbouncer_transaction: Any, call: str
) -> None:
    """Behind PgBouncer (transaction mode) the cancel request goes through the pooler and its reply comes back the
    same way: settled at the timeout, not committed."""
    server = dict(_pg_factory_databases.empty("jsonb")[0])
    through = {**server, "host": "127.0.0.1", "port": pgbouncer_transaction[0].port}
    with hvcore.Datastore([through], backend="jsonb", pool_max=2, operation_timeout=TIMEOUT) as db:
        key = db.put(5, 1, n=0)
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: db.put(5, 1, n=1),
            "update": lambda: db.update(key, n=1),
        }
        with table_locked(server, 5):
            elapsed, error = timed(calls[call])
        message = str(error)
        print(f"\nbehind PgBouncer, {call}: {elapsed:.2f} s: {message}")
        assert not isinstance(error, hvcore.WriteOutcomeUnknown), message
        assert "did not commit" in message and elapsed < BOUND, f"{elapsed:.2f} s: {message}"
        assert [r.data for r in db.query(shards=[5])] == [{"n": 0}]
        assert db.update(key, n=2)
