"""`ReadCoalescer` on fake fetchers (no I/O): lone calls go straight through, batches, own outcomes, cancelling."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvcore import Key, Record
from hvcore._acoalesce import ReadCoalescer, WriteCoalescer, _Wanted, _Write
from hvcore._coalesce import ThreadReadCoalescer, ThreadWriteCoalescer
from hvcore.errors import (
    DuplicateKey,
    DuplicateValue,
    NotProvisioned,
    ServerUnavailable,
    ShardMoved,
    WriteOutcomeUnknown,
)


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


def test_a_batch_cancelled_before_it_started_frees_its_slot() -> None:
    """Cancelled before its first step (a loop shutting down), a batch still frees its slot: nothing hangs after."""
    stored = [key(1, n) for n in range(4)]
    server = FakeServer(stored)
    reader = coalescer(server, limit=1)

    async def main() -> Any:
        waiting = asyncio.get_running_loop().create_future()
        reader._pending[stored[2]] = _Wanted(1, stored[2], waiting)
        reader._flush()  # the batch task is made...
        (task,) = reader._tasks
        task.cancel()  # ...and cancelled before it ran a single step
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert reader.in_flight == 0 and not reader._tasks and server.batches == [] and server.singles == 0
        return await asyncio.wait_for(reader.get(1, stored[1]), 1)

    after = asyncio.run(main())
    assert after is not None and after.key == stored[1]


def test_a_write_group_cancelled_before_it_started_frees_its_slot() -> None:
    table = FakeTable()
    coalescer_ = writer(table, limit=1)

    async def main() -> None:
        waiting: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        coalescer_._pending[1] = [_Write(key(1, 1), 1, {"u": 1}, waiting), _Write(key(1, 2), 1, {"u": 2}, waiting)]
        coalescer_._flush()
        (task,) = coalescer_._tasks
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert coalescer_.in_flight == 0 and table.groups == [] and table.rows == {}
        await asyncio.wait_for(coalescer_.insert(1, key(1, 3), 1, {"u": 3}), 1)

    asyncio.run(main())
    assert list(table.rows) == [key(1, 3)]


def test_limit_must_be_positive() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="at least 1"):
        ReadCoalescer(server.fetch, server.fetch_many, 0)


# -- writes ------------------------------------------------------------------------------------------------------


class FakeTable:
    """Rows by key with a unique ``u`` field per shard; shards moved away; a group that fails before or after commit.

    As the PostgreSQL store does, a group settles its own lost connection: ``"before"`` (not committed) raises
    `ServerUnavailable` with nothing stored (its rows then run alone), ``"timeout"`` (cut off by
    ``operation_timeout``, settled as not committed: the time allowed is spent) raises `ServerUnavailable` with
    ``timed_out`` and nothing stored, ``"after"`` (committed or not, nobody can tell) stores its rows and raises
    `WriteOutcomeUnknown`.
    """

    def __init__(self, moved: Iterable[int] = ()) -> None:
        self.rows: dict[Key, dict[str, Any]] = {}
        self.moved = set(moved)
        self.fail_group: str | None = None
        self.singles = 0
        self.groups: list[int] = []

    def _taken(self, shard: int, k: Key, data: Mapping[str, Any]) -> Exception | None:
        if k in self.rows:
            return DuplicateKey(f"key {int(k)} taken")
        if any(r.get("u") == data.get("u") and s.shard_id == shard for s, r in self.rows.items()):
            return DuplicateValue(f"value {data.get('u')} taken")
        return None

    async def insert(self, shard: int, k: Key, kind: int, data: Mapping[str, Any]) -> None:
        self.singles += 1
        await asyncio.sleep(0)
        if shard in self.moved:
            raise ShardMoved(f"shard {shard} moved", shard_id=shard, server="other", version=2)
        error = self._taken(shard, k, data)
        if error is not None:
            raise error
        self.rows[k] = dict(data)

    async def insert_group(self, shard: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> set[int]:
        self.groups.append(len(rows))
        await asyncio.sleep(0)
        if shard in self.moved:
            raise ShardMoved(f"shard {shard} moved", shard_id=shard, server="other", version=2)
        if self.fail_group == "before":
            raise ServerUnavailable("connection lost; the server says the transaction aborted")
        if self.fail_group == "timeout":
            cut = ServerUnavailable("did not answer within operation_timeout: the write did not commit")
            cut.timed_out = True
            raise cut
        stored = set()
        for k, _, data in rows:
            if self._taken(shard, k, data) is None:
                self.rows[k] = dict(data)
                stored.add(int(k))
        if self.fail_group == "after":
            raise WriteOutcomeUnknown("connection lost; nobody can tell", keys=tuple(int(k) for k, _, _ in rows))
        return stored


def writer(table: FakeTable, limit: int = 8) -> WriteCoalescer:
    return WriteCoalescer(table.insert, table.insert_group, limit, owner=table)


def test_a_lone_insert_goes_straight_through() -> None:
    table = FakeTable()
    coro = writer(table).insert(1, key(1, 1), 1, {"u": 1})
    with pytest.raises(StopIteration):
        while True:
            coro.send(None)  # only the fake's own round trip suspends it
    assert table.singles == 1 and table.groups == []


@settings(max_examples=80, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 6)), min_size=1, max_size=30),
    taken=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 6)), max_size=5),
    moved=st.sets(st.integers(0, 3), max_size=1),
    fail_group=st.sampled_from([None, "before", "after", "timeout"]),
    limit=st.integers(1, 3),
)
def test_every_put_gets_its_own_outcome(
    writes: list[tuple[int, int, int]],
    taken: list[tuple[int, int, int]],
    moved: set[int],
    fail_group: str | None,
    limit: int,
) -> None:
    """Keys taken before, unique values repeated within a group, a moved shard, a group failing around its commit."""
    rows = list({key(s, n): (s, key(s, n), {"u": u}) for s, n, u in writes}.values())  # the façade's keys are unique

    def fresh() -> FakeTable:
        table = FakeTable(moved)
        for s, n, u in taken:
            table.rows[key(s, n)] = {"u": u, "by": "another process"}
        return table

    async def alone() -> tuple[list[Any], dict[Key, dict[str, Any]]]:
        table = fresh()
        return [await outcome(table.insert(s, k, 1, d)) for s, k, d in rows], table.rows

    async def together() -> tuple[list[Any], dict[Key, dict[str, Any]], FakeTable]:
        table = fresh()
        table.fail_group = fail_group
        coalescer = writer(table, limit)
        results = await asyncio.gather(*(outcome(coalescer.insert(s, k, 1, d)) for s, k, d in rows))
        assert coalescer.in_flight == 0
        return list(results), table.rows, table

    expected, expected_rows = asyncio.run(alone())
    got, got_rows, _ = asyncio.run(together())
    unknown = [i for i, r in enumerate(got) if isinstance(r, WriteOutcomeUnknown)]
    if fail_group == "timeout":
        # a group cut off by operation_timeout: its callers are told (each row alone would wait as long again),
        # none of their rows stored; every other put is as alone
        before = fresh().rows
        cut = [i for i, r in enumerate(got) if type(r) is ServerUnavailable]
        for i in cut:
            assert got_rows.get(rows[i][1]) == before.get(rows[i][1])
        keep = [i for i in range(len(rows)) if i not in cut]
        assert not unknown and [type(got[i]) for i in keep] == [type(expected[i]) for i in keep], (expected, got)
        return
    if fail_group == "after":
        # a group whose commit nobody can tell: its callers get WriteOutcomeUnknown, as a lone put would, and
        # their keys hold their own rows or none (or, for a key another writer held before, that writer's row);
        # every other put is as alone
        before = fresh().rows
        for i in unknown:
            k = rows[i][1]
            assert k not in got_rows or got_rows[k] in (rows[i][2], before.get(k))
        keep = [i for i in range(len(rows)) if i not in unknown]
        assert [type(got[i]) for i in keep] == [type(expected[i]) for i in keep], (expected, got)
        return
    assert not unknown
    # the same outcome for every put, in any order of execution that keeps a group's earlier rows first
    assert [type(r) for r in got] == [type(r) for r in expected], (expected, got)
    assert got_rows.keys() == expected_rows.keys()
    errors = [e for e in got if isinstance(e, Exception)]
    assert len({id(e) for e in errors}) == len(errors)


def test_overlapping_inserts_are_one_group_per_shard() -> None:
    table = FakeTable()
    coalescer = writer(table)

    async def main() -> None:
        await asyncio.gather(*(coalescer.insert(s, key(s, n), 1, {"u": n}) for s in (1, 2) for n in range(10)))

    asyncio.run(main())
    assert table.singles == 1 and sorted(table.groups) == [9, 10]
    assert len(table.rows) == 20


def test_a_cancelled_put_waiting_for_its_group_writes_nothing() -> None:
    table = FakeTable()
    coalescer = writer(table, limit=1)

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(coalescer.insert(1, key(1, n), 1, {"u": n})) for n in range(4)]
        await asyncio.sleep(0)
        tasks[2].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[2], asyncio.CancelledError)
    assert set(table.rows) == {key(1, 0), key(1, 1), key(1, 3)}


# -- threads ------------------------------------------------------------------------------------------------------


class ThreadServer:
    """FakeServer's rules for threads: a gate holds reads while threads pile up."""

    def __init__(self, inner: FakeServer) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def fetch(self, shard_id: int, k: Key) -> Record | None:
        self.gate.wait()
        with self.lock:
            self.inner.instant = True
            found: Record | None = _run_now(self.inner.fetch(shard_id, k))
            return found

    def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        self.gate.wait()
        with self.lock:
            self.inner.batches.append(len(items))
            self.inner._check(s for s, _ in items)
            return [Record(k, 1, {**self.inner.rows[k]}) for _, k in items if k in self.inner.rows]


def _run_now(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the fake suspended")


def threaded(reader: ThreadReadCoalescer, wanted: list[Key]) -> list[Any]:
    results: list[Any] = [None] * len(wanted)

    def call(index: int) -> None:
        try:
            results[index] = reader.get(wanted[index].shard_id, wanted[index])
        except Exception as exc:
            results[index] = exc

    with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
        list(pool.map(call, range(len(wanted))))
    return results


def queued(reader: ThreadReadCoalescer) -> int:
    """Threads waiting in ``reader``'s queue."""
    with reader._lock:
        return sum(len(wanted.futures) for wanted in reader._pending.values())


def test_threads_that_would_wait_for_a_connection_share_one_batch() -> None:
    stored = [key(1, n) for n in range(30)]
    server = ThreadServer(FakeServer(stored))
    reader = ThreadReadCoalescer(server.fetch, server.fetch_many, 2)
    server.gate.clear()
    results: list[Any] = []

    def call(k: Key) -> None:
        results.append(reader.get(1, k))

    threads = [threading.Thread(target=call, args=(k,)) for k in [*stored, stored[5]]]
    for thread in threads:
        thread.start()
    for _ in range(500):
        if queued(reader) == 29:  # two reads hold the two slots; every other thread queued
            break
        time.sleep(0.01)
    assert reader.in_flight == 2 and queued(reader) == 29
    server.gate.set()
    for thread in threads:
        thread.join()
    assert sorted(r.key for r in results) == sorted([*stored, stored[5]])
    assert server.inner.batches == [28]  # 29 queued threads, 28 distinct keys: one batch
    assert reader.in_flight == 0


def test_a_lone_thread_goes_straight_through() -> None:
    server = ThreadServer(FakeServer([key(1, 1)]))
    reader = ThreadReadCoalescer(server.fetch, server.fetch_many, 1)
    assert reader.get(1, key(1, 1)) is not None and reader.get(1, key(1, 2)) is None
    assert server.inner.batches == [] and reader.in_flight == 0


@settings(max_examples=30, deadline=None)
@given(
    picks=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=1, max_size=24),
    broken=st.sets(st.integers(0, 5), max_size=2),
    moved=st.sets(st.integers(0, 5), max_size=2),
    down=st.booleans(),
)
def test_every_thread_gets_what_it_would_get_alone(
    picks: list[tuple[int, int]], broken: set[int], moved: set[int], down: bool
) -> None:
    stored = [key(s, n) for s in range(6) for n in range(0, 8, 2)]
    inner = FakeServer(stored, broken, moved - broken)
    inner.down = down
    server = ThreadServer(inner)
    wanted = [key(s, n) for s, n in picks]
    alone: list[Any] = []
    for k in wanted:
        try:
            alone.append(server.fetch(k.shard_id, k))
        except Exception as exc:
            alone.append(exc)
    reader = ThreadReadCoalescer(server.fetch, server.fetch_many, 1)
    server.gate.clear()
    timer = threading.Timer(0.05, server.gate.set)  # let the threads queue up behind the first read
    timer.start()
    together = threaded(reader, wanted)
    timer.join()
    assert all(same(a, b) for a, b in zip(alone, together, strict=True)), (alone, together)
    errors = [e for e in together if isinstance(e, Exception)]
    assert len({id(e) for e in errors}) == len(errors)
    assert reader.in_flight == 0


class ThreadTable:
    """FakeTable's rules for threads, behind a gate and a lock."""

    def __init__(self, inner: FakeTable) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def _now(self, coro: Any) -> Any:
        self.gate.wait()
        with self.lock:
            loop = asyncio.new_event_loop()
            try:
                return loop.run_until_complete(coro)
            finally:
                loop.close()

    def insert(self, shard: int, k: Key, kind: int, data: Mapping[str, Any]) -> None:
        self._now(self.inner.insert(shard, k, kind, data))

    def insert_group(self, shard: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> set[int]:
        stored: set[int] = self._now(self.inner.insert_group(shard, rows))
        return stored


@settings(max_examples=40, deadline=None)
@given(
    writes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 6)), min_size=1, max_size=20),
    taken=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 6)), max_size=5),
    moved=st.sets(st.integers(0, 3), max_size=1),
    fail_group=st.sampled_from([None, "before", "after", "timeout"]),
)
def test_every_thread_put_gets_its_own_outcome(
    writes: list[tuple[int, int, int]], taken: list[tuple[int, int, int]], moved: set[int], fail_group: str | None
) -> None:
    rows = list({key(s, n): (s, key(s, n), {"u": u}) for s, n, u in writes}.values())
    shared = {v["u"] for _, _, v in rows}
    if len(shared) < len(rows):  # threads race for a repeated unique value: which one wins is not defined
        rows = list({d["u"]: (s, k, d) for s, k, d in rows}.values())

    def fresh() -> FakeTable:
        table = FakeTable(moved)
        for s, n, u in taken:
            table.rows[key(s, n)] = {"u": u, "by": "another process"}
        return table

    alone_table = fresh()
    expected: list[Any] = []
    for s, k, d in rows:
        try:
            ThreadTable(alone_table).insert(s, k, 1, d)
            expected.append(None)
        except Exception as exc:
            expected.append(exc)
    inner = fresh()
    inner.fail_group = fail_group
    table = ThreadTable(inner)
    coalescer_ = ThreadWriteCoalescer(table.insert, table.insert_group, 1)
    table.gate.clear()
    timer = threading.Timer(0.05, table.gate.set)
    timer.start()
    got: list[Any] = [None] * len(rows)

    def put(index: int) -> None:
        s, k, d = rows[index]
        try:
            coalescer_.insert(s, k, 1, d)
        except Exception as exc:
            got[index] = exc

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        list(pool.map(put, range(len(rows))))
    timer.join()
    assert coalescer_.in_flight == 0
    unknown = [i for i, r in enumerate(got) if isinstance(r, WriteOutcomeUnknown)]
    assert not unknown or fail_group == "after"
    cut = [i for i, r in enumerate(got) if type(r) is ServerUnavailable and fail_group == "timeout"]
    for i in cut:  # a group cut off by operation_timeout: its callers are told, their rows not stored
        assert inner.rows.get(rows[i][1]) == fresh().rows.get(rows[i][1])
    if cut:
        unknown = cut  # compared as alone below: the others only
    keep = [i for i in range(len(rows)) if i not in unknown]
    assert [type(got[i]) for i in keep] == [type(expected[i]) for i in keep], (expected, got)
    before = fresh().rows
    for i in unknown:  # its key holds its own row or none (or the row another writer held it with before)
        k = rows[i][1]
        assert k not in inner.rows or inner.rows[k] in (rows[i][2], before.get(k))
    if not unknown:
        assert inner.rows.keys() == alone_table.rows.keys()
