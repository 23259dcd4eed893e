"""Coalescing of overlapping point reads (``get``) and inserts (``put``) per server: the DataLoader pattern, no I/O.

The idea is Facebook's DataLoader (and the "request coalescing" of caches such as Varnish and groupcache's
singleflight): reads that overlap in time are merged into one batch request, and identical keys read at once are
fetched once. What differs here is when a read waits: DataLoader always waits one tick so that a batch can form,
which makes a lone call slower. `ReadCoalescer` sends a read straight through (no timer, no extra hop) when nothing
else of its server is in flight; only reads arriving while others are running queue up, and they are sent as one
batch (one ``= ANY`` statement per server on PostgreSQL) on the next turn of the event loop, or when a running read
of the server ends, at most ``limit`` reads and batches running at once (the pool's size: more would only wait for
a connection).

Each caller gets its own outcome: its record (a copy of the body when several callers asked for the same key at
once), None, or its own exception object:

- a batch that fails with `ShardMoved` fails the callers of that shard only (the façade follows the move for each of
  them, as for an uncoalesced read); the rest of the batch runs again;
- a batch that fails with `ServerUnavailable` or `PoolTimeout` fails every caller of it (they all read that
  server, and an uncoalesced read would have failed alike); the other servers' coalescers are untouched;
- any other failure of a batch over several shards is retried shard by shard, so a caller never sees an error that
  its own shard would not have raised.

A batch runs in a task of its own and callers await their own futures: a cancelled caller cancels only its future;
the batch goes on for the others and returns its connection as usual. `WriteCoalescer` does the same for inserts
(multi-row ``INSERT ... ON CONFLICT DO NOTHING``, each ``put`` keeping its own outcome: see its docstring). This
module does no I/O itself: it is given the backend's methods and calls nothing else.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from hvcore._backend import Record
from hvcore._key import Key
from hvcore.errors import PoolTimeout, ServerUnavailable, ShardMoved, WriteOutcomeUnknown

__all__ = ["GROUP_MAX", "ReadCoalescer", "ThreadReadCoalescer", "ThreadWriteCoalescer", "WriteCoalescer"]

FetchOne = Callable[[int, Key], Awaitable[Record | None]]
FetchMany = Callable[[Sequence[tuple[int, Key]]], Awaitable[Iterable[Record]]]
SyncFetchOne = Callable[[int, Key], Record | None]
SyncFetchMany = Callable[[Sequence[tuple[int, Key]]], Iterable[Record]]
SyncInsertOne = Callable[[int, Key, int, Mapping[str, Any]], None]
SyncInsertGroup = Callable[[int, Sequence[tuple[Key, int, Mapping[str, Any]]]], set[int]]
InsertOne = Callable[[int, Key, int, Mapping[str, Any]], Awaitable[None]]
InsertGroup = Callable[[int, Sequence[tuple[Key, int, Mapping[str, Any]]]], Awaitable[set[int]]]
GROUP_MAX = 500  # rows per multi-row INSERT (4 bind parameters a row at most: far below the protocol's 65,535)
_SERVER_WIDE = (ServerUnavailable, PoolTimeout)


class _Wanted:
    """One key of a batch: its shard, the first caller's key object and the callers' futures."""

    __slots__ = ("futures", "key", "shard_id")

    def __init__(self, shard_id: int, key: Key, future: asyncio.Future[Record | None]) -> None:
        self.shard_id = shard_id
        self.key = key
        self.futures = [future]

    def waiting(self) -> bool:
        return any(not future.done() for future in self.futures)


class ReadCoalescer:
    """Merges overlapping ``get`` calls on one server into batch reads; each caller gets its own outcome.

    ``fetch_one(shard_id, key)`` reads one key (the uncoalesced path, taken by a lone call), ``fetch_many(items)``
    reads ``(shard_id, key)`` pairs in one round trip and leaves missing keys out; ``limit`` (≥ 1) bounds the reads
    in flight at once through this coalescer (give the pool's size). ``owner`` is whatever the caller wants to
    recognise the coalescer by (the server store). One coalescer serves one event loop.
    """

    __slots__ = ("_busy", "_fetch_many", "_fetch_one", "_limit", "_pending", "_scheduled", "_tasks", "owner")

    def __init__(self, fetch_one: FetchOne, fetch_many: FetchMany, limit: int, owner: object = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many
        self._limit = limit
        self.owner = owner
        self._busy = 0  # reads and batches of this server running now
        self._pending: dict[int, _Wanted] = {}  # keys waiting for the next batch
        self._scheduled = False  # a flush is due on the next turn of the loop
        self._tasks: set[asyncio.Task[None]] = set()  # running batches (kept referenced until done)

    @property
    def in_flight(self) -> int:
        """Reads and batches running now (0 when idle)."""
        return self._busy

    async def get(self, shard_id: int, key: Key) -> Record | None:
        """The record of ``key`` in ``shard_id``, or None; raises what reading it raised (see the module docstring)."""
        if not self._busy:  # nothing of this server in flight: straight through, no extra hop
            self._busy = 1
            try:
                return await self._fetch_one(shard_id, key)
            finally:
                self._busy -= 1
                if self._pending:
                    self._flush()
        future: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()
        wanted = self._pending.get(key)
        if wanted is None:
            self._pending[key] = _Wanted(shard_id, key, future)
        else:
            wanted.futures.append(future)  # the same key asked for again: fetched once
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._on_turn)
        return await future

    def _on_turn(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        """Send every pending key as one batch, unless ``limit`` reads are running (their end sends it then)."""
        if not self._pending or self._busy >= self._limit:
            return
        batch = [wanted for wanted in self._pending.values() if wanted.waiting()]
        self._pending = {}
        if not batch:
            return
        self._busy += 1
        task = asyncio.get_running_loop().create_task(self._resolve(batch))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._batch_done, [f for w in batch for f in w.futures]))

    def _batch_done(self, futures: list[asyncio.Future[Any]], task: asyncio.Task[None]) -> None:
        """A batch task ended (even one cancelled before it started): free its slot, send what queued meanwhile."""
        self._tasks.discard(task)
        self._busy -= 1
        _orphaned(futures, task)
        self._flush()

    async def _resolve(self, batch: list[_Wanted]) -> None:
        """Read ``batch`` and hand each caller its outcome (failures split as the module docstring says)."""
        while batch:
            try:
                if len(batch) == 1:
                    one = batch[0]
                    found = {one.key: await self._fetch_one(one.shard_id, one.key)}
                else:
                    records = await self._fetch_many([(w.shard_id, w.key) for w in batch])
                    found = {record.key: record for record in records}
            except asyncio.CancelledError:
                raise
            except ShardMoved as moved:  # that shard's callers follow the move; the others are read again
                _fail([w for w in batch if w.shard_id == moved.shard_id], moved)
                rest = [w for w in batch if w.shard_id != moved.shard_id]
                if len(rest) == len(batch):  # not a shard of this batch: every caller sees it, as they would alone
                    _fail(batch, moved)
                    return
                batch = rest
                continue
            except Exception as exc:
                shards = {w.shard_id for w in batch}
                if isinstance(exc, _SERVER_WIDE) or len(shards) == 1:
                    _fail(batch, exc)
                    return
                for shard in shards:  # which shard failed is not known: each shard on its own
                    await self._resolve([w for w in batch if w.shard_id == shard])
                return
            for wanted in batch:
                _deliver(wanted, found.get(wanted.key))
            return


class _Waiter:
    """A thread waiting for a connection: its key, then its outcome (or the batch it leads)."""

    __slots__ = ("batch", "error", "event", "key", "record", "shard_id")

    def __init__(self, shard_id: int, key: Key) -> None:
        self.shard_id = shard_id
        self.key = key
        self.event = threading.Event()
        self.batch: list[_Waiter] | None = None  # set when this thread is to run the batch of every waiter
        self.record: Record | None = None
        self.error: BaseException | None = None

    def settle(self, record: Record | None, error: BaseException | None) -> None:
        self.record, self.error = record, error
        self.event.set()


class ThreadReadCoalescer:
    """`ReadCoalescer` for threads: threads that would wait for a pooled connection share one batch read.

    A call runs straight through while fewer than ``limit`` reads of this server run (so a lone call, or a few
    concurrent ones, never waits); a thread arriving when ``limit`` are running queues, and when a read ends, the
    thread queued first runs one ``fetch_many`` for every queued key (identical keys once) and hands each waiting
    thread its own outcome, split on failure as `ReadCoalescer` splits it. No timer, no helper thread.
    """

    __slots__ = ("_busy", "_fetch_many", "_fetch_one", "_limit", "_lock", "_queue", "owner")

    def __init__(self, fetch_one: SyncFetchOne, fetch_many: SyncFetchMany, limit: int, owner: object = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many
        self._limit = limit
        self.owner = owner
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: list[_Waiter] = []

    @property
    def in_flight(self) -> int:
        """Reads and batches running now (0 when idle)."""
        return self._busy

    def get(self, shard_id: int, key: Key) -> Record | None:
        """The record of ``key`` in ``shard_id``, or None; raises what reading it raised."""
        with self._lock:
            if self._busy < self._limit:
                self._busy += 1
                waiter = None
            else:
                waiter = _Waiter(shard_id, key)
                self._queue.append(waiter)
        if waiter is None:
            try:
                return self._fetch_one(shard_id, key)
            finally:
                self._release()
        waiter.event.wait()
        if waiter.batch is not None:  # this thread leads the batch (its slot was handed over by _release)
            try:
                self._resolve(waiter.batch)
            except BaseException as exc:  # not a read's failure (those are settled): no thread may wait forever
                for other in waiter.batch:
                    if not other.event.is_set():
                        other.settle(None, exc if other is waiter else _own_copy(exc))
                raise
            finally:
                self._release()
        if waiter.error is not None:
            raise waiter.error
        return waiter.record

    def _release(self) -> None:
        """A read ended: hand its slot to the oldest waiting thread with every queued key, or free it."""
        with self._lock:
            if not self._queue:
                self._busy -= 1
                return
            batch, self._queue = self._queue, []
        leader = batch[0]
        leader.batch = batch
        leader.event.set()

    def _resolve(self, batch: list[_Waiter]) -> None:
        """Read ``batch`` (one fetch per distinct key) and settle every waiter, failures split per shard."""
        wanted: dict[Key, list[_Waiter]] = {}
        for waiter in batch:
            wanted.setdefault(waiter.key, []).append(waiter)
        groups = list(wanted.values())
        while groups:
            try:
                if len(groups) == 1:
                    first = groups[0][0]
                    found = {first.key: self._fetch_one(first.shard_id, first.key)}
                else:
                    records = self._fetch_many([(g[0].shard_id, g[0].key) for g in groups])
                    found = {record.key: record for record in records}
            except ShardMoved as moved:
                hit = [g for g in groups if g[0].shard_id == moved.shard_id]
                for group in hit or groups:
                    _settle_error(group, moved)
                if not hit:
                    return
                groups = [g for g in groups if g[0].shard_id != moved.shard_id]
                continue
            except Exception as exc:
                shards = {g[0].shard_id for g in groups}
                if isinstance(exc, _SERVER_WIDE) or len(shards) == 1:
                    for group in groups:
                        _settle_error(group, exc)
                    return
                for shard in shards:
                    self._resolve([w for g in groups if g[0].shard_id == shard for w in g])
                return
            for group in groups:
                record = found.get(group[0].key)
                for index, waiter in enumerate(group):
                    if record is not None and index:
                        waiter.settle(dataclasses.replace(record, data=copy.deepcopy(record.data)), None)
                    else:
                        waiter.settle(record, None)
            return


def _settle_error(group: list[_Waiter], error: BaseException) -> None:
    for waiter in group:
        waiter.settle(None, _own_copy(error))


class _Write:
    """One queued ``put``: its row and its caller's future."""

    __slots__ = ("data", "future", "key", "kind")

    def __init__(self, key: Key, kind: int, data: Mapping[str, Any], future: asyncio.Future[None]) -> None:
        self.key = key
        self.kind = kind
        self.data = data
        self.future = future


class WriteCoalescer:
    """Merges overlapping inserts of one server into multi-row INSERTs; each ``put`` keeps its own outcome.

    ``insert_one(shard_id, key, kind, data)`` is the uncoalesced insert (a lone call takes it, and so does every row
    a group could not store); ``insert_group(shard_id, rows)`` stores rows of one shard in one statement and returns
    the ids it stored, leaving out rows whose key or unique value is taken (``ON CONFLICT DO NOTHING``), and settles
    a lost connection itself (PostgreSQL: by the transaction's id, ``hvbackend_postgres._commit``): it returns only
    if the group committed, raises `WriteOutcomeUnknown` if that cannot be known, and anything else means nothing
    was stored. ``limit`` bounds the inserts and groups in flight (the pool's size).

    Outcomes are each caller's own, as if its insert ran alone: a row the group stored succeeded; a row it left out
    runs alone (so its `DuplicateKey` or `DuplicateValue` is its own); a group refused with `ShardMoved` fails its
    callers with it (nothing was written; the façade follows the move and retries); a group whose outcome is not
    known fails its callers with `WriteOutcomeUnknown` (their keys hold their rows or none, as for a lone put, but
    for a key another writer held before the group, which the group had left out: reading it tells); a group that
    failed otherwise stored nothing, and each row runs alone. The rows of a group share one
    transaction: they are committed together, and none is ever undone by another's failure.
    """

    __slots__ = ("_busy", "_insert_group", "_insert_one", "_limit", "_pending", "_scheduled", "_tasks", "owner")

    def __init__(self, insert_one: InsertOne, insert_group: InsertGroup, limit: int, owner: object = None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._insert_one = insert_one
        self._insert_group = insert_group
        self._limit = limit
        self.owner = owner
        self._busy = 0
        self._pending: dict[int, list[_Write]] = {}  # shard -> queued rows
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Inserts and groups running now (0 when idle)."""
        return self._busy

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one row; raises what storing it alone would raise (see the class docstring)."""
        if not self._busy:  # nothing of this server in flight: straight through, no extra hop
            self._busy = 1
            try:
                await self._insert_one(shard_id, key, kind, data)
                return
            finally:
                self._busy -= 1
                if self._pending:
                    self._flush()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(shard_id, []).append(_Write(key, kind, data, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._on_turn)
        await future

    def _on_turn(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        """Start a group per shard with queued rows, while fewer than ``limit`` inserts and groups run."""
        while self._pending and self._busy < self._limit:
            shard_id = next(iter(self._pending))
            queued = self._pending[shard_id]
            group, rest = queued[:GROUP_MAX], queued[GROUP_MAX:]
            if rest:
                self._pending[shard_id] = rest
            else:
                del self._pending[shard_id]
            group = [write for write in group if not write.future.done()]  # callers cancelled before it was sent
            if not group:
                continue
            self._busy += 1
            task = asyncio.get_running_loop().create_task(self._store(shard_id, group))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._group_done, [w.future for w in group]))

    def _group_done(self, futures: list[asyncio.Future[Any]], task: asyncio.Task[None]) -> None:
        """A group task ended (even one cancelled before it started): free its slot, send what queued meanwhile."""
        self._tasks.discard(task)
        self._busy -= 1
        _orphaned(futures, task)
        self._flush()

    async def _store(self, shard_id: int, group: list[_Write]) -> None:
        if len(group) == 1:
            await self._alone(shard_id, group)
            return
        try:
            stored = await self._insert_group(shard_id, [(w.key, w.kind, w.data) for w in group])
        except asyncio.CancelledError:
            raise
        except (ShardMoved, WriteOutcomeUnknown) as exc:  # nothing written / not known: the callers are told
            _fail_writes(group, exc)
            return
        except Exception:  # the group stored nothing (the store settles lost connections): each row alone
            stored = set()
        for write in group:
            if int(write.key) in stored and not write.future.done():
                write.future.set_result(None)
        await self._alone(shard_id, [w for w in group if int(w.key) not in stored])

    async def _alone(self, shard_id: int, writes: list[_Write]) -> None:
        """Insert each row on its own: its outcome is its caller's."""
        for write in writes:
            if write.future.done():  # cancelled meanwhile: its row is not written
                continue
            try:
                await self._insert_one(shard_id, write.key, write.kind, write.data)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not write.future.done():
                    write.future.set_exception(exc)
            else:
                if not write.future.done():
                    write.future.set_result(None)


def _fail_writes(group: list[_Write], error: BaseException) -> None:
    for write in group:
        if not write.future.done():
            write.future.set_exception(_own_copy(error))


class _ThreadWrite:
    """A thread's queued insert: its row, then its outcome (or the queue it leads)."""

    __slots__ = ("batch", "data", "error", "event", "key", "kind", "shard_id")

    def __init__(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        self.shard_id = shard_id
        self.key = key
        self.kind = kind
        self.data = data
        self.event = threading.Event()
        self.batch: list[_ThreadWrite] | None = None
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None) -> None:
        self.error = error
        self.event.set()


class ThreadWriteCoalescer:
    """`WriteCoalescer` for threads: threads that would wait for a pooled connection share multi-row INSERTs.

    As `ThreadReadCoalescer`: straight through while fewer than ``limit`` inserts of this server run; threads
    arriving when all are busy queue, and when an insert ends the oldest queued thread stores every queued row, one
    group per shard, with `WriteCoalescer`'s rules for each row's outcome.
    """

    __slots__ = ("_busy", "_insert_group", "_insert_one", "_limit", "_lock", "_queue", "owner")

    def __init__(
        self, insert_one: SyncInsertOne, insert_group: SyncInsertGroup, limit: int, owner: object = None
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._insert_one = insert_one
        self._insert_group = insert_group
        self._limit = limit
        self.owner = owner
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: list[_ThreadWrite] = []

    @property
    def in_flight(self) -> int:
        """Inserts and groups running now (0 when idle)."""
        return self._busy

    def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one row; raises what storing it alone would raise."""
        with self._lock:
            if self._busy < self._limit:
                self._busy += 1
                write = None
            else:
                write = _ThreadWrite(shard_id, key, kind, data)
                self._queue.append(write)
        if write is None:
            try:
                self._insert_one(shard_id, key, kind, data)
                return
            finally:
                self._release()
        write.event.wait()
        if write.batch is not None:  # this thread stores every queued row (its slot was handed over)
            try:
                by_shard: dict[int, list[_ThreadWrite]] = {}
                for queued in write.batch:
                    by_shard.setdefault(queued.shard_id, []).append(queued)
                for shard, group in by_shard.items():
                    for start in range(0, len(group), GROUP_MAX):
                        self._store(shard, group[start : start + GROUP_MAX])
            except BaseException as exc:  # not a row's failure (those are settled): no thread may wait forever
                for other in write.batch:
                    if not other.event.is_set() or other is write:
                        other.settle(exc if other is write else _own_copy(exc))
                raise
            finally:
                self._release()
        if write.error is not None:
            raise write.error

    def _release(self) -> None:
        with self._lock:
            if not self._queue:
                self._busy -= 1
                return
            batch, self._queue = self._queue, []
        leader = batch[0]
        leader.batch = batch
        leader.event.set()

    def _store(self, shard_id: int, group: list[_ThreadWrite]) -> None:
        if len(group) == 1:
            self._alone(shard_id, group)
            return
        try:
            stored = self._insert_group(shard_id, [(w.key, w.kind, w.data) for w in group])
        except (ShardMoved, WriteOutcomeUnknown) as exc:
            for write in group:
                write.settle(_own_copy(exc))
            return
        except Exception:  # nothing stored: each row alone
            stored = set()
        for write in group:
            if int(write.key) in stored:
                write.settle(None)
        self._alone(shard_id, [w for w in group if int(w.key) not in stored])

    def _alone(self, shard_id: int, writes: list[_ThreadWrite]) -> None:
        for write in writes:
            try:
                self._insert_one(shard_id, write.key, write.kind, write.data)
            except Exception as exc:
                write.settle(exc)
            else:
                write.settle(None)


def _orphaned(futures: list[asyncio.Future[Any]], task: asyncio.Task[None]) -> None:
    """Settle the callers a finished batch task left waiting: cancelled with it, or failed with its error."""
    error = None if task.cancelled() else task.exception()
    for future in futures:
        if not future.done():
            if error is None:
                future.cancel()
            else:
                future.set_exception(_own_copy(error))


def _deliver(wanted: _Wanted, record: Record | None) -> None:
    """Hand the record to the first waiting caller, a deep copy of its body to each other one."""
    first = True
    for future in wanted.futures:
        if future.done():  # that caller was cancelled
            continue
        if record is None or first:
            future.set_result(record)
            first = False
        else:
            future.set_result(dataclasses.replace(record, data=copy.deepcopy(record.data)))


def _fail(batch: list[_Wanted], error: BaseException) -> None:
    """Fail every waiting caller of ``batch``, each with its own copy of ``error``."""
    for wanted in batch:
        for future in wanted.futures:
            if not future.done():
                future.set_exception(_own_copy(error))


def _own_copy(error: BaseException) -> BaseException:
    """A copy of ``error`` (same type, args, attributes and cause) whose traceback is the raiser's own."""
    try:
        clone = type(error).__new__(type(error), *error.args)
        clone.args = error.args
        vars(clone).update(vars(error))
    except Exception:  # an exception type that cannot be copied this way: share the object
        return error
    clone.__cause__ = error.__cause__
    clone.__context__ = error.__context__
    clone.__suppress_context__ = error.__suppress_context__
    return clone
