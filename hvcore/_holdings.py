"""Which pooled connections the current thread or asyncio task holds itself, for a `PoolTimeout` that says so.

A caller that waits for a connection while it holds the pool's others itself (connections from
``get_connection()`` not yet given back, an open transaction) waits for itself: the timeout is certain, and
"the pool is busy" would send the reader looking in the wrong place. Stores count what each owner holds here and
`pool_timeout` builds the error, the same on every backend. No I/O.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from hvcore.errors import PoolTimeout, StoreClosed

__all__ = ["CONNECTION", "TRANSACTION", "Holdings", "closed_while_waiting", "current_owner", "pool_timeout"]

CONNECTION = "borrowed connections (get_connection(), cursor())"
TRANSACTION = "open transactions (db.transaction())"


def current_owner() -> object:
    """The running asyncio task, or the current thread's id outside one."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    return task if task is not None else threading.get_ident()


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
        """What the current owner holds: ``{what: count}``, empty if nothing."""
        owner = current_owner()
        with self._lock:
            return {what: n for (who, what), n in self._counts.items() if who == owner}


def pool_timeout(label: str, timeout: float, pool_max: int, held: dict[str, int]) -> PoolTimeout:
    """The `PoolTimeout` of a pool of ``pool_max`` connections to ``label`` after waiting ``timeout`` s.

    ``held``: what the waiting thread or task holds itself (`Holdings.mine`); when it holds any, a note says
    which, and that the wait was for itself.
    """
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
