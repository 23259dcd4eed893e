"""Every way psycopg sends user SQL from a connection lent behind a transaction-mode pooler is checked.

psycopg's entry points taking SQL text are enumerated from its classes (a public method whose first parameter is
``query`` or ``statement``): a new one in a later psycopg fails `test_psycopg_entry_points_are_the_known_ones`
until it is added here and routed through the check (`_astore._check_user_sql`). Each known one (and
``conn.execute`` in a pipeline) sends a session advisory lock in autocommit mode through a transaction-mode
PgBouncer with one server session: it must be refused, and the pooler's session must hold no lock after.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import hvcore

LOCK = "SELECT pg_advisory_lock(4247)"


def _entry_points() -> set[str]:
    found = set()
    for cls in (psycopg.Connection, psycopg.Cursor, psycopg.ServerCursor, psycopg.Pipeline):
        for name in dir(cls):
            method = getattr(cls, name)
            if name.startswith("_") or not callable(method):
                continue
            try:
                params = list(inspect.signature(method).parameters)
            except (TypeError, ValueError):
                continue
            if len(params) > 1 and params[1] in ("query", "statement"):
                found.add(f"{cls.__name__}.{name}")
    return found


def _server(conn: Any, send: Callable[[Any], Any]) -> Any:
    with conn.cursor("hv_entry", withhold=True) as cur:
        return send(cur)


SENDS: dict[str, Callable[[Any], Any]] = {
    "Connection.execute": lambda conn: conn.execute(LOCK),
    "Cursor.execute": lambda conn: conn.cursor().execute(LOCK),
    "Cursor.executemany": lambda conn: conn.cursor().executemany(LOCK, [()]),
    "Cursor.stream": lambda conn: list(conn.cursor().stream(LOCK)),
    "Cursor.copy": lambda conn: list(conn.cursor().copy(f"COPY ({LOCK}) TO STDOUT").__enter__()),
    "ServerCursor.execute": lambda conn: _server(conn, lambda cur: cur.execute(LOCK)),
    "ServerCursor.executemany": lambda conn: _server(conn, lambda cur: cur.executemany(LOCK, [()])),
    "ServerCursor.stream": lambda conn: _server(conn, lambda cur: list(cur.stream(LOCK))),
    "ServerCursor.copy": lambda conn: _server(conn, lambda cur: list(cur.copy(f"COPY ({LOCK}) TO STDOUT").__enter__())),
}


def _pipelined(conn: Any) -> None:
    with conn.pipeline():
        conn.execute(LOCK)


def test_psycopg_entry_points_are_the_known_ones() -> None:
    assert _entry_points() == set(SENDS), "a psycopg method sending SQL is not checked on a lent connection"


@pytest.mark.parametrize("name", [*sorted(SENDS), "pipeline"])
def test_every_entry_point_is_checked_behind_a_transaction_pooler(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any, name: str
) -> None:
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=1)
    pooled = {**{k: bouncer.settings[k] for k in ("host", "port", "user")}, "dbname": pg_fresh_db["dbname"]}
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as direct:
        direct.provision()
    send = _pipelined if name == "pipeline" else SENDS[name]
    with hvcore.Datastore(
        [{**pooled, "shards": "0-8", "pgbouncer": "transaction"}], backend="jsonb", worker=None, pool_max=1
    ) as db:
        conn = db.get_connection(1)
        try:
            conn.autocommit = True
            with pytest.raises(hvcore.ConnectionMisuse):
                send(conn)
        finally:
            db.put_connection(conn)
    with psycopg.connect(**pooled) as other:  # the pooler's single server session
        held = other.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4247").fetchone()
    assert held == (0,)
