"""The façade contract suite, run through a Citus coordinator: one server owning shards 0-16 (hstore and jsonb,
`Datastore` and `AsyncDatastore`), each shard a distributed schema living on one of two workers.

The tests are the contract suite's own (imported, so they are collected here again with this directory's
``make_datastore``); the shards were provisioned through the coordinator (`Datastore.provision`), which
distributes each new shard schema.
"""

from __future__ import annotations

import pytest
from contract.test_batches_queries import *  # noqa: F403
from contract.test_facade import *  # noqa: F403
from fixtures.datastores import MakeDatastore

import hvcore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


def test_pool_exhaustion_times_out(make_datastore: MakeDatastore) -> None:  # type: ignore[no-redef]
    """The contract's test, for one server: the coordinator's one pool (the original borrows from a second one)."""
    store = make_datastore(pool_max=2, pool_block_timeout=0.2)
    held = [store.get_connection(1), store.get_connection(9)]
    with pytest.raises(hvcore.PoolTimeout, match=r"0\.2"):
        store.get_connection(3)
    for conn in held:
        store.put_connection(conn)
    store.put_connection(store.get_connection(3))  # a returned connection is free again


def test_repr_names_backend_and_servers(datastore: hvcore.Datastore, backend_name: str) -> None:  # type: ignore[no-redef]
    """The contract's test, for one server owning shards 0-16 (the original has two servers, 0-8 and 8-16)."""
    text = repr(datastore)
    assert backend_name in text and "/hv_citus_contract_" in text and "[0-16]" in text
