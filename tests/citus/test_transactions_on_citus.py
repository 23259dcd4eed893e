"""The transaction contract (``tests/contract/test_transactions.py``) run through a Citus coordinator: one server
owning shards 0-16 (hstore and jsonb, `Datastore` and `AsyncDatastore`), each shard a distributed schema on a worker.

A transaction touches one shard, so Citus routes all of it to the worker holding that schema: ``BEGIN``, ``SET
LOCAL``, savepoints, COPY and the server-side cursor of ``tx.query`` go through the coordinator unchanged.
"""

from __future__ import annotations

import pytest
from contract.test_transactions import *  # noqa: F403

pytestmark = [pytest.mark.citus, pytest.mark.postgres]
