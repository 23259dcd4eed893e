"""Eighth newcomer: behind PgBouncer in transaction mode, a lent connection's ``cursor.stream()`` (and
``cursor.copy()``) skips the check
that refuses session state in autocommit mode, so a ``set_config(..., false)`` or a session advisory lock streamed
in autocommit mode stays on the pooler's server session, for the pooler's other clients.

The README (PgBouncer section): in autocommit mode a statement leaving session state (``SET``, ``set_config``,
``LISTEN``, ``PREPARE``, a session advisory lock...) is refused before it is sent, because "it would run on whichever
of the pooler's server sessions is free and its state would stay there". ``conn.execute()`` and
``cur.execute()``/``executemany()`` are checked (`_bouncer.check_pooled_user_sql`); ``cur.stream()`` — psycopg's
documented row-by-row form of ``execute()`` — only checks that the borrow is still live, then sends the statement;
so does ``cur.copy("COPY (SELECT set_config(...)) TO STDOUT")``.

Reproduce: a transaction-mode PgBouncer with ONE server session; ``conn = db.get_connection(1)``,
``conn.autocommit = True``; ``conn.execute("SELECT set_config('work_mem', '9MB', false)")`` raises
``ConnectionMisuse``, but ``list(conn.cursor().stream(<the same>))`` runs; ``put_connection(conn)``; another
client of the pooler then sees ``work_mem = 9MB`` (and, with ``pg_advisory_lock(4246)``, finds that lock held by
its own server session for good).
Expected: ``stream()`` refused as ``execute()`` is (``ConnectionMisuse``), so no other client sees the state.
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


def _stream(cur: Any, statement: str) -> None:
    list(cur.stream(statement))


def _copy(cur: Any, statement: str) -> None:
    with cur.copy(f"COPY ({statement}) TO STDOUT") as copy:
        list(copy)


@pytest.mark.xfail(strict=True, reason="cursor.stream()/copy() on a lent connection skip check_pooled_user_sql")
@pytest.mark.parametrize("send", [_stream, _copy], ids=["stream", "copy"])
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
                send(conn.cursor(), statement)
            except hvcore.ConnectionMisuse:
                refused.append("refused")
        finally:
            db.put_connection(conn)
    with psycopg.connect(**pooled) as other:  # the pooler's single server session
        seen = other.execute("SHOW work_mem").fetchone()
    assert refused == ["refused"] and seen == fresh != ("9MB",), f"stream refused: {refused}; another client sees {seen}"


@pytest.mark.xfail(strict=True, reason="cursor.stream() on a lent connection skips check_pooled_user_sql")
def test_streamed_session_advisory_lock_is_refused_or_released(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any
) -> None:
    pooled, entry = _setup(pg_fresh_db, pgbouncer_factory)
    refused = []
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=1) as db:
        conn = db.get_connection(1)
        try:
            conn.autocommit = True
            try:
                list(conn.cursor().stream("SELECT pg_advisory_lock(4246)"))
            except hvcore.ConnectionMisuse:
                refused.append("refused")
        finally:
            db.put_connection(conn)
    with psycopg.connect(**pooled) as other:
        held = other.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4246 AND pid = pg_backend_pid()"
        ).fetchone()
    assert refused == ["refused"] and held == (0,), f"stream refused: {refused}; lock still held: {held}"
