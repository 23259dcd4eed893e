"""pytest plugin shipped with hypervault: ready-made datastores for users' own tests.

Fixtures:

- ``hv_datastore``: an empty in-memory `Datastore` (shards 0-16 over two pretend servers), closed afterwards.
- ``hv_make_datastore``: a factory, ``hv_make_datastore(shards=("0-8", "8-16"), **options)``, for other maps or
  options (``layout=``, ``pool_max=``...); every store it makes is closed after the test.
- ``hv_postgres_datastore``: an empty `Datastore` on real PostgreSQL (shards 0-16, backend ``jsonb``; pass
  ``--hv-backend hstore`` for hstore). The server comes from ``$HYPERVAULT_TEST_DSN`` (a throwaway database:
  the fixture creates and empties schemas ``shard0000``..``shard0015`` there, and drops and makes them again when
  a run with the other backend left them; a database holding hypervault rows it did not make is refused before
  anything is changed, and one it uses is marked with a schema ``hv_pytest_fixture``), else from testcontainers when
  a Docker engine runs, else the test is skipped with the reason.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

import hvcore
from hvplugin_pytest._postgres import postgres_server

__all__ = ["hv_datastore", "hv_make_datastore", "hv_postgres_datastore", "hv_postgres_server"]

_runs = itertools.count()
POSTGRES_SHARDS = ("0-8", "8-16")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--hv-backend``: the backend of ``hv_postgres_datastore``."""
    parser.addoption(
        "--hv-backend", default="jsonb", choices=["jsonb", "hstore"], help="backend of hv_postgres_datastore"
    )


@pytest.fixture
def hv_make_datastore() -> Iterator[Callable[..., hvcore.Datastore]]:
    """Factory of empty in-memory datastores, closed after the test: ``make(shards=("0-8", "8-16"), **options)``, one
    server per range (a single str is one server's range), options as for `Datastore`."""
    made: list[hvcore.Datastore] = []

    def make(shards: Sequence[str] = ("0-8", "8-16"), **options: Any) -> hvcore.Datastore:
        if isinstance(shards, str):  # one server's range, spelt as in a connection dict
            shards = (shards,)
        run = next(_runs)
        options.setdefault("backend", "memory")
        servers = [dict(shards=spec, name=f"pytest-{run}-{i}") for i, spec in enumerate(shards)]
        store = hvcore.Datastore(servers, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def hv_datastore(hv_make_datastore: Callable[..., hvcore.Datastore]) -> hvcore.Datastore:
    """An empty in-memory datastore over shards 0-16."""
    return hv_make_datastore()


@pytest.fixture(scope="session")
def hv_postgres_server(pytestconfig: pytest.Config) -> Iterator[tuple[dict[str, Any], str]]:
    """Connection settings of a real PostgreSQL for this session (see the module docstring), and its origin."""
    with postgres_server() as (settings, origin):
        if settings is None:
            pytest.skip(f"no PostgreSQL for hv_postgres_datastore: {origin}")
        yield settings, origin


@pytest.fixture(scope="session")
def _hv_postgres_provisioned(
    hv_postgres_server: tuple[dict[str, Any], str], pytestconfig: pytest.Config
) -> Iterator[hvcore.Datastore]:
    settings, origin = hv_postgres_server
    _check_throwaway(settings, origin)
    backend = str(pytestconfig.getoption("--hv-backend"))
    store = hvcore.Datastore([dict(settings, shards=spec) for spec in POSTGRES_SHARDS], backend=backend)
    try:
        try:
            store.provision()
        except hvcore.ConfigError as exc:
            if "belongs to another backend" not in str(exc):
                raise
            _drop_shard_schemas(settings)  # a throwaway database a run with the other backend used: start afresh
            store.provision()
        yield store
    finally:
        store.close()


OWNER_MARK = "hv_pytest_fixture"
"""A schema the fixture makes in the database it provisions: the mark of a database whose shards it may empty."""


def _check_throwaway(settings: dict[str, Any], origin: str) -> None:
    """Fail the tests, before anything is changed, if the database holds hypervault rows the fixture did not make.

    The fixture empties its shards before each test; a ``$HYPERVAULT_TEST_DSN`` reused from a development or
    production database would lose its rows. A database without shard rows (a fresh one) gets the mark
    (`OWNER_MARK`) and is the fixture's from then on.
    """
    import psycopg
    from psycopg import sql

    with psycopg.connect(**settings, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (OWNER_MARK,)).fetchone():
            return
        tables = conn.execute(
            "SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname ~ '^shard[0-9]{4,}$' AND c.relname = 'entities' AND c.relkind = 'r' ORDER BY 1"
        ).fetchall()
        for (schema,) in tables:
            query = sql.SQL("SELECT EXISTS (SELECT FROM {}.entities)").format(sql.Identifier(schema))
            row = conn.execute(query).fetchone()
            if row and row[0]:
                dbname = conn.info.dbname
                pytest.fail(
                    f"hv_postgres_datastore: the database {dbname!r} ({origin}) holds hypervault rows the fixture did "
                    f"not make ({schema}.entities is not empty), and the fixture empties shards before each test: "
                    "point HYPERVAULT_TEST_DSN at a throwaway database. If this one is throwaway, mark it with "
                    f"CREATE SCHEMA {OWNER_MARK};",
                    pytrace=False,
                )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(OWNER_MARK)))


def _drop_shard_schemas(settings: dict[str, Any]) -> None:
    """Drop the fixture's own shard schemas (shard0000..shard0015) from the throwaway test database."""
    import psycopg
    from psycopg import sql

    from hvbackend_postgres._schema import shard_schema

    with psycopg.connect(**settings, autocommit=True) as conn:
        for shard in range(16):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(shard_schema(shard))))


@pytest.fixture
def hv_postgres_datastore(_hv_postgres_provisioned: hvcore.Datastore) -> hvcore.Datastore:
    """An empty datastore on real PostgreSQL (tables emptied before each test)."""
    store = _hv_postgres_provisioned
    for shard in store.shard_map.shard_ids:
        with store.cursor(shard) as cur:
            cur.execute("DELETE FROM entities")
    return store
