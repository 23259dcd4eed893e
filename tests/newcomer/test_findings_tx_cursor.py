"""A newcomer's findings: COMMIT through tx.cursor() inside db.transaction()."""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


@pytest.mark.xfail(
    strict=True,
    reason="cur.connection.commit() (or COMMIT) inside tx.cursor() commits the first half of the transaction; the "
    "next call says 'aborted by an error' and the block 'rolls back' what is already committed. psycopg itself "
    "forbids commit() inside conn.transaction() (ProgrammingError) before anything is sent",
)
@pytest.mark.parametrize("how", ["conn.commit()", "COMMIT"])
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
                if how == "COMMIT":
                    cur.execute("COMMIT")
                else:
                    cur.connection.commit()
            tx.put(1, n="after")
            raise RuntimeError("changed my mind")
        assert [r.data["n"] for r in db.query(kind=1)] == [], "half of a rolled-back transaction is stored"
