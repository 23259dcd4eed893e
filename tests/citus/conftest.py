"""Fixtures of the Citus hand-off tests: the contract suite's ``make_datastore`` on a Citus coordinator (the shared
one of `fixtures.datastores`, fed by this directory's ``pg_datastore_factory``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from citus.citus_helpers import add_citus_database, connect
from fixtures.citus import CitusCluster

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
def pg_datastore_factory(citus_datastore_factory: Callable[..., hvcore.Datastore]) -> Callable[..., hvcore.Datastore]:
    """The shared ``make_datastore`` (`fixtures.datastores`) builds its PostgreSQL stores with this factory: here,
    on the Citus coordinator alone (shards 0-16), so the contract suite runs through Citus unchanged."""
    return citus_datastore_factory


@pytest.fixture(params=["hstore", "jsonb"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """The contract suite on Citus runs once per PostgreSQL backend."""
    return str(request.param)
