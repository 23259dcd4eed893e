"""A newcomer's findings: COMMIT through tx.cursor() inside db.transaction()."""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


@pytest.mark.parametrize(
    "how", ["conn.commit()", "conn.rollback()", "COMMIT", "end", "  Rollback work", "SELECT 1; COMMIT", "ABORT"]
)
def test_a_commit_inside_a_transaction_cursor_is_refused_and_commits_nothing(
    pg_fresh_db: dict[str, Any], how: str
) -> None:
    """A psycopg2 user's reflex: conn.commit() after a raw statement. The transaction block must stay all or
    nothing: the commit is refused and, the block ending in an exception, nothing is stored."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        with pytest.raises(Exception), db.transaction(5) as tx:  # noqa: B017 - any refusal will do
            tx.put(1, n="before")
            with tx.cursor() as cur:
                if how == "conn.commit()":
                    cur.connection.commit()
                elif how == "conn.rollback()":
                    cur.connection.rollback()
                else:
                    cur.execute(how)
            tx.put(1, n="after")
            raise RuntimeError("changed my mind")
        assert [r.data["n"] for r in db.query(kind=1)] == [], "half of a rolled-back transaction is stored"


def test_savepoints_and_plain_statements_through_a_transaction_cursor_still_work(pg_fresh_db: dict[str, Any]) -> None:
    """The guard refuses only what ends the transaction: ROLLBACK TO a savepoint and plain SQL go through."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        with db.transaction(5) as tx:
            tx.put(1, n="kept")
            with tx.cursor() as cur:
                cur.execute("SAVEPOINT mine")
                cur.execute('INSERT INTO entities (id, kind, body) VALUES (1, 1, \'{"n": "undone"}\')')
                cur.execute("ROLLBACK TO SAVEPOINT mine")
                cur.execute("SELECT 'COMMIT'")  # a string, not a statement: passes (the guard reads statements)
        assert [r.data["n"] for r in db.query(kind=1)] == ["kept"]
