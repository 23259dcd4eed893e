"""A second newcomer's findings: a PoolTimeout caused by the caller's own open db.transaction() block.

``with db.transaction(5) as tx: db.get(key)`` (db. where tx. was meant) waits for the connection the transaction
holds. The query-stream and get_connection() cases got a note saying the caller waited for itself; the
transaction case has none on PostgreSQL, and on the memory backend a note that names get_connection()/cursor().
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hvcore

REASON = (
    "a PoolTimeout while the same thread/task holds the pool's connection in an open db.transaction() block says "
    "nothing of the transaction (PostgreSQL: no note at all; memory: 'borrowed connections (get_connection(), "
    "cursor())'); it should say the caller's own transaction holds it (use tx.get()/tx.put() inside the block, or "
    "raise pool_max)"
)


def _servers(backend: str, request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    if backend == "memory":
        return [dict(shards="0-8")]
    return [{**request.getfixturevalue("pg_fresh_db"), "shards": "0-8"}]


def _text(exc: BaseException) -> str:
    return " ".join([str(exc), *getattr(exc, "__notes__", [])])


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_db_get_inside_a_transaction_block_with_a_small_pool_names_the_transaction(
    backend: str, request: pytest.FixtureRequest
) -> None:
    servers = _servers(backend, request)
    with hvcore.Datastore(servers, backend=backend, pool_max=1, pool_block_timeout=0.2, worker=None) as db:
        db.provision()
        key = db.put(5, 1, v="old")
        with db.transaction(5) as tx:
            tx.update(key, v="new")
            with pytest.raises(hvcore.PoolTimeout) as caught:
                db.get(key)
        assert "transaction" in _text(caught.value), _text(caught.value)


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_async_db_get_inside_a_transaction_block_with_a_small_pool_names_the_transaction(
    backend: str, request: pytest.FixtureRequest
) -> None:
    servers = _servers(backend, request)

    async def main() -> str:
        async with hvcore.AsyncDatastore(
            servers, backend=backend, pool_max=1, pool_block_timeout=0.2, worker=None
        ) as db:
            await db.provision()
            key = await db.put(5, 1, v="old")
            async with db.transaction(5) as tx:
                await tx.update(key, v="new")
                try:
                    await db.get(key)
                except hvcore.PoolTimeout as exc:
                    return _text(exc)
            return "no PoolTimeout"

    text = asyncio.run(main())
    assert "transaction" in text, text
