"""Sequence sources: where the 10-bit sequence part of a key comes from (interface only; pure core)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["AsyncSequenceSource", "SequenceSource"]


@runtime_checkable
class SequenceSource(Protocol):
    """Hands out blocks of sequence numbers per (shard, millisecond), unique among every user of the source.

    A `KeyGenerator` asks for numbers of one shard in one millisecond (``time_part``: ms since the layout's
    epoch) and serves ids from the block it gets back until the block or the millisecond runs out. Numbers are
    in ``0 .. sequence_size - 1``; no two reservations of the same (shard, ms) may overlap, in any process.
    """

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve numbers for ``(shard_id, time_part)``: about ``wanted`` of them (more or fewer are allowed),
        an empty range when that millisecond of that shard is used up."""
        ...

    def after_fork_in_child(self) -> None:
        """Drop whatever the child process inherited that it must not reuse (connections, cached blocks)."""
        ...

    def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...


@runtime_checkable
class AsyncSequenceSource(Protocol):
    """The asyncio form of `SequenceSource`."""

    async def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        """Reserve numbers for ``(shard_id, time_part)``, as `SequenceSource.reserve`."""
        ...

    def after_fork_in_child(self) -> None:
        """Drop whatever the child process inherited that it must not reuse."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


SequenceSource.__module__ = "hvcore"
AsyncSequenceSource.__module__ = "hvcore"
