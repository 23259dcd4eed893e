"""A plain call that waits for its own caller's open transaction: found in a fraction of a second, cancelled, named.

Inside ``with db.transaction(5) as tx:`` a ``db.update(key, ...)`` (instead of ``tx.update``) runs on another pooled
session; if the transaction wrote that row, the call waits for the transaction's row lock, and the transaction's
session sits idle until its caller goes on: a deadlock PostgreSQL cannot see, which used to end only at
``operation_timeout`` with a `ServerUnavailable` blaming a healthy server.

Every session a caller holds (an open transaction, a connection lent by ``get_connection()`` or a ``cursor()``
block) is registered here with its backend pid (`SelfLocks.opened`) under a `hvcore._holdings.Hold`, which lives
in the caller's contextvars context: the call's own statements, and those it runs on fan-out threads or tasks
(``update_where``/``get_many`` over several servers; ``asyncio.gather``, ``TaskGroup`` and, on Python 3.11,
``asyncio.wait_for``, which run it as a new task) all see the caller's holds (`held`), while another thread, or a
task started before the hold, does not. Only a call under a hold on this server pays anything: a statement it runs
on another pooled session is watched (`SelfLockWatch`): if it has not finished after `SELF_LOCK_DELAY` seconds, one
query on a connection of its own (`BLOCKED_BY_SQL`) asks the server whether the statement's session waits, directly
or through other waiting sessions, for one of those holds' sessions. If it does, the statement is cancelled
(``pg_cancel_backend``: the server rolls its implicit transaction back, so nothing of it is stored) and the call
raises `SelfDeadlock` naming the transaction's shard and the operation; the transaction is left as it was. If not
(ordinary contention with another session), the question is asked again, less and less often, while the statement
runs; it keeps waiting as before. A call under no hold on the server is not watched (one dict test per checkout
while some session is held on the store, none otherwise). A task started inside the block acts for it: its plain
call waiting for the block's transaction is a `SelfDeadlock` too (the block awaiting it would wait forever; a
task the block does not await would have waited for the commit: run such a call after the block).

User SQL on a connection lent by ``get_connection()`` or a ``cursor()`` block is watched the same way while its
borrower holds other sessions of the server: psycopg's every wait on that connection goes through the store's
``_lent_wait`` (``hv_lent_wait``, set on the connection while it is lent: `_bouncer.shard_bound_class`), the lent
session itself excluded from the holds (it is the waiting one); the cancelled statement's ``QueryCanceled`` is
raised as `SelfDeadlock` (``error(raw=True)``: the fix is ``tx.cursor()``), and the borrower's transaction on it is
aborted, as after any failed statement. A lent session is held by the thread or task that last ran a statement on
it (`SelfLocks.used`), judged by its identity (`Hold.holder`), not by its context: a task created after the borrow
(``asyncio.create_task`` copies the context, holds included) or a thread in ``copy_context()`` that runs SQL on the
connection takes the session over, and the borrower's plain call waiting for it waits as for anyone's.

Direct connections only: behind PgBouncer the pid a client sees is the pooler's, not a server session's. Not
watched: what runs on the connection of a transaction (a transaction nested in another of the same caller on the
same server runs mostly user SQL through ``tx.cursor()``: unchanged).
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

from hvcore._holdings import Hold, current_owner, holds
from hvcore.errors import SelfDeadlock

__all__ = [
    "BLOCKED_BY_SQL",
    "CANCEL_SQL",
    "LENT",
    "SELF_LOCK_DELAY",
    "SELF_LOCK_POLL_MAX",
    "TRANSACTION",
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
       (SELECT backend_start FROM pg_stat_activity WHERE pid = %(pid)s),
       (SELECT n.nspname FROM pg_locks l
          JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE l.pid = %(pid)s AND (NOT l.granted OR l.locktype = 'tuple')
         ORDER BY l.granted, n.nspname LIMIT 1)"""
"""The sessions among ``ours`` that the session ``pid`` waits for, directly or through other waiting sessions
(each of those waits for the next); the statement it runs and when it started (to cancel that session only); the
schema of the table (or index) it waits for: a lock on it not granted, else the row lock it holds while it waits
for the row's writer (``tuple``); None for a wait on a transaction alone (a unique value another one wrote)."""

CANCEL_SQL = "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s"
"""Cancel the statement of session ``pid`` if it is still the session that was seen (a pid is reused later)."""

TRANSACTION = "db.transaction({})"
"""How a session is held (`SelfLocks.opened`): an open transaction (``.format(shard)`` names it in messages)."""
LENT = "db.cursor({0}) or db.get_connection({0})"
"""How a session is held: a connection lent to user code, or a ``cursor()`` block (one transaction)."""

_OPERATIONS = {  # the statement's first word -> (the plain calls that send it, the transaction's calls instead)
    "INSERT": ("db.put", "tx.put"),
    "COPY": ("db.put_many", "tx.put_many"),
    "UPDATE": ("db.update, db.replace or db.update_where", "tx.update or tx.replace"),
    "DELETE": ("db.delete or db.delete_where", "tx.delete"),
    "SELECT": ("db.get_many, db.get or db.query", "tx.get_many, tx.get or tx.query"),
}

_SHARD_SCHEMA = re.compile(r"shard(\d{4,})")  # `_schema.shard_schema`'s names (``shard0012``)

_VERB = re.compile(r"\b(INSERT|COPY|UPDATE|DELETE|SELECT)\b", re.IGNORECASE)


class SelfLockWatch:
    """One watched statement: who runs it (`current_owner`, the key of its finding), the holds it must not wait for,
    and its session; set between the checkout and the return of its connection."""

    __slots__ = ("done", "fired", "guard", "handle", "holds", "owner", "pid", "sent")

    def __init__(self, owner: object, holds: tuple[Hold, ...], pid: int) -> None:
        self.owner = owner
        self.holds = holds
        self.pid = pid
        self.handle: Any = None  # the timer of the first question (asyncio TimerHandle / threading.Timer)
        self.done = False  # the connection came back: the call is over
        self.fired = False  # a cancel was (or is being) sent for the call's statement
        self.sent = False  # the check is over: a cancel it fired has reached the server (or failed)
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
    """The sessions the callers of one store hold (their pids, by `Hold`) and what their plain calls ran into."""

    __slots__ = ("_found", "_lock", "open", "tasks")

    def __init__(self) -> None:
        self.open: dict[Hold, tuple[int, int, str]] = {}  # hold -> (pid, shard, block) of its session
        """Non-empty while some caller holds a session of the store (then its checkouts look further)."""
        # owner -> a cancelled call's finding: (statement, pids waited for, holds, shard of the table waited for)
        self._found: dict[object, tuple[str, list[int], tuple[Hold, ...], int | None]] = {}
        self._lock = threading.Lock()
        self.tasks: set[Any] = set()  # asyncio: the running questions (a task needs a reference)

    def clear(self) -> None:
        """After ``fork()`` in the child: the parent's transactions and sessions are not the child's."""
        with self._lock:
            self.open.clear()
            self._found.clear()
        self.tasks = set()

    def opened(self, pid: int, shard_id: int, block: str) -> Hold | None:
        """The running code holds session ``pid`` on ``shard_id`` (``block``: how, `TRANSACTION` or `LENT`): its
        taken `Hold` (give it to `closed`), or None if the pid is unknown."""
        if not pid:
            return None
        hold = Hold().take()
        with self._lock:
            self.open[hold] = (pid, shard_id, block)
        return hold

    def used(self, hold: Hold) -> Hold:
        """The hold of a session the running code runs a statement on, given its present one: ``hold`` itself if the
        running code holds it and is the thread or task that took it (`Hold.holder`: the last to run a statement
        there), or it is not a lent connection's (a transaction's stays its caller's), else `hand_over` (a lent
        connection used by code it was handed to: another thread or task, even one running in a copy of the
        borrower's context, as ``asyncio.create_task`` after the borrow or a thread in ``copy_context()``)."""
        if holds(hold) and hold.holder == current_owner():
            return hold
        entry = self.open.get(hold)
        return hold if entry is None or entry[2] != LENT else self.hand_over(hold)

    def hand_over(self, hold: Hold) -> Hold:
        """The session of ``hold`` (a lent one) is used by code other than the thread or task that holds it
        (another thread or task, whether or not it runs in a copy of the holder's context): it is that code's now.
        Returns its new `Hold`, taken in the running context; ``hold`` is let go (the borrower's plain calls waiting
        for the session wait as for anyone's)."""
        new = Hold().take()
        with self._lock:
            entry = self.open.pop(hold, None)
            if entry is not None:
                self.open[new] = entry
        hold.let_go()
        return new

    def closed(self, hold: Hold | None) -> None:
        """The session of `opened` is given back."""
        if hold is None:
            return
        hold.let_go()
        with self._lock:
            self.open.pop(hold, None)

    def mine(self, holds: tuple[Hold, ...]) -> tuple[Hold, ...]:
        """Those of ``holds`` (the running code's, `hvcore._holdings.held`) that are sessions of this store."""
        return tuple(hold for hold in holds if hold in self.open)

    def pids(self, holds: tuple[Hold, ...]) -> list[int]:
        """The sessions of ``holds`` still held."""
        with self._lock:
            return [entry[0] for hold in holds if (entry := self.open.get(hold)) is not None]

    def found(
        self, owner: object, statement: str, pids: list[int], holds: tuple[Hold, ...], schema: str | None = None
    ) -> None:
        """Before a cancel: the call ``owner`` runs waits, running ``statement``, for the sessions ``pids`` of
        ``holds``, on a table of ``schema`` (if the server said: a shard's schema names the shard in the error)."""
        named = _SHARD_SCHEMA.fullmatch(schema or "")
        with self._lock:
            self._found[owner] = (statement, pids, holds, int(named.group(1)) if named is not None else None)

    def forget(self, owner: object) -> None:
        """The watched call is over: a finding it did not raise (it finished before the cancel came) is dropped."""
        if self._found:
            with self._lock:
                self._found.pop(owner, None)

    def error(
        self, owner: object, shard_id: int, label: str, *, raw: bool = False, nested: tuple[int, str] | None = None
    ) -> SelfDeadlock | None:
        """The `SelfDeadlock` of the call ``owner`` ran, cancelled on shard ``shard_id`` of ``label``, if one was
        (``raw``: a statement of user SQL on a lent connection, ``db.cursor()`` or ``db.get_connection()``;
        ``nested``: one of a transaction's own, its shard and how it ran, ``"tx"`` or ``"tx.cursor()"``)."""
        with self._lock:
            found = self._found.pop(owner, None)
            if found is None:
                return None
            statement, pids, holds, waited_on = found
            waited = [
                (hold, entry) for hold in holds if (entry := self.open.get(hold)) is not None and entry[0] in pids
            ]
        if waited_on is not None:  # a statement over several shards: the one whose table or row it waited for
            shard_id = waited_on
        first = _VERB.search(statement)  # a read may start with "(" or WITH
        verb = first.group(1).upper() if first is not None else ""
        calls, instead = _OPERATIONS.get(verb, ("call", "tx.<operation>"))
        what = f"{verb} ({calls})" if verb in _OPERATIONS else calls
        if raw:  # user SQL: the transaction's own cursor runs it inside the transaction
            what = f"{verb or 'statement'} through db.cursor({shard_id}) or db.get_connection({shard_id})"
            instead = "tx.cursor()"
        who = waited[0][0].whose if waited else "thread"
        shards = sorted({shard for _, (_, shard, _) in waited})
        on = f"shard {shards[0]}" if len(shards) == 1 else "shards " + ", ".join(str(s) for s in shards)
        on = on if shards else "its shard"  # the block ended meanwhile
        blocks = sorted({block.format(shard) for _, (_, shard, block) in waited}) or [TRANSACTION.format("shard")]
        lent = all(block == LENT for _, (_, _, block) in waited) and bool(waited)
        call = "statement" if raw else "call"
        fix = (
            f"run its SQL on the block's own cursor or connection, or run the {call} after giving it back"
            if lent
            else f"Inside the block, run it through the transaction ({instead}), or run it after the block ends"
        )
        cancelled = (
            "The statement was cancelled on the server (the borrowed connection's transaction is aborted: nothing "
            "of it commits)"
            if raw
            else "The call was cancelled on the server (nothing of it is stored)"
        )
        article = ("an " if what[0] in "AEIOU" else "a ") if raw else "a plain "
        if nested is not None:  # a transaction of the caller's own waiting for another (an outer one) of the caller's
            inner, via = nested
            what = f"{verb} ({_OPERATIONS[verb][1]})" if via == "tx" and verb in _OPERATIONS else verb or "statement"
            what = f"{what} through tx.cursor()" if via != "tx" else what
            return SelfDeadlock(
                f"{'an ' if what[0] in 'AEIOU' else 'a '}{what} of a nested db.transaction({inner}) on {label} "
                f"waited for a lock on shard {shard_id} held by this {who}'s own outer open transaction on {on} "
                f"({' and '.join(blocks)}), which cannot go on until the statement returns: the wait would never "
                "end. The statement was cancelled on the server (the nested transaction is aborted: nothing of it "
                "commits) and the outer transaction is still open. Run the nested block after the outer one ends, or "
                "its work through the outer transaction (its tx.cursor() reaches the other shard's table)"
            )
        return SelfDeadlock(
            f"{article}{what} on shard {shard_id} of {label} waited for a lock held by this "
            f"{who}'s own open transaction on {on} ({' and '.join(blocks)}), which cannot go on until the {call} "
            f"returns: the wait would never end. {cancelled} and the transaction is still open. "
            f"{fix[0].upper()}{fix[1:]}"
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
