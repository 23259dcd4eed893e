"""Contract for ``Datastore.transaction(shard_id)`` (issue 17), on every backend, sync and async.

Commit, rollback on an exception, savepoints (``tx.transaction()`` and a nested ``db.transaction`` of the same
shard), read-your-writes, isolation from readers outside the transaction, an error aborting the transaction as
PostgreSQL does, and bad input refused with a typed error before any SQL (the transaction stays usable).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.datastores import TEXT_ONLY_BACKENDS, THROUGH_PGBOUNCER, MakeDatastore

import hvcore
from hvcore import (
    ConfigError,
    DuplicateValue,
    InvalidKey,
    InvalidShard,
    ShardNotFound,
    TransactionConflict,
    TransactionError,
)

SHARD = 3
OTHER = 11  # on the other server


class Boom(Exception):
    """The exception the tests raise inside a transaction."""


@pytest.fixture
def db(make_datastore: MakeDatastore, backend_name: str) -> Iterator[hvcore.Datastore]:
    """An empty store; indexes recorded by a test are dropped afterwards (PostgreSQL databases are shared)."""
    store = make_datastore()
    yield store
    if not backend_name.endswith(THROUGH_PGBOUNCER):  # no index is made through a pooler (see `directly`)
        for info in store.list_indexes():
            if info.index.kind is None or info.index.field is None:
                store.drop_body_index()
            else:
                store.drop_index(info.index.kind, info.index.field)


def directly(backend_name: str) -> None:
    """Skip a test that makes a secondary index behind a transaction-mode pooler: schema changes hold a session
    advisory lock, which such a pooler cannot keep (they are refused there, and leaked before that was so)."""
    if backend_name.endswith(THROUGH_PGBOUNCER):
        pytest.skip("schema changes are made directly, not through a transaction-mode PgBouncer")


def test_a_transaction_commits_every_write_when_its_block_ends(db: hvcore.Datastore) -> None:
    kept = db.put(SHARD, 1, name="kept", n="1")
    gone = db.put(SHARD, 1, name="gone")
    with db.transaction(SHARD) as tx:
        one = tx.put(1, name="one")
        many = tx.put_many(2, [{"name": "a"}, {"name": "b"}])
        assert tx.update(kept, n="2") is True
        assert tx.replace(many[0], name="A") is True
        assert tx.delete(gone) is True
        assert db.get(one) is None  # not committed yet: invisible outside
        assert db.get(gone) is not None
        assert db.get(kept).data == {"name": "kept", "n": "1"}  # type: ignore[union-attr]
    assert tx.state == "committed"
    assert db.get(one).data == {"name": "one"}  # type: ignore[union-attr]
    assert db.get(many[0]).data == {"name": "A"}  # type: ignore[union-attr]
    assert db.get(many[1]).kind == 2  # type: ignore[union-attr]
    assert db.get(kept).data == {"name": "kept", "n": "2"}  # type: ignore[union-attr]
    assert db.get(gone) is None
    assert {k.shard_id for k in [one, *many]} == {SHARD}


def test_an_exception_rolls_every_write_back(db: hvcore.Datastore) -> None:
    kept = db.put(SHARD, 1, name="kept")
    made: list[hvcore.Key] = []
    with pytest.raises(Boom), db.transaction(SHARD) as tx:
        made.append(tx.put(1, name="new"))
        made.extend(tx.put_many(1, [{"name": "x"}] * 3))
        tx.update(kept, name="changed")
        tx.delete(kept)
        raise Boom
    assert tx.state == "rolled back"
    assert db.get_many(made) == {}
    assert db.get(kept).data == {"name": "kept"}  # type: ignore[union-attr]
    assert [r.key for r in db.query(shards=[SHARD])] == [kept]


def test_reads_inside_see_the_transactions_own_writes(db: hvcore.Datastore) -> None:
    old = db.put(SHARD, 1, city="Oslo", name="old")
    with db.transaction(SHARD) as tx:
        new = tx.put(1, city="Oslo", name="new")
        tx.update(old, city="Bergen")
        assert tx.get(new).data == {"city": "Oslo", "name": "new"}  # type: ignore[union-attr]
        assert set(tx.get_many([old, new])) == {old, new}
        assert [r.key for r in tx.query(kind=1, where={"city": "Oslo"})] == [new]
        assert [r.data["name"] for r in tx.query()] == ["old", "new"]
        assert [r.key for r in tx.query(limit=1)] == [old]
        tx.delete(new)
        assert tx.get(new) is None
        assert tx.get_many([new]) == {}
        assert [r.key for r in tx.query(where={"city": "Oslo"})] == []
    assert [r.data["city"] for r in db.query(shards=[SHARD])] == ["Bergen"]


def test_savepoints_undo_only_their_own_block(db: hvcore.Datastore) -> None:
    with db.transaction(SHARD) as tx:
        outer = tx.put(1, name="outer")
        with pytest.raises(Boom), tx.transaction():
            inner = tx.put(1, name="inner")
            tx.update(outer, name="changed inside")
            raise Boom
        assert tx.get(inner) is None
        assert tx.get(outer).data == {"name": "outer"}  # type: ignore[union-attr]
        with tx.transaction() as same:
            assert same is tx
            kept = tx.put(1, name="kept")
            with pytest.raises(Boom), tx.transaction():
                tx.delete(kept)
                raise Boom
        with db.transaction(SHARD) as nested:  # the same shard again in this thread: a savepoint of the open one
            nested_key = nested.put(1, name="nested")
        assert db.get(nested_key) is None  # not committed by the inner block
        with pytest.raises(Boom), db.transaction(SHARD) as nested:
            nested.put(1, name="undone")
            raise Boom
    assert sorted(r.data["name"] for r in db.query(shards=[SHARD])) == ["kept", "nested", "outer"]


def test_a_reader_outside_sees_nothing_until_the_commit(db: hvcore.Datastore) -> None:
    seen: list[Any] = []
    with db.transaction(SHARD) as tx:
        key = tx.put(1, name="x")
        tx.put_many(1, [{"name": "y"}])

        def read() -> None:
            seen.append((db.get(key), list(db.query(shards=[SHARD]))))

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(30)
        assert seen == [(None, [])]
    assert db.get(key) is not None
    assert len(list(db.query(shards=[SHARD]))) == 2


def test_repeatable_read_keeps_its_snapshot_and_refuses_a_lost_update(db: hvcore.Datastore) -> None:
    key = db.put(SHARD, 1, n="0")
    with db.transaction(SHARD, isolation_level="read committed") as tx:
        assert tx.get(key).data == {"n": "0"}  # type: ignore[union-attr]
        db.update(key, n="1")
        assert tx.get(key).data == {"n": "1"}  # type: ignore[union-attr]  # read committed: sees the commit
    with pytest.raises(TransactionConflict), db.transaction(SHARD, isolation_level="REPEATABLE_READ") as tx:
        assert tx.get(key).data == {"n": "1"}  # type: ignore[union-attr]
        db.update(key, n="2")
        assert tx.get(key).data == {"n": "1"}  # type: ignore[union-attr]  # its snapshot
        tx.update(key, n="3")  # PostgreSQL refuses here, the memory backend at the commit
    assert db.get(key).data == {"n": "2"}  # type: ignore[union-attr]


def test_bad_input_is_a_typed_error_before_any_sql_and_the_transaction_goes_on(db: hvcore.Datastore) -> None:
    foreign = db.put(OTHER, 1, name="other shard")
    with pytest.raises(ConfigError, match="isolation_level must be one of"):
        db.transaction(SHARD, isolation_level="snapshot")
    with pytest.raises(ConfigError, match="read uncommitted as read committed"):
        db.transaction(SHARD, isolation_level="read uncommitted")
    with pytest.raises(ConfigError, match="read_only must be True or False"):
        db.transaction(SHARD, read_only="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidShard):
        db.transaction(1.5)  # type: ignore[arg-type]
    with pytest.raises(ShardNotFound):
        db.transaction(99)
    with db.transaction(SHARD) as tx:
        for call in (
            lambda: tx.get(foreign),
            lambda: tx.get_many([foreign]),
            lambda: tx.update(foreign, name="x"),
            lambda: tx.replace(foreign, name="x"),
            lambda: tx.delete(foreign),
        ):
            with pytest.raises(InvalidKey, match=f"belongs to shard {OTHER}, but this transaction is bound"):
                call()
        with pytest.raises(InvalidKey):
            tx.get("12")  # type: ignore[arg-type]
        with pytest.raises(hvcore.InvalidKind):
            tx.put(40000, name="x")
        with pytest.raises(hvcore.InvalidQuery):
            tx.query(limit=-1)
        with pytest.raises(ConfigError, match="cannot ask for 'serializable'"):
            db.transaction(SHARD, isolation_level="serializable")
        key = tx.put(1, name="still usable")
    assert db.get(key) is not None
    assert db.get(foreign).data == {"name": "other shard"}  # type: ignore[union-attr]


def test_a_read_only_transaction_refuses_writes_before_any_sql(db: hvcore.Datastore) -> None:
    key = db.put(SHARD, 1, name="x")
    with db.transaction(SHARD, read_only=True) as tx:
        assert tx.get(key) is not None
        for call in (
            lambda: tx.put(1, name="y"),
            lambda: tx.put_many(1, [{"name": "y"}]),
            lambda: tx.update(key, name="y"),
            lambda: tx.replace(key, name="y"),
            lambda: tx.delete(key),
        ):
            with pytest.raises(TransactionError, match="read-only"):
                call()
        assert [r.key for r in tx.query()] == [key]
    assert db.get(key).data == {"name": "x"}  # type: ignore[union-attr]


def test_an_error_from_the_store_aborts_the_transaction_until_its_savepoint_ends(
    db: hvcore.Datastore, backend_name: str
) -> None:
    directly(backend_name)
    db.create_index(5, "email", type="text", unique=True)
    db.put(SHARD, 5, email="ada@example.org")
    with pytest.raises(TransactionError, match="aborted by DuplicateValue"), db.transaction(SHARD) as tx:
        first = tx.put(5, email="bob@example.org")
        with pytest.raises(DuplicateValue):
            tx.put(5, email="ada@example.org")
        assert tx.state == "aborted"
        with pytest.raises(TransactionError, match="aborted"):
            tx.get(first)
        # the block ends normally although the error was caught inside: rolled back, TransactionError
    assert db.get(first) is None
    with db.transaction(SHARD) as tx:
        first = tx.put(5, email="bob@example.org")
        with pytest.raises(DuplicateValue), tx.transaction():
            tx.put(5, email="cy@example.org")
            tx.put_many(5, [{"email": "ada@example.org"}])
        assert tx.state == "open"  # rolled back to the savepoint: the transaction goes on
        second = tx.put(5, email="dee@example.org")
    found = db.get_many([first, second])
    assert sorted(r.data["email"] for r in found.values()) == ["bob@example.org", "dee@example.org"]
    assert len(list(db.query(kind=5, where={"email": "cy@example.org"}))) == 0


def test_an_ended_transaction_refuses_use(db: hvcore.Datastore) -> None:
    with db.transaction(SHARD) as tx:
        key = tx.put(1, name="x")
    with pytest.raises(TransactionError, match="was committed; start a new one"):
        tx.get(key)
    with pytest.raises(Boom), db.transaction(SHARD) as tx:
        raise Boom
    with pytest.raises(TransactionError, match="was rolled back"):
        tx.put(1, name="y")


def test_a_disconnect_inside_an_open_transaction_commits_nothing(db: hvcore.Datastore) -> None:
    """``db.disconnect()`` inside ``with db.transaction(...)``: later tx calls ran and the block committed."""
    before = db.put(SHARD, 1, name="before")
    try:
        with pytest.raises(hvcore.StoreClosed, match="rolled back, nothing committed"), db.transaction(SHARD) as tx:
            tx.put(1, name="inside")
            tx.update(before, name="changed")
            db.disconnect()
            with pytest.raises(hvcore.StoreClosed, match="disconnected while the transaction"):
                tx.put(1, name="after")
    finally:
        db.reinstantiate()
    assert [r.data["name"] for r in db.query(shards=[SHARD])] == ["before"]


def test_transactions_on_two_shards_are_separate(db: hvcore.Datastore) -> None:
    with db.transaction(SHARD) as tx:
        kept = tx.put(1, name="kept")
        with pytest.raises(Boom), db.transaction(OTHER) as other:
            undone = other.put(1, name="undone")
            raise Boom
    assert db.get(kept) is not None
    assert db.get(undone) is None


def test_cursor_runs_in_the_transaction_on_the_shards_schema(db: hvcore.Datastore, backend_name: str) -> None:
    with db.transaction(SHARD) as tx:
        key = tx.put(1, name="x")
        with tx.cursor() as cur:
            if backend_name == "memory":
                assert [r.key for r in cur.rows()] == [key]
            else:
                awaited(db, cur.execute("SELECT count(*) AS n FROM entities"))  # unqualified: the shard's schema
                assert awaited(db, cur.fetchone())["n"] == 1
                awaited(db, cur.execute("SELECT current_setting('search_path') AS path"))
                assert awaited(db, cur.fetchone())["path"].startswith(f"shard{SHARD:04d}")
    with db.cursor(SHARD) as cur:
        if backend_name != "memory":
            awaited(db, cur.execute("SELECT count(*) FROM entities"))
            assert awaited(db, cur.fetchone())[0] == 1


def awaited(db: Any, value: Any) -> Any:
    """``value``, awaited on the facade's loop if it is awaitable (an async cursor's result)."""
    return db.run(value) if inspect.isawaitable(value) else value


def test_a_taken_key_is_retried_with_a_fresh_one(db: hvcore.Datastore, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = db.put(SHARD, 1, name="first")
    inner = getattr(db, "inner", db)  # the async facade's AsyncDatastore
    original = inner._next_key
    handed: list[int] = []

    def next_key(shard_id: int) -> Any:
        if not handed:
            handed.append(1)
            if hasattr(db, "inner"):

                async def again() -> hvcore.Key:
                    return taken

                return again()
            return taken
        return original(shard_id)

    monkeypatch.setattr(inner, "_next_key", next_key)
    with db.transaction(SHARD) as tx:
        key = tx.put(1, name="second")
        assert key != taken
        assert tx.get(taken).data == {"name": "first"}  # type: ignore[union-attr]
    assert db.get(key).data == {"name": "second"}  # type: ignore[union-attr]


def test_text_only_backends_refuse_other_values_before_any_sql(db: hvcore.Datastore, backend_name: str) -> None:
    text_only = backend_name in TEXT_ONLY_BACKENDS
    with db.transaction(SHARD) as tx:
        if text_only:
            with pytest.raises(hvcore.InvalidData):
                tx.put(1, n=1)
        with pytest.raises(hvcore.InvalidData):
            tx.put(1, bad="\x00")
        with pytest.raises(hvcore.InvalidData):
            tx.put_many(1, [{"ok": "1"}, "not a mapping"])  # type: ignore[list-item]
        key = tx.put(1, ok="yes")
    assert db.get(key) is not None


def test_a_query_left_unfinished_ends_with_its_transaction(db: hvcore.Datastore) -> None:
    db.put_many(SHARD, 1, [{"n": str(i)} for i in range(300)])
    with db.transaction(SHARD) as tx:
        stream = tx.query()
        assert next(stream).data == {"n": "0"}
        key = tx.put(1, n="after")
    with db.transaction(SHARD) as other:  # likely the same pooled connection: no stray CLOSE reaches it
        del stream  # finalized now, after its transaction ended
        other.put(1, n="other")
        assert len(list(other.query())) == 302
    assert db.get(key) is not None


def test_range_filters_on_an_indexed_field_see_the_transactions_writes(db: hvcore.Datastore, backend_name: str) -> None:
    def age(n: int) -> Any:
        return str(n) if backend_name in TEXT_ONLY_BACKENDS else n  # hstore bodies hold text; its index reads it

    directly(backend_name)
    db.create_index(6, "age", type="bigint")
    db.put_many(SHARD, 6, [{"age": age(10)}, {"age": age(20)}])
    with db.transaction(SHARD) as tx:
        tx.put(6, age=age(15))
        tx.put(6, age=age(99))
        ages = [int(r.data["age"]) for r in tx.query(kind=6, where={"age": {">=": 12, "<": 50}})]
        assert ages == [20, 15]  # key order: creation order
        with pytest.raises(hvcore.InvalidQuery, match="no index on field 'size'"):
            list(tx.query(kind=6, where={"size": {">": 1}}))
        assert tx.state == "open"  # refused before any SQL
    assert len(list(db.query(kind=6, where={"age": {">=": 12}}))) == 3
