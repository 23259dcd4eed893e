"""Fixtures of the Citus hand-off tests: the contract suite's ``make_datastore`` on a Citus coordinator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from citus.citus_helpers import add_citus_database, connect
from fixtures.citus import CitusCluster
from fixtures.datastores import MakeDatastore, SyncFacade

import hvcore
from hvbackend_postgres._schema import truncate_query

CONTRACT_SHARDS = "0-16"


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
