"""Coalesced reads and writes through a Citus coordinator: the multi-row INSERT and the `= ANY` batch route there."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

import hvcore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.statements.append(record.getMessage())


@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_overlapping_puts_and_gets_through_a_coordinator(
    citus_datastore_factory: Callable[..., hvcore.Datastore], backend: str
) -> None:
    server = dict(citus_datastore_factory(backend)._config.servers[0])
    logger = logging.getLogger(f"hv.test.coalesce.citus.{backend}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    collect = _Collect()
    logger.addHandler(collect)

    async def main() -> None:
        async with hvcore.AsyncDatastore([server], backend=backend, pool_max=4, logger=logger) as db:
            keys = await asyncio.gather(*(db.put(shard, 1, n=str(i)) for i in range(8) for shard in (1, 2, 9)))
            assert len(set(keys)) == 24
            records = await asyncio.gather(*(db.get(k) for k in keys))
            assert [r.key if r is not None else None for r in records] == list(keys)
            assert all(store.stats()["borrowed"] == 0 for store in db._live())
            store = db.store_for(5)  # the group statement itself runs on Citus (no fallback to single inserts)
            rows = [(db.generator.next_key(5), 1, {"g": str(i)}) for i in range(5)]
            assert await store.insert_group(5, rows) == {int(k) for k, _, _ in rows}  # type: ignore[attr-defined]
            assert await store.insert_group(5, rows[:2]) == set()  # type: ignore[attr-defined]  # taken: left out

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(collect)
    assert any("ON CONFLICT DO NOTHING" in s for s in collect.statements)  # puts were grouped
    assert any("= ANY(" in s for s in collect.statements)  # gets were batched
