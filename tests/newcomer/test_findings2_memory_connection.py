"""A second newcomer's findings: get_connection() on the memory backend is not shaped like the psycopg connection.

get_connection() is typed as psycopg's Connection[Row]; the README shows `with conn.transaction():` and
`conn.autocommit = True` on it, and psycopg 3's idiom is `conn.execute(...)`. On the memory backend (the one the
shipped hv_datastore fixture gives unit tests) the connection has only cursor(), commit(), rollback() and closed,
so code that passes in production fails its unit tests with AttributeError rather than the backend's
NotImplementedError for SQL it cannot run.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


@pytest.mark.parametrize(
    "backend",
    ["memory", "jsonb"],
)
def test_a_lent_connection_executes_and_opens_transactions(backend: str, request: pytest.FixtureRequest) -> None:
    servers: list[dict[str, Any]] = [dict(shards="0-8")]
    if backend != "memory":
        servers = [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}]
    with hvcore.Datastore(servers, backend=backend, worker=None) as db:
        db.provision()
        conn = db.get_connection(3)
        try:
            row = conn.execute("SELECT 1").fetchone()
            assert row is not None and row[0] == 1
            conn.commit()
            with conn.transaction():
                conn.execute("SELECT 1")
            assert conn.autocommit is False
        finally:
            db.put_connection(conn)
