"""Index builds, migrations and shard moves refused by the server (a role lacking a privilege, a read-only
database) raise `PermissionDenied` / `ReadOnlyServer` naming the server, and the shard where there is one — never
psycopg's InsufficientPrivilege or ReadOnlySqlTransaction."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore

_roles = itertools.count()


@pytest.fixture
def two_databases(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> list[dict[str, Any]]:
    servers = [{**pg_fresh_db, "shards": "0-4"}, {**pg_fresh_db2, "shards": "4-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as owner:
        owner.provision()
        owner.put_many(1, 1, [{"email": f"u{i}@x"} for i in range(20)])
        owner.create_index(1, "age", type="bigint")  # the hypervault bookkeeping tables exist
    return servers


@pytest.fixture
def role(two_databases: list[dict[str, Any]]) -> Iterator[str]:
    """A login role that may use the bookkeeping tables and read the shards, but owns nothing."""
    name = f"hv_refused_{os.getpid()}_{next(_roles)}"
    entries = [{k: v for k, v in s.items() if k != "shards"} for s in two_databases]
    with psycopg.connect(**entries[0], autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    for index, entry in enumerate(entries):
        with psycopg.connect(**entry, autocommit=True) as conn:
            conn.execute(f"GRANT USAGE ON SCHEMA hypervault TO {name}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA hypervault TO {name}")
            schemas = [f"shard{s:04d}" for s in range(4 * index, 4 * index + 4)]
            conn.execute(f"GRANT USAGE ON SCHEMA {', '.join(schemas)} TO {name}")
            for schema in schemas:
                conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {name}")
            conn.execute(f"REVOKE CREATE ON DATABASE {entry['dbname']} FROM PUBLIC")
    yield name
    for entry in entries:
        with psycopg.connect(**entry, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(**entries[0], autocommit=True) as conn:
        conn.execute(f"DROP ROLE {name}")


def _as(servers: list[dict[str, Any]], **change: Any) -> list[dict[str, Any]]:
    return [{**s, **change} for s in servers]


def test_an_index_build_refused_names_shard_and_server(two_databases: list[dict[str, Any]], role: str) -> None:
    with hvcore.Datastore(_as(two_databases, user=role), backend="jsonb", worker=None) as db:
        labels = [s.label for s in db.servers]
        with pytest.raises(hvcore.PermissionDenied) as caught:
            db.create_index(1, "email")
    message = str(caught.value)
    assert "in shard" in message and any(label in message for label in labels) and role in message, message


def test_a_migration_refused_names_shard_and_server(
    two_databases: list[dict[str, Any]], role: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_notes.sql").write_text("CREATE TABLE notes (id bigserial PRIMARY KEY, note text);")
    with hvcore.Datastore(_as(two_databases, user=role), backend="jsonb", worker=None) as db:
        labels = [s.label for s in db.servers]
        with pytest.raises(hvcore.PermissionDenied) as caught:
            db.migrate(tmp_path)
    message = str(caught.value)
    assert "0001_notes.sql in shard" in message and role in message, message
    assert any(label in message for label in labels), message


def test_a_move_refused_names_shard_and_server_and_changes_nothing(
    two_databases: list[dict[str, Any]], role: str
) -> None:
    with hvcore.Datastore(_as(two_databases, user=role), backend="jsonb", worker=None) as db:
        with pytest.raises(hvcore.PermissionDenied) as caught:
            db.move_shard(1, 1)
        message = str(caught.value)
        assert "shard 1" in message and db.servers[0].label in message and role in message, message
    with hvcore.Datastore(two_databases, backend="jsonb", worker=None) as owner:
        assert len(list(owner.query(kind=1, shards=[1]))) == 20
        assert owner.move_state(1) is None


@pytest.mark.parametrize("operation", ["create_index", "migrate", "move_shard"])
def test_a_read_only_database_is_read_only_server(
    two_databases: list[dict[str, Any]], tmp_path: Path, operation: str
) -> None:
    (tmp_path / "0001_notes.sql").write_text("CREATE TABLE notes (id bigserial PRIMARY KEY, note text);")
    servers = _as(two_databases, options="-c default_transaction_read_only=on")
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        labels = [s.label for s in db.servers]
        with pytest.raises(hvcore.ReadOnlyServer) as caught:
            if operation == "create_index":
                db.create_index(1, "email")
            elif operation == "migrate":
                db.migrate(tmp_path)
            else:
                db.move_shard(1, 1)
    message = str(caught.value)
    assert any(label in message for label in labels), message


def test_dropping_a_moved_shards_old_rows_refused_names_shard_and_server(
    two_databases: list[dict[str, Any]], role: str
) -> None:
    with hvcore.Datastore(two_databases, backend="jsonb", worker=None) as owner:
        owner.move_shard(1, 1)  # the old rows stay in hv_src_0001 on server 0, owned by the owner
    for entry in two_databases:  # the placement tables the move made: readable, so the role finds the shard
        with psycopg.connect(**{k: v for k, v in entry.items() if k != "shards"}, autocommit=True) as conn:
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA hypervault TO {role}")
    with hvcore.Datastore(_as(two_databases, user=role), backend="jsonb", worker=None) as db:
        labels = [s.label for s in db.servers]
        with pytest.raises(hvcore.PermissionDenied) as caught:
            db.move_shard(1, 1, drop_source=True)
    message = str(caught.value)
    assert "old rows of shard 1" in message and labels[0] in message and role in message, message
