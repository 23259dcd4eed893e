"""Helpers of the Citus hand-off tests: fleets of plain servers written by hypervault, configs, the CLI, databases."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures.citus import CitusCluster, _require_citus
from fixtures.datastores import MakeDatastore, SyncFacade
from psycopg import sql

import hvcore
from hvbackend_postgres._schema import truncate_query
from hvcore.cli import main

CONTRACT_SHARDS = "0-16"


def run_hv(*argv: str) -> tuple[int, str]:
    """``hv ARGV...`` in this process: exit code and stdout."""
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def dsn(settings: Mapping[str, Any]) -> str:
    """A libpq keyword string for connection settings (what ``--coordinator`` takes)."""
    return " ".join(f"{k}={v}" for k, v in settings.items() if k != "shards")


def write_config(path: Path, servers: Sequence[Mapping[str, Any]], backend: str = "jsonb") -> Path:
    """A TOML config file: ``servers`` are dicts with ``shards`` and connection keys (written as they are)."""
    lines = [f'backend = "{backend}"', "pool_block_timeout = 5", ""]
    for server in servers:
        lines.append("[[servers]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in server.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def connect(settings: Mapping[str, Any], **overrides: Any) -> psycopg.Connection[Any]:
    """An autocommit connection (``shards`` ignored)."""
    params = {k: v for k, v in {**settings, **overrides}.items() if k != "shards"}
    return psycopg.connect(**params, autocommit=True, connect_timeout=10)


def shard_table_on(settings: Mapping[str, Any], qualified: str) -> int | None:
    """Rows of a Citus shard table (``shard0001.entities_102008``) read directly on a worker, or None if absent."""
    with connect(settings) as conn:
        if conn.execute("SELECT to_regclass(%s) IS NULL", (qualified,)).fetchone() == (True,):
            return None
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(qualified))).fetchone()
        return int(row[0]) if row else 0


def add_citus_database(cluster: CitusCluster, dbname: str) -> dict[str, Any]:
    """A second Citus database on the cluster's nodes (its own extension and node list); the coordinator's settings.

    Citus keeps its metadata per database, so a database gets ``CREATE EXTENSION citus`` on every node and its
    own ``citus_set_coordinator_host`` / ``citus_add_node``.
    """
    for node in cluster.nodes:
        with connect(node.settings) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with connect(node.settings, dbname=dbname) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    coordinator = {**cluster.coordinator_server.settings, "dbname": dbname}
    with connect(coordinator) as conn:
        conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (cluster.coordinator_server.port,))
        for worker in cluster.worker_servers:
            conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (worker.port,))
    return coordinator


class _ContractDatabases:
    """Per backend, a Citus database of the session cluster with shards 0-16 provisioned through the coordinator."""

    def __init__(self, cluster: CitusCluster) -> None:
        self.cluster = cluster
        self.ready: dict[str, dict[str, Any]] = {}

    def server(self, backend: str) -> dict[str, Any]:
        if backend not in self.ready:
            coordinator = add_citus_database(self.cluster, f"hv_citus_contract_{backend}")
            server = {**coordinator, "shards": CONTRACT_SHARDS}
            with hvcore.Datastore([server], backend=backend) as store:
                store.provision()  # on a coordinator: every shard schema becomes a distributed schema
            self.ready[backend] = server
        return self.ready[backend]

    def empty(self, backend: str) -> dict[str, Any]:
        server = self.server(backend)
        with connect(server) as conn:
            conn.execute(truncate_query(range(16)))
        return server


@pytest.fixture(scope="session")
def _citus_contract_databases(citus_cluster: CitusCluster) -> _ContractDatabases:
    return _ContractDatabases(citus_cluster)


@pytest.fixture
def citus_datastore_factory(
    _citus_contract_databases: _ContractDatabases,
) -> Iterator[Callable[..., hvcore.Datastore]]:
    """``factory(backend, **options)``: a `Datastore` on the Citus coordinator alone (shards 0-16), emptied."""
    made: list[hvcore.Datastore] = []

    def factory(backend: str, **options: Any) -> hvcore.Datastore:
        options.pop("text_only", None)
        server = _citus_contract_databases.empty(backend)
        store = hvcore.Datastore([dict(server)], backend=backend, **options)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()


@pytest.fixture
def make_datastore(
    backend_name: str, api: str, citus_datastore_factory: Callable[..., hvcore.Datastore]
) -> Iterator[MakeDatastore]:
    """The contract suite's ``make_datastore``, on a Citus coordinator: one server owning shards 0-16."""
    made: list[Any] = []

    def make(**options: Any) -> hvcore.Datastore:
        store = citus_datastore_factory(backend_name, **options)
        made.append(store)
        if api == "sync":
            return store
        facade = SyncFacade(hvcore.AsyncDatastore(list(store._config.servers), backend=store.backend, **options))
        made.append(facade)
        return facade  # type: ignore[return-value]

    yield make
    for store in made:
        for server in store._stores:
            stats = server.stats()
            assert stats.get("borrowed", 0) == 0, f"{server.label} still lends {stats['borrowed']} connection(s)"
        getattr(store, "shutdown", store.close)()


@pytest.fixture(params=["hstore", "jsonb"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The contract suite on Citus runs once per PostgreSQL backend."""
    return str(request.param)


def require_citus() -> None:
    """Build Citus if needed; skip (or fail with CI=true) when it cannot be."""
    _require_citus()
