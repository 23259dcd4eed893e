"""A plain call waiting for a lock its caller's own open transaction holds fails fast with `SelfDeadlock`.

Inside ``with db.transaction(5) as tx:``, ``db.update(key, ...)`` (instead of ``tx.update``) on a row the
transaction wrote waits for the transaction, whose session is idle until the call returns: PostgreSQL cannot see
that deadlock. The call is cancelled on the server soon after it starts waiting (nothing of it is stored, the
transaction goes on) and raises `SelfDeadlock` naming the shard and the fix, long before ``operation_timeout``
(30 s here; the tests allow 10). A wait for another thread's or task's transaction is ordinary contention: it
still waits, and succeeds when that transaction commits.
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

import hvcore
from hvcore import SelfDeadlock
from hvcore._acompat import gather, spawn

pytestmark = pytest.mark.postgres

BACKENDS = ["jsonb", "hstore"]
TIMEOUT = 30  # operation_timeout: the error must come long before it
FAST = 10.0  # seconds: well under operation_timeout, without a tight figure for a loaded machine


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, pg_fresh_db: dict[str, Any]) -> Iterator[hvcore.Datastore]:
    store = hvcore.Datastore(
        [{**pg_fresh_db, "shards": "0-8"}], backend=request.param, pool_max=3, operation_timeout=TIMEOUT
    )
    try:
        store.provision()
        yield store
    finally:
        store.close()


# each: (what the plain call does, the transaction's call that would be right) on a record the transaction updated
PLAIN: dict[str, Callable[[hvcore.Datastore, hvcore.Key], Any]] = {
    "update": lambda db, key: db.update(key, note="plain"),
    "replace": lambda db, key: db.replace(key, note="plain"),
    "delete": lambda db, key: db.delete(key),
    "update_where": lambda db, key: db.update_where(set={"note": "plain"}, kind=1, shards=[5]),
    "delete_where": lambda db, key: db.delete_where(kind=1, shards=[5]),
}
STATEMENT = {"update": "UPDATE", "replace": "UPDATE", "delete": "DELETE", "update_where": "UPDATE"}
STATEMENT["delete_where"] = "DELETE"


@pytest.mark.parametrize("op", sorted(PLAIN))
def test_a_plain_write_on_a_row_of_the_callers_transaction_fails_fast_and_the_transaction_goes_on(
    db: hvcore.Datastore, op: str
) -> None:
    key = db.put(5, 1, balance="100")
    with db.transaction(5) as tx:
        tx.update(key, balance="70")
        started = time.monotonic()
        with pytest.raises(SelfDeadlock) as caught:
            PLAIN[op](db, key)
        waited = time.monotonic() - started
        tx.update(key, seen="after")  # the transaction is still open and usable
    assert waited < FAST, f"{waited:.1f} s"
    message = str(caught.value)
    assert isinstance(caught.value, hvcore.TransactionError)
    assert "shard 5" in message and "db.transaction(5)" in message, message
    assert STATEMENT[op] in message and "tx." in message, message
    assert "nothing of it is stored" in message
    record = db.get(key)
    assert record is not None and record.data == {"balance": "70", "seen": "after"}  # the plain call left nothing


def test_a_put_waiting_for_a_unique_value_the_callers_transaction_wrote_fails_fast(db: hvcore.Datastore) -> None:
    db.create_index(1, "email", unique=True)
    with db.transaction(5) as tx:
        tx.put(1, email="a@example.org")
        started = time.monotonic()
        with pytest.raises(SelfDeadlock, match=r"INSERT \(db\.put\).*tx\.put"):
            db.put(5, 1, email="a@example.org")  # the unique check waits for the transaction's row
        assert time.monotonic() - started < FAST
    assert [r.data for r in db.query(kind=1)] == [{"email": "a@example.org"}]


@pytest.mark.parametrize("op", ["get", "get_many"])
def test_a_read_waiting_for_a_table_lock_of_the_callers_transaction_fails_fast(db: hvcore.Datastore, op: str) -> None:
    key = db.put(5, 1, balance="100")
    with db.transaction(5) as tx:
        with tx.cursor() as cur:
            cur.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        with pytest.raises(SelfDeadlock, match=r"SELECT .*tx\.get"):
            db.get(key) if op == "get" else db.get_many([key])
        assert time.monotonic() - started < FAST
    assert db.get_many([key])[key].data == {"balance": "100"}


# each: a plain call over several shards of one server (one batch), one of them (5) locked by the transaction
OVER: dict[str, Callable[[hvcore.Datastore, list[hvcore.Key]], Any]] = {
    "update_where": lambda db, keys: db.update_where(set={"note": "plain"}, kind=1, shards=[2, 5, 7]),
    "delete_where": lambda db, keys: db.delete_where(kind=1, shards=[2, 5, 7]),
    "get_many": lambda db, keys: db.get_many(keys),
    "query": lambda db, keys: list(db.query(kind=1, shards=[2, 5, 7])),
}


@pytest.mark.parametrize("op", sorted(OVER))
def test_a_call_over_several_shards_names_the_shard_whose_row_or_table_it_waited_for(
    db: hvcore.Datastore, op: str
) -> None:
    """The server says which table the cancelled statement waited for (``pg_locks``): its shard is named, not the
    first of the call's batch."""
    keys = [db.put(shard, 1, n=str(shard)) for shard in (2, 5, 7)]
    with db.transaction(5) as tx:
        if op in ("get_many", "query"):  # reads wait for a table lock only
            with tx.cursor() as cur:
                cur.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')
        else:
            tx.update(keys[1], n="five")
        with pytest.raises(SelfDeadlock) as caught:
            OVER[op](db, keys)
    message = str(caught.value)
    assert "on shard 5 of" in message and "shard 2" not in message, message


def test_the_error_also_ends_the_block_and_rolls_the_transaction_back(db: hvcore.Datastore) -> None:
    key = db.put(5, 1, balance="100")
    with pytest.raises(SelfDeadlock), db.transaction(5) as tx:
        tx.update(key, balance="70")
        db.update(key, note="x")  # the slip: db. instead of tx.
    record = db.get(key)
    assert record is not None and record.data == {"balance": "100"}
    assert db.update(key, note="after")  # the pool works on (the cancelled session was not reused)


def test_waiting_for_another_threads_transaction_still_waits_and_succeeds(db: hvcore.Datastore) -> None:
    """The caller holds a transaction of its own (so its calls are watched), but the lock it waits for is another
    thread's: ordinary contention, never cancelled."""
    key = db.put(5, 1, balance="100")
    other = db.put(6, 1, n="1")
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with db.transaction(5) as tx:
                tx.update(key, balance="70")
                locked.set()
                release.wait(30)
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(30)
    timer = threading.Timer(1.5, release.set)  # past several of the watch's questions
    timer.start()
    try:
        with db.transaction(6) as tx:
            tx.update(other, n="2")
            started = time.monotonic()
            assert db.update(key, note="plain")  # waits for the holder's commit
            waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
        timer.cancel()
    assert not errors, errors
    assert waited >= 1.0, f"{waited:.2f} s: it did not wait for the other transaction"
    record = db.get(key)
    assert record is not None and record.data == {"balance": "70", "note": "plain"}


@pytest.mark.parametrize("borrow", ["cursor", "get_connection"])
def test_raw_sql_through_a_lent_connection_waiting_for_the_callers_transaction_fails_fast(
    db: hvcore.Datastore, borrow: str
) -> None:
    """User SQL through ``cursor()``/``get_connection()`` waiting for the caller's own open transaction is a
    `SelfDeadlock` too (the lent session is the waiting one, not one of those waited for); the transaction goes on."""
    key = db.put(5, 1, balance="100")
    with db.transaction(5) as tx:
        tx.update(key, balance="70")
        started = time.monotonic()
        with pytest.raises(SelfDeadlock) as caught:
            if borrow == "cursor":
                with db.cursor(5) as cur:
                    cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
            else:
                conn = db.get_connection(5)
                try:
                    conn.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
                    conn.commit()
                finally:
                    db.put_connection(conn)
        assert time.monotonic() - started < FAST
        tx.update(key, balance="60")
    message = str(caught.value)
    assert "an UPDATE through db.cursor(5) or db.get_connection(5) on shard 5" in message, message
    assert "db.transaction(5)" in message and "tx.cursor()" in message and "plain" not in message, message
    record = db.get(key)
    assert record is not None and record.data == {"balance": "60"}
    with db.cursor(5) as cur:  # nothing held: ordinary user SQL again
        cur.execute("UPDATE entities SET kind = 3 WHERE id = %s", (key,))


def test_raw_sql_waiting_for_another_connection_the_caller_borrowed_fails_fast(db: hvcore.Datastore) -> None:
    """Two connections of the same caller: the second's statement waits for the first's lock, which is held until
    the caller gives the first back."""
    key = db.put(5, 1, balance="100")
    first = db.get_connection(5)
    try:
        first.execute("UPDATE entities SET kind = kind WHERE id = %s", (key,))
        with pytest.raises(SelfDeadlock, match="after giving it back"), db.cursor(5) as cur:
            cur.execute("DELETE FROM entities WHERE id = %s", (key,))
    finally:
        db.put_connection(first)
    assert db.get(key) is not None


def test_raw_sql_under_a_shorter_lock_timeout_of_its_own_keeps_it(db: hvcore.Datastore) -> None:
    """The user's own ``lock_timeout`` below the watch's first question stays the user's error."""
    key = db.put(5, 1, balance="100")
    with db.transaction(5) as tx:
        tx.update(key, balance="70")
        with pytest.raises(psycopg.errors.LockNotAvailable), db.cursor(5) as cur:
            cur.execute("SET LOCAL lock_timeout = '50ms'")
            cur.execute("UPDATE entities SET id = id WHERE id = %s", (key,))


@pytest.mark.parametrize("own_transaction", [True, False])
def test_raw_sql_waiting_for_another_threads_transaction_still_waits_and_succeeds(
    db: hvcore.Datastore, own_transaction: bool
) -> None:
    """Through a cursor, a wait for another thread's transaction is ordinary contention, whether the caller holds a
    transaction of its own (the cursor's statement is watched, never cancelled) or not (not watched)."""
    key = db.put(5, 1, balance="100")
    other = db.put(6, 1, n="1")
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with db.transaction(5) as tx:
                tx.update(key, balance="70")
                locked.set()
                release.wait(30)
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    thread = threading.Thread(target=holder)
    thread.start()
    assert locked.wait(30)
    timer = threading.Timer(1.5, release.set)  # past several of the watch's questions
    timer.start()
    try:
        with contextlib.ExitStack() as stack:
            if own_transaction:
                tx = stack.enter_context(db.transaction(6))
                tx.update(other, n="2")
            started = time.monotonic()
            with db.cursor(5) as cur:
                cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))  # waits for the holder's commit
                assert cur.rowcount == 1
            waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)
        timer.cancel()
    assert not errors, errors
    assert waited >= 1.0, f"{waited:.2f} s: it did not wait for the other transaction"
    record = db.get(key)
    assert record is not None and record.data == {"balance": "70"} and record.kind == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_a_plain_call_waiting_for_the_tasks_own_transaction_fails_fast(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend=backend, pool_max=3, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            key = await db.put(5, 1, balance="100")
            for op in ("update", "delete"):
                async with db.transaction(5) as tx:
                    await tx.update(key, balance="70")
                    started = time.monotonic()
                    with pytest.raises(SelfDeadlock, match=r"asyncio task.*db\.transaction\(5\)"):
                        await (db.update(key, note="x") if op == "update" else db.delete(key))
                    assert time.monotonic() - started < FAST
                    await tx.update(key, balance="60")
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "60"}

            # another task's transaction: ordinary contention, the caller (holding a transaction too) waits
            other = await db.put(6, 1, n="1")
            locked, release = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                async with db.transaction(5) as tx:
                    await tx.update(key, balance="50")
                    locked.set()
                    await release.wait()

            held = asyncio.ensure_future(holder())
            await locked.wait()
            asyncio.get_running_loop().call_later(1.5, release.set)
            async with db.transaction(6) as tx:
                await tx.update(other, n="2")
                started = time.monotonic()
                assert await db.update(key, note="plain")
                assert time.monotonic() - started >= 1.0
            await held
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "50", "note": "plain"}

    asyncio.run(scenario())


# -- every way of holding a session counts, wherever the call's statement runs (hvcore._holdings.Hold) -------------


def test_a_plain_call_waiting_for_the_callers_own_lent_connection_fails_fast(db: hvcore.Datastore) -> None:
    """A connection from ``get_connection()`` is the caller's open transaction too (its SQL, its locks)."""
    key = db.put(5, 1, balance="100")
    conn = db.get_connection(5)
    try:
        conn.execute("UPDATE entities SET kind = kind WHERE id = %s", (key,))
        started = time.monotonic()
        with pytest.raises(SelfDeadlock) as caught:
            db.update(key, note="plain")
        assert time.monotonic() - started < FAST
    finally:
        db.put_connection(conn)  # rolled back
    message = str(caught.value)
    assert "db.get_connection(5)" in message and "after giving it back" in message, message
    assert db.update(key, note="after")  # given back: no longer the caller's, an ordinary call again
    record = db.get(key)
    assert record is not None and record.data == {"balance": "100", "note": "after"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_tasks_started_inside_the_block_act_for_it_and_never_the_other_way(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    """``asyncio.gather`` of plain calls inside the block (the block awaits them: a deadlock) and a ``cursor()``
    block are the task's own; a transaction a child task opens is the child's: the parent's plain call waiting for
    it is ordinary contention and waits."""

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend=backend, pool_max=4, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            key = await db.put(5, 1, balance="100")
            other = await db.put(6, 1, n="1")
            async with db.transaction(5) as tx:
                await tx.update(key, balance="70")
                started = time.monotonic()
                with pytest.raises(SelfDeadlock):
                    await asyncio.gather(db.get(other), db.update(key, note="x"))
                assert time.monotonic() - started < FAST
            async with db.cursor(5) as cur:
                await cur.execute("UPDATE entities SET kind = kind WHERE id = %s", (key,))
                with pytest.raises(SelfDeadlock, match=r"db\.cursor\(5\)"):
                    await db.update(key, note="y")
            async with db.transaction(5) as tx:  # raw SQL of the task's through a lent connection
                await tx.update(key, balance="80")
                started = time.monotonic()
                with pytest.raises(SelfDeadlock, match=r"UPDATE through db\.cursor\(5\).*tx\.cursor\(\)"):
                    async with db.cursor(5) as cur:
                        await cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
                conn = await db.get_connection(5)
                try:
                    with pytest.raises(SelfDeadlock, match=r"DELETE through db\.cursor\(5\)"):
                        await conn.execute("DELETE FROM entities WHERE id = %s", (key,))
                finally:
                    await db.put_connection(conn)
                assert time.monotonic() - started < FAST
                await tx.update(key, balance="70")
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "70"}

            locked, release = asyncio.Event(), asyncio.Event()

            async def child() -> None:  # started inside the parent's block: its own transaction is its own
                async with db.transaction(5) as tx:
                    await tx.update(key, balance="50")
                    locked.set()
                    await release.wait()

            async with db.transaction(6) as tx:
                await tx.update(other, n="2")
                held = asyncio.ensure_future(child())
                await locked.wait()
                asyncio.get_running_loop().call_later(1.5, release.set)
                started = time.monotonic()
                assert await db.update(key, note="plain")  # waits for the child's commit
                assert time.monotonic() - started >= 1.0
                await held
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "50", "note": "plain"}

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_asyncio_raw_sql_waiting_for_another_tasks_transaction_still_waits_and_succeeds(
    backend: str, pg_fresh_db: dict[str, Any]
) -> None:
    """Through an async ``cursor()`` inside the task's own transaction (so the statement is watched), a wait for
    another task's transaction is ordinary contention: never cancelled."""

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(
            [{**pg_fresh_db, "shards": "0-8"}], backend=backend, pool_max=4, operation_timeout=TIMEOUT
        ) as db:
            await db.provision()
            key = await db.put(5, 1, balance="100")
            other = await db.put(6, 1, n="1")
            locked, release = asyncio.Event(), asyncio.Event()

            async def holder() -> None:
                async with db.transaction(5) as tx:
                    await tx.update(key, balance="50")
                    locked.set()
                    await release.wait()

            held = asyncio.ensure_future(holder())
            await locked.wait()
            asyncio.get_running_loop().call_later(1.5, release.set)
            async with db.transaction(6) as tx:
                await tx.update(other, n="2")
                started = time.monotonic()
                async with db.cursor(5) as cur:
                    await cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
                    assert cur.rowcount == 1
                assert time.monotonic() - started >= 1.0
            await held
            record = await db.get(key)
            assert record is not None and record.data == {"balance": "50"} and record.kind == 2

    asyncio.run(scenario())


def test_a_fan_out_piece_waiting_for_a_connection_its_caller_holds_says_so(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    """The `PoolTimeout` of a piece run on a fan-out thread names the caller's transaction, as the caller's own
    wait would (``Holdings.mine`` counts the owners of the piece's holds)."""
    entries = [{**pg_fresh_db, "shards": "0-8"}, {**pg_fresh_db2, "shards": "8-16"}]
    with hvcore.Datastore(entries, backend="jsonb", pool_max=1, pool_block_timeout=0.3) as db:
        db.provision()
        near, far = db.put(5, 1, n="1"), db.put(12, 1, n="2")
        with db.transaction(12), pytest.raises(hvcore.PoolTimeout) as caught:
            db.get_many([near, far])  # the far server's piece runs on a fan-out thread
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "waited for itself" in notes and "open transactions (db.transaction()): 1" in notes, notes


def test_the_coalescers_ask_the_store_whether_the_caller_holds_one_of_its_sessions(db: hvcore.Datastore) -> None:
    """Reads and inserts of a caller holding a session of the server never share a batch (`hvcore._acoalesce`: a
    coalesced put waiting for its own transaction's unique row would hold the whole group otherwise); the store
    says who holds one: the block's thread and its fan-out pieces, not another thread, not after the block."""
    store: Any = db.store_for(5)
    assert db._reader(store)._solo == store.holds_session and db._writer(store)._solo == store.holds_session
    elsewhere: list[bool] = []

    def other_thread() -> None:
        elsewhere.append(store.holds_session())

    assert not store.holds_session()
    for block in (lambda: db.transaction(5), lambda: db.cursor(5)):
        with block():
            assert store.holds_session() and gather(spawn(store.holds_session)) == [True]
            thread = threading.Thread(target=other_thread)
            thread.start()
            thread.join()
        assert not store.holds_session()
    assert elsewhere == [False, False]
