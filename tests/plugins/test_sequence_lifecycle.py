"""A datastore's own Redis sequence (made from its URL) across close(), open() and reinstantiate()."""

from __future__ import annotations

import asyncio

import pytest

import hvcore

pytestmark = pytest.mark.redis


def test_close_then_reinstantiate_makes_the_sequence_again(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix
    db = hvcore.Datastore(
        [dict(shards="0-4", name="seq-life")], backend="memory", sequence=f"{url}?key_prefix={prefix}"
    )
    first = db.put(1, 1, a="b")
    db.close()
    db.reinstantiate()
    second = db.put(1, 1, a="c")  # raised SequenceUnavailable: the closed sequence was kept
    assert second > first and [r.key for r in db.query()] == [first, second]
    db.close()
    db.close()  # closing twice closes nothing twice


def test_async_close_then_open_makes_the_sequence_again(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix

    async def run() -> None:
        db = hvcore.AsyncDatastore(
            [dict(shards="0-4", name="seq-life-async")], backend="memory", sequence=f"{url}?key_prefix={prefix}"
        )
        async with db:
            first = await db.put(1, 1, a="b")
        async with db:  # open() again after close()
            second = await db.put(1, 1, a="c")
        await db.reinstantiate()
        third = await db.put(1, 1, a="d")
        await db.close()
        assert first < second < third

    asyncio.run(run())
