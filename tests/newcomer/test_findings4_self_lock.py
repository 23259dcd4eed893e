"""A fourth newcomer's finding: a `db.` call inside one's own `db.transaction()` block waits on itself.

Writing ``db.update(key, ...)`` instead of ``tx.update(key, ...)`` inside ``with db.transaction(5) as tx:`` after the
transaction updated that row is an easy slip. The plain call runs on another pooled connection and waits for the
row lock the caller's own transaction holds: the thread hangs for ``operation_timeout`` (60 s by default), then
gets ``ServerUnavailable: ... did not answer within operation_timeout``, which sends an operator to look at a
healthy server. The store knows this thread holds a transaction on that shard (it names it for pool exhaustion).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import hvcore


def test_a_plain_write_blocked_by_the_callers_own_transaction_names_the_transaction(
    pg_fresh_db: dict[str, Any],
) -> None:
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=3, operation_timeout=1)
    try:
        db.provision()
        key = db.put(5, 1, balance=100)
        started = time.monotonic()
        with pytest.raises(hvcore.HypervaultError) as caught, db.transaction(5) as tx:
            tx.update(key, balance=70)
            db.update(key, note="x")  # the slip: db. instead of tx.
        message = str(caught.value)
        assert not isinstance(caught.value, hvcore.ServerUnavailable), (
            f"{type(caught.value).__name__} after {time.monotonic() - started:.1f} s: {message}"
        )
        assert "transaction" in message, message
    finally:
        db.close()
