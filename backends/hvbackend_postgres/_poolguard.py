"""psycopg_pool's wait for a connection, made safe from exceptions that signal handlers raise (sync pool only).

psycopg_pool 3.3's sync ``ConnectionPool`` waits for a free connection in ``WaitingClient.wait``, which turns only
an ``Exception`` into the waiter's error (``CLIENT_EXCEPTIONS = Exception``; the asyncio pool also catches
``CancelledError``, the fix of psycopg/psycopg#509 and #1275). A ``KeyboardInterrupt`` (or any exception a signal
handler raises, e.g. from ``signal.alarm``) while a thread waits there leaves the waiter queued with neither a
connection nor an error; the next connection returned is handed to it, ``set()`` reports it accepted, and the
connection is lost with its slot: ``stats()`` shows the size at its maximum and nothing available, for good
(reproduced by tests/backends/test_pool_interrupts.py). psycopg/psycopg#1407 made the pool's *check* step handle
``BaseException``; the wait was not covered in the version we use.

`signal_safe_getconn` is the pool's ``_getconn_unchecked`` with `SignalSafeWaiter`: every exception ends the wait
(the waiter records it, so the pool never hands it a connection afterwards), and a connection it was handed in
the meantime, or one taken from the pool before the interruption, goes back through the pool's own
``ReturnConnection`` task. ``hvbackend_postgres._store._Pool`` uses it.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from psycopg_pool import ConnectionPool, PoolTimeout
from psycopg_pool.pool import ReturnConnection, WaitingClient

__all__ = ["SignalSafeWaiter", "signal_safe_getconn"]

GIVE_UP_ATTEMPTS = 100


class SignalSafeWaiter(WaitingClient[Any]):
    """A waiting client whose wait records any exception (`BaseException` too) as its error before raising it."""

    __slots__ = ()

    def wait(self, timeout: float) -> Any:
        """The connection handed to this waiter; `PoolTimeout` after ``timeout`` s; any interruption is recorded.

        ``threading.Condition.wait`` itself has a window: an exception raised between its release of the lock and
        the ``try`` that re-acquires it leaves the lock released, and leaving the ``with`` block then raises
        ``RuntimeError``; the recorded interruption is raised instead. (A ``with`` block, not ``acquire()`` then
        ``try``: nothing can interrupt between a ``with``'s acquire and its block.)
        """
        try:
            with self._cond:
                if not (self.conn or self.error):
                    try:
                        if not self._cond.wait(timeout):
                            self.error = PoolTimeout(f"couldn't get a connection after {timeout:.2f} sec")
                    except BaseException as exc:  # KeyboardInterrupt, or whatever a signal handler raised
                        self.error = exc
        except RuntimeError:
            if self.error is None:
                raise
        if self.error:
            raise self.error
        assert self.conn
        return self.conn


def signal_safe_getconn(pool: ConnectionPool[Any], timeout: float) -> Any:
    """``pool._getconn_unchecked(timeout)`` where no exception loses a connection (see the module docstring)."""
    conn: Any = None
    pos: SignalSafeWaiter | None = None
    t0 = monotonic()
    try:
        with pool._lock:
            conn = pool._get_ready_connection(timeout)
            if not conn:
                pos = SignalSafeWaiter()
                pool._waiting.append(pos)
                pool._stats[pool._REQUESTS_QUEUED] += 1
                pool._maybe_grow_pool()
        if pos is not None:
            conn = pos.wait(timeout=timeout)
    except BaseException:
        _give_up(pool, pos, conn)
        raise
    finally:
        if pos is not None:
            pool._stats[pool._REQUESTS_WAIT_MS] += int(1000.0 * (monotonic() - t0))
    conn._pool = pool
    return conn


def _give_up(pool: ConnectionPool[Any], pos: SignalSafeWaiter | None, conn: Any) -> None:
    """After an exception in `signal_safe_getconn`: close the waiter, hand back whatever connection it holds.

    Repeated if interrupted again (a signal storm may interrupt it too): each step is idempotent, and a connection
    is handed back at most once (two borrowers sharing one would be worse than one lost).
    """
    returned = False
    for _ in range(GIVE_UP_ATTEMPTS):
        try:
            if pos is not None:
                with pos._cond:
                    if pos.error is None:
                        pos.error = PoolTimeout("gave up waiting")  # the pool's set() now refuses this waiter
                    held = pos.conn
            else:
                held = conn
            if held is not None and not returned:
                returned = True
                pool.run_task(ReturnConnection(pool, held, from_getconn=True))
            if pos is not None:
                pool._stats[pool._REQUESTS_ERRORS] += 1
            return
        except BaseException:  # interrupted while giving up: finish giving up first
            continue
