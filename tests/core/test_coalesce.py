"""`ReadCoalescer` on fake fetchers (no I/O): lone calls go straight through, batches, own outcomes, cancelling."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvcore import Key, Record
from hvcore._coalesce import ReadCoalescer
from hvcore.errors import NotProvisioned, ServerUnavailable, ShardMoved


def key(shard: int, n: int) -> Key:
    return Key.from_parts(timestamp_ms=1_800_000_000_000 + n, shard_id=shard, added_id=n % 1024)


class FakeServer:
    """Records by key; shards that fail (not provisioned) or moved away; counts of statements and open "connections"."""

    def __init__(self, stored: Iterable[Key] = (), broken: Iterable[int] = (), moved: Iterable[int] = ()) -> None:
        self.rows: dict[Key, dict[str, Any]] = {k: {"n": int(k) % 1000, "nested": {"list": [1, 2]}} for k in stored}
        self.broken = set(broken)
        self.moved = set(moved)
        self.down = False
        self.singles = 0
        self.batches: list[int] = []
        self.open = 0
        self.gate: asyncio.Event | None = None
        self.instant = False  # fetch() answers without suspending (a lone call must then not suspend either)

    def _check(self, shards: Iterable[int]) -> None:
        if self.down:
            raise ServerUnavailable("server down")
        for shard in sorted(set(shards)):
            if shard in self.moved:
                raise ShardMoved(f"shard {shard} moved", shard_id=shard, server="other", version=2)
            if shard in self.broken:
                raise NotProvisioned(f"shard {shard} is not provisioned")

    async def fetch(self, shard_id: int, k: Key) -> Record | None:
        self.singles += 1
        self.open += 1
        try:
            if not self.instant:
                await asyncio.sleep(0)  # a round trip
            if self.gate is not None:
                await self.gate.wait()
            self._check([shard_id])
            body = self.rows.get(k)
            return None if body is None else Record(k, 1, {**body, "nested": {"list": list(body["nested"]["list"])}})
        finally:
            self.open -= 1

    async def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        self.batches.append(len(items))
        self.open += 1
        try:
            await asyncio.sleep(0)  # a round trip
            if self.gate is not None:
                await self.gate.wait()
            self._check(s for s, _ in items)
            return [Record(k, 1, {**self.rows[k], "nested": {"list": [1, 2]}}) for _, k in items if k in self.rows]
        finally:
            self.open -= 1


def coalescer(server: FakeServer, limit: int = 8) -> ReadCoalescer:
    return ReadCoalescer(server.fetch, server.fetch_many, limit, owner=server)


async def outcome(awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception as exc:
        return exc


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b) and vars(a) == vars(b)
    return bool(a == b)


def test_a_lone_call_goes_straight_through_without_yielding() -> None:
    server = FakeServer([key(1, 1)])
    server.instant = True
    reader = coalescer(server)
    coro = reader.get(1, key(1, 1))
    with pytest.raises(StopIteration) as done:  # finished on its first step: no timer, no extra loop turn
        coro.send(None)
    assert done.value.value == Record(key(1, 1), 1, {"n": int(key(1, 1)) % 1000, "nested": {"list": [1, 2]}})
    assert server.singles == 1 and server.batches == [] and reader.in_flight == 0


def test_overlapping_calls_are_one_batch_and_duplicates_are_fetched_once() -> None:
    stored = [key(s, n) for s in (1, 2) for n in range(10)]
    server = FakeServer(stored)
    reader = coalescer(server)

    async def main() -> list[Any]:
        wanted = [*stored[:15], stored[0], stored[0], key(1, 99)]
        return await asyncio.gather(*(reader.get(k.shard_id, k) for k in wanted))

    results = asyncio.run(main())
    assert server.singles == 1  # the first call went straight through
    assert server.batches == [16]  # the 17 others: 15 distinct stored keys (key 0 twice) + 1 missing, one statement
    assert results[15] == results[0] and results[16] == results[0] and results[17] is None
    assert results[15] is not results[16] and results[15].data is not results[16].data  # each caller its own body
    results[15].data["nested"]["list"].append(3)
    assert results[16].data["nested"]["list"] == [1, 2]
    assert reader.in_flight == 0


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=1, max_size=40),
    broken=st.sets(st.integers(0, 5), max_size=2),
    moved=st.sets(st.integers(0, 5), max_size=2),
    down=st.booleans(),
    limit=st.integers(1, 4),
)
def test_every_caller_gets_what_it_would_get_alone(
    picks: list[tuple[int, int]], broken: set[int], moved: set[int], down: bool, limit: int
) -> None:
    stored = [key(s, n) for s in range(6) for n in range(0, 8, 2)]  # odd n: missing keys
    server = FakeServer(stored, broken, moved - broken)
    reader = coalescer(server, limit)
    wanted = [key(s, n) for s, n in picks]

    async def main() -> tuple[list[Any], list[Any]]:
        server.down = down
        alone = [await outcome(server.fetch(k.shard_id, k)) for k in wanted]
        together = await asyncio.gather(*(outcome(reader.get(k.shard_id, k)) for k in wanted))
        return alone, together

    alone, together = asyncio.run(main())
    assert all(same(a, b) for a, b in zip(alone, together, strict=True)), (alone, together)
    errors = [e for e in together if isinstance(e, Exception)]
    assert len({id(e) for e in errors}) == len(errors)  # each caller its own exception object
    assert server.open == 0 and reader.in_flight == 0


def test_a_cancelled_caller_leaves_the_others_intact() -> None:
    stored = [key(1, n) for n in range(6)]
    server = FakeServer(stored)
    reader = coalescer(server)

    async def main() -> list[Any]:
        server.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(reader.get(1, k)) for k in stored]
        tasks.append(asyncio.ensure_future(reader.get(1, stored[3])))  # a second caller of the same key
        for _ in range(5):
            await asyncio.sleep(0)
        assert server.batches == [5] and server.open == 2  # one direct read, one batch of 5 keys, both held at the gate
        tasks[3].cancel()
        tasks[4].cancel()
        await asyncio.sleep(0)
        server.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[3], asyncio.CancelledError) and isinstance(results[4], asyncio.CancelledError)
    assert [r.key for i, r in enumerate(results) if i not in (3, 4)] == [*stored[:3], stored[5], stored[3]]
    assert server.open == 0 and reader.in_flight == 0


def test_keys_whose_callers_all_left_are_not_fetched() -> None:
    stored = [key(1, n) for n in range(4)]
    server = FakeServer(stored)
    reader = coalescer(server, limit=1)

    async def main() -> list[Any]:
        server.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(reader.get(1, k)) for k in stored]
        await asyncio.sleep(0)
        tasks[2].cancel()  # waiting for the limit to free: never sent
        await asyncio.sleep(0)
        server.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], asyncio.CancelledError)
    assert server.singles == 1 and server.batches == [2]
    assert [r.key for r in (results[0], results[1], results[3])] == [stored[0], stored[1], stored[3]]


def test_at_most_limit_reads_in_flight() -> None:
    stored = [key(1, n) for n in range(50)]
    server = FakeServer(stored)
    reader = coalescer(server, limit=2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        for _ in range(50):
            peak = max(peak, server.open)
            await asyncio.sleep(0)

    async def main() -> None:
        async def caller(k: Key) -> None:
            for _ in range(3):
                assert (await reader.get(1, k)) is not None

        await asyncio.gather(watch(), *(caller(k) for k in stored))

    asyncio.run(main())
    assert 1 <= peak <= 2
    assert sum(server.batches) + server.singles == 150  # every read done...
    assert len(server.batches) + server.singles < 20  # ...in few statements


def test_a_cancelled_batch_task_cancels_its_callers() -> None:
    server = FakeServer([key(1, 1), key(1, 2), key(1, 3)])
    reader = coalescer(server)

    async def main() -> list[Any]:
        server.gate = asyncio.Event()
        tasks = [asyncio.ensure_future(reader.get(1, key(1, n))) for n in (1, 2, 3)]
        for _ in range(3):
            await asyncio.sleep(0)
        for task in list(reader._tasks):
            task.cancel()
        await asyncio.sleep(0)
        server.gate.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0].key == key(1, 1)
    assert all(isinstance(r, asyncio.CancelledError) for r in results[1:])
    assert reader.in_flight == 0


def test_limit_must_be_positive() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="at least 1"):
        ReadCoalescer(server.fetch, server.fetch_many, 0)
