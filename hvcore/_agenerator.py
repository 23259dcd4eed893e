"""The asyncio twin of `KeyGenerator`: the same state and logic, awaiting the waits and the sequence source."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hvcore._generator import _AGAIN, _GeneratorBase, _Reserve
from hvcore._key import Key, KeyLayout, check_shard_id
from hvcore._sequence import AsyncSequenceSource

__all__ = ["AsyncKeyGenerator"]


class AsyncKeyGenerator(_GeneratorBase):
    """The asyncio twin of `KeyGenerator`: same keys, same guarantees, blocks from an `AsyncSequenceSource`.

    Waiting for the next millisecond and reserving blocks from ``sequence`` never block the event loop.
    """

    __slots__ = ()
    __module__ = "hvcore"

    def __init__(
        self,
        layout: KeyLayout = KeyLayout.DEFAULT,
        sequence: AsyncSequenceSource | None = None,
        *,
        clock: Callable[[], int] | None = None,
        max_backwards_ms: int = 100,
        block_size: int = 64,
    ) -> None:
        super().__init__(layout, sequence, clock, max_backwards_ms, block_size)

    async def next_key(self, shard_id: int) -> Key:
        """One new key for ``shard_id``."""
        key = self._quick_key(shard_id)
        return key if key is not None else (await self._fill(shard_id, 1, []))[0]

    async def next_keys(self, shard_id: int, n: int) -> list[Key]:
        """``n`` new keys for ``shard_id``, increasing."""
        return await self._fill(shard_id, self._check_count(n), [])

    async def _fill(self, shard_id: int, n: int, out: list[Key]) -> list[Key]:
        shard = check_shard_id(shard_id, self.layout)
        step = self._step
        while True:
            todo = step(shard, n, out)
            if todo is None:
                return out
            if type(todo) is _Reserve:
                await self._reserve(shard, todo, n, out)
            elif todo != _AGAIN:
                assert isinstance(todo, int)
                while (pause := self._sleep_for(shard, todo)) is not None:
                    await asyncio.sleep(pause)

    async def _reserve(self, shard: int, todo: _Reserve, n: int, out: list[Key]) -> None:
        lock = self._locks.get(shard) or self._locks.setdefault(shard, asyncio.Lock())
        async with lock:
            if self._states[shard] is todo.state:
                source = self._source
                assert source is not None
                numbers = source.reserve(shard, todo.time_part, todo.wanted)
                if not isinstance(numbers, range):
                    numbers = await numbers
                self._install(shard, todo.time_part, numbers, n, out)
