"""The suite-wide leak check sees every datastore's pools, sync and async, open or closed."""

from __future__ import annotations

import asyncio
import time

from fixtures.faults import borrowed_connections

import hvcore


def servers(tag: str) -> list[dict[str, object]]:
    return [dict(shards="0-8", name=f"{tag}-a-{time.monotonic_ns()}"), dict(shards="8-16", name=f"{tag}-b")]


def test_a_borrowed_connection_is_reported_until_returned() -> None:
    db = hvcore.Datastore(servers("leak"), backend="memory")
    conn = db.get_connection(9)
    leaks = borrowed_connections()
    assert [count for label, count in leaks if "leak-b" in label] == [1]
    db.put_connection(conn)
    assert borrowed_connections() == []
    db.close()


def test_async_datastores_are_seen_too() -> None:
    async def main() -> list[tuple[str, int]]:
        db = hvcore.AsyncDatastore(servers("aleak"), backend="memory")
        await db.open()
        conn = await db.get_connection(1)
        seen = borrowed_connections()
        await db.put_connection(conn)
        await db.close()
        return seen

    assert [count for label, count in asyncio.run(main()) if "aleak-a" in label] == [1]
