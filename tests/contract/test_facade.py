"""The façade contract: the same behaviour on every backend (memory, hstore, jsonb)."""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import threading

import pytest

import hvcore
from hvcore import (
    ConnectionMisuse,
    InvalidData,
    InvalidKey,
    InvalidKind,
    InvalidShard,
    Key,
    KeyLayout,
    ShardNotFound,
    StoreClosed,
)


def test_put_then_get_round_trips(datastore: hvcore.Datastore) -> None:
    key = datastore.put(12, 1, beep="boop", name="Zoë ☃")
    assert isinstance(key, Key)
    assert key.shard_id == 12
    record = datastore.get(key)
    assert record == hvcore.Record(key, 1, {"beep": "boop", "name": "Zoë ☃"})
    assert type(record.key) is type(key)


def test_key_decodes_to_now(datastore: hvcore.Datastore) -> None:
    before = dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=5)
    key = datastore.put(3, 7, a="b")
    after = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=5)
    assert before <= key.created <= after
    assert 0 <= key.added_id < 1024


def test_get_missing_key_is_none(datastore: hvcore.Datastore) -> None:
    key = Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=4, added_id=9)
    assert datastore.get(key) is None


def test_get_accepts_plain_int(datastore: hvcore.Datastore) -> None:
    key = datastore.put(9, 2, x="y")
    record = datastore.get(int(key))
    assert record is not None and record.data == {"x": "y"}


def test_empty_body_and_field_names_that_clash_with_arguments(datastore: hvcore.Datastore) -> None:
    empty = datastore.put(1, 0)
    assert datastore.get(empty) == hvcore.Record(empty, 0, {})
    clash = datastore.put(2, 5, shard_id="s", kind="k", key="x", self="me")
    stored = datastore.get(clash)
    assert stored is not None
    assert stored.kind == 5
    assert stored.data == {"shard_id": "s", "kind": "k", "key": "x", "self": "me"}


def test_kind_range_is_smallint(datastore: hvcore.Datastore) -> None:
    low, high = datastore.put(1, 0, a="1"), datastore.put(1, 32767, a="2")
    assert datastore.get(low).kind == 0  # type: ignore[union-attr]
    assert datastore.get(high).kind == 32767  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [-1, 32768, 2**40, 1.0, "1", None, True])
def test_bad_kind_is_rejected(datastore: hvcore.Datastore, kind: object) -> None:
    with pytest.raises(InvalidKind, match=r"0\.\.32767"):
        datastore.put(1, kind, a="b")  # type: ignore[arg-type]


@pytest.mark.parametrize("shard", [12.9, "12", True, -1, 8192, None])
def test_bad_shard_types_are_rejected(datastore: hvcore.Datastore, shard: object) -> None:
    with pytest.raises(InvalidShard):
        datastore.put(shard, 1, a="b")  # type: ignore[arg-type]


@pytest.mark.parametrize("shard", [16, 100, 8191])
def test_unmapped_shard_is_not_found(datastore: hvcore.Datastore, shard: int) -> None:
    with pytest.raises(ShardNotFound, match=f"shard {shard} is not mapped"):
        datastore.put(shard, 1, a="b")
    with pytest.raises(ShardNotFound):
        datastore.get(Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=shard, added_id=0))


@pytest.mark.parametrize("bad", ["123", 1.5, -1, 2**63, None])
def test_get_rejects_non_keys(datastore: hvcore.Datastore, bad: object) -> None:
    with pytest.raises(InvalidKey):
        datastore.get(bad)  # type: ignore[arg-type]


def test_get_rejects_key_of_another_layout(datastore: hvcore.Datastore) -> None:
    foreign = KeyLayout.HYPERVAULT.key(307821103844175873)
    with pytest.raises(InvalidKey, match="another layout"):
        datastore.get(foreign)


@pytest.mark.parametrize("value", ["nul\x00inside", "\udc80 lone surrogate"])
def test_text_that_postgresql_cannot_hold_is_rejected(datastore: hvcore.Datastore, value: str) -> None:
    with pytest.raises(InvalidData, match="'field'"):
        datastore.put(1, 1, field=value)


def test_unicode_and_large_text_round_trip(datastore: hvcore.Datastore) -> None:
    body = {"emoji": "🦄" * 1000, "big": "x" * 1_000_000, "quote": 'it\'s "quoted" \\ back=>slash', "": "empty name"}
    key = datastore.put(4, 1, **body)
    assert datastore.get(key).data == body  # type: ignore[union-attr]


def test_none_value_round_trips(datastore: hvcore.Datastore) -> None:
    key = datastore.put(4, 1, gone=None)
    assert datastore.get(key).data == {"gone": None}  # type: ignore[union-attr]


def test_typed_values(datastore: hvcore.Datastore, backend_name: str) -> None:
    body = {"n": 3, "f": 1.5, "t": True, "l": [1, "a", None], "d": {"k": ["v"]}}
    if backend_name == "hstore":
        with pytest.raises(InvalidData, match="'n'"):
            datastore.put(1, 1, **body)
        return
    key = datastore.put(1, 1, **body)
    assert datastore.get(key).data == body  # type: ignore[union-attr]


def test_rejected_put_writes_nothing(datastore: hvcore.Datastore) -> None:
    with pytest.raises((InvalidData, InvalidKind)):
        datastore.put(1, 1, ok="yes", bad=object())
    with datastore.cursor(1):
        pass
    assert datastore.status()[0]["rows"] == 0


def test_keys_are_unique_and_increasing_per_shard(datastore: hvcore.Datastore) -> None:
    keys = [datastore.put(6, 1, i=str(i)) for i in range(300)]
    assert keys == sorted(keys)
    assert len(set(keys)) == 300


def test_threads_share_a_datastore(datastore: hvcore.Datastore) -> None:
    keys: list[Key] = []
    lock = threading.Lock()

    def work(shard: int) -> None:
        mine = [datastore.put(shard, 1, n=str(i)) for i in range(50)]
        with lock:
            keys.extend(mine)

    threads = [threading.Thread(target=work, args=(s % 16,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 400
    assert all(datastore.get(k) is not None for k in keys[::20])


def test_connections_are_borrowed_and_returned(datastore: hvcore.Datastore) -> None:
    conn = datastore.get_connection(3)
    datastore.put_connection(conn)
    with pytest.raises(ConnectionMisuse):
        datastore.put_connection(conn)
    with pytest.raises(ConnectionMisuse):
        datastore.put_connection(object())


def _settle(datastore: hvcore.Datastore, result: object) -> object:
    """``result`` awaited on the async facade's loop when it is awaitable (an async connection's methods)."""
    return datastore.run(result) if inspect.isawaitable(result) else result  # type: ignore[attr-defined]


def test_a_returned_connection_is_refused_not_shared(datastore: hvcore.Datastore) -> None:
    conn = datastore.get_connection(3)
    earlier = conn.cursor()  # made while borrowed
    datastore.put_connection(conn)
    theirs = datastore.get_connection(3)  # the next borrower: on PostgreSQL, often the very same pooled session
    try:
        with pytest.raises(ConnectionMisuse, match=r"returned with put_connection\(\).*get_connection"):
            conn.cursor()
        with pytest.raises(ConnectionMisuse, match=r"returned with put_connection\(\)"):
            _settle(datastore, earlier.execute("SELECT 1"))
        with pytest.raises(ConnectionMisuse):
            _settle(datastore, conn.commit())  # type: ignore[func-returns-value]
        assert "returned with put_connection()" in repr(conn)
        assert conn.closed  # as the borrower sees it (`if not conn.closed:` guards stay quiet)
        cur = theirs.cursor()  # the next borrower's connection is untouched
        _settle(datastore, cur.execute("SELECT 1"))
        assert _settle(datastore, cur.fetchone())[0] == 1  # type: ignore[index]
    finally:
        datastore.put_connection(theirs)
    with pytest.raises(ConnectionMisuse):
        datastore.put_connection(conn)


def test_cursor_returns_its_connection_on_error(datastore: hvcore.Datastore) -> None:
    class Boom(Exception):
        pass

    for _ in range(30):  # more than pool_max: a leak would exhaust the pool
        with pytest.raises(Boom), datastore.cursor(2):
            raise Boom
    with datastore.cursor(2) as cur:
        assert cur is not None


def test_pool_exhaustion_times_out(make_datastore) -> None:
    store = make_datastore(pool_max=2, pool_block_timeout=0.2)
    held = [store.get_connection(1), store.get_connection(2)]
    with pytest.raises(hvcore.PoolTimeout, match=r"0\.2"):
        store.get_connection(3)
    held.append(store.get_connection(9))  # the other server has its own pool
    for conn in held:
        store.put_connection(conn)


def test_disconnect_then_reinstantiate(datastore: hvcore.Datastore) -> None:
    key = datastore.put(5, 1, a="b")
    datastore.disconnect()
    with pytest.raises(StoreClosed, match="reinstantiate"):
        datastore.get(key)
    with pytest.raises(StoreClosed):
        datastore.get_connection(5)
    datastore.reinstantiate()
    assert datastore.get(key) is not None


@pytest.mark.parametrize("end", ["disconnect", "close"])
def test_a_connection_borrowed_before_the_store_closes_is_taken_back_once(make_datastore, end: str) -> None:
    """``put_connection()`` of a connection borrowed before ``disconnect()``/``close()`` is accepted on every backend
    (the PostgreSQL pools close it then): its slot is not lost; returned twice, it is refused as usual."""
    store = make_datastore(pool_max=1)
    conn = store.get_connection(3)
    old = list(store._stores)
    getattr(store, end)()
    store.put_connection(conn)
    assert conn.closed
    assert all(server.stats()["borrowed"] == 0 for server in old)
    with pytest.raises(ConnectionMisuse):
        store.put_connection(conn)
    store.reinstantiate()
    store.put_connection(store.get_connection(3))  # the single slot is free


def test_context_manager_closes(make_datastore) -> None:
    with make_datastore() as store:
        key = store.put(1, 1, a="b")
    with pytest.raises(StoreClosed):
        store.get(key)


def test_logger_sees_operations_at_debug_without_values(make_datastore, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hv-contract")
    store = make_datastore(logger=logger)
    with caplog.at_level(logging.DEBUG, logger="hv-contract"):
        key = store.put(1, 1, a="private-value")
        store.get(key)
        list(store.query(where={"a": "private-value"}))
    assert len(caplog.records) >= 3
    assert {r.levelno for r in caplog.records} == {logging.DEBUG}  # statements are DEBUG, never INFO
    assert "private-value" not in caplog.text  # bound values (user data) only with log_values=True


def test_log_values_logs_bound_values(make_datastore, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("hv-contract-values")
    store = make_datastore(logger=logger, log_values=True)
    with caplog.at_level(logging.DEBUG, logger="hv-contract-values"):
        key = store.put(1, 1, a="shown-value")
        store.get(key)
    assert "shown-value" in caplog.text and str(int(key)) in caplog.text


def test_hypervault_layout_store(make_datastore) -> None:
    store = make_datastore(layout="hypervault")
    key = store.put(12, 1, beep="boop")
    assert type(key).layout == KeyLayout.HYPERVAULT
    assert key.shard_id == 12
    assert abs((key.created - dt.datetime.now(dt.UTC)).total_seconds()) < 5
    assert store.get(key).data == {"beep": "boop"}


def test_repr_names_backend_and_servers(datastore: hvcore.Datastore, backend_name: str) -> None:
    text = repr(datastore)
    assert backend_name.removesuffix("-pgbouncer") in text and "0-8" in text and "8-16" in text
