"""Did a write whose connection was lost commit? Asked of PostgreSQL by transaction id wherever it can answer.

A single-row write (put, update, replace, delete) is its statement and the Sync that commits its implicit
transaction, in one write to the socket, and nothing else: its results come back with the commit's reply, in one
packet. It does not return its transaction id: a Flush before the Sync (to have the id before the commit) cost a
second packet and client wake-up per write (+3-10 % with durable commits), and a ``RETURNING
pg_current_xact_id()`` without the Flush still cost 3-5 % (a row description and a row per write, measured
against the plain INSERT, benchmarks/bench_commit_status.py), while an id that arrives with the commit's reply is
of little use: the reply that carries it says the write committed (only a session the server ends after the
statement ran sends the buffered id with its FATAL notice; that session is gone, so the rows settle it). A
coalesced group of puts returns its ids and transaction id (`XID_GROUP_RETURNING`); a COPY (put_many) reads its
id in the round trip of its ``BEGIN``, before any row is sent.

When the connection is lost, a fresh connection settles the write:

- The id arrived (a COPY; a group whose session was ended by the server, which sends what it had buffered with
  its FATAL notice): ``pg_xact_status(xid)``, the mechanism PostgreSQL documents for this case ("Transaction ID and
  snapshot information functions"): ``committed`` → the write is done, with its own keys; ``aborted`` → run again;
  ``in progress`` → the orphaned session is still running: wait for it (`SETTLE_SECONDS`), end it, ask again.
- No id arrived, direct connection: the session that ran the write is known by its backend pid. While it is in
  ``pg_stat_activity``, its ``backend_xid`` is the write's transaction id (`SESSION_XID_SQL`; an id is assigned
  when the statement first writes a row); the session is waited for (bounded, then ended with
  ``pg_terminate_backend``; at once when the client gave up after ``operation_timeout``: it is ours to end), and
  if an id was seen, ``pg_xact_status`` decides as above.
- No id seen at all: the session was already gone when we looked (the server ended it, or the connection was
  cut after it committed), it ended between two looks without an id ever being visible, or the connection goes
  through a pooler, where the pid is the pooler's and sessions running the same statement cannot be told apart
  (`SAME_STATEMENT_SQL`: every such session of our role must have finished first). Only then do the rows decide,
  once nothing can commit any more: an INSERT whose rows are stored with exactly its values (`stored_rows_sql`:
  key, kind and body compared by the server) committed; an UPDATE whose row already holds what it writes
  (`applied_sql`: applying it again would change nothing), or a DELETE whose row is absent, is done; anything
  else did not commit and runs again. Edge: a lost DELETE of a key that was not stored then reports it deleted.

If the session does not go, or no server answers, `WriteOutcomeUnknown`. A unique violation on a retry is a
collision like any other (a fresh key), never evidence that the first attempt committed: another process may
hold that key.
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
    "SESSION_XID_SQL",
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
    "applied_sql",
    "command_rows",
    "full_xid",
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
# The session of a lost write on a direct connection (no row: gone): its transaction id (32 bits, None before the
# statement wrote a row or after its transaction ended), its state, when it started (a pid reused by a new session
# is another session), and a full transaction id near it (to widen the 32-bit id: `full_xid`).
SESSION_XID_SQL = (
    "SELECT backend_xid::text, state, backend_start, pg_snapshot_xmax(pg_current_snapshot())::text"
    " FROM pg_stat_activity WHERE pid = %s"
)
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


def full_xid(xid: int, near: int) -> int:
    """The 64-bit transaction id (``xid8``) of a running transaction's 32-bit ``xid``, given a full id ``near`` it
    (``pg_snapshot_xmax(pg_current_snapshot())``: one past the last completed transaction; a running one may be
    below or above it, never 2^31 away): the full id within 2^31 of ``near`` whose low 32 bits are ``xid``."""
    half = 1 << 31
    return near + ((xid - near + half) % (1 << 32)) - half


def applied_sql(statement: str) -> str:
    """For a by-key UPDATE or DELETE (``_update_sql`` / ``_delete_sql``, without RETURNING): a query, taking the same
    parameters, whose one row says whether the write is in place: the row already holds what the UPDATE sets
    (setting it again would change nothing; no row: the key is not stored), or the DELETE's row is absent."""
    if statement.startswith("DELETE FROM "):
        table, where = statement.removeprefix("DELETE FROM ").split(" WHERE ", 1)
        return f"SELECT NOT EXISTS (SELECT FROM {table} WHERE {where})"
    head, rest = statement.removeprefix("UPDATE ").split(" SET body = ", 1)
    value, where = rest.rsplit(" WHERE ", 1)
    return f"SELECT ({value}) = body FROM {head} WHERE {where}"


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


def command_rows(box: list[Any]) -> int | None:
    """The rows a write's statement wrote, from its command tag among the results received; None if it did not
    arrive (`returned_xid`'s ``box``)."""
    for result in box:
        if (result.command_status or b"").split(b" ", 1)[0] in (b"INSERT", b"UPDATE", b"DELETE"):
            return int(result.command_tuples or 0)
    return None


def returned_ids(box: list[Any]) -> set[int]:
    """The ids (first column) of the rows an INSERT returned, as received (`returned_xid`'s ``box``)."""
    for result in box:
        if result.status == pq.ExecStatus.TUPLES_OK and (result.command_status or b"").startswith(b"INSERT"):
            return {int(result.get_value(i, 0)) for i in range(result.ntuples)}
    return set()


class CommitCounters:
    """How often lost connections made a write ask the server about its commit, and what it answered."""

    __slots__ = ("_lock", "aborted", "by_rows", "checks", "committed", "ended", "unknown")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checks = 0  # writes whose connection was lost and asked (or could not ask) the server
        self.committed = 0  # ... whose first attempt had committed: done, with their own keys
        self.aborted = 0  # ... whose attempt had not committed: retried
        self.unknown = 0  # ... whose transaction the server could not name, and whose rows were not stored: retried
        self.ended = 0  # orphaned sessions still running a write, ended by pg_terminate_backend
        self.by_rows = 0  # ... decided by reading the write's rows: no transaction id was ever seen

    def count(self, outcome: str, *, ended: bool = False, by_rows: bool = False) -> None:
        """Record one resolved check (``by_rows``: decided by reading the rows, not by the server's status)."""
        with self._lock:
            self.checks += 1
            self.by_rows += int(by_rows)
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
            "commit_checks_by_rows": self.by_rows,
            "orphans_ended": self.ended,
        }
