"""``Datastore.transaction`` on real PostgreSQL: what the contract suite cannot show on the memory backend.

Isolation settings reach the server, nothing of a transaction leaks into the pooled session, a connection outside
sees nothing before the commit, a transaction works through PgBouncer in transaction mode (session state does not
follow a client there), a server crashed or a session terminated mid-transaction is a typed error with nothing
half-written, and a shard that moved is reported, never followed, inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers
from fixtures.pgbouncer import PgBouncerSet
from fixtures.pgreplica import ReplicaPair
from fixtures.pgservers import PgCluster

import hvcore
from hvbackend_postgres import _move
from hvcore import MoveError, ServerUnavailable, ShardMoved, TransactionError

pytestmark = pytest.mark.postgres

SHARDS = ("0-8", "8-16")
_dbs = itertools.count()


def fresh_servers(cluster: PgCluster, backend: str = "jsonb") -> list[dict[str, Any]]:
    """Two new databases (servers 0 and 1 of the cluster) provisioned for shards 0-8 and 8-16."""
    name = f"hvtx_{os.getpid()}_{next(_dbs)}"
    servers = []
    for index, shards in enumerate(SHARDS):
        settings = cluster.settings(index)
        with psycopg.connect(**settings, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        servers.append({**settings, "dbname": name, "shards": shards})
    with hvcore.Datastore([dict(s) for s in servers], backend=backend) as db:
        db.provision()
    return servers


def direct(server: dict[str, Any]) -> psycopg.Connection[Any]:
    """A connection of our own to a server of the config (not through hypervault)."""
    return psycopg.connect(**{k: v for k, v in server.items() if k != "shards"}, autocommit=True)


@pytest.fixture
def servers(pg_cluster: PgCluster) -> list[dict[str, Any]]:
    return fresh_servers(pg_cluster)


@pytest.fixture
def db(servers: list[dict[str, Any]]) -> Iterator[hvcore.Datastore]:
    with hvcore.Datastore([dict(s) for s in servers], backend="jsonb") as store:
        yield store


def test_isolation_level_and_read_only_reach_the_server_and_leave_nothing_behind(db: hvcore.Datastore) -> None:
    level = psycopg.IsolationLevel.SERIALIZABLE  # psycopg's enum is understood too
    with db.transaction(3, isolation_level=level, read_only=True) as tx, tx.cursor() as cur:
        cur.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')")
        assert tuple(cur.fetchone()) == ("serializable", "on")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), tx.transaction():
            cur.execute("INSERT INTO entities VALUES (1, 1, '{}')")
        assert tx.state == "open"  # rolled back to the savepoint
    with pytest.raises(TransactionError, match="rolled back and nothing was committed"), db.transaction(3) as tx:
        with tx.cursor() as cur, pytest.raises(psycopg.errors.UndefinedTable):
            cur.execute("SELECT * FROM no_such_table")
        assert tx.state == "aborted"
    with db.transaction(3) as tx, tx.cursor() as cur:
        cur.execute("SELECT current_setting('transaction_isolation'), current_setting('search_path')")
        level, path = cur.fetchone()
        assert level == "read committed" and path.startswith("shard0003")
    store = db.servers[0]
    conn, pool = store._checkout()  # type: ignore[attr-defined]
    try:  # the pooled session: SET LOCAL ended with the transaction
        path = conn.execute("SELECT current_setting('search_path')").fetchone()[0]
        assert "shard" not in path
        assert conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        store._checkin(conn, pool)  # type: ignore[attr-defined]


def test_a_connection_of_our_own_sees_nothing_before_the_commit(db: hvcore.Datastore, servers: Any) -> None:
    count = "SELECT count(*) FROM shard0003.entities"
    with direct(servers[0]) as other:
        with db.transaction(3) as tx:
            tx.put_many(1, [{"n": str(i)} for i in range(10)])
            tx.put(1, n="x")
            assert other.execute(count).fetchone() == (0,)
        assert other.execute(count).fetchone() == (11,)
        with pytest.raises(ZeroDivisionError), db.transaction(3) as tx:
            tx.put(1, n="y")
            _ = 1 / 0
        assert other.execute(count).fetchone() == (11,)


def test_transactions_through_pgbouncer_in_transaction_mode(
    pg_cluster: PgCluster, pgbouncer_transaction: PgBouncerSet
) -> None:
    """8 threads on 8 shards, 4 per pooler whose 3 server sessions they share: each transaction sees its own shard."""
    servers = fresh_servers(pg_cluster)
    through = [
        {**pgbouncer_transaction.settings(index, dbname=server["dbname"]), "shards": server["shards"]}
        for index, server in enumerate(servers)
    ]
    shards = [1, 2, 3, 4, 9, 10, 11, 12]
    committed = dict.fromkeys(shards, 0)
    problems: list[str] = []
    with hvcore.Datastore(through, backend="jsonb", pool_max=8) as db:

        def work(shard: int) -> None:
            try:
                for round_ in range(12):
                    try:
                        with db.transaction(shard) as tx:
                            tx.put(1, shard=str(shard), round=str(round_))
                            tx.put_many(1, [{"shard": str(shard)}])
                            with tx.cursor() as cur:  # unqualified names: SET LOCAL search_path in the transaction
                                cur.execute("SELECT count(*), current_setting('search_path') FROM entities")
                                count, path = cur.fetchone()
                            if count != committed[shard] + 2 or not path.startswith(f"shard{shard:04d}"):
                                problems.append(f"shard {shard}: {count} rows, path {path}")
                            assert len(list(tx.query())) == committed[shard] + 2
                            if round_ % 3 == 2:
                                raise ZeroDivisionError
                        committed[shard] += 2
                    except ZeroDivisionError:
                        pass
            except Exception as exc:  # reported below
                problems.append(f"shard {shard}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=work, args=(shard,)) for shard in shards]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not problems, problems[:5]
        assert db.status()[0]["rows"] + db.status()[1]["rows"] == sum(committed.values())
        for shard in shards:
            assert len(list(db.query(shards=[shard]))) == committed[shard] == 16
    assert max(p["sv_active"] + p["sv_idle"] + p["sv_used"] for p in pgbouncer_transaction[0].pools()) <= 3


def test_a_session_terminated_mid_transaction_is_server_unavailable_and_nothing_is_written(
    db: hvcore.Datastore, servers: Any
) -> None:
    before = db.put(3, 1, n="before")
    made: list[hvcore.Key] = []
    with direct(servers[0]) as admin:
        with pytest.raises(ServerUnavailable, match=r"127\.0\.0\.1"), db.transaction(3) as tx:
            made += tx.put_many(1, [{"n": str(i)} for i in range(20)])
            tx.update(before, n="changed")
            with tx.cursor() as cur:
                pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            made.append(tx.put(1, n="after"))
        with pytest.raises(ServerUnavailable, match="during COMMIT: whether the transaction"), db.transaction(3) as tx:
            made.append(tx.put(1, n="lost at commit"))
            with tx.cursor() as cur:
                pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert db.get_many(made) == {}
    assert db.get(before).data == {"n": "before"}  # type: ignore[union-attr]
    with db.transaction(3) as tx:  # the pool replaced the dead sessions
        assert tx.get(before) is not None
    assert db.servers[0].stats()["borrowed"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_server_crashed_mid_transaction_leaves_nothing_half_written(fault_pg: FaultServers, api: str) -> None:
    settings = fault_pg.fresh_db(0, prefix="hvtx")
    servers = [dict(shards="0-16", **settings)]
    with hvcore.Datastore(servers, backend="jsonb") as setup:
        setup.provision()
        before = setup.put(3, 1, n="before")
    made: list[hvcore.Key] = []
    options: dict[str, Any] = {"backend": "jsonb", "pool_block_timeout": 2, "operation_timeout": 10}
    try:
        if api == "sync":
            with hvcore.Datastore(servers, **options) as db:
                with pytest.raises(ServerUnavailable), db.transaction(3) as tx:
                    made.extend(tx.put_many(1, [{"n": str(i)} for i in range(50)]))
                    tx.update(before, n="changed")
                    fault_pg.stop(0, "immediate")
                    made.append(tx.put(1, n="after the crash"))
                assert tx.state == "rolled back"
        else:

            async def scenario() -> None:
                async with hvcore.AsyncDatastore(servers, **options) as adb:
                    with pytest.raises(ServerUnavailable):
                        async with adb.transaction(3) as atx:
                            made.extend(await atx.put_many(1, [{"n": str(i)} for i in range(50)]))
                            await atx.update(before, n="changed")
                            fault_pg.stop(0, "immediate")
                            made.append(await atx.put(1, n="after the crash"))
                    assert adb.servers[0].stats()["borrowed"] == 0

            asyncio.run(scenario())
    finally:
        fault_pg.start(0)
    with hvcore.Datastore(servers, backend="jsonb") as db:
        assert db.get_many(made) == {}
        assert db.get(before).data == {"n": "before"}  # type: ignore[union-attr]
        with db.transaction(3) as tx:
            key = tx.put(1, n="after the restart")
        assert db.get(key) is not None


def test_a_moved_shard_is_reported_never_followed_inside_a_transaction(
    servers: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_move, "LOCK_TIMEOUT", "50ms")  # the move gives up sooner on the table the transaction holds
    monkeypatch.setattr(_move, "FENCE_ATTEMPTS", 1)
    with (
        hvcore.Datastore([dict(s) for s in servers], backend="jsonb") as stale,
        hvcore.Datastore([dict(s) for s in servers], backend="jsonb") as mover,
    ):
        key = stale.put(3, 1, n="before")
        with stale.transaction(3) as tx:
            tx.put(1, n="in the transaction")
            with pytest.raises(MoveError, match=r"transactions keep holding it|could not fence"):  # it holds the table
                mover.move_shard(3, 1)
        mover.move_shard(3, 1)
        with pytest.raises(ShardMoved, match="cannot follow it") as refused, stale.transaction(3) as tx:
            tx.update(key, n="refused")
        assert refused.value.server == stale.servers[1].label
        with pytest.raises(TransactionError, match="was rolled back"):
            tx.get(key)
        assert stale.shard_map.server_for(3) == 1  # new transactions go to the new server
        with stale.transaction(3) as tx:
            assert tx.get(key).data == {"n": "before"}  # type: ignore[union-attr]
            tx.update(key, n="after")
    with direct(servers[1]) as conn:
        rows = conn.execute("SELECT body->>'n' FROM shard0003.entities ORDER BY id").fetchall()
    assert rows == [("after",), ("in the transaction",)]


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_asyncio_tasks_each_have_their_own_transaction(backend: str, servers: list[dict[str, Any]]) -> None:
    """Tasks of one loop: each ``async with adb.transaction(3)`` is its own transaction (the open ones are kept per
    task), a task's writes are invisible to the others until its commit, and a failing task rolls back alone."""
    config = [dict(s) for s in servers] if backend == "jsonb" else [dict(shards="0-16")]
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(config, backend=backend) as adb:
            writing, written = asyncio.Event(), asyncio.Event()

            async def writer() -> hvcore.Key:
                async with adb.transaction(3) as tx:
                    key = await tx.put(1, who="writer")
                    seen["writer"] = tx
                    written.set()
                    await writing.wait()  # the reader looks meanwhile
                return key

            async def reader() -> None:
                await written.wait()
                async with adb.transaction(3) as tx:
                    assert tx is not seen["writer"]  # not a savepoint of the writer's transaction
                    seen["reader"] = [r.data async for r in tx.query()]
                writing.set()

            async def failing() -> None:
                async with adb.transaction(3) as tx:
                    await tx.put(1, who="failing")
                    raise ZeroDivisionError

            key, _, failed = await asyncio.gather(writer(), reader(), failing(), return_exceptions=True)
            assert isinstance(failed, ZeroDivisionError)
            seen["after"] = [r.data async for r in adb.query(shards=[3])]
            assert isinstance(key, int) and (await adb.get(key)) is not None

    asyncio.run(scenario())
    assert seen["reader"] == []
    assert seen["after"] == [{"who": "writer"}]


def test_a_task_cancelled_mid_statement_rolls_its_transaction_back(db: hvcore.Datastore, servers: Any) -> None:
    async def scenario() -> None:
        async with hvcore.AsyncDatastore([dict(s) for s in servers], backend="jsonb") as adb:
            with pytest.raises(TimeoutError):
                async with adb.transaction(3) as tx:
                    seen["key"] = await tx.put(1, n="cancelled")
                    async with tx.cursor() as cur:
                        await asyncio.wait_for(cur.execute("SELECT pg_sleep(30)"), 0.3)
            async with adb.transaction(3) as tx:  # the pool gives a usable connection again
                seen["after"] = await tx.put(1, n="after")
            assert adb.servers[0].stats()["borrowed"] == 0

    seen: dict[str, Any] = {}
    asyncio.run(scenario())
    assert db.get(seen["key"]) is None
    assert db.get(seen["after"]) is not None


def test_a_committed_transaction_counts_as_a_write_for_read_your_writes(pg_replica_pair: ReplicaPair) -> None:
    """With read replicas, reads after a transaction's commit go to the primary until the standby replayed it."""
    pair = pg_replica_pair
    standby = pair.standby_settings
    servers = [dict(shards="0-4", **pair.primary_settings, replicas=[dict(host=standby["host"], port=standby["port"])])]
    with hvcore.Datastore(servers, backend="jsonb", read_from="replica", max_replica_lag=60) as db:
        db.provision()
        pair.wait_replayed()
        assert db._router is not None
        db._router.interval = 3600.0  # positions read by refresh_replicas() only
        db.refresh_replicas()
        pair.pause_replay()
        try:
            with db.transaction(1) as tx:
                key = tx.put(1, v="in a transaction")
            with db.transaction(1, read_only=True) as tx:  # reads only: nothing to wait for
                assert tx.get(key) is not None  # a transaction reads on the primary, always
            db.refresh_replicas()
            assert db.get(key) is not None  # the primary: the standby has not replayed the commit
            assert db.get(key, read_from="replica") is not None
        finally:
            pair.resume_replay()


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_what_user_sql_leaves_in_the_session_is_reset_after_the_transaction(servers: Any, outcome: str) -> None:
    """``tx.cursor()`` is user code: a session-level SET and an advisory lock taken there do not outlive the
    transaction on the pooled connection (one connection: the next transaction gets the same session)."""
    with hvcore.Datastore([dict(s) for s in servers], backend="jsonb", pool_max=1) as db:
        with contextlib.suppress(ZeroDivisionError), db.transaction(3) as tx, tx.cursor() as cur:
            cur.execute("SET statement_timeout = 4321")  # not LOCAL: it would stay with the session
            cur.execute("SELECT pg_advisory_lock(4242)")
            pid = cur.execute("SELECT pg_backend_pid()").fetchone()[0]
            if outcome == "rollback":
                _ = 1 / 0
        with db.transaction(3) as tx, tx.cursor() as cur:
            assert cur.execute("SELECT pg_backend_pid()").fetchone()[0] == pid  # the same session
            assert cur.execute("SHOW statement_timeout").fetchone()[0] == "0"
        with direct(servers[0]) as other:
            held = other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242")
            assert held.fetchone() == (0,)


def test_nested_transactions_past_pool_max_say_the_caller_holds_the_connections(servers: Any) -> None:
    """``with db.transaction(1), db.transaction(2), db.transaction(5):`` on pool_max=2 said only "all borrowed:
    return connections with put_connection()"; the caller holds them itself, in its own open transactions."""
    with hvcore.Datastore([dict(s) for s in servers], backend="jsonb", pool_max=2, pool_block_timeout=0.3) as db:
        with db.transaction(1), db.transaction(2), pytest.raises(hvcore.PoolTimeout) as info:  # noqa: SIM117
            with db.transaction(5):
                pass
        notes = " ".join(getattr(info.value, "__notes__", []))
        assert "holds 2 of them itself" in notes and "shard(s) 1, 2" in notes
        with db.transaction(5) as tx:  # once they end, the pool serves again
            tx.put(1, after="timeout")
