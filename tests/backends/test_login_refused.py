"""A server that answers but refuses every session of a role or database by its configuration (CONNECTION LIMIT 0,
ALLOW_CONNECTIONS false, no CONNECT privilege, NOLOGIN) raises `LoginRefused` (a `PermissionDenied`), naming the
server, the role, the database and the statement that lifts the refusal: not `ServerUnavailable` (the server is
fine, and retrying or failing over changes nothing)."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import hvcore

_roles = itertools.count()
SECRET = "pw-never-shown-7731"

# (the refusal set up as the superuser, the statement the message must name to lift it)
REFUSALS = {
    "role connection limit 0": ("ALTER ROLE {role} CONNECTION LIMIT 0", "ALTER ROLE {role} CONNECTION LIMIT"),
    "database connection limit 0": ("ALTER DATABASE {db} CONNECTION LIMIT 0", "ALTER DATABASE {db} CONNECTION LIMIT"),
    "database allow_connections false": (
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false",
        "ALTER DATABASE {db} ALLOW_CONNECTIONS true",
    ),
    "no connect privilege": ("REVOKE CONNECT ON DATABASE {db} FROM PUBLIC", "GRANT CONNECT ON DATABASE {db} TO {role}"),
    "nologin role": ("ALTER ROLE {role} NOLOGIN", "ALTER ROLE {role} LOGIN"),
}


@pytest.fixture
def app_role(pg_fresh_db: dict[str, Any]) -> Iterator[str]:
    """A login role that is not a superuser (superusers pass CONNECTION LIMITs and CONNECT privileges)."""
    name = f"hv_login_{os.getpid()}_{next(_roles)}"
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    yield name
    with psycopg.connect(**{**pg_fresh_db, "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {pg_fresh_db['dbname']} ALLOW_CONNECTIONS true")
        conn.execute(f"DROP ROLE {name}")


def _refuse(pg_fresh_db: dict[str, Any], app_role: str, case: str) -> tuple[list[dict[str, Any]], str]:
    setup, fix = REFUSALS[case]
    db = pg_fresh_db["dbname"]
    with psycopg.connect(**{**pg_fresh_db, "dbname": "postgres"}, autocommit=True) as conn:
        conn.execute(setup.format(role=app_role, db=db))
    servers = [{**pg_fresh_db, "user": app_role, "password": SECRET, "shards": "0-4"}]
    return servers, fix.format(role=app_role, db=db)


def _check(error: BaseException, pg_fresh_db: dict[str, Any], app_role: str, fix: str) -> None:
    assert isinstance(error, hvcore.LoginRefused), repr(error)
    assert isinstance(error, hvcore.PermissionDenied) and not isinstance(error, hvcore.ServerUnavailable)
    text = str(error)
    label = f"{pg_fresh_db['host']}:{pg_fresh_db['port']}/{pg_fresh_db['dbname']}"
    assert label in text and app_role in text and fix in text, text
    assert SECRET not in text and SECRET not in repr(error)
    assert error.server == label and error.role == app_role and error.database == pg_fresh_db["dbname"]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_login_is_login_refused_naming_the_fix(pg_fresh_db: dict[str, Any], app_role: str, case: str) -> None:
    servers, fix = _refuse(pg_fresh_db, app_role, case)
    with hvcore.Datastore(servers, backend="jsonb", worker=None, pool_block_timeout=3) as db:
        for call in (lambda: db.get_connection(1), lambda: db.put(1, 1, a=1)):
            with pytest.raises(hvcore.HypervaultError) as caught:
                call()
            _check(caught.value, pg_fresh_db, app_role, fix)


@pytest.mark.parametrize("case", ["role connection limit 0", "database allow_connections false"])
def test_a_refused_login_is_login_refused_on_asyncio_too(pg_fresh_db: dict[str, Any], app_role: str, case: str) -> None:
    servers, fix = _refuse(pg_fresh_db, app_role, case)

    async def main() -> BaseException:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None, pool_block_timeout=3) as db:
            try:
                await db.put(1, 1, a=1)
            except hvcore.HypervaultError as exc:
                return exc
        raise AssertionError("the put was not refused")

    _check(asyncio.run(main()), pg_fresh_db, app_role, fix)
