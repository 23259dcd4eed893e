"""Every measured failure of the 2015 library (REFERENCE.md), one test each: ours gives a clear, typed outcome."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers

import hvcore
from hvcore import _generator

pytestmark = pytest.mark.postgres

T0 = 1_760_000_000_000


def one_server(fault_pg: FaultServers, index: int = 0, backend: str = "jsonb", **options: Any) -> hvcore.Datastore:
    db = hvcore.Datastore([dict(shards="0-16", **fault_pg.fresh_db(index))], backend=backend, **options)
    db.provision()
    return db


def session_pids(fault_pg: FaultServers, index: int, dbname: str) -> list[int]:
    rows = fault_pg.sql(
        index,
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'hypervault'",
        (dbname,),
    )
    return [int(pid) for (pid,) in rows]


def terminate(fault_pg: FaultServers, index: int, pids: list[int]) -> None:
    for pid in pids:
        fault_pg.sql(index, "SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.05)


# -- a killed server session: OperationalError, then InterfaceError, then an empty pool for good -----------------


def test_killed_session_costs_no_failed_call_and_no_slot(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, pool_max=2)
    dbname = db.servers[0].label.rsplit("/", 1)[1]
    held = [db.get_connection(1), db.get_connection(2)]  # two sessions in the pool
    for conn in held:
        db.put_connection(conn)
    for _ in range(3):  # kill every session, three times over: more than pool_max
        terminate(fault_pg, 0, session_pids(fault_pg, 0, dbname))
        key = db.put(1, 1, a="b")  # the dead idle sessions are noticed at checkout: no failed call
        assert db.get(key) is not None
    # a session killed while the application holds it: its own statement fails (psycopg's error, on its own
    # connection), the connection goes back, and the slot is not lost
    conn = db.get_connection(1)
    row = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert row is not None
    pid = row["pid"]
    conn.rollback()
    terminate(fault_pg, 0, [pid])
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    db.put_connection(conn)
    both = [db.get_connection(3), db.get_connection(4)]  # pool_max connections still available
    for c in both:
        db.put_connection(c)
    assert db.servers[0].stats()["borrowed"] == 0
    db.close()


# -- server down: every failed connect used up a slot; after pool_max failures the pool was empty for good -------


def test_server_down_failed_connects_use_up_no_slot(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, 1, pool_max=2, pool_block_timeout=2)
    db.put(1, 1, a="b")
    fault_pg.stop(1)
    try:
        for _ in range(6):  # three times pool_max
            started = time.monotonic()
            with pytest.raises(hvcore.ServerUnavailable, match="unavailable"):
                db.put(1, 1, a="b")
            assert time.monotonic() - started < 2.5
        with pytest.raises(hvcore.ServerUnavailable):
            db.get_connection(1)
    finally:
        fault_pg.start(1)
    held = [db.get_connection(1), db.get_connection(2)]  # both slots are there
    for conn in held:
        db.put_connection(conn)
    assert db.get(db.put(1, 1, a="c")) is not None
    db.close()


# -- reuse after disconnect() raised and leaked the slot -------------------------------------------------------


def test_reuse_after_disconnect_raises_store_closed_and_leaks_nothing(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, pool_max=1)
    key = db.put(1, 1, a="b")
    db.disconnect()
    for call in (lambda: db.put(1, 1, a="b"), lambda: db.get(key), lambda: db.get_connection(1)):
        with pytest.raises(hvcore.StoreClosed, match="reinstantiate"):
            call()
    db.reinstantiate()
    conn = db.get_connection(1)  # the single slot is free
    db.put_connection(conn)
    assert db.get(key) is not None
    db.close()


def test_connection_returned_after_disconnect_is_released(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, pool_max=1)
    conn = db.get_connection(1)
    store = db.servers[0]
    db.disconnect()
    db.put_connection(conn)  # returned late: accepted and closed, not leaked
    assert conn.closed
    assert store.stats()["borrowed"] == 0
    db.reinstantiate()
    db.put_connection(db.get_connection(1))
    db.close()


def test_async_connection_returned_after_disconnect_is_released(fault_pg: FaultServers) -> None:
    settings = fault_pg.fresh_db(0)
    hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb").close()

    async def main() -> None:
        db = hvcore.AsyncDatastore([dict(shards="0-16", **settings)], backend="jsonb", pool_max=1)
        await db.open()
        await db.provision()
        conn = await db.get_connection(1)
        store = db.servers[0]
        await db.disconnect()
        await db.put_connection(conn)
        assert store.stats()["borrowed"] == 0
        await db.close()

    asyncio.run(main())


# -- returning a connection twice let two borrowers share it ----------------------------------------------------


@pytest.mark.parametrize("backend", ["jsonb", "memory"])
def test_connection_returned_twice_raises_connection_misuse(fault_pg: FaultServers, backend: str) -> None:
    if backend == "memory":
        db = hvcore.Datastore([dict(shards="0-16", name=f"twice-{time.monotonic_ns()}")], backend="memory", pool_max=2)
    else:
        db = one_server(fault_pg, pool_max=2)
    conn = db.get_connection(1)
    db.put_connection(conn)
    with pytest.raises(hvcore.ConnectionMisuse, match="returned"):
        db.put_connection(conn)
    first, second = db.get_connection(1), db.get_connection(2)
    assert first is not second
    db.put_connection(first)
    db.put_connection(second)
    assert db.servers[0].stats()["borrowed"] == 0
    db.close()


# -- after fork() the child closed the inherited sockets, ending the parent's sessions ---------------------------


def test_fork_child_closing_its_datastore_leaves_the_parent_sessions_alive(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, pool_max=1)
    with db.cursor(1) as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        row = cur.fetchone()
        assert row is not None
        parent_pid = row["pid"]
    pid = os.fork()
    if pid == 0:  # child: uses the store, then closes it, as an exiting worker would
        code = 1
        try:
            db.put(1, 1, who="child")
            db.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with db.cursor(1) as cur:
        cur.execute("SELECT pg_backend_pid() AS pid, count(*) AS n FROM entities")
        assert cur.fetchone() == {"pid": parent_pid, "n": 1}
    db.close()


# -- shard 0, negative shards, gaps: IndexError; past the end: TypeError; configs out of order: misrouted --------


def test_shard_zero_negative_shards_and_gaps_are_typed() -> None:
    with hvcore.Datastore([dict(shards="0-8", name=f"z-{time.monotonic_ns()}")], backend="memory") as db:
        assert db.get(db.put(0, 1, a="b")) is not None  # shard 0 is a shard like any other
        for bad in (-1, -8192):
            with pytest.raises(hvcore.InvalidShard):
                db.put(bad, 1, a="b")
    unmapped_zero = [dict(shards="1-9", name=f"o-{time.monotonic_ns()}")]
    with hvcore.Datastore(unmapped_zero, backend="memory") as db, pytest.raises(hvcore.ShardNotFound):
        db.put(0, 1, a="b")  # unmapped, not an IndexError
    with pytest.raises(hvcore.ShardMapError, match="gap"):
        hvcore.Datastore([dict(shards="0-4", name="g1"), dict(shards="8-16", name="g2")], backend="memory")
    gaps = [dict(shards="0-4", name=f"g1-{time.monotonic_ns()}"), dict(shards="8-16", name=f"g2-{time.monotonic_ns()}")]
    with hvcore.Datastore(gaps, backend="memory", allow_gaps=True) as db, pytest.raises(hvcore.ShardNotFound):
        db.put(5, 1, a="b")


def test_shards_past_the_end_are_typed() -> None:
    with hvcore.Datastore([dict(shards="0-8", name=f"e-{time.monotonic_ns()}")], backend="memory") as db:
        with pytest.raises(hvcore.ShardNotFound):
            db.put(8, 1, a="b")
        with pytest.raises(hvcore.InvalidShard):
            db.put(8192, 1, a="b")  # past the layout's 13 bits
        with pytest.raises(hvcore.InvalidShard):
            db.get_connection(1 << 40)


def test_configs_out_of_order_route_to_the_right_server(fault_pg: FaultServers) -> None:
    a, b = fault_pg.fresh_db(0), fault_pg.fresh_db(1)
    servers = [dict(shards="8-16", **b), dict(shards="0-8", **a)]  # listed out of order
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        low, high = db.put(3, 1, where="a"), db.put(12, 1, where="b")
        assert db.get(low) is not None and db.get(high) is not None
    assert fault_pg.sql(0, "SELECT id FROM shard0003.entities", dbname=a["dbname"]) == [(int(low),)]
    assert fault_pg.sql(1, "SELECT id FROM shard0012.entities", dbname=b["dbname"]) == [(int(high),)]
    assert fault_pg.sql(1, "SELECT to_regnamespace('shard0003')", dbname=b["dbname"]) == [(None,)]


# -- put with int or dict values: hstore type error; kind above 32767; '12' and 12.9 as shards ------------------


def test_int_and_dict_values_on_hstore_are_invalid_data_before_sql(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg, backend="hstore")
    for body in ({"n": 1}, {"d": {"x": "y"}}, {"l": ["a"]}, {"f": 1.5}, {"b": True}):
        with pytest.raises(hvcore.InvalidData, match="text only"):
            db.put(1, 1, **body)
    assert db.status()[0]["rows"] == 0
    db.close()
    jsonb = one_server(fault_pg)
    stored: dict[str, Any] = {"n": 1, "d": {"x": [1, "y", None]}, "f": 1.5, "b": True}
    assert jsonb.get(jsonb.put(1, 1, **stored)).data == stored  # type: ignore[union-attr]
    jsonb.close()


def test_kind_above_32767_is_invalid_kind(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg)
    for kind in (32768, 1 << 40, -1, "1", 1.0, None, True):
        with pytest.raises(hvcore.InvalidKind):
            db.put(1, kind, a="b")  # type: ignore[arg-type]
    assert db.get(db.put(1, 32767, a="b")).kind == 32767  # type: ignore[union-attr]
    db.close()


def test_string_shard_12_is_invalid_shard(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg)
    twelve: Any = "12"
    for call in (
        lambda: db.put(twelve, 1, a="b"),
        lambda: db.get_connection(twelve),
        lambda: db.cursor(twelve).__enter__(),
        lambda: list(db.query(shards=[twelve])),
    ):
        with pytest.raises(hvcore.InvalidShard):
            call()
    assert db.status()[0]["rows"] == 0
    db.close()


def test_float_shard_12_9_is_invalid_shard_not_shard_12(fault_pg: FaultServers) -> None:
    db = one_server(fault_pg)
    with pytest.raises(hvcore.InvalidShard, match="never rounded"):
        db.put(12.9, 1, a="b")  # type: ignore[arg-type]
    with pytest.raises(hvcore.InvalidShard):
        db.get_connection(12.0)  # type: ignore[arg-type]
    assert db.status()[0]["rows"] == 0
    db.close()


# -- a 1025th id in one millisecond on one shard repeated an earlier id, and nothing retried --------------------


class FrozenClock:
    """An injected clock stuck at one millisecond until a test moves it (thread-safe reads)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_1025th_id_in_one_millisecond_waits_for_the_next_one() -> None:
    clock = FrozenClock(T0)
    gen = hvcore.KeyGenerator(clock=clock)
    keys = [gen.next_key(12) for _ in range(1024)]
    extra: list[hvcore.Key] = []
    waiter = threading.Thread(target=lambda: extra.append(gen.next_key(12)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not extra  # the 1025th waits: T0 has no sequence number left
    clock.ms = T0 + 1
    waiter.join(5)
    assert len(extra) == 1
    keys += extra
    assert len(set(keys)) == 1025
    assert extra[0].created > keys[0].created and extra[0].added_id == 0


def as_another_process(make: Callable[..., Any], **options: Any) -> Any:
    """A generator (``make(**options)``) with a sequence table of its own, as a generator of another process has
    (the generators of one process share one per layout, whatever their clocks, and never collide)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_generator, "process_table", lambda key, make_table: make_table())
        return make(**options)


def test_repeated_id_from_another_process_is_retried_with_a_fresh_key(
    fault_pg: FaultServers, duplicate_log: Any
) -> None:
    logger, duplicates = duplicate_log
    settings = fault_pg.fresh_db(0)
    one = hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb")
    one.provision()
    two = hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", logger=logger)
    clock = FrozenClock(T0)
    # two "processes" without a shared sequence, whose clocks read the same millisecond (a sequence table each:
    # the generators of one process share one, whatever their clocks, and never collide)
    one.generator = as_another_process(hvcore.KeyGenerator, clock=clock)
    two.generator = as_another_process(hvcore.KeyGenerator, clock=clock)
    first = [one.put(5, 1, by="one") for _ in range(3)]
    second = two.put(5, 1, by="two")  # its sequence 0, 1, 2 are stored already: retried with fresh keys
    # each collision is logged; after the first, the generator steps past a random stretch, so 1 to 3 of them
    assert second not in first and 1 <= duplicates.count <= 3
    assert one.get(second).data == {"by": "two"}  # type: ignore[union-attr]
    assert all(one.get(k).data == {"by": "one"} for k in first)  # type: ignore[union-attr]
    one.close()
    two.close()
