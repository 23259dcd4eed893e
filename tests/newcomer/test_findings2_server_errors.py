"""A second newcomer's findings: writes to a read-only PostgreSQL database.

A database in read-only mode (`ALTER DATABASE ... SET default_transaction_read_only = on` for maintenance, or a
server entry that reaches a standby after a failover) refuses writes. hypervault passes psycopg's
ReadOnlySqlTransaction through, not a HypervaultError ("every error is a hvcore.HypervaultError"), and
update_where also prints "error ignored terminating <psycopg.Pipeline ...>: pipeline aborted" on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import hvcore

CALLS: dict[str, Callable[[hvcore.Datastore], object]] = {
    "put": lambda db: db.put(2, 1, a=1),
    "put_many": lambda db: db.put_many(2, 1, [{"a": 1}]),
    "update_where": lambda db: db.update_where(kind=1, set={"b": 1}),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_write_to_a_read_only_database_is_a_typed_error(call: str, pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-4"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
        db.put(2, 1, a=0)
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {pg_fresh_db['dbname']} SET default_transaction_read_only = on")
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db, pytest.raises(hvcore.HypervaultError):
        CALLS[call](db)
