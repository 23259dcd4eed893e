"""The asyncio form of `KeyGenerator`: the same implementation, carrying out its waits and reservations with asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hvcore._generator import _GeneratorBase, _Reserve
from hvcore._key import Key, KeyLayout, check_shard_id
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore._worker import WorkerGrant, WorkerSlice

__all__ = ["AsyncKeyGenerator"]


class AsyncKeyGenerator(_GeneratorBase):
    """The asyncio form of `KeyGenerator`: same keys, same options, same guarantees (see `KeyGenerator`).

    Everything but the waiting is `KeyGenerator`'s own code (their shared base): waiting for the next
    millisecond and reserving blocks from ``sequence`` (an `AsyncSequenceSource`, a `SequenceSource`, or a URL
    made into the asyncio form of its plugin's source) never block the event loop.
    """

    __slots__ = ()
    __module__ = "hvcore"

    def __init__(
        self,
        layout: KeyLayout | str | int = KeyLayout.DEFAULT,
        sequence: AsyncSequenceSource | SequenceSource | str | None = None,
        *,
        worker: WorkerSlice | WorkerGrant | None = None,
        random_start: bool | None = None,
        clock: Callable[[], int] | None = None,
        max_backwards_ms: int = 100,
        block_size: int = 64,
    ) -> None:
        super().__init__(layout, sequence, worker, random_start, clock, max_backwards_ms, block_size, asyncio=True)

    async def next_key(self, shard_id: int) -> Key:
        """One new key for ``shard_id``."""
        key = self._quick_key(shard_id)
        return key if key is not None else (await self._fill(shard_id, 1, []))[0]

    async def next_keys(self, shard_id: int, n: int) -> list[Key]:
        """``n`` new keys for ``shard_id``, increasing."""
        return await self._fill(shard_id, self._check_count(n), [])

    async def close(self) -> None:
        """End the generator: every later call raises `HypervaultError`; a sequence source it made from a URL is
        closed, and its worker number may serve a new generator of this process (from its next millisecond on)."""
        if self._shut() and self._owns_source:
            await self.sequence.close()

    async def __aenter__(self) -> AsyncKeyGenerator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _fill(self, shard_id: int, n: int, out: list[Key]) -> list[Key]:
        """The slow path: `_step` until done, sleeping and reserving as it asks (KeyGenerator._fill, plus the
        ``await``s: tests/core/test_generator.py checks the two are the same code)."""
        shard = check_shard_id(shard_id, self.layout)
        while (todo := self._step(shard, n, out)) is not None:
            if isinstance(todo, _Reserve):
                async with self._shard_lock(shard, asyncio.Lock):
                    if self._states[shard] is todo.state:  # nobody replaced it while we waited for the lock
                        numbers = self._reserve(shard, todo.time_part, todo.wanted)
                        if not isinstance(numbers, range):  # async only: an asyncio source's coroutine
                            numbers = await numbers
                        self._install(shard, todo.time_part, numbers, n, out)
            else:
                for pause in self._pauses(shard, todo):
                    await asyncio.sleep(pause)
        return out
