"""A second newcomer's findings: a call waiting for a pooled connection while the datastore is closed.

Calls made after close() raise StoreClosed ("this Datastore is disconnected: call reinstantiate()"). A call that
was already waiting for a connection when close() ran gets ServerUnavailable on PostgreSQL ("the pool of ... is
closed", an OSError saying the server is down: failover and alerting code acts on it), and on the memory backend
it is served after close() returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

import hvcore

REASON = (
    "a get() waiting for a connection (pool_max=1, the only one lent) when close() runs raises ServerUnavailable "
    "'the pool of ... is closed' on PostgreSQL (the server is fine) and succeeds after close() on the memory "
    "backend; it should raise StoreClosed, as a call made after close() does"
)


def _servers(backend: str, request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if backend == "memory":
        return [dict(shards="0-8")]
    return [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}]


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_a_call_waiting_for_a_connection_when_the_store_closes_gets_store_closed(
    backend: str, request: pytest.FixtureRequest
) -> None:
    db = hvcore.Datastore(_servers(backend, request), backend=backend, pool_max=1, pool_block_timeout=5, worker=None)
    db.provision()
    key = db.put(3, 1, a=1)
    held = db.get_connection(3)
    outcome: list[BaseException | None] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            db.get(key)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait()
    threading.Event().wait(0.3)  # the waiter is now waiting for the lent connection
    db.close()
    thread.join(5)
    try:
        assert outcome and isinstance(outcome[0], hvcore.StoreClosed), repr(outcome)
    finally:
        with contextlib.suppress(hvcore.HypervaultError):  # taken back after close() on every backend
            db.put_connection(held)


def test_async_call_waiting_for_a_connection_when_the_store_closes_gets_store_closed(
    pg_fresh_db: dict[str, Any],
) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]

    async def main() -> BaseException | None:
        db = hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1, pool_block_timeout=5, worker=None)
        await db.open()
        await db.provision()
        key = await db.put(3, 1, a=1)
        held = await db.get_connection(3)
        waiting = asyncio.create_task(db.get(key))
        await asyncio.sleep(0.3)
        await db.close()
        try:
            await waiting
        except BaseException as exc:
            return exc
        finally:
            await db.put_connection(held)
        return None

    outcome = asyncio.run(main())
    assert isinstance(outcome, hvcore.StoreClosed), repr(outcome)
