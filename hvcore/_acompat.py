"""Async primitives and their sync twins: the pairs tools/async_to_sync.py swaps when it writes the sync modules.

An asyncio source module uses the ``a``-prefixed names; its generated sync module uses the same names without the
prefix (the tool's names map: ``ALock`` → ``Lock``, ``aspawn`` → ``spawn``, ``agather`` → ``gather``...). The idea
is psycopg_pool's ``_acompat.py``. Only what the two sides do differently lives here.

- ``aspawn(fn, *args)`` starts ``fn(*args)`` concurrently (a task / a thread of a shared pool), in a copy of the
  caller's contextvars context on both sides; ``agather(*spawned)`` waits for them and returns their results in
  order, raising the first failure (the others keep running and finish on their own, returning their connections);
  a caller cancelled while it waits cancels them and waits until they have ended (asyncio.gather's own rule).
- ``acancel(spawned)`` is what a caller cancelled before it reached ``agather`` does: cancel every spawned piece
  and wait until each has ended, so that a cancelled call leaves no work behind (the sync twin cancels the pieces
  not started yet; a thread cannot be stopped).
- ``ato_thread(fn, *args)`` runs blocking work off the event loop; its sync twin just calls it.
- ``ashield(awaitable)`` finishes an awaitable even if the caller is cancelled; the sync twin just returns it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, TypeVarTuple, Unpack

from hvcore.errors import WrongEventLoop

__all__ = [
    "AEvent",
    "ALock",
    "Event",
    "Lock",
    "acancel",
    "agather",
    "ashield",
    "asleep",
    "aspawn",
    "ato_thread",
    "cancel",
    "gather",
    "loop_gone",
    "owned_elsewhere",
    "shield",
    "sleep",
    "spawn",
    "to_thread",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

ALock = asyncio.Lock
Lock = threading.Lock
AEvent = asyncio.Event
Event = threading.Event
FANOUT_THREADS = 32  # threads of the sync side's shared fan-out pool (one per server a call reads concurrently)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=FANOUT_THREADS, thread_name_prefix="hv-fanout")
        return _executor


def _forget_pool_in_child() -> None:
    global _executor, _executor_lock
    _executor = None  # its threads did not survive the fork
    _executor_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


async def asleep(seconds: float) -> None:
    """Wait ``seconds`` without blocking the event loop."""
    await asyncio.sleep(seconds)


def sleep(seconds: float) -> None:
    """Wait ``seconds``."""
    time.sleep(seconds)


def aspawn(fn: Callable[[Unpack[Ts]], Coroutine[Any, Any, T]], *args: *Ts) -> asyncio.Task[T]:
    """Start ``fn(*args)`` as a task of the running loop."""
    return asyncio.ensure_future(fn(*args))


def spawn(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> Future[T]:
    """Start ``fn(*args)`` in a thread of the shared fan-out pool, in a copy of the caller's contextvars context (as
    `aspawn`'s task: what the caller holds, ``hvcore._holdings.held``, is held by the piece it waits for)."""
    context = contextvars.copy_context()
    return _pool().submit(lambda: context.run(fn, *args))


async def agather(*spawned: Awaitable[T]) -> list[T]:
    """The results of spawned tasks, in order; the first failure is raised."""
    return list(await asyncio.gather(*spawned))


def gather(*spawned: Future[T]) -> list[T]:
    """The results of spawned threads, in order; the first failure is raised."""
    return [future.result() for future in spawned]


async def acancel(spawned: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel spawned tasks and wait until every one has ended, their outcomes seen (a caller cancelled again
    meanwhile still waits for them, then raises that cancellation): nothing is left running for nobody."""
    for task in spawned:
        task.cancel()
    again: BaseException | None = None
    pending = [task for task in spawned if not task.done()]
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError as exc:  # the pieces are cancelled already: they end soon
            again = exc
        pending = [task for task in pending if not task.done()]
    for task in spawned:
        if not task.cancelled():
            task.exception()  # seen: not logged as "never retrieved"
    if again is not None:
        raise again


def cancel(spawned: Sequence[Future[Any]]) -> None:
    """Cancel the spawned pieces that have not started yet (a running thread cannot be stopped: it ends on its own
    and returns its connection)."""
    for future in spawned:
        future.cancel()


async def ato_thread(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run blocking ``fn(*args)`` in a worker thread, off the event loop."""
    return await asyncio.to_thread(fn, *args)


def to_thread(fn: Callable[[Unpack[Ts]], T], *args: *Ts) -> T:
    """Run ``fn(*args)`` (the sync side has no event loop to keep free)."""
    return fn(*args)


async def ashield(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` to the end even if the caller is cancelled meanwhile (the caller still sees the cancel)."""
    return await asyncio.shield(awaitable)


def shield(result: T) -> T:
    """The sync twin of `ashield`: the call already ran to the end."""
    return result


def loop_gone(loop: asyncio.AbstractEventLoop | None) -> bool:
    """True if ``loop`` (the one an object's tasks or sockets belong to) is not the running one and runs no more.

    Its tasks will never run again and its transports cannot close: what an earlier ``asyncio.run()`` left to an
    object used from a later one (a script calling ``asyncio.run`` per step, a test framework's loop per test). Call
    it from a coroutine.
    """
    return loop is not None and loop is not asyncio.get_running_loop() and not loop.is_running()


def owned_elsewhere(loop: asyncio.AbstractEventLoop | None, what: str) -> WrongEventLoop | None:
    """The error for using ``what`` from the running loop when ``loop`` (the one its pools, locks or sockets belong
    to) is another loop that still runs (another thread's): None when it is the running loop, None or gone.

    Its connections are made and handed over by tasks of that loop, and asyncio's primitives are not thread-safe:
    a second loop would wait for pool timeouts (or corrupt the pool), so it fails at once instead. Call it from a
    coroutine.
    """
    if loop is None or loop is asyncio.get_running_loop() or not loop.is_running():
        return None
    return WrongEventLoop(
        f"{what} is in use by another event loop that still runs (another thread's?): an AsyncDatastore belongs to "
        "one event loop at a time; make one per event loop (one per thread), or run this call on the store's own "
        "loop (asyncio.run_coroutine_threadsafe); once that loop has ended, the next one takes the store over"
    )
