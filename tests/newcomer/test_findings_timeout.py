"""A newcomer's findings on operation_timeout: a write reported as failed must not land later.

The cancel request for a timed-out statement is started on a thread and not waited for; it needs a new connection
to the server. The tests reach PostgreSQL through a relay that takes 0.3 s to set up each new connection (a remote
server, a TLS handshake), so the race is decided the same way on every run: another session releases the row lock
right after the call gave up, before the cancel request can arrive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fixtures.relay import Forward

import hvcore

ROUNDS = 5
CONNECT_DELAY = 0.3  # seconds before a new connection through the relay carries bytes


@pytest.fixture
def remote(pg_fresh_db: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """The fresh database, provisioned directly, as servers reached through the slow-connect relay."""
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb") as db:
        db.provision()
    relay = Forward(pg_fresh_db["host"], pg_fresh_db["port"], connect_delay=CONNECT_DELAY)
    try:
        yield [{**pg_fresh_db, "port": relay.port, "shards": "0-8", "pgbouncer": "off"}]
    finally:
        relay.close()


def _lock_holder(settings: dict[str, Any], key: int) -> psycopg.Connection[Any]:
    """Another session (another process, connected directly) holding the row lock of ``key`` in an open
    transaction."""
    conn = psycopg.connect(**settings)
    conn.execute("UPDATE shard0002.entities SET body = '{\"a\": 2}' WHERE id = %s", (key,))
    return conn


def test_a_timed_out_update_does_not_commit_after_the_lock_is_released_at_once(
    pg_fresh_db: dict[str, Any], remote: list[dict[str, Any]]
) -> None:
    """OperationTimeout's docstring: 'a statement that was only waiting (a lock...) stops on the server instead of
    completing later'. Another session holds the row lock and commits right after our call gave up (as another
    process would, with no 0.5 s pause): the write reported as failed must never land afterwards."""
    landed = 0
    with hvcore.Datastore(remote, backend="jsonb", operation_timeout=0.5, pool_max=4, worker=None) as db:
        for _ in range(ROUNDS):
            key = db.put(2, 5, a=1)
            with _lock_holder(pg_fresh_db, int(key)) as other:
                with pytest.raises(hvcore.ServerUnavailable):  # settled: not stored (or unknown)
                    db.update(key, a=3)
                other.commit()  # the lock is released at once
            time.sleep(CONNECT_DELAY + 0.3)
            record = db.get(key)
            assert record is not None
            landed += record.data == {"a": 3}
    assert landed == 0, f"{landed} of {ROUNDS} updates reported as failed (WriteOutcomeUnknown) committed afterwards"


def test_async_timed_out_update_does_not_commit_after_the_lock_is_released_at_once(
    pg_fresh_db: dict[str, Any], remote: list[dict[str, Any]]
) -> None:
    """The asyncio form of the test above."""

    async def main() -> int:
        landed = 0
        async with hvcore.AsyncDatastore(remote, backend="jsonb", operation_timeout=0.5, pool_max=4, worker=None) as db:
            for _ in range(ROUNDS):
                key = await db.put(2, 5, a=1)
                with _lock_holder(pg_fresh_db, int(key)) as other:
                    with pytest.raises(hvcore.ServerUnavailable):  # settled: not stored (or unknown)
                        await db.update(key, a=3)
                    other.commit()
                await asyncio.sleep(CONNECT_DELAY + 0.3)
                record = await db.get(key)
                assert record is not None
                landed += record.data == {"a": 3}
        return landed

    landed = asyncio.run(main())
    assert landed == 0, f"{landed} of {ROUNDS} updates reported as failed (WriteOutcomeUnknown) committed afterwards"
