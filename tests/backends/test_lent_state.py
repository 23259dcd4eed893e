"""What a borrower adds to a lent connection's Python side is gone when it comes back, whichever way it was lent.

The session's own state is reset by SQL (``RESET ALL; ... DISCARD TEMP``: tests/backends/test_bouncer*); these are
the psycopg objects the pooled connection keeps across borrows: notice and notify handlers and adapters (dumpers,
loaders, types), added through ``get_connection()``, ``db.cursor()``'s ``cur.connection`` or ``tx.cursor()``'s.
Each case borrows the same pooled session next (``pool_max=1``) and checks nothing of the first borrower is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.adapt import Loader

import hvcore

NOTICE = "DO $$BEGIN RAISE NOTICE 'later borrower'; END$$"


class _Hijack(Loader):
    """An int4 loader a borrower registers: every later ``SELECT 1`` would answer "hijacked"."""

    def load(self, data: Any) -> str:
        return "hijacked"


@contextmanager
def _lent(db: hvcore.Datastore, how: str) -> Iterator[Any]:
    """The lent connection, as user code reaches it ``how``."""
    if how == "get_connection":
        conn = db.get_connection(3)
        try:
            yield conn
        finally:
            db.put_connection(conn)
    elif how == "cursor":
        with db.cursor(3) as cur:
            yield cur.connection
    else:
        with db.transaction(3) as tx, tx.cursor() as cur:
            yield cur.connection


HOW = ["get_connection", "cursor", "tx.cursor"]
ADDS: dict[str, Callable[[Any, list[str]], None]] = {
    "notice handler": lambda conn, heard: conn.add_notice_handler(lambda d: heard.append(d.message_primary)),
    "notify handler": lambda conn, heard: conn.add_notify_handler(lambda n: heard.append(n.payload)),
    "int4 loader": lambda conn, heard: conn.adapters.register_loader("int4", _Hijack),
}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("added", ADDS, ids=list(ADDS))
def test_what_a_borrower_added_is_gone_for_the_next_one(pg_fresh_db: dict[str, Any], how: str, added: str) -> None:
    heard: list[str] = []
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        with _lent(db, how) as conn:
            ADDS[added](conn, heard)
            if added == "int4 loader":
                assert conn.execute("SELECT 1").fetchone()[0] == "hijacked"  # it took, while lent
        later = db.get_connection(4)  # the same pooled session
        try:
            later.execute("LISTEN hv_lent_state")
            later.execute(NOTICE)
            later.execute("NOTIFY hv_lent_state, 'later payload'")
            later.commit()
            assert later.execute("SELECT 1").fetchone() == (1,)
            later.commit()
        finally:
            db.put_connection(later)
    assert heard == []


def test_a_handler_added_per_borrow_does_not_pile_up(pg_fresh_db: dict[str, Any]) -> None:
    heard: list[int] = []
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        for borrow in range(5):
            conn = db.get_connection(3)
            conn.add_notice_handler(lambda d, borrow=borrow: heard.append(borrow))  # type: ignore[misc]
            conn.execute(NOTICE)
            db.put_connection(conn)
    assert heard == [0, 1, 2, 3, 4]  # each borrow's handler heard its own notice only


def test_an_adapters_map_kept_past_the_return_no_longer_reaches_the_connection(pg_fresh_db: dict[str, Any]) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        conn = db.get_connection(3)
        kept = conn.adapters
        db.put_connection(conn)
        kept.register_loader("int4", _Hijack)  # after the return: the pooled connection has a map of its own by now
        with db.cursor(4) as cur:
            assert cur.execute("SELECT 1").fetchone() == (1,)


def test_the_stores_own_adapters_survive_the_reset(pg_fresh_db: dict[str, Any]) -> None:
    """Keys and JSON bodies still go through the store's dumpers and loaders after user code had the connection."""
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        conn = db.get_connection(3)
        conn.adapters.register_loader("jsonb", _Hijack)
        db.put_connection(conn)
        key = db.put(3, 1, a=[1, 2])
        record = db.get(key)
        assert record is not None and record.data == {"a": [1, 2]}
        with db.cursor(3) as cur:
            assert cur.execute("SELECT %s::bigint", (key,)).fetchone() == (key,)


def test_async_what_a_borrower_added_is_gone_for_the_next_one(pg_fresh_db: dict[str, Any]) -> None:
    heard: list[str] = []

    async def main() -> None:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, worker=None) as db:
            await db.provision()
            async with db.transaction(3) as tx, tx.cursor() as cur:
                cur.connection.add_notice_handler(lambda d: heard.append(d.message_primary))
                cur.connection.adapters.register_loader("int4", _Hijack)
            conn = await db.get_connection(4)
            try:
                await conn.execute(NOTICE)
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
            finally:
                await db.put_connection(conn)

    asyncio.run(main())
    assert heard == []


ENDING: dict[str, Callable[[Any], Any]] = {
    "cur.connection.execute": lambda cur: cur.connection.execute("COMMIT"),
    "cur.connection.cursor().execute": lambda cur: cur.connection.cursor().execute("COMMIT"),
    "cur.connection.execute, binary": lambda cur: cur.connection.execute("COMMIT", binary=True),
}


@pytest.mark.parametrize("ending", ENDING, ids=list(ENDING))
def test_a_transaction_cursors_connection_cannot_end_the_transaction(pg_fresh_db: dict[str, Any], ending: str) -> None:
    """``COMMIT`` through ``tx.cursor()``'s ``cur.connection`` is refused as through ``cur``: nothing of the block is
    stored (it was committed half-way, then reported as "rolled back, nothing was committed")."""
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        key = hvcore.Key(0)
        with (
            pytest.raises(hvcore.TransactionError, match="ending the transaction"),
            db.transaction(5) as tx,
            tx.cursor() as cur,
        ):
            key = tx.put(1, a=1)
            ENDING[ending](cur)
        assert db.get(key) is None


def test_an_async_transaction_cursors_connection_cannot_end_the_transaction(pg_fresh_db: dict[str, Any]) -> None:
    async def main() -> None:
        servers = [{**pg_fresh_db, "shards": "0-8"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, worker=None) as db:
            await db.provision()
            with pytest.raises(hvcore.TransactionError, match="ending the transaction"):
                async with db.transaction(5) as tx, tx.cursor() as cur:
                    key = await tx.put(1, a=1)
                    assert await (await cur.connection.execute("SELECT 1")).fetchone() == (1,)
                    await cur.connection.execute("COMMIT")
            assert await db.get(key) is None

    asyncio.run(main())


# what a borrower may do to the Python side of a lent connection, and how the next borrower would notice it
ACTIONS: dict[str, Callable[[Any], Any]] = {
    "notice handler": lambda conn: conn.add_notice_handler(lambda d: None),
    "notify handler": lambda conn: conn.add_notify_handler(lambda n: None),
    "int4 loader": lambda conn: conn.adapters.register_loader("int4", _Hijack),
    "text loader": lambda conn: conn.adapters.register_loader("text", _Hijack),
    "prepare_threshold": lambda conn: setattr(conn, "prepare_threshold", 0),
    "prepared_max": lambda conn: setattr(conn, "prepared_max", 1),
    "row_factory": lambda conn: setattr(conn, "row_factory", lambda cur: lambda values: "hijacked"),
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.sampled_from(HOW), st.lists(st.sampled_from(list(ACTIONS)), max_size=4)), max_size=4))
def test_any_borrowers_additions_are_gone_for_the_next_one(
    pg_fresh_db: dict[str, Any], plan: list[tuple[str, list[str]]]
) -> None:
    """Property: whatever mix of borrows (get_connection, cursor(), tx.cursor()) added whatever handlers, adapters and
    attributes, the next borrower of the same session finds none of them."""
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()  # idempotent: the examples share the database
        for how, actions in plan:
            with _lent(db, how) as conn:
                for action in actions:
                    ACTIONS[action](conn)
        later = db.get_connection(4)
        try:
            assert later._notice_handlers == [] and later._notify_handlers == []
            assert later.prepared_max == cast(Any, later).hv_prepared_max > 1
            assert later.execute("SELECT 1, 'x'::text").fetchone() == (1, "x")
            later.rollback()
        finally:
            db.put_connection(later)


def test_the_pooled_connection_itself_is_not_taken_back_in_place_of_the_handle(pg_fresh_db: dict[str, Any]) -> None:
    """Only the handle: a raw connection taken back would leave the handle lent (and, with standbys, the borrow
    uncounted as a write for read-your-writes)."""
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        conn = db.get_connection(3)
        with pytest.raises(hvcore.ConnectionMisuse, match="give back the handle"):
            db.put_connection(cast(Any, conn).__wrapped__)
        conn.execute("SELECT 1")  # still lent
        db.put_connection(conn)
        with pytest.raises(hvcore.ConnectionMisuse):
            conn.execute("SELECT 1")
