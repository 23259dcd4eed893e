"""What the stores do about a pooler in front of the server, and about connections user code had.

PgBouncer in transaction mode (``pool_mode = transaction``) hands each transaction of a client connection to any
of its server sessions, so nothing tied to a session follows the client: a ``SET`` (``search_path`` included),
a prepared statement (psycopg prepares a query automatically after ``prepare_threshold`` = 5 runs: ``_pg3_N``),
an advisory lock. The stores therefore, behind such a pooler (``pgbouncer="transaction"``, or detected by
``"auto"``): never prepare (``prepare_threshold=None``), qualify their own statements with the shard's schema
(they always do), and bind ``cursor(shard)`` / ``get_connection(shard)`` to the shard with ``SET LOCAL
search_path`` at the start of every transaction the borrower opens (`shard_bound_class`): the first statement
after ``BEGIN``, whether psycopg begins implicitly (``autocommit=False``) or through ``conn.transaction()``, so a
borrowed connection stays in its shard across ``commit()`` and ``with conn.transaction():`` commits as it does
on a direct connection. Statements the borrower runs in autocommit mode have no shard binding there.

Connections that user code had (``cursor()``, ``get_connection()``) come back clean: an open transaction is rolled
back, then `RESET_SQL` undoes what a session can keep (run-time settings, role and session authorization, cursors,
LISTEN, advisory locks, temporary tables), and the psycopg attributes the user may have changed are restored.
Behind a transaction-mode pooler a session reset sent on its own would reach whichever server session comes next,
so every end of a lent connection's transaction carries it (`end_gen`, ``hv_end_reset``): ``<pre>; COMMIT; <reset>``
(`pre_commit_sql`) and ``ROLLBACK; <reset>`` in one simple-protocol message, which the pooler cannot split
between server sessions (``commit()``, ``rollback()``, ``with conn.transaction():``, ``with conn:``,
`cursor()`'s commit and `put_connection`'s rollback); `put_connection` sends no reset after. What no
transaction end can undo is refused before it is sent (`check_pooled_user_sql`): a session advisory lock, and
session state set in autocommit mode.
The store's own statements change no session state and skip the reset.

How "auto" decides (`pooler_possible`): the first connection of a store asks the server which port it serves
(``current_setting('port')``, one round trip once per store). Connected to the server itself, over TCP or its Unix
socket (whose file name carries the port: ``.s.PGSQL.5432``), the client used that port: "off". Anything else (a
pooler on its own port, or a port mapping such as Docker's) is treated as transaction pooling, the mode that is
correct behind every kind of pooler and costs only psycopg's prepared statements. A client cannot tell session
pooling from transaction pooling for sure without the pooler's admin console: an earlier probe (two client
connections asking ``pg_backend_pid()`` in turn; sharing a server process, or one client moving between
processes, means transaction pooling) answered "session" for a transaction-mode PgBouncer whenever other clients
kept its server connections busy (three stores starting at once, tests/backends/test_pgbouncer_store.py), and
prepared statements then failed. Name the mode where it is known: ``pgbouncer="session"`` behind a
session-mode pooler (prepared statements, session ``search_path``), ``"off"`` for a port mapping,
``"transaction"`` to skip the check. Detection cannot see a pooler listening on its server's port number on
another host: name it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import generators, pq

from hvbackend_postgres._common import ENDS_TRANSACTION, MAY_END, STATEMENT_START, sql_words
from hvcore.errors import ConnectionMisuse

__all__ = [
    "DEALLOCATE_USER_SQL",
    "POOLER_HINT_SQL",
    "POOLER_TRACKED",
    "RESET_SQL",
    "SCHEMA_EXISTS_SQL",
    "check_pooled_user_sql",
    "client_endpoint",
    "end_gen",
    "note_user_sql",
    "pooler_possible",
    "pre_commit_sql",
    "reset_sql",
    "restore_sql",
    "session_lock_refusal",
    "shard_bound_async_class",
    "shard_bound_class",
    "transaction_pooled",
]

RESET_SQL = (
    "RESET ALL; SET SESSION AUTHORIZATION DEFAULT; CLOSE ALL; UNLISTEN *; "
    "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)
"""What a session of user code is reset with before reuse: one round trip (simple protocol, several statements).

``RESET ALL`` restores every run-time setting (``statement_timeout``, ``default_transaction_read_only``,
``synchronous_commit``, ``search_path``...) to the session's defaults (ALTER ROLE/DATABASE ones included); ``SET
SESSION AUTHORIZATION DEFAULT`` ends a ``SET ROLE`` and a ``SET SESSION AUTHORIZATION`` (allowed for any user:
it returns to the authenticated one); then cursors, LISTEN registrations, session advisory locks and temporary
tables, and the sequence values ``currval``/``lastval`` would report. It is ``DISCARD ALL`` without ``DEALLOCATE
ALL``, so psycopg's own prepared statements stay valid (and, unlike ``DISCARD ALL``, it can run inside a
transaction: `cursor()` behind a transaction-mode pooler does that); statements the user code ``PREPARE``d are
deallocated by `DEALLOCATE_USER_SQL` when its SQL mentioned one (`note_user_sql`).
"""
DEALLOCATE_USER_SQL = (
    "; DO $hv$DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql "
    "LOOP EXECUTE pg_catalog.format('DEALLOCATE %I', n); END LOOP; END$hv$"
)
"""Appended to `RESET_SQL` after user SQL that mentioned ``PREPARE``: deallocates every statement prepared with SQL
(``from_sql``: the user's ``PREPARE``, also one run by a DO block), never psycopg's or hypervault's (protocol-level).
Not part of every reset: reading ``pg_prepared_statements`` doubled the reset's time (its planning, 0.13 ms)."""


def note_user_sql(conn: Any, query: Any) -> None:
    """Mark ``conn`` for `DEALLOCATE_USER_SQL` at its reset if ``query`` (user SQL: str, bytes or a
    `psycopg.sql.Composable`) mentions ``prepare`` in any case; ~0.1 µs for a short string. A ``PREPARE`` run by a
    server function the statement calls by name is not seen (documented in the README)."""
    text = _query_text(query)
    if text is None or "prepare" in text.lower():  # None: a composition that needs the connection to render
        conn.hv_user_prepared = True


def _query_text(query: Any) -> str | None:
    """User SQL (str, bytes or a `psycopg.sql.Composable`) as text; None if it needs a connection to render."""
    if isinstance(query, str):
        return query
    if isinstance(query, (bytes, bytearray, memoryview)):
        return bytes(query).decode("utf-8", "replace")
    try:
        return str(query.as_string(None))
    except Exception:
        return None


SESSION_LOCK = re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
"""A call taking a session-level advisory lock (``pg_advisory_lock``, ``pg_try_advisory_lock`` and their
``_shared`` forms; never ``pg_advisory_xact_lock``): refused behind a transaction-mode pooler
(`check_pooled_user_sql`)."""
SESSION_STATEMENT = re.compile(
    r"(?:^|;)\s*"
    r"(?:SET\b(?!\s+(?:LOCAL|TRANSACTION|CONSTRAINTS)\b)|LISTEN\b|PREPARE\b(?!\s+TRANSACTION\b)|DECLARE\b|LOAD\b"
    r"|CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b)"
    r"|\bset_config\s*\(",
    re.IGNORECASE | re.DOTALL,
)
"""A statement (or one of several) that leaves session state when run on its own, out of a transaction: ``SET``
(not ``SET LOCAL``/``TRANSACTION``/``CONSTRAINTS``; ``SET ROLE`` and ``SET SESSION AUTHORIZATION`` included),
``set_config()``, ``LISTEN``, ``PREPARE``, ``DECLARE``, ``LOAD``, ``CREATE TEMP``: refused in autocommit mode behind
a transaction-mode pooler (`check_pooled_user_sql`)."""


_MAY_LOCK = re.compile(r"advisory_lock", re.IGNORECASE)
_MAY_SESSION = re.compile(STATEMENT_START + r"(?:SET|LISTEN|PREPARE|DECLARE|LOAD|CREATE)\b|set_config", re.IGNORECASE)
"""Raw text that may hold a statement of `SESSION_STATEMENT`, as `MAY_END` for an end and `_MAY_LOCK` for a session
lock: `check_pooled_user_sql` lexes only such text (`sql_words`)."""


def check_pooled_user_sql(conn: Any, query: Any, where: str) -> None:
    """`ConnectionMisuse` before anything is sent for user SQL on a connection lent behind a transaction-mode
    pooler (``where``: what it is lent for) that would leave state in one of the pooler's server sessions which no
    reset can reach: a session advisory lock (in any mode: the end of the transaction releases it, see `end_gen`),
    a statement ending the transaction (``COMMIT``, ``ROLLBACK``...: ``conn.commit()`` carries the reset, SQL does
    not), and in autocommit mode a statement of `SESSION_STATEMENT` (each runs on whichever server session is free and
    its state stays there, for the pooler's other clients). Judged by the statements' own words as PostgreSQL's
    lexer reads them (`sql_words`: string literals, dollar-quoted bodies, comments, quoted identifiers and a ``BEGIN
    ATOMIC`` body are no statements; lexed only when the raw text may hold one, `_MAY_SESSION`...): a server function or
    a DO block doing so is
    not seen; in a transaction what it left is undone when the transaction ends."""
    text = _query_text(query)
    if text is None:
        return
    idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    session = conn.autocommit and idle  # statements run on their own, on whichever server session is free
    if not (
        _MAY_LOCK.search(text) or (_MAY_SESSION.search(text) if session else MAY_END.search(text))
    ):  # nothing to refuse: not lexed
        return
    shown = text if len(text) <= 80 else text[:77] + "..."
    words = sql_words(text)
    if words is None:  # PostgreSQL's lexer refuses it: so will the server's
        return
    text = words
    if SESSION_LOCK.search(text):
        raise ConnectionMisuse(
            f"a session advisory lock ({shown!r}) was asked for through a connection to {where} behind a "
            "transaction-mode pooler, which cannot keep one: once the transaction ends the pooler hands its server "
            "session to other clients (hypervault releases the lock there at that end, so it would not be held when "
            "your code believes it is); take pg_advisory_xact_lock() or pg_try_advisory_xact_lock() (held until the "
            "transaction ends) instead, or reach the server directly, or through a session-mode pooler "
            "(pgbouncer='session'), for a lock that outlives transactions"
        )
    if not session and ENDS_TRANSACTION.search(text):
        raise ConnectionMisuse(
            f"a statement ending the transaction ({shown!r}) was sent as SQL through a connection to {where} behind "
            "a transaction-mode pooler: the pooler hands its server session to another client at that end, before "
            "hypervault can undo what the transaction set in the session; end it with conn.commit() or "
            "conn.rollback() (or a `with conn.transaction():` block), which carry the session reset"
        )
    if session and SESSION_STATEMENT.search(text):  # idle: not in ``with conn.transaction():``
        raise ConnectionMisuse(
            f"a statement leaving session state ({shown!r}) was sent in autocommit mode through a connection to "
            f"{where} behind a transaction-mode pooler: it would run on whichever of the pooler's server sessions is "
            "free and its state would stay there, for the pooler's other clients, with no reset able to reach it; "
            "run it inside a transaction (autocommit off, or `with conn.transaction():`), where it lasts until the "
            "transaction ends (hypervault undoes it before the COMMIT), or use SET LOCAL"
        )


def pre_commit_sql(conn: Any) -> str:
    """What goes before a lent transaction's ``COMMIT`` behind a transaction pooler, the reset itself going after
    it (`end_gen`): the session advisory locks released and, if its SQL mentioned ``PREPARE``, the statements it
    prepared deallocated, which a failing ``COMMIT`` would leave on the server session; nothing that a deferred
    trigger or the commit itself reads (settings, search path, role)."""
    text = "SELECT pg_catalog.pg_advisory_unlock_all()"
    return text + DEALLOCATE_USER_SQL if getattr(conn, "hv_user_prepared", False) else text


def reset_sql(conn: Any, *, restore: bool = True) -> str:
    """The reset for ``conn``: `RESET_SQL`, `DEALLOCATE_USER_SQL` if its user SQL mentioned ``PREPARE``, and the
    connection's own restore statements (``hv_restore``, when ``restore``)."""
    text = RESET_SQL + DEALLOCATE_USER_SQL if getattr(conn, "hv_user_prepared", False) else RESET_SQL
    return text + getattr(conn, "hv_restore", "") if restore else text


POOLER_TRACKED = (
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
)
"""Settings PgBouncer keeps per client and applies to whichever server session serves it (those it reports with
ParameterStatus). Through a pooler, ``RESET ALL`` sets them back to the *pooler's* startup values while PgBouncer
still believes the client's are in force, so the reset puts the client's startup values back (`restore_sql`):
found by tests/backends/test_pgbouncer_store.py (``application_name`` came back empty)."""
SCHEMA_EXISTS_SQL = "SELECT pg_catalog.to_regnamespace(%s) IS NOT NULL"
"""Whether a shard's schema exists (checked once per shard before its first binding behind a transaction pooler)."""
POOLER_HINT_SQL = "SELECT pg_catalog.current_setting('port')::int"


def client_endpoint(pgconn: pq.abc.PGconn) -> tuple[str, int | None]:
    """The host (or socket directory) and port a libpq connection was made to."""
    host = pgconn.host.decode("utf-8", "replace") if pgconn.host else ""
    try:
        port: int | None = int(pgconn.port.decode()) if pgconn.port else None
    except ValueError:
        port = None
    return host, port


def pooler_possible(port: int | None, server_port: int | None) -> bool:
    """False only when the client reached the server directly: it connected to the port the server serves.

    ``port``: what the client connected to (TCP port, or the Unix socket's port number); ``server_port``: the
    server's ``port`` setting.
    """
    return port is None or server_port is None or port != server_port


def restore_sql(pgconn: pq.abc.PGconn) -> str:
    """``SET`` statements giving back a new connection's `POOLER_TRACKED` values, to follow `RESET_SQL`."""
    parts = []
    for name in POOLER_TRACKED:
        value = pgconn.parameter_status(name.encode())
        if value is not None:
            literal = value.decode("utf-8", "replace").replace("'", "''")
            parts.append(f"; SET {name} = '{literal}'")
    return "".join(parts)


def transaction_pooled(store: Any, conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``, a blocking session of ``store``'s server, goes through a transaction-mode pooler.

    The store's resolved ``pooling`` or its ``pgbouncer`` setting; for an unresolved "auto", `pooler_possible`
    asked on ``conn`` (one round trip).
    """
    mode = getattr(store, "pooling", None) or getattr(store, "pgbouncer", "off")
    if mode != "auto":
        return bool(mode == "transaction")
    row = conn.execute(POOLER_HINT_SQL, prepare=False).fetchone()
    return pooler_possible(client_endpoint(conn.pgconn)[1], row[0] if row else None)


def session_lock_refusal(what: str, label: str) -> str:
    """Why ``what`` (operator work holding a session advisory lock) cannot run through a transaction pooler."""
    return (
        f"{what} holds a session advisory lock on {label}, which a transaction-mode pooler cannot keep (the lock "
        "would stay with one of the pooler's server sessions, held for good): run it with a server entry that "
        "reaches the server directly, or through a session-mode pooler with pgbouncer='session'. No pooler there? "
        "pgbouncer='auto' (the default) takes a port other than the server's own for one, as a port mapping such "
        "as Docker's '-p 15432:5432' looks: set pgbouncer='off' on that server entry"
    )


def end_gen(conn: Any, command: bytes) -> Any:
    """psycopg's ``_exec_command(command)`` for ``COMMIT`` or ``ROLLBACK`` on a connection lent behind a
    transaction-mode pooler (``hv_end_reset``): one simple-protocol round trip that also resets the session
    (`reset_sql`) before the pooler hands its server session to another client, which it does at the
    ReadyForQuery ending the message.

    A transaction that commits is reset after its ``COMMIT`` (``<pre>; COMMIT; <reset>``), so what runs at the
    commit (deferred constraint triggers, ``SET LOCAL synchronous_commit``) still has the transaction's own settings
    and shard binding, as on a direct connection; `pre_commit_sql` first releases what is not transactional and
    would survive a failing ``COMMIT`` (session advisory locks, statements the user ``PREPARE``d). One rolled back
    or aborted resets after its end (``ROLLBACK; <reset>``: what survives a rollback, advisory locks, ``PREPARE``d
    statements, sequence values, goes). Every way psycopg ends a transaction comes here: ``commit()``,
    ``rollback()``, ``with conn.transaction():``, ``with conn:``, and `put_connection`'s rollback, also in
    pipeline mode. A ``COMMIT`` that fails (a deferred constraint, a serialization failure) ends the message there:
    the transaction's ``SET``s roll back with it; a sequence value it drew stays readable by ``currval`` on that
    server session (the one leftover).
    """
    conn._check_connection_ok()
    pipeline = conn._pipeline
    if pipeline is None:
        return (yield from _end_simple(conn, command))
    # in pipeline mode libpq sends no simple query: what is queued goes first (psycopg's own sync, its errors
    # raised as psycopg raises them), then the message with pipeline mode left and entered again around it
    yield from pipeline._sync_gen()
    conn.pgconn.exit_pipeline_mode()
    try:
        return (yield from _end_simple(conn, command))
    finally:
        conn.pgconn.enter_pipeline_mode()


def _end_simple(conn: Any, command: bytes) -> Any:
    """`end_gen` out of pipeline mode: the one simple-protocol message and its results."""
    pgconn = conn.pgconn
    reset = reset_sql(conn).encode(pgconn._encoding)
    if command == b"COMMIT" and pgconn.transaction_status == pq.TransactionStatus.INTRANS:
        pgconn.send_query(pre_commit_sql(conn).encode(pgconn._encoding) + b"; COMMIT; " + reset)
    else:  # ROLLBACK, or a COMMIT of an aborted transaction (a rollback too)
        pgconn.send_query(command + b"; " + reset)
    results = yield from generators.execute(pgconn)
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise pg_errors.error_from_result(result, encoding=pgconn._encoding)
    conn.hv_user_prepared = False  # the reset deallocated what it PREPAREd
    return results[-1] if results else None


def _exec_command(conn: Any, base: Any, command: Any, result_format: pq.Format) -> Any:
    """psycopg's ``_exec_command`` (``base``, bound), `end_gen` for the end of a lent connection's transaction."""
    if conn.hv_end_reset and command in (b"COMMIT", b"ROLLBACK") and result_format == pq.Format.TEXT:
        return end_gen(conn, command)
    return base(command, result_format)


def _bind_after_begin(conn: Any, gen: Any) -> Any:
    """A psycopg ``_start_query`` generator followed by the connection's ``SET LOCAL search_path``, if it began."""
    starting = not conn._autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
    yield from gen
    if starting and conn.hv_bind is not None and not conn._pipeline:
        yield from conn._exec_command(conn.hv_bind)


def shard_bound_class(base: type[psycopg.Connection[Any]]) -> type[psycopg.Connection[Any]]:
    """``base`` whose transactions start with ``hv_bind`` (a ``SET LOCAL search_path`` statement) when it is set.

    ``hv_bind`` is None (no effect) except on a connection lent by ``get_connection()`` behind a transaction-mode
    pooler. psycopg begins a transaction in two places: before the first statement when not in autocommit
    (``Connection._start_query``) and when ``transaction()`` is entered on an idle connection; both are extended.
    """

    class ShardBoundConnection(base):  # type: ignore[valid-type,misc]
        hv_bind: bytes | None = None
        hv_restore = ""  # behind a pooler: `restore_sql` of the connection as it started
        hv_watch: Any = None  # a `_selflock.SelfLockWatch` while a caller holding a transaction uses it
        hv_lent_wait: Any = None  # while lent to a borrower holding other sessions: the store's watched wait
        hv_end_reset = False  # lent behind a transaction-mode pooler: each transaction ends with a reset (`end_gen`)

        def _start_query(self) -> Any:
            return _bind_after_begin(self, super()._start_query())

        def _exec_command(self, command: Any, result_format: pq.Format = pq.Format.TEXT) -> Any:
            return _exec_command(self, super()._exec_command, command, result_format)

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            """psycopg's wait; on a lent connection, watched for a wait on its borrower's other sessions."""
            watched = self.hv_lent_wait
            if watched is None:
                return super().wait(gen, interval, timeout)
            return watched(self, super().wait, gen, interval, timeout)

        @contextmanager
        def transaction(self, savepoint_name: str | None = None, force_rollback: bool = False) -> Iterator[Any]:
            began = self.pgconn.transaction_status == pq.TransactionStatus.IDLE
            with super().transaction(savepoint_name, force_rollback) as tx:
                if began and self.hv_bind is not None:
                    with self.lock:
                        self.wait(self._exec_command(self.hv_bind))
                yield tx

    ShardBoundConnection.__name__ = ShardBoundConnection.__qualname__ = f"ShardBound{base.__name__}"
    return ShardBoundConnection


def shard_bound_async_class(base: type[psycopg.AsyncConnection[Any]]) -> type[psycopg.AsyncConnection[Any]]:
    """The asyncio form of `shard_bound_class`."""

    class ShardBoundAsyncConnection(base):  # type: ignore[valid-type,misc]
        hv_bind: bytes | None = None
        hv_restore = ""  # behind a pooler: `restore_sql` of the connection as it started
        hv_watch: Any = None  # a `_selflock.SelfLockWatch` while a caller holding a transaction uses it
        hv_lent_wait: Any = None  # while lent to a borrower holding other sessions: the store's watched wait
        hv_end_reset = False  # lent behind a transaction-mode pooler: each transaction ends with a reset (`end_gen`)

        def _start_query(self) -> Any:
            return _bind_after_begin(self, super()._start_query())

        def _exec_command(self, command: Any, result_format: pq.Format = pq.Format.TEXT) -> Any:
            return _exec_command(self, super()._exec_command, command, result_format)

        async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            """psycopg's wait; on a lent connection, watched for a wait on its borrower's other sessions."""
            watched = self.hv_lent_wait
            if watched is None:
                return await super().wait(gen, interval, timeout)
            return await watched(self, super().wait, gen, interval, timeout)

        @asynccontextmanager
        async def transaction(
            self, savepoint_name: str | None = None, force_rollback: bool = False
        ) -> AsyncIterator[Any]:
            began = self.pgconn.transaction_status == pq.TransactionStatus.IDLE
            async with super().transaction(savepoint_name, force_rollback) as tx:
                if began and self.hv_bind is not None:
                    async with self.lock:
                        await self.wait(self._exec_command(self.hv_bind))
                yield tx

    ShardBoundAsyncConnection.__name__ = ShardBoundAsyncConnection.__qualname__ = f"ShardBound{base.__name__}"
    return ShardBoundAsyncConnection
