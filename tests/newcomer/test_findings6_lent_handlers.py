"""Sixth newcomer: notice and notify handlers added to a borrowed connection stay on the pooled session.

README ("Connections come back clean"): a connection user code had is reset before anyone else gets it, psycopg's
``autocommit``, ``isolation_level``, ... row and cursor factories restored; only adapters and named prepared
statements are said to stay. ``conn.add_notice_handler(f)`` / ``conn.add_notify_handler(f)`` on a borrowed
connection are not undone: the handler of one request receives every later borrower's notices (``RAISE NOTICE``
text, which may carry their data) and NOTIFY payloads, and code adding a handler per borrow (a logger for the
request) piles up one more handler on the pooled connection each time.
"""

from __future__ import annotations

from typing import Any

import hvcore


def test_a_notice_handler_of_a_returned_connection_hears_no_later_borrower(pg_fresh_db: dict[str, Any]) -> None:
    heard: list[str] = []
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        first = db.get_connection(3)
        first.add_notice_handler(lambda diag: heard.append(str(diag.message_primary)))
        db.put_connection(first)
        second = db.get_connection(4)  # the next request: the same pooled session (pool_max=1)
        second.execute("DO $$BEGIN RAISE NOTICE 'second borrower %', 42; END$$")
        second.commit()
        db.put_connection(second)
        with db.cursor(5) as cur:
            cur.execute("DO $$BEGIN RAISE NOTICE 'third borrower'; END$$")
    assert heard == []


def test_a_notify_handler_of_a_returned_connection_hears_no_later_borrower(pg_fresh_db: dict[str, Any]) -> None:
    heard: list[str] = []
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=1, worker=None) as db:
        db.provision()
        first = db.get_connection(3)
        first.add_notify_handler(lambda notify: heard.append(notify.payload))
        db.put_connection(first)
        second = db.get_connection(4)
        second.execute("LISTEN orders")
        second.execute("NOTIFY orders, 'second borrower payload'")
        second.commit()
        second.execute("SELECT 1")  # psycopg delivers notifications as results arrive
        second.commit()
        db.put_connection(second)
    assert heard == []
