"""Coalescing through a Citus coordinator: batched gets route there; a grouped insert is refused (Citus allows no
transaction id in a multi-row INSERT's RETURNING) and the store stops grouping puts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import pytest
from citus.citus_helpers import StatementLog, statement_log

import hvcore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_overlapping_puts_and_gets_through_a_coordinator(
    citus_datastore_factory: Callable[..., hvcore.Datastore], backend: str
) -> None:
    server = dict(citus_datastore_factory(backend)._config.servers[0])

    async def main() -> None:
        async with hvcore.AsyncDatastore([server], backend=backend, pool_max=4, logger=logger) as db:
            keys = [k for shard in (1, 2, 9) for k in await db.put_many(shard, 1, [{"n": str(i)} for i in range(8)])]
            records = await asyncio.gather(*(db.get(k) for k in keys))
            assert [r.key if r is not None else None for r in records] == keys
            assert all(store.stats()["borrowed"] == 0 for store in db._live())
            # Citus refuses a transaction id in a multi-row INSERT's RETURNING: the first group tells the store,
            # whose puts then run one INSERT each (the coalescer runs the group's rows alone)
            store = db.store_for(5)
            rows = [(db.generator.next_key(5), 1, {"g": str(i)}) for i in range(3)]
            with pytest.raises(psycopg.errors.FeatureNotSupported):
                await store.insert_group(5, rows)  # type: ignore[attr-defined]
            assert store.insert_groups is False  # type: ignore[attr-defined]

    with statement_log(f"hv.test.coalesce.citus.{backend}", StatementLog()) as (logger, collect):
        asyncio.run(main())
    assert any("= ANY(" in s for s in collect.lines)  # gets were batched
