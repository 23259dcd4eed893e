"""Issue 13 through a real PgBouncer: rows in the right shard, clean connections, the mode chosen and detected."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fixtures.pgbouncer import PgBouncerFactory, PgBouncerSet
from fixtures.pgservers import PgCluster
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres._bouncer import pooler_possible
from hvbackend_postgres._schema import shard_schema
from hvbackend_postgres._store import PostgresServerStore

SHARDS = [0, 1, 2, 3, 8, 9, 10, 11]  # 8 shards, 4 on each server
MODES = ["transaction", "session"]


def _through(bouncers: PgBouncerSet, servers: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    """The factory databases' server entries, pointed at the poolers in front of them."""
    return [
        {**server, "host": "127.0.0.1", "port": bouncer.port, **extra}
        for server, bouncer in zip(servers, bouncers[: len(servers)], strict=True)
    ]


@pytest.fixture
def empty_servers(_pg_factory_databases: Any) -> list[dict[str, Any]]:
    """The jsonb factory databases (shards 0-8 and 8-16 on servers 0 and 1), emptied, as direct server entries."""
    return [dict(s) for s in _pg_factory_databases.empty("jsonb")]


@pytest.fixture(params=MODES)
def bouncer_servers(request: pytest.FixtureRequest, empty_servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Server entries through the session-scoped poolers of one mode (``pgbouncer`` left to "auto")."""
    bouncers: PgBouncerSet = request.getfixturevalue(f"pgbouncer_{request.param}")
    return _through(bouncers, empty_servers)


def _misplaced_rows(direct: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Rows whose body names another shard than the schema holding them, read from the servers directly."""
    wrong: list[tuple[int, Any]] = []
    for server in direct:
        low, high = (int(x) for x in server["shards"].split("-"))
        settings = {k: v for k, v in server.items() if k != "shards"}
        with psycopg.connect(**settings, autocommit=True) as conn:
            for shard in range(low, high):
                rows = conn.execute(f"SELECT body->>'shard' FROM {shard_schema(shard)}.entities").fetchall()
                wrong += [(shard, row[0]) for row in rows if row[0] != str(shard)]
    return wrong


def _row_count(direct: list[dict[str, Any]]) -> int:
    total = 0
    for server in direct:
        low, high = (int(x) for x in server["shards"].split("-"))
        settings = {k: v for k, v in server.items() if k != "shards"}
        with psycopg.connect(**settings, autocommit=True) as conn:
            for shard in range(low, high):
                row = conn.execute(f"SELECT count(*) FROM {shard_schema(shard)}.entities").fetchone()
                total += int(row[0]) if row else 0
    return total


def _mixed_work(db: hvcore.Datastore, seed: int, rounds: int, errors: list[str], puts: list[int]) -> None:
    """put/get/get_many/query/update/cursor over `SHARDS`, checking every answer."""
    rnd = random.Random(seed)
    mine: list[hvcore.Key] = []
    for i in range(rounds):
        shard = rnd.choice(SHARDS)
        op = rnd.choice(["put", "put", "get_many", "query", "update", "cursor"])
        try:
            if op == "put" or not mine:
                key = db.put(shard, 1, shard=str(shard), worker=str(seed), i=str(i))
                puts.append(1)
                record = db.get(key)
                if record is None or record.data.get("shard") != str(shard) or key.shard_id != shard:
                    errors.append(f"get after put of {key} in shard {shard}: {record}")
                mine.append(key)
            elif op == "get_many":
                sample = rnd.sample(mine, min(5, len(mine)))
                found = db.get_many(sample)
                if set(found) != set(sample):
                    errors.append(f"get_many missed {set(sample) - set(found)}")
            elif op == "query":
                key = rnd.choice(mine)
                got = list(db.query(kind=1, shards=[key.shard_id], since=key, limit=1))
                if not got or got[0].key != key:
                    errors.append(f"query from {key} in shard {key.shard_id} gave {got}")
            elif op == "update":
                key = rnd.choice(mine)
                if not db.update(key, touched=str(i)):
                    errors.append(f"update of {key} found nothing")
            else:
                with db.cursor(shard) as cur:
                    cur.execute("SELECT current_schema(), count(*) FROM entities")
                    row = cur.fetchone()
                    if row is None or row[0] != shard_schema(shard):
                        errors.append(f"cursor({shard}) ran in {row[0] if row else None}")
        except Exception as exc:  # every failure is an error of the run
            errors.append(f"{op} in shard {shard}: {type(exc).__name__}: {exc}")


def test_mixed_threads_through_pgbouncer(
    bouncer_servers: list[dict[str, Any]], empty_servers: list[dict[str, Any]]
) -> None:
    errors: list[str] = []
    puts: list[int] = []
    with hvcore.Datastore(bouncer_servers, pool_max=6, backend="jsonb") as db:
        threads = [threading.Thread(target=_mixed_work, args=(db, seed, 60, errors, puts)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for server in db.servers:
            assert server.stats()["borrowed"] == 0
    assert errors == []
    assert _misplaced_rows(empty_servers) == []
    assert _row_count(empty_servers) == len(puts)


async def _async_mixed(db: hvcore.AsyncDatastore, seed: int, rounds: int, errors: list[str], puts: list[int]) -> None:
    rnd = random.Random(seed)
    mine: list[hvcore.Key] = []
    for i in range(rounds):
        shard = rnd.choice(SHARDS)
        op = rnd.choice(["put", "put", "get_many", "query", "update", "cursor"])
        try:
            if op == "put" or not mine:
                key = await db.put(shard, 1, shard=str(shard), worker=str(seed), i=str(i))
                puts.append(1)
                record = await db.get(key)
                if record is None or record.data.get("shard") != str(shard):
                    errors.append(f"get after put of {key} in shard {shard}: {record}")
                mine.append(key)
            elif op == "get_many":
                sample = rnd.sample(mine, min(5, len(mine)))
                if set(await db.get_many(sample)) != set(sample):
                    errors.append("get_many missed keys")
            elif op == "query":
                key = rnd.choice(mine)
                got = [r async for r in db.query(kind=1, shards=[key.shard_id], since=key, limit=1)]
                if not got or got[0].key != key:
                    errors.append(f"query from {key} gave {got}")
            elif op == "update":
                if not await db.update(rnd.choice(mine), touched=str(i)):
                    errors.append("update found nothing")
            else:
                async with db.cursor(shard) as cur:
                    await cur.execute("SELECT current_schema(), count(*) FROM entities")
                    row = await cur.fetchone()
                    if row is None or row[0] != shard_schema(shard):
                        errors.append(f"cursor({shard}) ran in {row[0] if row else None}")
        except Exception as exc:
            errors.append(f"{op} in shard {shard}: {type(exc).__name__}: {exc}")


def test_mixed_tasks_through_pgbouncer(
    bouncer_servers: list[dict[str, Any]], empty_servers: list[dict[str, Any]]
) -> None:
    errors: list[str] = []
    puts: list[int] = []

    async def main() -> None:
        async with hvcore.AsyncDatastore(bouncer_servers, pool_max=6, backend="jsonb") as db:
            await asyncio.gather(*(_async_mixed(db, seed, 8, errors, puts) for seed in range(50)))
            for server in db.servers:
                assert server.stats()["borrowed"] == 0

    asyncio.run(main())
    assert errors == []
    assert _misplaced_rows(empty_servers) == []
    assert _row_count(empty_servers) == len(puts)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_auto_treats_any_pooler_as_transaction_pooling(
    request: pytest.FixtureRequest, mode: str, empty_servers: list[dict[str, Any]]
) -> None:
    bouncers: PgBouncerSet = request.getfixturevalue(f"pgbouncer_{mode}")
    with hvcore.Datastore(_through(bouncers, empty_servers), backend="jsonb") as db:
        assert db.servers[0].stats()["pooling"] is None  # not known before the first connection
        db.get(db.put(0, 1, a="b"))
        assert db.servers[0].stats()["pooling"] == "transaction"  # safe behind either mode
        assert db.servers[0].stats()["pgbouncer"] == "auto"
    with hvcore.Datastore(_through(bouncers, empty_servers, pgbouncer=mode), backend="jsonb") as db:
        assert db.servers[0].stats()["pooling"] == mode  # named: used as it is
    with hvcore.Datastore(empty_servers, backend="jsonb") as db:
        db.get(db.put(0, 1, a="b"))
        assert db.servers[0].stats()["pooling"] == "off"


def test_auto_detection_async(pgbouncer_transaction: PgBouncerSet, empty_servers: list[dict[str, Any]]) -> None:
    async def main() -> str | None:
        async with hvcore.AsyncDatastore(_through(pgbouncer_transaction, empty_servers), backend="jsonb") as db:
            await db.put(0, 1, a="b")
            return db.servers[0].stats()["pooling"]  # type: ignore[no-any-return]

    assert asyncio.run(main()) == "transaction"


def test_explicit_mode_skips_detection(
    pgbouncer_transaction: PgBouncerSet, empty_servers: list[dict[str, Any]]
) -> None:
    servers = _through(pgbouncer_transaction, empty_servers, pgbouncer="transaction")
    with hvcore.Datastore(servers, backend="jsonb") as db:
        assert db.servers[0].stats()["pooling"] == "transaction"  # before any connection
        key = db.put(3, 1, a="b")
        for _ in range(10):  # past psycopg's prepare_threshold: nothing is prepared
            assert db.get(key) is not None


def test_bad_pgbouncer_setting_is_a_typed_error_before_any_connection() -> None:
    with pytest.raises(hvcore.ConfigError, match="pgbouncer must be one of 'auto', 'transaction'"):
        hvcore.Datastore([dict(shards="0-4", host="127.0.0.1", port=1, pgbouncer="txn")], backend="jsonb")
    with pytest.raises(hvcore.ConfigError, match="pgbouncer must be one of"):
        hvcore.AsyncDatastore([dict(shards="0-4", host="127.0.0.1", port=1, pgbouncer=True)], backend="jsonb")
    with pytest.raises(hvcore.ConfigError, match=r"servers\[0\]: pgbouncer"):
        hvcore.Datastore([dict(shards="0-4", name="m", pgbouncer="Transaction")], backend="memory")


@given(port=st.none() | st.integers(1, 65535), server_port=st.none() | st.integers(1, 65535))
def test_only_the_servers_own_port_is_taken_for_direct(port: int | None, server_port: int | None) -> None:
    direct = port is not None and port == server_port
    assert pooler_possible(port, server_port) is not direct


# -- connections come back clean -------------------------------------------------------------------------------

LEAKS: list[tuple[str, str, str]] = [
    # (statement made inside cursor(), a query showing it, the value on a fresh connection)
    ("SET default_transaction_read_only = on", "SHOW default_transaction_read_only", "off"),
    ("SET statement_timeout = 1", "SHOW statement_timeout", "0"),
    ("SET synchronous_commit = local", "SHOW synchronous_commit", "off"),  # the suite's servers run with off
    ("SET ROLE pg_read_all_data", "SELECT current_user", "postgres"),
    ("SET SESSION AUTHORIZATION hv_secret", "SELECT session_user", "postgres"),
]


@pytest.fixture(params=["direct", "session", "transaction"])
def one_session_servers(
    request: pytest.FixtureRequest,
    empty_servers: list[dict[str, Any]],
    pgbouncer_factory: PgBouncerFactory,
    pg_cluster: PgCluster,
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """pool_max=1 server entries: direct, or through poolers with ONE server connection (so a leak cannot hide)."""
    if request.param == "direct":
        yield "direct", empty_servers
        return
    bouncers = PgBouncerSet(
        pgbouncer_factory(server, pool_mode=request.param, default_pool_size=1) for server in pg_cluster.servers[:2]
    )
    yield request.param, _through(bouncers, empty_servers)


def _fresh_values(direct: dict[str, Any]) -> dict[str, str]:
    settings = {k: v for k, v in direct.items() if k != "shards"}
    with psycopg.connect(**settings, autocommit=True) as conn:
        return {show: str(conn.execute(show).fetchone()[0]) for _, show, _ in LEAKS}  # type: ignore[index]


@pytest.mark.parametrize(("statement", "show", "fresh"), LEAKS, ids=[s for s, _, _ in LEAKS])
def test_a_set_inside_cursor_does_not_outlive_it(
    one_session_servers: tuple[str, list[dict[str, Any]]],
    statement: str,
    show: str,
    fresh: str,
    empty_servers: list[dict[str, Any]],
) -> None:
    mode, servers = one_session_servers
    expected = _fresh_values(empty_servers[0])[show]
    with hvcore.Datastore(servers, pool_max=1, backend="jsonb") as db:
        with db.cursor(2) as cur:
            cur.execute(statement)
            cur.execute(show)
            row = cur.fetchone()
            assert row is not None and str(row[0]) != expected  # the SET took effect inside the block
        key = db.put(2, 1, after=statement)  # read-only / timeout / role would fail here
        assert db.get(key) is not None
        assert [r.key for r in db.query(kind=1, shards=[2])] == [key]
        with db.cursor(2) as cur:
            cur.execute(show)
            row = cur.fetchone()
            assert row is not None and str(row[0]) == expected, f"{mode}: {statement} leaked"
            cur.execute("SELECT current_schema()")
            assert cur.fetchone()[0] == shard_schema(2)  # type: ignore[index]


@pytest.mark.parametrize(("statement", "show", "fresh"), LEAKS[:4], ids=[s for s, _, _ in LEAKS[:4]])
def test_a_set_on_a_borrowed_connection_does_not_outlive_it(
    one_session_servers: tuple[str, list[dict[str, Any]]],
    statement: str,
    show: str,
    fresh: str,
    empty_servers: list[dict[str, Any]],
) -> None:
    mode, servers = one_session_servers
    expected = _fresh_values(empty_servers[0])[show]
    with hvcore.Datastore(servers, pool_max=1, backend="jsonb") as db:
        conn = db.get_connection(9)
        conn.execute(statement)
        conn.commit()  # committed session state: reset by put_connection (the pooler's one server session too)
        conn.read_only = False  # psycopg's attributes are reset too
        db.put_connection(conn)
        key = db.put(9, 1, after=statement)
        assert db.get(key) is not None
        conn = db.get_connection(9)
        try:
            assert conn.read_only is None
            row = conn.execute(show).fetchone()
            assert row is not None and str(row[0]) == expected, f"{mode}: {statement} leaked"
        finally:
            db.put_connection(conn)


def test_async_cursor_set_does_not_leak(
    pgbouncer_factory: PgBouncerFactory, pg_cluster: PgCluster, empty_servers: list[dict[str, Any]]
) -> None:
    bouncers = PgBouncerSet(pgbouncer_factory(s, default_pool_size=1) for s in pg_cluster.servers[:2])

    async def main() -> None:
        async with hvcore.AsyncDatastore(_through(bouncers, empty_servers), pool_max=1, backend="jsonb") as db:
            async with db.cursor(1) as cur:
                await cur.execute("SET default_transaction_read_only = on")
            key = await db.put(1, 1, a="b")
            assert await db.get(key) is not None
            async with db.cursor(1) as cur:
                await cur.execute("SHOW default_transaction_read_only")
                assert (await cur.fetchone())[0] == "off"  # type: ignore[index]

    asyncio.run(main())


# -- get_connection() behind transaction pooling: every transaction in the shard, commits as usual -------------------


def _direct_ids(direct: list[dict[str, Any]], shard: int) -> set[int]:
    server = next(s for s in direct if int(s["shards"].split("-")[0]) <= shard < int(s["shards"].split("-")[1]))
    settings = {k: v for k, v in server.items() if k != "shards"}
    with psycopg.connect(**settings, autocommit=True) as conn:
        return {int(r[0]) for r in conn.execute(f"SELECT id FROM {shard_schema(shard)}.entities").fetchall()}


def test_borrowed_connection_stays_in_its_shard_across_commits(
    pgbouncer_transaction: PgBouncerSet, empty_servers: list[dict[str, Any]]
) -> None:
    servers = _through(pgbouncer_transaction, empty_servers)
    stop = threading.Event()

    def churn() -> None:  # other clients, so that each transaction may get another server session
        with hvcore.Datastore(servers, pool_max=3, backend="jsonb") as other:
            while not stop.is_set():
                with other.cursor(4) as cur:
                    cur.execute("SELECT pg_sleep(0.001)")

    churners = [threading.Thread(target=churn) for _ in range(3)]
    for thread in churners:
        thread.start()
    try:
        with hvcore.Datastore(servers, pool_max=2, backend="jsonb") as db:
            conn = db.get_connection(3)
            try:
                for i in range(20):
                    conn.execute("INSERT INTO entities (id, kind, body) VALUES (%s, 1, '{}')", (1000 + i,))
                    row = conn.execute("SELECT current_schema()").fetchone()
                    assert row is not None and row[0] == shard_schema(3)
                    conn.commit()
                for i in range(5):
                    with conn.transaction():
                        conn.execute("INSERT INTO entities (id, kind, body) VALUES (%s, 1, '{}')", (2000 + i,))
                conn.rollback()  # nothing open: the transactions above committed on their own
            finally:
                db.put_connection(conn)
            assert db.servers[0].stats()["pooling"] == "transaction"
    finally:
        stop.set()
        for thread in churners:
            thread.join()
    assert _direct_ids(empty_servers, 3) == {1000 + i for i in range(20)} | {2000 + i for i in range(5)}


def test_async_borrowed_connection_transaction_block_commits(
    pgbouncer_transaction: PgBouncerSet, empty_servers: list[dict[str, Any]]
) -> None:
    async def main() -> None:
        servers = _through(pgbouncer_transaction, empty_servers, pgbouncer="transaction")
        async with hvcore.AsyncDatastore(servers, pool_max=2, backend="jsonb") as db:
            conn = await db.get_connection(10)
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO entities (id, kind, body) VALUES (77, 1, '{}')")
                await conn.execute("INSERT INTO entities (id, kind, body) VALUES (78, 1, '{}')")
                cur = await conn.execute("SELECT current_schema()")
                assert (await cur.fetchone())[0] == shard_schema(10)  # type: ignore[index]
                await conn.commit()
            finally:
                await db.put_connection(conn)

    asyncio.run(main())
    assert _direct_ids(empty_servers, 10) == {77, 78}


# -- operator work holding session advisory locks is refused behind transaction pooling ----------------------------


def _advisory_locks(direct: list[dict[str, Any]]) -> int:
    count = 0
    for server in direct:
        settings = {k: v for k, v in server.items() if k != "shards"}
        with psycopg.connect(**settings, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
            count += int(row[0]) if row else 0
    return count


@pytest.mark.parametrize("pgbouncer", ["auto", "transaction"])
def test_schema_changes_and_provisioning_are_refused_behind_transaction_pooling(
    pgbouncer_transaction: PgBouncerSet, empty_servers: list[dict[str, Any]], pgbouncer: str
) -> None:
    servers = _through(pgbouncer_transaction, empty_servers, pgbouncer=pgbouncer)
    with hvcore.Datastore(servers, backend="jsonb") as db:
        with pytest.raises(hvcore.MigrationError, match=r"session advisory lock .* transaction-mode pooler"):
            db.create_index(1, "age", type="bigint")
        with pytest.raises(hvcore.ConfigError, match=r"provisioning \(hv init\) holds a session advisory lock"):
            db.provision()
    assert _advisory_locks(empty_servers) == 0  # nothing left held on the pooler's server sessions
    with hvcore.Datastore(_through(pgbouncer_transaction, empty_servers, pgbouncer="session"), backend="jsonb") as db:
        assert db.servers[0].stats()["pgbouncer"] == "session"  # named session pooling is not refused (not run here)


# -- the class: whatever session state user code leaves, the next borrower sees a fresh session ---------------------

SESSION_CHANGES = [
    "SET statement_timeout = '123s'",
    "SET lock_timeout = '7s'",
    "SET default_transaction_read_only = on",
    "SET default_transaction_isolation = 'serializable'",
    "SET synchronous_commit = local",
    "SET work_mem = '7MB'",
    "SET TIME ZONE 'Asia/Tokyo'",
    "SET datestyle = 'SQL, DMY'",
    "SET application_name = 'left-behind'",
    "SET ROLE pg_read_all_data",
    "SET SESSION AUTHORIZATION hv_secret",
    "SELECT set_config('maintenance_work_mem', '77MB', false)",
    "LISTEN hv_left_behind",
    "SELECT pg_advisory_lock(4242)",
    "SELECT public.hv_take_lock()",
    "CREATE TEMP TABLE IF NOT EXISTS hv_left_behind (x int)",
    "DECLARE hv_held CURSOR WITH HOLD FOR SELECT 1",
    "PREPARE hv_left_behind AS SELECT 1",
    "DO $$BEGIN EXECUTE 'PREPARE hv_left_by_do AS SELECT 2'; END$$",
    "SELECT nextval('public.hv_left_seq')",
]
SESSION_STATE = (
    "SELECT current_user, session_user, "
    "(SELECT array_agg(name || '=' || setting ORDER BY name) FROM pg_settings WHERE name <> 'search_path'), "
    "(SELECT count(*) FROM pg_listening_channels()), "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
    "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), "
    "(SELECT count(*) FROM pg_cursors), "
    "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql), "
    "public.hv_session_lastval()"
)
SESSION_STATE_SETUP = (
    "CREATE SEQUENCE IF NOT EXISTS public.hv_left_seq; GRANT USAGE ON SEQUENCE public.hv_left_seq TO PUBLIC; "
    "CREATE OR REPLACE FUNCTION public.hv_session_lastval() RETURNS bigint LANGUAGE plpgsql AS "
    "$$BEGIN RETURN lastval(); EXCEPTION WHEN object_not_in_prerequisite_state THEN RETURN NULL; END$$; "
    "CREATE OR REPLACE FUNCTION public.hv_take_lock() RETURNS void LANGUAGE plpgsql AS "
    "$$BEGIN PERFORM pg_catalog.pg_advisory_lock(4243); END$$"
)
"""A sequence for ``nextval`` to leave a value behind (under any role ``SET ROLE`` took), ``lastval()`` read
without an error when there is none, and a session advisory lock taken where the statement's text does not show it."""
LENT_ENDS = ["commit", "transaction", "with", "rollback", "aborted", "put_connection", "pipeline"]
"""How a borrower's transaction on a lent connection ends: ``commit()``, ``with conn.transaction():``, ``with
conn:``, ``rollback()``, ``rollback()`` of a transaction an error aborted, ``put_connection`` (its rollback), or
``commit()`` inside ``with conn.pipeline():``."""


def _refused(change: str, pooling: str) -> bool:
    """Whether ``change`` is refused (`ConnectionMisuse`, nothing sent) on a connection lent by a store whose
    resolved pooling is ``pooling``: a session advisory lock asked for by name behind a transaction pooler."""
    return pooling == "transaction" and "pg_advisory_lock(" in change


def _run_changes(cur: Any, changes: list[str], pooling: str) -> None:
    for change in changes:
        try:
            cur.execute(change)
        except hvcore.ConnectionMisuse:
            assert _refused(change, pooling), f"{change} was refused with pooling={pooling}"
            continue
        assert not _refused(change, pooling), f"{change} was not refused with pooling={pooling}"


def _lent_changes(db: hvcore.Datastore, changes: list[str], end: str, pooling: str) -> Any:
    """Run ``changes`` on a connection lent for shard 1, ended as ``end`` says; the connection, still lent (None
    for ``put_connection``, which returned it); what is refused is `_refused`, and nothing else."""
    conn = db.get_connection(1)
    try:
        if end == "transaction":
            with conn.transaction():
                _run_changes(conn, changes, pooling)
        elif end == "with":
            with conn:
                _run_changes(conn, changes, pooling)
        elif end == "pipeline":
            with conn.pipeline():
                _run_changes(conn, changes, pooling)
                conn.commit()
        else:
            _run_changes(conn, changes, pooling)
            if end == "commit":
                conn.commit()
            elif end == "aborted":
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1 / 0")
                conn.rollback()
            elif end == "rollback":
                conn.rollback()
    except BaseException:
        db.put_connection(conn)
        raise
    if end == "put_connection":
        db.put_connection(conn)
        return None
    return conn


def _every_end(test: Any) -> Any:
    """``test`` with an explicit example for each way a transaction ends: every end is run in every run."""
    for end in ["cursor", *LENT_ENDS]:
        test = example(changes=SESSION_CHANGES_EVERY_END, end=end)(test)
    return test


SESSION_CHANGES_EVERY_END = [
    "SET default_transaction_read_only = on",
    "SELECT public.hv_take_lock()",
    "PREPARE hv_left_behind AS SELECT 1",
    "LISTEN hv_left_behind",
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(st.sampled_from(SESSION_CHANGES), unique=True, max_size=6),
    end=st.sampled_from(["cursor", *LENT_ENDS]),
)
@_every_end
def test_any_session_state_left_by_user_code_is_gone_for_the_next_borrower(
    one_session_servers: tuple[str, list[dict[str, Any]]], changes: list[str], end: str
) -> None:
    """Whatever user SQL changed in its session, and however its transaction ended: the next borrower sees a fresh
    session, and behind a transaction-mode pooler so does ANOTHER client of the pooler (plain psycopg, which its
    single server session serves next) as soon as the lent connection's transaction has ended, before it is
    returned (found by newcomer 7: a committed SET reached the pooler's other clients)."""
    mode, servers = one_session_servers
    with hvcore.Datastore(servers, pool_max=1, backend="jsonb") as db:
        with db.cursor(1) as cur:
            cur.execute(SESSION_STATE_SETUP)
        with db.cursor(1) as cur:
            cur.execute(SESSION_STATE)
            fresh = cur.fetchone()
        other = lent = None
        if mode == "transaction":  # the pooler's other client: its one server session is the lent connection's
            other = psycopg.connect(**{k: v for k, v in servers[0].items() if k != "shards"})
            other_fresh = other.execute(SESSION_STATE).fetchone()
            other.commit()
        try:
            pooling = db.servers[0].stats()["pooling"]  # as the store resolved "auto"
            if end == "cursor":  # in a cursor() block, committed at its end
                with db.cursor(1) as cur:
                    _run_changes(cur, changes, pooling)
            else:  # on a borrowed connection, ended by the borrower, then returned
                lent = _lent_changes(db, changes, end, pooling)
            if other is not None:
                other_after = other.execute(SESSION_STATE).fetchone()
                other.commit()
                assert other_after is not None and other_fresh is not None
                changed = set(other_after[2]) ^ set(other_fresh[2])
                assert not changed, f"{changes} ended by {end} left settings for another client: {sorted(changed)}"
                assert tuple(other_after) == tuple(other_fresh), f"{changes} ended by {end} left state behind"
        finally:
            if lent is not None:
                db.put_connection(lent)
            if other is not None:
                other.close()
        with db.cursor(1) as cur:
            cur.execute(SESSION_STATE)
            after = cur.fetchone()
        assert fresh is not None and after is not None
        changed = set(after[2]) ^ set(fresh[2])
        assert not changed, f"{mode}: {changes} left settings behind: {sorted(changed)}"
        assert tuple(after) == tuple(fresh), f"{mode}: {changes} left state behind"
        assert db.get(db.put(1, 1, after="changes")) is not None


@pytest.fixture
def one_session_transaction_servers(
    empty_servers: list[dict[str, Any]], pgbouncer_factory: PgBouncerFactory, pg_cluster: PgCluster
) -> list[dict[str, Any]]:
    """Server entries through transaction-mode poolers with ONE server session each (named, not detected)."""
    bouncers = PgBouncerSet(
        pgbouncer_factory(server, pool_mode="transaction", default_pool_size=1) for server in pg_cluster.servers[:2]
    )
    return _through(bouncers, empty_servers, pgbouncer="transaction")


AUTOCOMMIT_REFUSED = [
    "SET work_mem = '7MB'",
    "set role pg_read_all_data",
    "SET SESSION AUTHORIZATION hv_secret",
    "SELECT 1; SET statement_timeout = '9s'",
    "/* a comment */ LISTEN hv_left_behind",
    "PREPARE hv_left_behind AS SELECT 1",
    "CREATE TEMP TABLE hv_left_behind (x int)",
    "SELECT set_config('work_mem', '9MB', false)",
    "SELECT pg_advisory_lock(77)",
]


@pytest.mark.parametrize("statement", AUTOCOMMIT_REFUSED)
def test_session_state_in_autocommit_through_a_transaction_pooler_is_refused(
    one_session_transaction_servers: list[dict[str, Any]], statement: str
) -> None:
    """In autocommit mode each statement is a transaction on whichever server session the pooler has free, and what
    it leaves in that session no reset can reach: refused before it is sent; the connection stays usable, and what
    needs autocommit (VACUUM) or leaves nothing behind still runs."""
    other_settings = {k: v for k, v in one_session_transaction_servers[0].items() if k not in ("shards", "pgbouncer")}
    with psycopg.connect(**other_settings) as other:
        fresh = other.execute("SHOW work_mem").fetchone()
    with hvcore.Datastore(one_session_transaction_servers, pool_max=1, backend="jsonb") as db:
        conn = db.get_connection(1)
        try:
            conn.autocommit = True
            with pytest.raises(hvcore.ConnectionMisuse, match=r"autocommit mode .* pooler|session advisory lock"):
                conn.execute(statement)
            conn.execute(f"VACUUM {shard_schema(1)}.entities")  # autocommit has no shard binding: qualified
            conn.execute("SELECT 'SET work_mem = 1' AS text_only, pg_advisory_xact_lock(77)")
            conn.execute("SET LOCAL work_mem = '7MB'")  # no effect out of a transaction: allowed
            with psycopg.connect(**other_settings) as other:  # the pooler's single server session, as others see it
                row = other.execute("SHOW work_mem").fetchone()
            with conn.transaction():  # the same statement in a transaction: undone before its COMMIT
                if "advisory_lock" not in statement:
                    conn.execute(statement)
        finally:
            db.put_connection(conn)
        with psycopg.connect(**other_settings) as other:
            state = other.execute(
                "SELECT current_setting('work_mem'), current_user, (SELECT count(*) FROM pg_listening_channels()), "
                "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql), "
                "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())"
            ).fetchone()
    assert fresh is not None and row is not None and state is not None
    assert (row[0], *state) == (fresh[0], fresh[0], "postgres", 0, 0, 0)


def test_an_async_lent_connection_commits_its_reset_through_a_transaction_pooler(
    one_session_transaction_servers: list[dict[str, Any]],
) -> None:
    """The asyncio store's lent connection ends its transactions as the blocking one's: ``await conn.commit()``
    carries the reset, so the pooler's other client (on its single server session) sees nothing of a SET."""
    other_settings = {k: v for k, v in one_session_transaction_servers[0].items() if k not in ("shards", "pgbouncer")}

    async def main() -> tuple[Any, ...]:
        async with hvcore.AsyncDatastore(one_session_transaction_servers, pool_max=1, backend="jsonb") as db:
            conn = await db.get_connection(1)
            try:
                await conn.execute("SET default_transaction_read_only = on")
                await conn.commit()
                with psycopg.connect(**other_settings) as other:
                    seen = other.execute("SHOW default_transaction_read_only").fetchone()
                async with conn.transaction():
                    await conn.execute("SET lock_timeout = '7s'")
                with psycopg.connect(**other_settings) as other:
                    seen2 = other.execute("SHOW lock_timeout").fetchone()
                with pytest.raises(hvcore.ConnectionMisuse, match="pg_advisory_xact_lock"):
                    await conn.execute("SELECT pg_try_advisory_lock(5)")
            finally:
                await db.put_connection(conn)
            await db.put(1, 1, n=1)
            return (seen, seen2)

    assert asyncio.run(main()) == (("off",), ("0",))


@pytest.mark.parametrize("statement", ["COMMIT", "rollback", "END", "SELECT 1; COMMIT", "/* done */ ABORT"])
def test_a_transaction_ended_by_sql_through_a_transaction_pooler_is_refused(
    one_session_transaction_servers: list[dict[str, Any]], statement: str
) -> None:
    """A ``COMMIT`` sent as SQL would hand the server session to the pooler's other clients before any reset: refused
    before it is sent (``conn.commit()`` carries the reset); the transaction goes on and ``commit()`` ends it clean."""
    other_settings = {k: v for k, v in one_session_transaction_servers[0].items() if k not in ("shards", "pgbouncer")}
    with hvcore.Datastore(one_session_transaction_servers, pool_max=1, backend="jsonb") as db:
        conn = db.get_connection(1)
        try:
            conn.execute("SET lock_timeout = '7s'")
            with pytest.raises(hvcore.ConnectionMisuse, match=r"ending the transaction .* conn\.commit\(\)"):
                conn.execute(statement)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("7s",)  # the same transaction goes on
            conn.commit()
            with psycopg.connect(**other_settings) as other:
                seen = other.execute("SHOW lock_timeout").fetchone()
            conn.autocommit = True
            conn.execute("COMMIT")  # out of a transaction in autocommit mode it ends nothing: allowed (a warning)
        finally:
            db.put_connection(conn)
    assert seen == ("0",)


def test_a_rolled_back_shard_transaction_leaves_nothing_on_a_transaction_poolers_session(
    empty_servers: list[dict[str, Any]],
    pgbouncer_factory: PgBouncerFactory,
    pg_cluster: PgCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``db.transaction()`` whose ``tx.cursor()`` took a session advisory lock and PREPAREd a statement, ended by an
    exception: what survives a rollback is reset in the ROLLBACK's own message. Another client of the pooler takes
    the server session as soon as the ROLLBACK ends (the store's own reset then runs on the other one, as it did
    when it was sent after the ROLLBACK) and finds nothing left on it."""
    bouncers = PgBouncerSet(
        pgbouncer_factory(server, pool_mode="transaction", default_pool_size=2) for server in pg_cluster.servers[:2]
    )
    servers = _through(bouncers, empty_servers, pgbouncer="transaction")
    other_settings = {k: v for k, v in servers[0].items() if k not in ("shards", "pgbouncer")}
    seen: list[Any] = []
    original = PostgresServerStore._reset

    def other_client_first(self: PostgresServerStore, conn: Any, session: bool) -> None:
        if other is not None and not seen:  # the session the ROLLBACK ended on is the pooler's most recent idle one
            seen.append(
                other.execute(
                    "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
                    "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql)"
                ).fetchone()
            )
        original(self, conn, session)

    other = None
    monkeypatch.setattr(PostgresServerStore, "_reset", other_client_first)
    with hvcore.Datastore(servers, pool_max=1, backend="jsonb", worker=None) as db:
        db.put(1, 1, n=0)
        other = psycopg.connect(**other_settings)
        try:
            with pytest.raises(RuntimeError, match="roll back"), db.transaction(1) as tx:
                tx.put(1, n=1)
                with tx.cursor() as cur:
                    cur.execute("SELECT pg_advisory_lock(4245)")
                    cur.execute("PREPARE hv_tx_left AS SELECT 1")
                raise RuntimeError("roll back")
            other.commit()
        finally:
            other.close()
    with psycopg.connect(**{k: v for k, v in empty_servers[0].items() if k != "shards"}) as check:
        held = check.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4245").fetchone()
    assert (seen, held) == ([(0, 0)], (0,))
