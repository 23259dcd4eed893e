"""Did a write whose connection was lost commit? Asked of PostgreSQL by transaction id, never inferred.

Every write transaction (put, put_many, update, replace, delete) learns its transaction id before its COMMIT is
processed: a single statement returns ``pg_current_xact_id()`` (``RETURNING``) and a Flush message makes the server
send that row before the Sync that commits the implicit transaction, all in the one round trip the write already
made; a COPY asks for it in the round trip of its ``BEGIN``. When the connection is lost after that, a fresh
connection asks ``pg_xact_status(xid)``, the mechanism PostgreSQL documents for this case ("Transaction ID and
snapshot information functions"): ``committed`` → the write is done, with its own keys; ``aborted`` → retry;
``in progress`` → the orphaned session is still running: wait for it (bounded), then end it, then ask again.

A write that never received its id may still have committed: the server may have run the statement and the
commit after the connection died on the way back (the whole write was sent in one piece). So it is not retried
blindly: first the session that ran it must be gone, so that it cannot commit any more (direct connection: its
backend pid, known without a round trip, leaves ``pg_stat_activity``, and is ended with ``pg_terminate_backend``
after `SETTLE_SECONDS`; behind a pooler, where that pid is the pooler's: every session of our role that was
running the same statement when we asked has finished), then the rows decide: an INSERT whose rows are stored
with exactly its values (`stored_rows_sql`: key, kind and body compared by the server) committed; otherwise it
did not, and runs again (a row at its key with other values is another writer's: a collision, a fresh key). An
UPDATE or DELETE runs again once the session is gone (running it twice stores the same thing). If the session
does not go, `WriteOutcomeUnknown`. A unique violation on a retry is a collision like any other (a fresh key),
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
    "SAME_STATEMENT_SQL",
    "SESSION_GONE_SQL",
    "SETTLE_POLL",
    "SETTLE_SECONDS",
    "STATUS_SQL",
    "TERMINATE_PID_SQL",
    "TERMINATE_SQL",
    "UNKNOWN",
    "XID_GROUP_RETURNING",
    "XID_RETURNING",
    "XID_SQL",
    "CommitCounters",
    "returned_ids",
    "returned_xid",
    "returning_xid",
    "stored_rows_sql",
    "without_xid",
]

COMMITTED = "committed"
ABORTED = "aborted"
IN_PROGRESS = "in progress"
UNKNOWN = "unknown"  # no id received, or too old for the server to remember: the write is retried

XID_RETURNING = " RETURNING pg_current_xact_id()::text"
XID_GROUP_RETURNING = ", pg_current_xact_id()::text"  # appended to a multi-row INSERT's ``RETURNING id``
XID_SQL = b"SELECT pg_current_xact_id()::text"
BEGIN_XID_SQL = "BEGIN; SELECT pg_current_xact_id()::text"  # no parameters: one simple-protocol query
STATUS_SQL = "SELECT pg_xact_status(%s::xid8)"
# The orphaned session still running our transaction, found by its transaction id (not by the pid the client saw:
# behind PgBouncer that pid is the pooler's, not the server's).
TERMINATE_SQL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid::text = %s"
SESSION_GONE_SQL = "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)"
TERMINATE_PID_SQL = "SELECT pg_terminate_backend(%s)"
# Behind a pooler: sessions of our role running our statement that began before ``%(since)s`` (the first ask).
SAME_STATEMENT_SQL = (
    "SELECT statement_timestamp(), count(*) FILTER (WHERE xact_start <= coalesce(%(since)s, statement_timestamp()))"
    " FROM pg_stat_activity WHERE usename = current_user AND pid <> pg_backend_pid() AND state <> 'idle'"
    " AND query <> '' AND starts_with(%(query)s, query)"  # pg_stat_activity keeps track_activity_query_size bytes
)
SETTLE_SECONDS = 10.0  # how long an orphaned transaction may stay in progress before it is ended
SETTLE_POLL = 0.02  # seconds between two status questions while it is in progress


def stored_rows_sql(insert: str, count: int) -> str:
    """The ids, among ``count`` rows given as ``insert``'s VALUES row (same parameters, row after row), that are
    stored with exactly these values: key, kind and body compared by the server (jsonb or hstore equality).

    ``insert`` is a shard's single-row ``INSERT INTO <table> (id, kind, body) VALUES (...)`` (`ShardSQL.insert`).
    """
    head, row = insert.split(" VALUES ", 1)
    table = head.removeprefix("INSERT INTO ").removesuffix(" (id, kind, body)")
    return (
        f"SELECT t.id FROM {table} AS t JOIN (VALUES {', '.join([row] * count)}) AS o (id, kind, body)"
        " ON t.id = o.id AND t.kind = o.kind AND t.body = o.body"
    )


def without_xid(statement: str) -> str:
    """A statement of `returning_xid` (or a ``RETURNING ..., pg_current_xact_id()::text``) without the id column.

    For a server that refuses the volatile function in RETURNING (a Citus coordinator): the id is then read by a
    SELECT before the statement, in the same explicit transaction.
    """
    if statement.endswith(XID_RETURNING):
        return statement.removesuffix(XID_RETURNING)
    return statement.removesuffix(XID_GROUP_RETURNING)


def returning_xid(statement: str) -> str:
    """``statement`` (an INSERT, UPDATE or DELETE without RETURNING) returning its transaction id as text."""
    return statement + XID_RETURNING


def returned_xid(box: list[Any]) -> tuple[int | None, int]:
    """(transaction id, rows written) of a write's results as received, even if the connection died after them.

    ``box`` holds the libpq results that arrived (`_onetrip.until_sync`): the id is the first row's last column
    (the statement's RETURNING, or the SELECT before it in an explicit transaction); the rows come from the
    statement's command tag. (None, 0) if nothing arrived.
    """
    xid: int | None = None
    rows = 0
    for result in box:
        if xid is None and result.status == pq.ExecStatus.TUPLES_OK and result.ntuples:
            value = result.get_value(0, result.nfields - 1)
            xid = int(value) if value is not None else None
        tag = (result.command_status or b"").split(b" ", 1)[0]
        if tag in (b"INSERT", b"UPDATE", b"DELETE"):
            rows = result.command_tuples or 0
    return xid, rows


def returned_ids(box: list[Any]) -> set[int]:
    """The ids (first column) of the rows an INSERT returned, as received (`returned_xid`'s ``box``)."""
    for result in box:
        if result.status == pq.ExecStatus.TUPLES_OK and (result.command_status or b"").startswith(b"INSERT"):
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

    def count_ended(self) -> None:
        """Record an orphaned session ended by ``pg_terminate_backend`` (its write's id had not arrived)."""
        with self._lock:
            self.ended += 1

    def as_dict(self) -> dict[str, int]:
        """The counters, for ``stats()``."""
        return {
            "commit_checks": self.checks,
            "commit_checks_committed": self.committed,
            "commit_checks_aborted": self.aborted,
            "commit_checks_unknown": self.unknown,
            "orphans_ended": self.ended,
        }
