"""`once_block` / `aonce_block`: a generator's block object used by a second ``with`` is a typed error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from hvcore._blocks import aonce_block, once_block
from hvcore.errors import TransactionError


@once_block("db.transaction(shard)", TransactionError)
def _block(events: list[str]) -> Iterator[int]:
    events.append("enter")
    try:
        yield 7
    finally:
        events.append("exit")


@aonce_block("db.transaction(shard)", TransactionError)
async def _ablock(events: list[str]) -> AsyncIterator[int]:
    events.append("enter")
    try:
        yield 7
    finally:
        events.append("exit")


def test_a_block_runs_once_and_refuses_a_second_with() -> None:
    events: list[str] = []
    made = _block(events)
    with pytest.raises(KeyError), made as value:  # the block's own behaviour is contextlib's
        assert value == 7
        raise KeyError
    with pytest.raises(TransactionError, match=r"already used.*with db\.transaction\(shard\) as"), made:
        pass
    assert events == ["enter", "exit"]  # the second `with` ran nothing of the generator
    with _block(events) as again:  # a new call is a new block
        assert again == 7
    assert _block.__name__ == "_block"


def test_an_async_block_runs_once_and_refuses_a_second_async_with() -> None:
    async def main() -> list[str]:
        events: list[str] = []
        made = _ablock(events)
        async with made as value:
            assert value == 7
        with pytest.raises(TransactionError, match="already used"):
            async with made:
                pass
        return events

    assert asyncio.run(main()) == ["enter", "exit"]
