"""Did a write whose connection was lost commit? Asked of PostgreSQL by transaction id, never inferred.

Every write transaction (put, put_many, update, replace, delete) learns its transaction id before its COMMIT is
processed: a single statement returns ``pg_current_xact_id()`` (``RETURNING``) and a Flush message makes the server
send that row before the Sync that commits the implicit transaction, all in the one round trip the write already
made; a COPY asks for it in the round trip of its ``BEGIN``. When the connection is lost after that, a fresh
connection asks ``pg_xact_status(xid)``, the mechanism PostgreSQL documents for this case ("Transaction ID and
snapshot information functions"): ``committed`` → the write is done, with its own keys; ``aborted`` → retry;
``in progress`` → the orphaned session is still running: wait for it (bounded), then end it, then ask again.
A write that never received its id did not get past its statement on the server (the row is sent before the
commit), so it is retried as aborted. A unique violation on a retry is a collision like any other (a fresh key),
never evidence that the first attempt committed: another process may hold that key.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg import pq

__all__ = [
    "ABORTED",
    "BEGIN_XID_SQL",
    "COMMITTED",
    "IN_PROGRESS",
    "SETTLE_POLL",
    "SETTLE_SECONDS",
    "STATUS_SQL",
    "TERMINATE_SQL",
    "UNKNOWN",
    "XID_RETURNING",
    "CommitCounters",
    "returned_ids",
    "returned_xid",
    "returning_xid",
]

COMMITTED = "committed"
ABORTED = "aborted"
IN_PROGRESS = "in progress"
UNKNOWN = "unknown"  # no id received, or too old for the server to remember: the write is retried

XID_RETURNING = " RETURNING pg_current_xact_id()::text"
BEGIN_XID_SQL = "BEGIN; SELECT pg_current_xact_id()::text"  # no parameters: one simple-protocol query
STATUS_SQL = "SELECT pg_xact_status(%s::xid8)"
# The orphaned session still running our transaction, found by its transaction id (not by the pid the client saw:
# behind PgBouncer that pid is the pooler's, not the server's).
TERMINATE_SQL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid::text = %s"
SETTLE_SECONDS = 10.0  # how long an orphaned transaction may stay in progress before it is ended
SETTLE_POLL = 0.02  # seconds between two status questions while it is in progress


def returning_xid(statement: str) -> str:
    """``statement`` (an INSERT, UPDATE or DELETE without RETURNING) returning its transaction id as text."""
    return statement + XID_RETURNING


def returned_xid(box: list[Any]) -> tuple[int | None, int]:
    """(transaction id, rows) of a write statement's results as received, even if the connection died after them.

    ``box`` holds the libpq results that arrived (`_onetrip.until_sync`): (None, 0) if no row arrived.
    """
    for result in box:
        if result.status == pq.ExecStatus.TUPLES_OK:
            if result.ntuples == 0:
                return None, 0
            value = result.get_value(0, result.nfields - 1)
            return (int(value) if value is not None else None), result.ntuples
    return None, 0


def returned_ids(box: list[Any]) -> set[int]:
    """The ids (first column) of the rows a write statement returned, as received (`returned_xid`'s ``box``)."""
    for result in box:
        if result.status == pq.ExecStatus.TUPLES_OK:
            return {int(result.get_value(i, 0)) for i in range(result.ntuples)}
    return set()


class CommitCounters:
    """How often lost connections made a write ask the server about its commit, and what it answered."""

    __slots__ = ("_lock", "aborted", "checks", "committed", "ended", "unknown")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checks = 0  # writes whose connection was lost and asked (or could not ask) the server
        self.committed = 0  # ... whose first attempt had committed: done, with their own keys
        self.aborted = 0  # ... whose attempt had not committed: retried
        self.unknown = 0  # ... that had received no transaction id: retried
        self.ended = 0  # orphaned sessions still running a write, ended by pg_terminate_backend

    def count(self, outcome: str, *, ended: bool = False) -> None:
        """Record one resolved check."""
        with self._lock:
            self.checks += 1
            if outcome == COMMITTED:
                self.committed += 1
            elif outcome == ABORTED:
                self.aborted += 1
            else:
                self.unknown += 1
            self.ended += int(ended)

    def as_dict(self) -> dict[str, int]:
        """The counters, for ``stats()``."""
        return {
            "commit_checks": self.checks,
            "commit_checks_committed": self.committed,
            "commit_checks_aborted": self.aborted,
            "commit_checks_unknown": self.unknown,
            "orphans_ended": self.ended,
        }
