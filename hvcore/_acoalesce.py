"""Coalescing of overlapping point reads (``get``) and inserts (``put``) per server: the DataLoader pattern, no I/O.

This module is the source of ``hvcore/_coalesce.py`` (`ThreadReadCoalescer` and `ThreadWriteCoalescer`, for
`Datastore`), which tools/async_to_sync.py writes from it: edit this one, then run the tool. The two sides differ
only in how a call waits (the ``# ASYNC`` blocks: `_Coalescer`'s admission and hand-off, the waiting thread's
`_Future`).

The idea is Facebook's DataLoader (and the "request coalescing" of caches such as Varnish and groupcache's
singleflight): reads that overlap in time are merged into one batch request, and identical keys read at once are
fetched once. What differs here is when a read waits: DataLoader always waits one tick so that a batch can form,
which makes a lone call slower. Here a call goes straight through (no timer, no extra hop) when a slot is free for
it; only calls arriving while the slots are taken queue up, and they are sent as batches (one ``= ANY`` statement
per server on PostgreSQL for reads, one multi-row INSERT per shard for writes), at most ``limit`` calls and batches
of a server running at once (the pool's size: more would only wait for a connection).

- On asyncio a call goes straight through when nothing of its server is in flight (so the calls of one turn of the
  event loop form a batch); queued calls are sent on the next turn of the loop, or when a running call of the server
  ends, each batch in a task of its own: a cancelled caller cancels only its future, the batch goes on for the
  others and returns its connection as usual.
- With threads a call goes straight through while fewer than ``limit`` run (a thread would otherwise wait for a
  pooled connection); when a call ends, its slot goes to the thread queued first, which runs every queued batch and
  hands each waiting thread its outcome. No timer, no helper thread.

A caller for whom ``solo()`` is true (given by the store: it holds a session of the server, an open transaction or a
lent connection) never joins a batch: its call goes straight through even with every slot taken (it then waits for
a pooled connection), and it never runs other callers' batches. Its statement may wait for a lock of that session,
a wait the store recognises (`SelfDeadlock`) only on the caller's own statement: in another caller's batch it
would hold every caller of the batch until ``operation_timeout``. The tasks that run batches start in a context
without any caller's holds (``hvcore._holdings.unheld_context``): a batch is nobody's own.

Each caller gets its own outcome: its record (a copy of the body when several callers asked for the same key at
once), None, or its own exception object:

- a batch that fails with `ShardMoved` fails the callers of that shard only (the façade follows the move for each of
  them, as for an uncoalesced read); the rest of the batch runs again;
- a batch that fails with `ServerUnavailable` or `PoolTimeout` fails every caller of it (they all read that
  server, and an uncoalesced read would have failed alike); the other servers' coalescers are untouched;
- any other failure of a batch over several shards is retried shard by shard, so a caller never sees an error that
  its own shard would not have raised.

For inserts, `WriteCoalescer` does the same (multi-row ``INSERT ... ON CONFLICT DO NOTHING``, each ``put`` keeping
its own outcome: see its docstring). This module does no I/O itself: it is given the backend's methods and calls
nothing else.
"""

from __future__ import annotations

import abc
import asyncio
import copy
import dataclasses
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from hvcore._backend import Record
from hvcore._holdings import unheld_context
from hvcore._key import Key
from hvcore.errors import PoolTimeout, ServerUnavailable, ShardMoved, WriteOutcomeUnknown

__all__ = ["GROUP_MAX", "ReadCoalescer", "WriteCoalescer"]

T = TypeVar("T")
J = TypeVar("J")  # a job: what one slot runs (a batch of reads, a group of one shard's inserts)

FetchOne = Callable[[int, Key], Awaitable[Record | None]]
FetchMany = Callable[[Sequence[tuple[int, Key]]], Awaitable[Iterable[Record]]]
InsertOne = Callable[[int, Key, int, Mapping[str, Any]], Awaitable[None]]
InsertGroup = Callable[[int, Sequence[tuple[Key, int, Mapping[str, Any]]]], Awaitable[set[int]]]
GROUP_MAX = 500  # rows per multi-row INSERT (4 bind parameters a row at most: far below the protocol's 65,535)
_SERVER_WIDE = (ServerUnavailable, PoolTimeout)

if True:  # ASYNC
    _AFuture = asyncio.Future  # of the running loop when made in a coroutine; threads: the _Future below
else:

    class _Future(Generic[T]):
        """A waiting thread's outcome (its result or error, set once by the thread that ran its job), or a hand-off.

        `hand` wakes the thread before its outcome is set: the slot of an ended call is its, with the queued jobs
        to run (`_Coalescer._lead`).
        """

        __slots__ = ("_error", "_result", "_settled", "_woken", "lead")

        def __init__(self) -> None:
            self._woken = threading.Event()
            self._settled = False
            self._result: Any = None
            self._error: BaseException | None = None
            self.lead: list[Any] | None = None  # the jobs this thread is to run, when a slot was handed to it

        def done(self) -> bool:
            return self._settled

        def set_result(self, result: T) -> None:
            self._result = result
            self._settled = True
            self._woken.set()

        def set_exception(self, error: BaseException) -> None:
            self._error = error
            self._settled = True
            self._woken.set()

        def hand(self, jobs: list[Any]) -> None:
            self.lead = jobs
            self._woken.set()

        def wait(self) -> None:
            self._woken.wait()

        def result(self) -> T:
            if self._error is not None:
                raise self._error
            result: T = self._result
            return result


class _Coalescer(abc.ABC, Generic[J]):
    """What reads and writes share: the slots of one server, the queue's hand-off, the callers of a failed job.

    A subclass queues a call (``_queue``, called by `_admit`), takes the queued calls as jobs (`_take`: None when
    none is left), names a job's callers (`_futures`) and runs a job, settling each caller (`_run`).
    """

    # asyncio: no _lock; threads: no _tasks
    __slots__ = ("_busy", "_limit", "_lock", "_scheduled", "_solo", "_tasks", "owner")
    _pending: dict[Any, Any]  # the queued calls (a subclass's)
    _queue: Callable[..., _AFuture[Any]]  # queue a call (its arguments as `_admit` got them): its future

    def __init__(self, limit: int, owner: object, solo: Callable[[], bool] | None) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._limit = limit
        self.owner = owner
        self._solo = solo
        self._busy = 0  # calls and jobs of this server running now
        if True:  # ASYNC
            self._scheduled = False  # a flush is due on the next turn of the loop
            self._tasks: set[asyncio.Task[None]] = set()  # running jobs (kept referenced until done)
        else:
            self._lock = threading.Lock()  # guards _busy and the queue

    @property
    def in_flight(self) -> int:
        """Calls and batches running now (0 when idle)."""
        return self._busy

    @abc.abstractmethod
    def _take(self) -> J | None:
        """The next job of queued calls, taken off the queue; None if nothing is queued."""

    @abc.abstractmethod
    def _futures(self, job: J) -> list[_AFuture[Any]]:
        """The futures of ``job``'s callers."""

    @abc.abstractmethod
    async def _run(self, job: J) -> None:
        """Run ``job`` and settle each of its callers' futures."""

    def _admit(self, *call: Any) -> _AFuture[Any] | None:
        """None if the call may go straight through (a slot is taken for it); else ``_queue(*call)``: its future."""
        if True:  # ASYNC
            if not self._busy or (self._solo is not None and self._solo()):  # straight through, no extra hop
                self._busy += 1
                return None
            future = self._queue(*call)
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._on_turn)
            return future
        else:
            with self._lock:
                if self._busy < self._limit or (self._solo is not None and self._solo()):  # a connection is free
                    self._busy += 1
                    return None
                return self._queue(*call)

    def _release(self) -> None:
        """A call or job ended: its slot runs what queued meanwhile, or is freed."""
        if True:  # ASYNC
            self._busy -= 1
            if self._pending:
                self._flush()
        else:
            with self._lock:
                if not self._pending:  # nothing queued: the slot is free
                    self._busy -= 1
                    return
                jobs = []
                while (job := self._take()) is not None:  # threads are never cancelled: each queued call is in one
                    jobs.append(job)
            self._futures(jobs[0])[0].hand(jobs)  # the thread queued first runs them all, in this slot

    if True:  # ASYNC

        def _on_turn(self) -> None:
            self._scheduled = False
            self._flush()

        def _flush(self) -> None:
            """Start a task per queued job, while fewer than ``limit`` calls and jobs run."""
            while self._busy < self._limit and (job := self._take()) is not None:
                self._busy += 1
                task = asyncio.get_running_loop().create_task(self._run(job), context=unheld_context())
                self._tasks.add(task)
                task.add_done_callback(functools.partial(self._job_done, self._futures(job)))

        def _job_done(self, futures: list[asyncio.Future[Any]], task: asyncio.Task[None]) -> None:
            """A job's task ended (even one cancelled before it started): settle the callers it left, free its slot."""
            self._tasks.discard(task)
            error = None if task.cancelled() else task.exception()
            for future in futures:
                if future.done():
                    continue
                if error is None:  # cancelled (or, never, ended leaving a caller unsettled)
                    future.cancel()
                else:
                    future.set_exception(_own_copy(error))
            self._release()

    else:

        def _wait(self, future: _AFuture[T]) -> T:
            """The outcome of a queued call; a thread handed a slot meanwhile first runs the queued jobs."""
            future.wait()
            if future.lead is not None:
                self._lead(future.lead)
            return future.result()

        def _lead(self, jobs: list[J]) -> None:
            """Run ``jobs`` in this thread (the slot of an ended call was handed to it), then pass the slot on."""
            try:
                for job in jobs:
                    self._run(job)
            except BaseException as exc:  # not a caller's failure (those are settled): no thread may wait forever
                for job in jobs:
                    _settle_left(self._futures(job), exc)
                raise
            finally:
                self._release()


class _Wanted:
    """One key of a batch: its shard, the first caller's key object and the callers' futures."""

    __slots__ = ("futures", "key", "shard_id")

    def __init__(self, shard_id: int, key: Key, future: _AFuture[Record | None]) -> None:
        self.shard_id = shard_id
        self.key = key
        self.futures = [future]

    def waiting(self) -> bool:
        return any(not future.done() for future in self.futures)


class ReadCoalescer(_Coalescer[list[_Wanted]]):
    """Merges overlapping ``get`` calls on one server into batch reads; each caller gets its own outcome.

    ``fetch_one(shard_id, key)`` reads one key (the uncoalesced path, taken by a call that goes straight through),
    ``fetch_many(items)`` reads ``(shard_id, key)`` pairs in one round trip and leaves missing keys out; ``limit``
    (≥ 1) bounds the reads in flight at once through this coalescer (give the pool's size). ``owner`` is whatever
    the caller wants to recognise the coalescer by (the server store); ``solo()``, if given, is true for a caller
    that must run its own statement (see the module docstring). One coalescer serves one event loop, or any number
    of threads (`ThreadReadCoalescer`).
    """

    __slots__ = ("_fetch_many", "_fetch_one", "_pending")

    def __init__(
        self,
        fetch_one: FetchOne,
        fetch_many: FetchMany,
        limit: int,
        owner: object = None,
        solo: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(limit, owner, solo)
        self._fetch_one = fetch_one
        self._fetch_many = fetch_many
        self._pending: dict[Key, _Wanted] = {}  # keys waiting for the next batch

    async def get(self, shard_id: int, key: Key) -> Record | None:
        """The record of ``key`` in ``shard_id``, or None; raises what reading it raised (see the module docstring)."""
        future: _AFuture[Record | None] | None = self._admit(shard_id, key)
        if future is None:
            try:
                return await self._fetch_one(shard_id, key)
            finally:
                self._release()
        if True:  # ASYNC
            return await future
        else:
            return self._wait(future)

    def _queue(self, shard_id: int, key: Key) -> _AFuture[Record | None]:
        future: _AFuture[Record | None] = _AFuture()
        wanted = self._pending.get(key)
        if wanted is None:
            self._pending[key] = _Wanted(shard_id, key, future)
        else:
            wanted.futures.append(future)  # the same key asked for again: fetched once
        return future

    def _take(self) -> list[_Wanted] | None:
        """Every queued key whose callers still wait, as one batch."""
        if not self._pending:
            return None
        batch = [wanted for wanted in self._pending.values() if wanted.waiting()]
        self._pending = {}
        return batch or None

    def _futures(self, job: list[_Wanted]) -> list[_AFuture[Any]]:
        return [future for wanted in job for future in wanted.futures]

    async def _run(self, job: list[_Wanted]) -> None:
        """Read ``job`` and hand each caller its outcome (failures split as the module docstring says)."""
        batch = job
        while batch:
            try:
                if len(batch) == 1:
                    one = batch[0]
                    found = {one.key: await self._fetch_one(one.shard_id, one.key)}
                else:
                    records = await self._fetch_many([(w.shard_id, w.key) for w in batch])
                    found = {record.key: record for record in records}
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
                    await self._run([w for w in batch if w.shard_id == shard])
                return
            for wanted in batch:
                _deliver(wanted, found.get(wanted.key))
            return


class _Write:
    """One queued ``put``: its row and its caller's future."""

    __slots__ = ("data", "future", "key", "kind")

    def __init__(self, key: Key, kind: int, data: Mapping[str, Any], future: _AFuture[None]) -> None:
        self.key = key
        self.kind = kind
        self.data = data
        self.future = future


class WriteCoalescer(_Coalescer[tuple[int, list[_Write]]]):
    """Merges overlapping inserts of one server into multi-row INSERTs; each ``put`` keeps its own outcome.

    ``insert_one(shard_id, key, kind, data)`` is the uncoalesced insert (a call that goes straight through takes it,
    and so does every row a group could not store); ``insert_group(shard_id, rows)`` stores rows of one shard in one
    statement and returns the ids it stored, leaving out rows whose key or unique value is taken (``ON CONFLICT DO
    NOTHING``), and settles a lost connection itself (PostgreSQL: by the transaction's id,
    ``hvbackend_postgres._commit``): it returns only if the group committed, raises `WriteOutcomeUnknown` if that
    cannot be known, and anything else means nothing was stored. ``limit`` bounds the inserts and groups in flight
    (the pool's size); ``solo`` as for `ReadCoalescer`. Queued rows go in groups of one shard, at most `GROUP_MAX`
    rows each.

    Outcomes are each caller's own, as if its insert ran alone: a row the group stored succeeded; a row it left out
    runs alone (so its `DuplicateKey` or `DuplicateValue` is its own); a group refused with `ShardMoved` fails its
    callers with it (nothing was written; the façade follows the move and retries); a group whose outcome is not
    known fails its callers with `WriteOutcomeUnknown` (their keys hold their rows or none, as for a lone put, but
    for a key another writer held before the group, which the group had left out: reading it tells); a group cut
    off by ``operation_timeout`` and settled as not committed (`ServerUnavailable` with ``timed_out``) fails its
    callers with that error, as each row alone would have failed after as long again; a group that failed otherwise
    stored nothing, and each row runs alone. The rows of a group
    share one transaction: they are committed together, and none is ever undone by another's failure.
    """

    __slots__ = ("_insert_group", "_insert_one", "_pending")

    def __init__(
        self,
        insert_one: InsertOne,
        insert_group: InsertGroup,
        limit: int,
        owner: object = None,
        solo: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(limit, owner, solo)
        self._insert_one = insert_one
        self._insert_group = insert_group
        self._pending: dict[int, list[_Write]] = {}  # shard -> queued rows

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one row; raises what storing it alone would raise (see the class docstring)."""
        future: _AFuture[None] | None = self._admit(shard_id, key, kind, data)
        if future is None:
            try:
                await self._insert_one(shard_id, key, kind, data)
                return
            finally:
                self._release()
        if True:  # ASYNC
            await future
        else:
            self._wait(future)

    def _queue(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> _AFuture[None]:
        future: _AFuture[None] = _AFuture()
        self._pending.setdefault(shard_id, []).append(_Write(key, kind, data, future))
        return future

    def _take(self) -> tuple[int, list[_Write]] | None:
        """The queued rows of the first shard in the queue (at most `GROUP_MAX`) whose callers still wait."""
        while self._pending:
            shard_id = next(iter(self._pending))
            queued = self._pending[shard_id]
            group, rest = queued[:GROUP_MAX], queued[GROUP_MAX:]
            if rest:
                self._pending[shard_id] = rest
            else:
                del self._pending[shard_id]
            group = [write for write in group if not write.future.done()]  # callers cancelled before it was sent
            if group:
                return shard_id, group
        return None

    def _futures(self, job: tuple[int, list[_Write]]) -> list[_AFuture[Any]]:
        return [write.future for write in job[1]]

    async def _run(self, job: tuple[int, list[_Write]]) -> None:
        """Store one shard's group and settle each caller (outcomes as the class docstring says)."""
        shard_id, group = job
        if len(group) == 1:
            await self._alone(shard_id, group)
            return
        try:
            stored = await self._insert_group(shard_id, [(w.key, w.kind, w.data) for w in group])
        except (ShardMoved, WriteOutcomeUnknown) as exc:  # nothing written / not known: the callers are told
            _settle_left([w.future for w in group], exc)
            return
        except ServerUnavailable as exc:
            if exc.timed_out:  # cut off by operation_timeout, settled as not committed: the time allowed is spent
                _settle_left([w.future for w in group], exc)
                return
            stored = set()  # nothing stored: each row alone
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
            except Exception as exc:
                if not write.future.done():
                    write.future.set_exception(exc)
            else:
                if not write.future.done():
                    write.future.set_result(None)


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
        _settle_left(wanted.futures, error)


def _settle_left(futures: Iterable[_AFuture[Any]], error: BaseException) -> None:
    """Fail every caller of ``futures`` still waiting, each with its own copy of ``error``."""
    for future in futures:
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
