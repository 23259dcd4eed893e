"""A second newcomer's findings: roles without the privileges hypervault needs.

The usual production split: an owner role runs `hv init`, the application logs in as a role of its own. A role
that lacks a privilege gets psycopg's InsufficientPrivilege out of hypervault's own statements (not a
HypervaultError, though "every error is a hvcore.HypervaultError"), and `hv init` prints a traceback.
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore
from hvcore.cli import main

_roles = itertools.count()


@pytest.fixture
def bare_role(pg_fresh_db: dict[str, Any]) -> Iterator[str]:
    """A login role with no privilege beyond PUBLIC's on the fresh database (trust authentication)."""
    name = f"nc2_app_{os.getpid()}_{next(_roles)}"
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def test_provisioning_without_create_privilege_is_a_typed_error(pg_fresh_db: dict[str, Any], bare_role: str) -> None:
    servers = [{**pg_fresh_db, "user": bare_role, "shards": "0-4"}]
    with (
        hvcore.Datastore(servers, backend="jsonb", worker=None) as db,
        pytest.raises(hvcore.HypervaultError) as caught,
    ):
        db.provision()
    assert "CREATE" in str(caught.value) or "privilege" in str(caught.value), caught.value


def test_hv_init_without_create_privilege_is_one_error_line(
    pg_fresh_db: dict[str, Any], bare_role: str, tmp_path: Path
) -> None:
    config = tmp_path / "hv.toml"
    config.write_text(
        f'backend = "jsonb"\n[[servers]]\nshards = "0-4"\nhost = "{pg_fresh_db["host"]}"\n'
        f'port = {pg_fresh_db["port"]}\ndbname = "{pg_fresh_db["dbname"]}"\nuser = "{bare_role}"\n'
    )
    assert main(["init", "--config", str(config)], io.StringIO()) == 2


def test_an_application_role_without_grants_gets_a_typed_error(pg_fresh_db: dict[str, Any], bare_role: str) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-4"}], backend="jsonb", worker=None) as owner:
        owner.provision()
    app_servers = [{**pg_fresh_db, "user": bare_role, "shards": "0-4"}]
    with (
        hvcore.Datastore(app_servers, backend="jsonb", worker=None) as db,
        pytest.raises(hvcore.HypervaultError) as caught,
    ):
        db.put(2, 1, a=1)
    assert "shard0002" in str(caught.value) and "grant" in str(caught.value).lower(), caught.value


def test_a_connection_limit_below_pool_max_makes_calls_wait_not_fail(
    pg_fresh_db: dict[str, Any], bare_role: str
) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-4"}], backend="jsonb", worker=None) as owner:
        owner.provision()
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"ALTER ROLE {bare_role} CONNECTION LIMIT 1")
        conn.execute(f"GRANT USAGE ON SCHEMA shard0003 TO {bare_role}")
    servers = [{**pg_fresh_db, "user": bare_role, "shards": "0-4"}]
    failures: list[BaseException] = []

    def work(db: hvcore.Datastore) -> None:
        for _ in range(3):
            try:
                with db.cursor(3) as cur:
                    cur.execute("SELECT pg_sleep(0.1)")
            except hvcore.HypervaultError as exc:
                failures.append(exc)

    with hvcore.Datastore(servers, backend="jsonb", worker=None, pool_max=3, pool_block_timeout=4) as db:
        threads = [threading.Thread(target=work, args=(db,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert not failures, f"{len(failures)} of 9 calls failed, first: {failures[0]!r}"
