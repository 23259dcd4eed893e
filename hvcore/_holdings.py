"""Which pooled connections the current thread or asyncio task holds itself, for a `PoolTimeout` that says so.

A caller that waits for a connection while it holds the pool's others itself (connections from
``get_connection()`` not yet given back, an open transaction) waits for itself: the timeout is certain, and
"the pool is busy" would send the reader looking in the wrong place. Stores count what each owner holds here and
`pool_timeout` builds the error, the same on every backend. No I/O.

`Hold` and `held` say which server sessions the running code holds, for the wait on one's own session that
`SelfDeadlock` names: unlike `current_owner` (the thread or task), a hold lives in the contextvars context of the
code that took it, so the threads and tasks that run a call's pieces for it (the datastore's fan-out, which copies
the caller's context; ``asyncio.gather``, ``TaskGroup``, and on Python 3.11 ``asyncio.wait_for``, which run a
coroutine as a new task in a copy of the caller's context) hold it too, while another thread, or a task started
before the hold was taken, does not.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from contextvars import Context, ContextVar, copy_context

from hvcore.errors import PoolTimeout, StoreClosed

__all__ = [
    "CONNECTION",
    "TRANSACTION",
    "Hold",
    "Holdings",
    "closed_while_waiting",
    "current_owner",
    "held",
    "holds",
    "pool_timeout",
    "unheld_context",
]

CONNECTION = "borrowed connections (get_connection(), cursor())"
TRANSACTION = "open transactions (db.transaction())"


def current_owner() -> object:
    """The running asyncio task, or the current thread's id outside one."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    return task if task is not None else threading.get_ident()


class Hold:
    """One server session held by the running code (an open transaction, a lent connection or cursor block) from
    `take` to `let_go`: a call made under it that waits for that session waits for itself.

    Taking it adds it to the holds of the running context (`held`); the threads and tasks that context's copies run
    in hold it too (the module docstring says which). A hold let go from another context (``put_connection()`` in
    another thread) stays in the context that took it, no longer live, until that context takes its next hold.
    """

    __slots__ = ("holder", "live", "whose")

    def __init__(self) -> None:
        self.holder = current_owner()  # the thread or task that took it
        self.whose = "asyncio task" if isinstance(self.holder, asyncio.Task) else "thread"  # for messages
        self.live = False

    def take(self) -> Hold:
        """Hold it in the running context; returns itself."""
        self.live = True
        _HELD.set((*held(), self))
        return self

    def let_go(self) -> None:
        """The session is given back (the transaction or block ended): no call waits for it as its own any more."""
        self.live = False
        holds = _HELD.get()
        if self in holds:  # the context that took it (else another one's: its copy ignores the dead hold)
            _HELD.set(tuple(hold for hold in holds if hold is not self))


_HELD: ContextVar[tuple[Hold, ...]] = ContextVar("hv_held_sessions", default=())


def held() -> tuple[Hold, ...]:
    """The live holds of the running code (its own and those of the context it was copied from), oldest first."""
    holds = _HELD.get()
    return tuple(hold for hold in holds if hold.live) if holds else ()


def holds(hold: Hold) -> bool:
    """True if the running context holds ``hold`` (took it, or was copied from one that held it)."""
    return hold in _HELD.get()


def unheld_context() -> Context:
    """A copy of the running contextvars context without its holds: for work the library starts on behalf of
    several callers (a coalesced batch), which is none of theirs."""
    context = copy_context()
    if _HELD.get():
        context.run(_HELD.set, ())
    return context


class Holdings:
    """What each owner (`current_owner`) holds of one pool: counts of `CONNECTION` and `TRANSACTION`, thread-safe
    (a ``query()`` stream holds no connection between its round trips: nothing to count)."""

    __slots__ = ("_counts", "_lock")

    def __init__(self) -> None:
        self._counts: Counter[tuple[object, str]] = Counter()
        self._lock = threading.Lock()

    def take(self, what: str, owner: object | None = None) -> object:
        """Count one ``what`` held by ``owner`` (default: the current one); return the owner (for `give`)."""
        owner = current_owner() if owner is None else owner
        with self._lock:
            self._counts[(owner, what)] += 1
        return owner

    def give(self, what: str, owner: object) -> None:
        """One ``what`` of ``owner`` is given back."""
        with self._lock:
            left = self._counts[(owner, what)] - 1
            if left > 0:
                self._counts[(owner, what)] = left
            else:
                del self._counts[(owner, what)]

    def clear(self) -> None:
        """Forget everything (the store closed, or a forked child)."""
        with self._lock:
            self._counts.clear()

    def mine(self) -> dict[str, int]:
        """What the current owner holds, with the owners of its holds (`held`: the caller a fan-out thread or task
        runs a piece for): ``{what: count}``, empty if nothing."""
        owners = {current_owner(), *(hold.holder for hold in held())}
        mine: Counter[str] = Counter()
        with self._lock:
            for (who, what), n in self._counts.items():
                if who in owners:
                    mine[what] += n
        return dict(mine)


def pool_timeout(
    label: str,
    timeout: float,
    pool_max: int,
    held: dict[str, int],
    *,
    lent: int | None = None,
    connecting: float | None = None,
) -> PoolTimeout:
    """The `PoolTimeout` of a pool of ``pool_max`` connections to ``label`` after waiting ``timeout`` s.

    ``held``: what the waiting thread or task holds itself (`Holdings.mine`); when it holds any, a note says
    which, and that the wait was for itself. ``connecting``: the ``connect_timeout`` of a new connection the pool
    was opening meanwhile, which the server did not answer (then the message says both: ``lent`` connections in
    use, and the new one not established).
    """
    if connecting is not None:
        in_use = "" if lent is None else f"{lent} in use, "
        error = PoolTimeout(
            f"no connection to {label} free within {timeout} s (pool_max={pool_max}: {in_use}and a new connection "
            f"to {label} was not established within that time: its start-up has had no answer, connect_timeout="
            f"{connecting:g} s per attempt): a server that is frozen or overloaded, or a network that drops new "
            "connections; if the server is fine, raise pool_max or pool_block_timeout, and give back connections "
            "from get_connection() with put_connection()"
        )
    else:
        error = PoolTimeout(
            f"no connection to {label} free within {timeout} s (pool_max={pool_max}, every one in use): raise "
            "pool_max or pool_block_timeout, and give back connections from get_connection() with put_connection()"
        )
    if held:
        what = ", ".join(f"{kind}: {n}" for kind, n in sorted(held.items()))
        advice = []
        if TRANSACTION in held:
            advice.append(
                "Inside `with db.transaction(shard) as tx:` the transaction holds its connection: call tx.get(), "
                "tx.put()... there (db.get() and the other db. calls each need a connection of their own, outside "
                "the transaction)"
            )
        advice.append("or raise pool_max above what one caller holds at once")
        error.add_note(
            f"this thread or task holds {sum(held.values())} of them itself ({what}): it waited for itself. "
            + "; ".join(advice)
        )
    return error


def closed_while_waiting(label: str) -> StoreClosed:
    """The `StoreClosed` of a call that waited for a connection to ``label`` while the store was closed (as a call
    made after ``close()`` gets; never `ServerUnavailable`: the server is fine)."""
    return StoreClosed(
        f"the datastore was closed (close() or disconnect()) while this call waited for a connection to {label}: "
        "nothing of the call ran; reinstantiate() (or open()) to use it again"
    )
