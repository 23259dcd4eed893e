"""A second newcomer's findings: writes to a read-only PostgreSQL database.

A database in read-only mode (`ALTER DATABASE ... SET default_transaction_read_only = on` for maintenance, or a
server entry that reaches a standby after a failover) refuses writes. hypervault passes psycopg's
ReadOnlySqlTransaction through, not a HypervaultError ("every error is a hvcore.HypervaultError"), and
update_where also prints "error ignored terminating <psycopg.Pipeline ...>: pipeline aborted" on stderr.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore
from hvcore.cli import main

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


@pytest.mark.parametrize("command", ["index", "migrate"])
def test_hv_on_a_read_only_database_is_one_error_line(
    command: str, pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    servers = [{**pg_fresh_db, "shards": "0-4"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {pg_fresh_db['dbname']} SET default_transaction_read_only = on")
    config = tmp_path / "hv.toml"
    config.write_text(
        f'backend = "jsonb"\n[[servers]]\nshards = "0-4"\nhost = "{pg_fresh_db["host"]}"\n'
        f'port = {pg_fresh_db["port"]}\ndbname = "{pg_fresh_db["dbname"]}"\n'
    )
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_notes.sql").write_text("CREATE TABLE notes (id int);")
    argv = {
        "index": ["index", "create", "--kind", "1", "--field", "x", "--type", "text"],
        "migrate": ["migrate", str(migrations)],
    }[command]
    assert main([*argv, "--config", str(config)], io.StringIO()) == 2
