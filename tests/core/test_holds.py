"""`Hold`: the sessions a caller holds follow its contextvars context (no I/O), and the coalescers keep them apart.

A plain call waiting for a session its caller holds is a `SelfDeadlock` only if the server statement that waits is
watched under the caller's holds: so the holds must reach every thread or task that runs a piece of the call (copies
of the caller's context), never flow back up from a child, and never reach a batch the coalescer runs for several
callers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hvbackend_postgres._selflock import LENT, TRANSACTION, SelfLocks
from hvcore import Key, Record
from hvcore._acoalesce import ReadCoalescer
from hvcore._acompat import gather, spawn
from hvcore._coalesce import ThreadReadCoalescer
from hvcore._holdings import Hold, held, unheld_context


def key(shard: int, n: int) -> Key:
    return Key.from_parts(timestamp_ms=1_800_000_000_000 + n, shard_id=shard, added_id=n % 1024)


# a program over a tree of contexts: ("take", ctx) / ("let_go", ctx, nth hold ever taken) / ("copy", ctx)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(0, 5)),
        st.tuples(st.just("let_go"), st.integers(0, 5), st.integers(0, 20)),
        st.tuples(st.just("copy"), st.integers(0, 5)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps=STEPS)
def test_a_context_holds_what_it_took_and_what_its_parent_held_when_copied_while_live(steps: list[Any]) -> None:
    """Model: a context's holds are those it took plus those its parent held when it was copied, minus every hold let
    go (from whatever context), oldest first."""
    contexts = [contextvars.Context()]
    model: list[list[Hold]] = [[]]
    taken: list[Hold] = []
    for step in steps:
        index = step[1] % len(contexts)
        if step[0] == "take":
            hold = contexts[index].run(lambda: Hold().take())
            taken.append(hold)
            model[index].append(hold)
        elif step[0] == "let_go" and taken:
            hold = taken[step[2] % len(taken)]
            contexts[index].run(hold.let_go)
            for holds in model:
                if hold in holds:
                    holds.remove(hold)
        elif step[0] == "copy":
            contexts.append(contexts[index].run(contextvars.copy_context))
            model.append(list(model[index]))
        for context, holds in zip(contexts, model, strict=True):
            assert context.run(held) == tuple(holds)
            assert context.run(unheld_context).run(held) == ()


# ... and the sessions a store's callers hold: ("open", ctx, lent?) / ("close", ctx, nth) / ("use", ctx, nth) /
# ("copy", ctx, runner): a copy run by the same thread or task, or by a new thread or task (made after the borrow, as
# ``asyncio.create_task`` or a thread in ``copy_context()``)
SESSION_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("close"), st.integers(0, 5), st.integers(0, 20)),
        st.tuples(st.just("use"), st.integers(0, 5), st.integers(0, 20)),
        st.tuples(st.just("copy"), st.integers(0, 5), st.sampled_from(["same", "thread", "task"])),
    ),
    max_size=40,
)


class _Runner:
    """A thread, or an asyncio task (on a loop of its own thread), running the jobs it is given one after another,
    each in the contextvars context it names: the identity that runs a statement (`current_owner`) is the runner's."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.jobs: queue.SimpleQueue[tuple[Any, concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._thread if kind == "thread" else self._loop, daemon=True)
        self.thread.start()

    def _thread(self) -> None:
        while (job := self.jobs.get()) is not None:
            self._run(*job)

    def _loop(self) -> None:
        async def serve() -> None:  # one task runs every job: they all see it as asyncio.current_task()
            while (job := await asyncio.to_thread(self.jobs.get)) is not None:
                self._run(*job)

        asyncio.run(serve())

    @staticmethod
    def _run(fn: Any, done: concurrent.futures.Future[Any]) -> None:
        try:
            done.set_result(fn())
        except BaseException as exc:  # handed to the caller
            done.set_exception(exc)

    def run(self, context: contextvars.Context, fn: Any, *args: Any) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.jobs.put((lambda: context.run(fn, *args), done))
        return done.result(10)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(10)


@settings(max_examples=200, deadline=None)
@given(steps=SESSION_STEPS)
def test_a_session_is_held_by_the_context_that_uses_it_if_lent_else_by_the_one_that_opened_it(
    steps: list[Any],
) -> None:
    """Model: a context holds the sessions it opened (a transaction, a lent connection) and those its parent held when
    it was copied; a statement run on a lent session by a context that does not hold it, or by a thread or task other
    than the one that last ran one there (the connection was handed to another thread or task, which may run in a
    copy of the borrower's context: `SelfLocks.used`), makes the session that context's alone, as it is from then on
    for every copy made later; a transaction's session stays its opener's; a closed session is nobody's."""
    locks = SelfLocks()
    runners = [_Runner("thread")]
    contexts = [contextvars.Context()]
    run_by = [0]  # per context: the runner (index in ``runners``) that runs its steps
    model: list[list[int]] = [[]]  # per context: the sessions (index in ``sessions``) it holds, oldest first
    sessions: list[list[Any]] = []  # [current hold, lent?, open?, runner of its last statement (or opener)]
    try:
        for step in steps:
            index = step[1] % len(contexts)
            context = contexts[index]
            runner = runners[run_by[index]]
            if step[0] == "open":
                lent = step[2]
                hold = runner.run(context, locks.opened, 1000 + len(sessions), 5, LENT if lent else TRANSACTION)
                sessions.append([hold, lent, True, run_by[index]])
                model[index].append(len(sessions) - 1)
            elif step[0] in ("close", "use") and sessions:
                n = step[2] % len(sessions)
                session = sessions[n]
                if not session[2]:
                    continue
                if step[0] == "close":
                    runner.run(context, locks.closed, session[0])
                    session[2] = False
                    for holds in model:
                        if n in holds:
                            holds.remove(n)
                else:
                    session[0] = runner.run(context, locks.used, session[0])
                    if session[1] and (n not in model[index] or session[3] != run_by[index]):
                        for holds in model:
                            if n in holds:
                                holds.remove(n)
                        model[index].append(n)
                        session[3] = run_by[index]
            elif step[0] == "copy":
                contexts.append(context.run(contextvars.copy_context))
                model.append(list(model[index]))
                if step[2] == "same":
                    run_by.append(run_by[index])
                else:
                    runners.append(_Runner(step[2]))
                    run_by.append(len(runners) - 1)
            for each, holds in zip(contexts, model, strict=True):
                expected = tuple(sessions[n][0] for n in holds)
                assert each.run(lambda: locks.mine(held())) == expected
                assert sorted(locks.pids(expected)) == sorted(1000 + n for n in holds)
        assert len(locks.open) == sum(1 for s in sessions if s[2])
    finally:
        for worker in runners:
            worker.stop()


def test_the_fan_out_threads_and_tasks_hold_what_the_caller_holds_and_never_hand_theirs_back() -> None:
    hold = Hold().take()
    try:
        assert gather(spawn(held), spawn(held)) == [(hold,), (hold,)]  # the sync fan-out copies the context

        def child_takes() -> tuple[Hold, ...]:
            Hold().take()
            return held()

        [(first, second)] = gather(spawn(child_takes))
        assert first is hold and second is not hold and held() == (hold,)  # the child's own hold stays its own

        async def main() -> None:
            mine = Hold().take()
            assert held() == (hold, mine)  # asyncio.run copies the context: the outer hold is here too

            async def here(take: bool) -> tuple[Hold, ...]:
                if take:
                    Hold().take()
                return held()

            assert await asyncio.wait_for(here(False), 5) == (hold, mine)  # on 3.11 a new task: a copy
            [holds] = await asyncio.gather(here(True))  # a child task: a copy
            assert holds[:2] == (hold, mine) and len(holds) == 3 and held() == (hold, mine)
            started_before = asyncio.get_running_loop().create_task(asyncio.sleep(0.01))
            mine.let_go()
            assert held() == (hold,)
            await started_before

        asyncio.run(main())
        assert held() == (hold,)
    finally:
        hold.let_go()
    assert held() == ()


def test_a_hold_let_go_in_another_thread_is_dead_in_the_context_that_took_it() -> None:
    hold = Hold().take()
    thread = threading.Thread(target=hold.let_go)  # put_connection() from another thread
    thread.start()
    thread.join()
    assert held() == ()
    again = Hold().take()
    assert held() == (again,)
    again.let_go()


# -- the coalescers: a caller holding a session runs its own statement; a batch is nobody's own ----------------------


def test_a_thread_holding_a_session_goes_straight_through_and_never_joins_a_batch() -> None:
    gates: dict[Key, threading.Event] = {key(1, 0): threading.Event(), key(1, 1): threading.Event()}
    singles: list[Key] = []
    batches: list[list[Key]] = []

    def fetch(shard_id: int, k: Key) -> Record | None:
        if k in gates:
            gates[k].wait(10)
        singles.append(k)
        return Record(k, 1, {})

    def fetch_many(items: Sequence[tuple[int, Key]]) -> list[Record]:
        batches.append([k for _, k in items])
        return [Record(k, 1, {}) for _, k in items]

    reader = ThreadReadCoalescer(fetch, fetch_many, 1, solo=lambda: bool(held()))
    results: dict[str, Any] = {}

    def get(name: str, k: Key, holding: bool = False) -> None:
        hold = Hold().take() if holding else None
        try:
            results[name] = reader.get(1, k)
        finally:
            if hold is not None:
                hold.let_go()

    busy = threading.Thread(target=get, args=("busy", key(1, 0)))  # takes the only slot, held at its gate
    busy.start()
    queued = [threading.Thread(target=get, args=(f"queued{n}", key(1, 2 + n))) for n in range(2)]
    for thread in queued:
        thread.start()
    for _ in range(500):
        with reader._lock:
            if sum(len(w.futures) for w in reader._pending.values()) == 2:
                break
        time.sleep(0.01)
    holder = threading.Thread(target=get, args=("holder", key(1, 1), True))
    holder.start()
    for _ in range(500):  # the holder's read runs now, beside the busy one, though every slot is taken
        if reader.in_flight == 2:
            break
        time.sleep(0.01)
    assert reader.in_flight == 2 and len(reader._pending) == 2  # the two others still queued
    gates[key(1, 1)].set()
    holder.join(10)
    assert results["holder"].key == key(1, 1)
    gates[key(1, 0)].set()
    for thread in [busy, *queued]:
        thread.join(10)
    assert singles == [key(1, 1), key(1, 0)]  # the holder's read was its own statement, not the batch's
    assert batches == [[key(1, 2), key(1, 3)]]
    assert reader.in_flight == 0


def test_asyncio_a_task_holding_a_session_goes_straight_through_and_its_release_starts_a_batch_without_holds() -> None:
    seen: dict[str, tuple[Hold, ...]] = {}

    async def main() -> None:
        gate, done = asyncio.Event(), asyncio.Event()

        async def fetch(shard_id: int, k: Key) -> Record | None:
            seen[f"single {k.added_id}"] = held()
            if k.added_id == 0:
                await gate.wait()
            return Record(k, 1, {})

        async def fetch_many(items: Sequence[tuple[int, Key]]) -> list[Record]:
            seen["batch"] = held()
            return [Record(k, 1, {}) for _, k in items]

        reader = ReadCoalescer(fetch, fetch_many, 1, solo=lambda: bool(held()))

        async def holder(n: int) -> Record | None:
            hold = Hold().take()
            try:
                record = await reader.get(1, key(1, n))
                if n == 0:
                    await done.wait()  # still holding when the batch its release started runs
                return record
            finally:
                hold.let_go()

        first = asyncio.ensure_future(holder(0))  # straight through: holds the only slot until the gate
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(reader.get(1, key(1, n))) for n in (2, 3)]  # queued: the slot is taken
        await asyncio.sleep(0.01)
        assert reader.in_flight == 1 and len(reader._pending) == 2
        assert (await asyncio.wait_for(holder(1), 5)) is not None  # every slot taken, yet straight through
        assert len(reader._pending) == 2  # the others still queued
        gate.set()  # the first holder's read ends: its release starts the batch, from the holder's context
        records = await asyncio.wait_for(asyncio.gather(*others), 5)
        assert [r.key for r in records if r is not None] == [key(1, 2), key(1, 3)]
        done.set()
        assert (await first) is not None
        assert reader.in_flight == 0

    asyncio.run(main())
    assert len(seen["single 0"]) == 1 and len(seen["single 1"]) == 1  # the holders' reads ran under their holds
    assert seen["batch"] == ()  # the batch of the others: none of the holder's
