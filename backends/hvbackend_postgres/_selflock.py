"""A plain call that waits for its own caller's open transaction: found in a fraction of a second, cancelled, named.

Inside ``with db.transaction(5) as tx:`` a ``db.update(key, ...)`` (instead of ``tx.update``) runs on another pooled
session; if the transaction wrote that row, the call waits for the transaction's row lock, and the transaction's
session sits idle until its owner (the thread or asyncio task in the block) goes on: a deadlock PostgreSQL cannot
see, which used to end only at ``operation_timeout`` with a `ServerUnavailable` blaming a healthy server.

Only an owner (`hvcore._holdings.current_owner`) that holds an open transaction on this server pays anything: the
transaction registers its session's backend pid here (`SelfLocks.opened`); a statement such an owner runs on
another pooled session is watched (`SelfLockWatch`): if it has not finished after `SELF_LOCK_DELAY` seconds, one
query on a connection of its own (`BLOCKED_BY_SQL`) asks the server whether the statement's session waits, directly
or through other waiting sessions, for one of the owner's transactions. If it does, the statement is cancelled
(``pg_cancel_backend``: the server rolls its implicit transaction back, so nothing of it is stored) and the call
raises `SelfDeadlock` naming the transaction's shard and the operation; the transaction is left as it was. If not
(ordinary contention with another session), the question is asked again, less and less often, while the statement
runs; it keeps waiting as before. A caller holding no transaction on the server is not watched (one dict test per
checkout while some transaction is open on the store, none otherwise).

Direct connections only: behind PgBouncer the pid a client sees is the pooler's, not a server session's. Not
watched: connections lent to user code (``get_connection()``, ``cursor()``) and the connection of a transaction
(a transaction nested in another of the same owner on the same server runs mostly user SQL through
``tx.cursor()``, whose errors are the user's own: cancelling it would give a bare ``QueryCanceled``).
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from hvcore.errors import SelfDeadlock

__all__ = [
    "BLOCKED_BY_SQL",
    "CANCEL_SQL",
    "SELF_LOCK_DELAY",
    "SELF_LOCK_POLL_MAX",
    "SelfLockWatch",
    "SelfLocks",
    "call_later",
]

SELF_LOCK_DELAY = 0.15
"""Seconds a watched statement runs before the server is asked what it waits for."""
SELF_LOCK_POLL_MAX = 1.0
"""The longest pause between two such questions while the statement goes on waiting (the pause doubles up to it)."""

BLOCKED_BY_SQL = """WITH RECURSIVE chain(pid) AS (
    SELECT unnest(pg_blocking_pids(%(pid)s))
  UNION
    SELECT unnest(pg_blocking_pids(chain.pid)) FROM chain
)
SELECT array(SELECT pid FROM chain WHERE pid = ANY(%(ours)s)),
       (SELECT query FROM pg_stat_activity WHERE pid = %(pid)s),
       (SELECT backend_start FROM pg_stat_activity WHERE pid = %(pid)s)"""
"""The sessions among ``ours`` that the session ``pid`` waits for, directly or through other waiting sessions
(each of those waits for the next); the statement it runs and when it started (to cancel that session only)."""

CANCEL_SQL = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
"""Cancel the statement of session ``pid`` if it is still the session that was seen (a pid is reused later)."""

_OPERATIONS = {  # the statement's first word -> (the plain calls that send it, the transaction's calls instead)
    "INSERT": ("db.put", "tx.put"),
    "COPY": ("db.put_many", "tx.put_many"),
    "UPDATE": ("db.update, db.replace or db.update_where", "tx.update or tx.replace"),
    "DELETE": ("db.delete or db.delete_where", "tx.delete"),
    "SELECT": ("db.get_many, db.get or db.query", "tx.get_many, tx.get or tx.query"),
}

_VERB = re.compile(r"\b(INSERT|COPY|UPDATE|DELETE|SELECT)\b", re.IGNORECASE)


class SelfLockWatch:
    """One watched statement: its owner and session; set between the checkout and the return of its connection."""

    __slots__ = ("done", "fired", "guard", "handle", "owner", "pid")

    def __init__(self, owner: object, pid: int) -> None:
        self.owner = owner
        self.pid = pid
        self.handle: Any = None  # the timer of the first question (asyncio TimerHandle / threading.Timer)
        self.done = False  # the connection came back: the call is over
        self.fired = False  # a cancel was (or is being) sent for the call's statement
        self.guard = threading.Lock()

    def fire(self) -> bool:
        """Before the cancel: True if the call is still on (the cancel may be sent), and it is noted."""
        with self.guard:
            if self.done:
                return False
            self.fired = True
            return True

    def stop(self) -> bool:
        """When the connection comes back: True if a cancel was sent (the session is not reused: a late cancel must
        not reach the next borrower's statement)."""
        with self.guard:
            self.done = True
            handle, self.handle = self.handle, None
            fired = self.fired
        if handle is not None:
            handle.cancel()
        return fired


class SelfLocks:
    """The open transactions of one store's owners (their sessions' pids) and what their plain calls ran into."""

    __slots__ = ("_found", "_lock", "open", "tasks")

    def __init__(self) -> None:
        self.open: dict[object, list[tuple[int, int]]] = {}  # owner -> [(pid, shard)] of its open transactions
        """Non-empty while some owner holds an open transaction on the store (then its checkouts look further)."""
        self._found: dict[object, tuple[str, list[int]]] = {}  # owner -> (statement, pids) of a cancelled call
        self._lock = threading.Lock()
        self.tasks: set[Any] = set()  # asyncio: the running questions (a task needs a reference)

    def clear(self) -> None:
        """After ``fork()`` in the child: the parent's transactions and sessions are not the child's."""
        with self._lock:
            self.open.clear()
            self._found.clear()
        self.tasks = set()

    def opened(self, owner: object, pid: int, shard_id: int) -> tuple[int, int] | None:
        """A transaction of ``owner`` began on session ``pid``; the mark for `closed` (None if the pid is unknown)."""
        if not pid:
            return None
        mark = (pid, shard_id)
        with self._lock:
            self.open.setdefault(owner, []).append(mark)
        return mark

    def closed(self, owner: object, mark: tuple[int, int] | None) -> None:
        """The transaction of `opened` ended."""
        if mark is None:
            return
        with self._lock:
            held = self.open.get(owner)
            if held is not None:
                held.remove(mark)
                if not held:
                    del self.open[owner]

    def holds(self, owner: object) -> bool:
        """True if ``owner`` holds an open transaction on the store."""
        return owner in self.open

    def pids(self, owner: object) -> list[int]:
        """The sessions of ``owner``'s open transactions."""
        with self._lock:
            return [pid for pid, _ in self.open.get(owner, ())]

    def found(self, owner: object, statement: str, pids: list[int]) -> None:
        """Before a cancel: the call of ``owner`` runs ``statement`` and waits for its transactions' ``pids``."""
        with self._lock:
            self._found[owner] = (statement, pids)

    def forget(self, owner: object) -> None:
        """The watched call is over: a finding it did not raise (it finished before the cancel came) is dropped."""
        if self._found:
            with self._lock:
                self._found.pop(owner, None)

    def error(self, owner: object, shard_id: int, label: str) -> SelfDeadlock | None:
        """The `SelfDeadlock` of ``owner``'s call cancelled on shard ``shard_id`` of ``label``, if one was."""
        with self._lock:
            found = self._found.pop(owner, None)
            if found is None:
                return None
            statement, pids = found
            shards = sorted({shard for pid, shard in self.open.get(owner, ()) if pid in pids})
        first = _VERB.search(statement)  # a read may start with "(" or WITH
        verb = first.group(1).upper() if first is not None else ""
        calls, instead = _OPERATIONS.get(verb, ("call", "tx.<operation>"))
        what = f"{verb} ({calls})" if verb in _OPERATIONS else calls
        who = "thread" if isinstance(owner, int) else "asyncio task"
        on = f"shard {shards[0]}" if len(shards) == 1 else "shards " + ", ".join(str(s) for s in shards)
        blocks = " and ".join(f"db.transaction({shard})" for shard in shards) or "db.transaction()"
        return SelfDeadlock(
            f"a plain {what} on shard {shard_id} of {label} waited for a lock held by this {who}'s own open "
            f"transaction on {on} ({blocks}), which cannot go on until the call returns: the wait would never end. "
            "The call was cancelled on the server (nothing of it is stored) and the transaction is still open. "
            f"Inside the block, run it through the transaction ({instead}), or run it after the block ends"
        )


class _Timer:
    """A call `call_later` starts when due, unless cancelled first."""

    __slots__ = ("arg", "cancelled", "fn")

    def __init__(self, fn: Callable[[Any], object], arg: Any) -> None:
        self.fn = fn
        self.arg = arg
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Timers:
    """One daemon thread starting the sync side's due checks, each on a thread of its own (they do I/O).

    A ``threading.Timer`` per watched call started a thread each time: measured here, a ``db.get`` inside an open
    transaction went from ~0.1 to ~0.9 ms. A call that ends in time only leaves a cancelled entry in the heap
    (dropped when due). asyncio uses its loop's ``call_later``.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Timer]] = []
        self._cond = threading.Condition(threading.Lock())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, delay: float, fn: Callable[[Any], object], arg: Any) -> _Timer:
        timer = _Timer(fn, arg)
        due = time.monotonic() + delay
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hv-selflock", daemon=True)
                self._thread.start()
            elif len(self._heap) == 1:  # the thread sleeps with nothing to do: wake it (else its wait covers this)
                self._cond.notify()
        return timer

    def _run(self) -> None:
        while True:
            due_now: list[_Timer] = []
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                left = self._heap[0][0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                while self._heap and self._heap[0][0] <= time.monotonic():
                    timer = heapq.heappop(self._heap)[2]
                    if not timer.cancelled:
                        due_now.append(timer)
            for timer in due_now:
                threading.Thread(target=timer.fn, args=(timer.arg,), name="hv-selflock-check", daemon=True).start()

    def reset(self) -> None:
        """After ``fork()`` in the child: the thread did not survive."""
        self._heap = []
        self._cond = threading.Condition(threading.Lock())
        self._thread = None


_TIMERS = _Timers()
os.register_at_fork(after_in_child=_TIMERS.reset)


def call_later(delay: float, fn: Callable[[Any], object], arg: Any) -> _Timer:
    """Start ``fn(arg)`` on a thread of its own in ``delay`` seconds unless the returned timer is cancelled first."""
    return _TIMERS.call_later(delay, fn, arg)
