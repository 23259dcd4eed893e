"""Eighth newcomer: behind PgBouncer in transaction mode, a lent connection's ``cursor.stream()``,
``cursor.copy()`` and a named ``withhold=True`` cursor's ``execute()`` skip the check that refuses session state in
autocommit mode, so a ``set_config(..., false)`` or a session advisory lock sent that way in autocommit mode stays
on the pooler's server session, for the pooler's other clients.

The README (PgBouncer section): in autocommit mode a statement leaving session state (``SET``, ``set_config``,
``LISTEN``, ``PREPARE``, a session advisory lock...) is refused before it is sent, because "it would run on whichever
of the pooler's server sessions is free and its state would stay there". ``conn.execute()`` and
``cur.execute()``/``executemany()`` are checked (`_bouncer.check_pooled_user_sql`); ``cur.stream()`` (psycopg's
documented row-by-row form of ``execute()``) only checks that the borrow is still live, then sends the statement;
so do ``cur.copy("COPY (SELECT set_config(...)) TO STDOUT")`` and ``conn.cursor("c", withhold=True).execute(...)``
(a ``WITH HOLD`` cursor not closed also stays open on the pooler's server session, in another client's
``pg_cursors``).

Reproduce: a transaction-mode PgBouncer with ONE server session; ``conn = db.get_connection(1)``,
``conn.autocommit = True``; ``conn.execute("SELECT set_config('work_mem', '9MB', false)")`` raises
``ConnectionMisuse``, but ``list(conn.cursor().stream(<the same>))`` runs; ``put_connection(conn)``; another
client of the pooler then sees ``work_mem = 9MB`` (and, with ``pg_advisory_lock(4246)``, finds that lock held by
its own server session for good).
Expected: ``stream()``, ``copy()`` and a named cursor's ``execute()`` refused as ``execute()`` is
(``ConnectionMisuse``), so no other client sees the state.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import hvcore


def _setup(pg_fresh_db: dict[str, Any], pgbouncer_factory: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=1)
    pooled = {**{k: bouncer.settings[k] for k in ("host", "port", "user")}, "dbname": pg_fresh_db["dbname"]}
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as direct:
        direct.provision()
    return pooled, {**pooled, "shards": "0-8", "pgbouncer": "transaction"}


def _stream(conn: Any, statement: str) -> None:
    list(conn.cursor().stream(statement))


def _copy(conn: Any, statement: str) -> None:
    with conn.cursor().copy(f"COPY ({statement}) TO STDOUT") as copy:
        list(copy)


def _named_with_hold(conn: Any, statement: str) -> None:
    with conn.cursor("hv_findings8", withhold=True) as cur:
        cur.execute(statement)
        cur.fetchall()


SENDS = [_stream, _copy, _named_with_hold]
IDS = ["stream", "copy", "named-withhold"]


@pytest.mark.parametrize("send", SENDS, ids=IDS)
def test_streamed_session_setting_in_autocommit_is_refused_or_leaves_nothing(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any, send: Any
) -> None:
    pooled, entry = _setup(pg_fresh_db, pgbouncer_factory)
    statement = "SELECT set_config('work_mem', '9MB', false)"
    with psycopg.connect(**pooled) as other:
        fresh = other.execute("SHOW work_mem").fetchone()
    refused = []
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=1) as db:
        conn = db.get_connection(1)
        try:
            conn.autocommit = True
            with pytest.raises(hvcore.ConnectionMisuse):  # execute() is refused, as documented
                conn.execute(statement)
            try:
                send(conn, statement)
            except hvcore.ConnectionMisuse:
                refused.append("refused")
        finally:
            db.put_connection(conn)
    with psycopg.connect(**pooled) as other:  # the pooler's single server session
        seen = other.execute("SHOW work_mem").fetchone()
    assert refused == ["refused"] and seen == fresh != ("9MB",), f"refused: {refused}; another client sees {seen}"


@pytest.mark.parametrize("send", SENDS, ids=IDS)
def test_streamed_session_advisory_lock_is_refused_or_released(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any, send: Any
) -> None:
    pooled, entry = _setup(pg_fresh_db, pgbouncer_factory)
    refused = []
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=1) as db:
        conn = db.get_connection(1)
        try:
            conn.autocommit = True
            try:
                send(conn, "SELECT pg_advisory_lock(4246)")
            except hvcore.ConnectionMisuse:
                refused.append("refused")
        finally:
            db.put_connection(conn)
    with psycopg.connect(**pooled) as other:
        held = other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4246 AND pid = pg_backend_pid()"
        ).fetchone()
    assert refused == ["refused"] and held == (0,), f"refused: {refused}; lock still held: {held}"
