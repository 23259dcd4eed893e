"""provision() refuses a shard map whose shards hold their rows on another server of the config (memory backend)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import hvcore


def _names() -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    return f"swap-a-{run}", f"swap-b-{run}"


def test_swapped_server_lines_are_refused_before_anything_is_created() -> None:
    a, b = _names()
    with hvcore.Datastore([dict(shards="0-4", name=a), dict(shards="4-8", name=b)], backend="memory") as db:
        db.provision()
        db.put(5, 1, n="x")  # shard 5 holds a row on b
    swapped = [dict(shards="4-8", name=a, provisioned=False), dict(shards="0-4", name=b, provisioned=False)]
    with hvcore.Datastore(swapped, backend="memory") as db:
        with pytest.raises(
            hvcore.ShardMapError, match=r"shard 5 is mapped to server #0 .*memory:swap-a.*1 row\(s\) is on server #1"
        ):
            db.provision()
        assert db.servers[0].row_counts(range(4, 8)) == {}  # nothing was created on a
    with hvcore.Datastore([dict(shards="0-4", name=a), dict(shards="4-8", name=b)], backend="memory") as db:
        assert [r.data for r in db.query(kind=1)] == [{"n": "x"}]  # the right map still finds it


def test_empty_shards_elsewhere_and_a_correct_map_provision_as_before() -> None:
    a, b = _names()
    with hvcore.Datastore([dict(shards="0-4", name=a), dict(shards="4-8", name=b)], backend="memory") as db:
        db.provision()  # fresh: nothing anywhere
        db.provision()  # again: idempotent
    swapped = [dict(shards="4-8", name=a), dict(shards="0-4", name=b)]

    async def main() -> None:
        async with hvcore.AsyncDatastore(swapped, backend="memory") as adb:
            await adb.provision()  # the other server's tables are empty: nothing to lose, provisioned

    asyncio.run(main())
