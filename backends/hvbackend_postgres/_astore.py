"""`AsyncPostgresServerStore`: one PostgreSQL server behind one psycopg_pool `AsyncConnectionPool` (asyncio).

This module is the source of ``_store.py`` (`PostgresServerStore`, on a `ConnectionPool`), which
tools/async_to_sync.py writes from it: edit this one, then run the tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.rows import tuple_row
from psycopg.types import TypeInfo
from psycopg.types.hstore import register_hstore
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper

from hvbackend_postgres._atransaction import AsyncPostgresTransaction, postgres_transaction
from hvbackend_postgres._bouncer import (
    POOLER_HINT_SQL,
    SCHEMA_EXISTS_SQL,
    check_pooled_user_sql,
    client_endpoint,
    note_user_sql,
    pooler_possible,
    reset_sql,
    restore_sql,
    session_lock_refusal,
    shard_bound_async_class,
)
from hvbackend_postgres._citus import (
    CITUS_COORDINATOR_SQL,
    CITUS_EXTENSION_SQL,
    CITUS_ROW_ESTIMATES_SQL,
    CITUS_SHARD_SCHEMAS_SQL,
    CITUS_SHARDS_PER_STATEMENT,
    CITUS_UNDISTRIBUTED_SQL,
    CitusCoordinator,
    check_citus_version,
    citus_row_estimates,
    distribute_sql,
    read_citus,
)
from hvbackend_postgres._commit import (
    ABORTED,
    BEGIN_XID_SQL,
    COMMITTED,
    IN_PROGRESS,
    SAME_STATEMENT_SQL,
    SESSION_XID_SQL,
    SETTLE_POLL,
    SETTLE_SECONDS,
    STATUS_SQL,
    TERMINATE_PID_SQL,
    TERMINATE_SQL,
    UNKNOWN,
    XID_GROUP_RETURNING,
    XID_SQL,
    CommitCounters,
    applied_sql,
    command_rows,
    full_xid,
    returned_ids,
    returned_xid,
    stored_rows_sql,
    without_xid,
)
from hvbackend_postgres._common import (
    ADVISORY_LOCK,
    BACKEND_CHECK_SQL,
    DENIED_SHARD_SQL,
    HSTORE_SCHEMA_SQL,
    PIPELINE_GRACE,
    PRIVILEGE_SQLSTATE,
    PROVISION_BATCH,
    PROVISION_WORKERS,
    QUERY_FETCH_FIRST,
    SEARCH_PATH_AUTO_PLANS_SQL,
    SEARCH_PATH_SQL,
    OperationTimeout,
    PipelineTimeout,
    StoreCore,
    bounded_async_connection_class,
    chained,
    check_not_ending,
    dump_json,
    idle_socket_state,
    load_json,
    log_statement,
    log_statements,
    named_shard,
    query_fetch_sizes,
    query_records,
    resumed,
    session_clean,
    timeout_in,
)
from hvbackend_postgres._fanout import (
    AUTO_PLANS_SQL,
    FIRST_FILL_ROWS,
    GENERIC_POINT_PLANS,
    PIPELINE_PIECES,
    POINT_PLANS_SQL,
    QueryPiece,
    bring_preferred_forward,
    configure_preparation,
    mark_session,
    pieces_per_transaction,
    plans_generic,
    preferred_shard,
    prepare_hot,
    shard_pieces,
)
from hvbackend_postgres._indexes import PostgresIndexes, adopt_body_index, is_unique_violation, unique_violation
from hvbackend_postgres._lease import PostgresWorkerLease, alease_worker
from hvbackend_postgres._legacy import (
    LAYOUT_SAMPLE,
    LAYOUT_SAMPLE_SQL,
    LEGACY_SQL,
    layout_problem,
    legacy_signs,
    legacy_table_error,
    max_id_query,
)
from hvbackend_postgres._lent import LentConnection, detach, forget_user_state, lent_target, remember_baseline
from hvbackend_postgres._migrate import ESCAPED_PATH, PostgresMigrator, new_shard_ddl
from hvbackend_postgres._move import IDENTITY_SQL, SYSTEM_ID_SQL, PostgresMover, identity_text
from hvbackend_postgres._onetrip import PIPELINE, PreparedNames, dollar_params, error_in, until_sync
from hvbackend_postgres._poolguard import signal_safe_getconn
from hvbackend_postgres._replica import (
    WAL_AFTER_WRITE_SQL,
    WAL_POSITION_SQL,
    position_after_write,
    until_second_sync,
    wal_position_of,
)
from hvbackend_postgres._schema import (
    BODY_INDEX,
    BODY_INDEX_UNSET,
    MOVED_SQLSTATE,
    STUB_PLANNING_STATES,
    TABLE,
    ShardSQL,
    catalog_query,
    count_query,
    moved_error,
    required_relations,
    shard_ddl,
    shard_schema,
    stub_probe_sql,
)
from hvbackend_postgres._selflock import (
    BLOCKED_BY_SQL,
    CANCEL_SQL,
    LENT,
    SELF_LOCK_DELAY,
    SELF_LOCK_POLL_MAX,
    SelfLockWatch,
    call_later,
)
from hvbackend_postgres._selflock import TRANSACTION as HELD_IN_TRANSACTION
from hvbackend_postgres._shardtx import shard_search_path
from hvcore._acompat import ALock, agather, ashield, asleep, aspawn, ato_thread
from hvcore._backend import BackendOptions, ProvisionReport, QuerySpec, Record
from hvcore._config import pgbouncer_mode
from hvcore._holdings import CONNECTION, Hold, closed_while_waiting, current_owner, held
from hvcore._holdings import holds as holds_now
from hvcore._key import Key
from hvcore._metrics import metrics
from hvcore.errors import (
    ConfigError,
    ConnectionMisuse,
    DuplicateKey,
    MigrationError,
    ServerUnavailable,
    ShardMoved,
)

__all__ = ["AsyncPostgresServerStore"]

LOCAL_LOCK_TIMEOUT_SQL = "SELECT pg_catalog.set_config('lock_timeout', %s, true)"  # this transaction's, in ms

AConn = psycopg.AsyncConnection[Any]
_T = TypeVar("_T")
ROW_ESTIMATES_SQL = (  # rows per shard table from the server's statistics: no table is read (row_estimates)
    "SELECT schemaname, n_live_tup FROM pg_catalog.pg_stat_user_tables WHERE relname = %s AND schemaname = ANY(%s)"
)
_orphans: list[Any] = []  # pools inherited over fork: kept alive so nothing finalizes the parent's sockets


def _logging_cursor(logger: Any, log_values: bool = False) -> type[psycopg.AsyncCursor[Any]]:
    """A cursor class logging every statement at DEBUG before running it (bound values only if ``log_values``)."""

    class LoggingCursor(psycopg.AsyncCursor[Any]):
        """A psycopg cursor that logs each statement (and, when asked, its parameters)."""

        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> LoggingCursor:
            log_statement(logger, log_values, query, params, self.connection)
            await super().execute(query, params, **kwargs)
            return self

        async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            params_seq = list(params_seq)
            log_statements(logger, log_values, query, params_seq, self.connection)
            await super().executemany(query, params_seq, **kwargs)

    return LoggingCursor


STUB_PROBE_WAIT = 0.5  # s: how long a lent cursor waits for a connection of a full pool to check for a stub


def _lent_cursor(
    base: type[psycopg.AsyncCursor[Any]], probe: Callable[[int], Awaitable[ShardMoved | None]]
) -> type[psycopg.AsyncCursor[Any]]:
    """``base`` for user SQL (``cursor()``, ``get_connection()``, ``tx.cursor()``): a statement refused by a moved
    shard's forwarding stub raises `ShardMoved`, noted on the connection (``hv_moved``) so that ``put_connection``
    lets the datastore learn the new placement.

    The stub's own ``ZHV01`` says so at once; a statement PostgreSQL refuses while planning (`STUB_PLANNING_STATES`:
    ON CONFLICT with a target, TRUNCATE, DDL...) is checked with ``probe(shard)`` (`stub_probe_sql` on another
    pooled connection: the statement's own transaction is aborted) for the shard the connection is lent for
    (``hv_shard``); without an answer the driver's error stands.
    """

    class LentCursor(base):  # type: ignore[valid-type,misc]
        """A psycopg cursor whose forwarding-stub refusals are `ShardMoved`, refused once its borrow has ended."""

        def __init__(self, connection: Any, **kwargs: Any) -> None:
            super().__init__(connection, **kwargs)
            self._hv_lend = getattr(connection, "hv_lend", None)  # the borrow it was made in (None: a transaction's)

        def _check_lent(self) -> None:
            """`ConnectionMisuse` if the connection was returned since: it may be another borrower's by now."""
            _check_borrow(self)

        def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
            _check_user_sql(self, statement)
            return super().copy(statement, *args, **kwargs)

        def stream(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            _check_user_sql(self, query)
            return super().stream(query, *args, **kwargs)

        async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            _check_user_sql(self, query)
            try:
                return await super().execute(query, params, **kwargs)
            except psycopg.Error as exc:
                moved = await self._moved(exc)
                if moved is None:
                    raise
                raise moved from exc

        async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            _check_user_sql(self, query)
            try:
                await super().executemany(query, params_seq, **kwargs)
            except psycopg.Error as exc:
                cut = timeout_in(exc)
                if cut is not None and cut is not exc:
                    # psycopg runs executemany in a pipeline of its own, which it cannot leave once operation_timeout
                    # cut it off ("cannot exit pipeline mode while busy"): the session is done with, as after any
                    # timeout (the pool discards it), and the error is the timeout's, as for execute()
                    self.connection.pgconn.finish()
                    raise cut from None
                moved = await self._moved(exc)
                if moved is None:
                    raise
                raise moved from exc

        async def _moved(self, exc: psycopg.Error) -> ShardMoved | None:
            conn: Any = self.connection
            moved: ShardMoved | None = None
            if exc.sqlstate == MOVED_SQLSTATE:
                moved = moved_error(exc)
            elif exc.sqlstate in STUB_PLANNING_STATES and getattr(conn, "hv_shard", None) is not None:
                moved = await probe(conn.hv_shard)
            if moved is not None:
                conn.hv_moved = moved
            return moved

    return LentCursor


def _check_borrow(cur: Any) -> None:
    """`ConnectionMisuse` if the connection of ``cur`` (a lent cursor) was returned since the cursor was made: it may
    be another borrower's by now."""
    lend = cur._hv_lend
    if lend is not None and getattr(cur.connection, "hv_lend", None) is not lend:
        raise lend.hv_misuse()


def _check_user_sql(cur: Any, query: Any) -> None:
    """What every way user SQL leaves a lent cursor (``execute``, ``executemany``, ``stream``, ``copy``, a named
    cursor's ``execute``) checks before it is sent: the borrow is live (`_check_borrow`), inside
    ``db.transaction()`` nothing ends it (`check_not_ending`), behind a transaction-mode pooler nothing leaves
    session state (`check_pooled_user_sql`); a ``PREPARE`` is noted for the reset (`note_user_sql`)."""
    _check_borrow(cur)
    conn: Any = cur.connection
    in_tx = getattr(conn, "hv_in_tx", None)
    if in_tx is not None:  # inside db.transaction(): its end is the block's, never the statement's
        check_not_ending(query, conn, in_tx)
    if getattr(conn, "hv_end_reset", False):  # lent behind a transaction-mode pooler
        check_pooled_user_sql(conn, query, _lent_where(conn))
    note_user_sql(conn, query)


class _LentServerCursor(psycopg.AsyncServerCursor[Any]):
    """The named (server-side) cursor of a lent connection: its statement is checked as a lent cursor's are
    (`_check_user_sql`), and behind a transaction-mode pooler a ``WITH HOLD`` cursor declared in autocommit mode is
    refused (it would stay open on one of the pooler's server sessions, for its other clients)."""

    def __init__(self, connection: Any, name: str, **kwargs: Any) -> None:
        super().__init__(connection, name, **kwargs)
        self._hv_lend = getattr(connection, "hv_lend", None)

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _check_user_sql(self, query)
        conn: Any = self.connection
        idle = conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        if getattr(conn, "hv_end_reset", False) and conn.autocommit and idle:
            raise ConnectionMisuse(
                f"a named (server-side) cursor {self.name!r} was declared in autocommit mode through a connection to "
                f"{_lent_where(conn)} behind a transaction-mode pooler: a WITH HOLD cursor would stay open on "
                "whichever of the pooler's server sessions is free, for its other clients; declare it inside a "
                "transaction (autocommit off, or `with conn.transaction():`)"
            )
        return await super().execute(query, params, **kwargs)

    async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
        _check_user_sql(self, query)
        await super().executemany(query, params_seq, **kwargs)

    def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        _check_user_sql(self, statement)
        return super().copy(statement, *args, **kwargs)

    def stream(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        _check_user_sql(self, query)
        return super().stream(query, *args, **kwargs)


def _lent_where(conn: Any) -> str:
    """What a lent connection is lent for, for an error: "shard N on <server>"."""
    handle = getattr(conn, "hv_lend", None)
    return getattr(handle, "_self_where", None) or f"shard {getattr(conn, 'hv_shard', None)}"


if True:  # ASYNC
    from hvcore._acompat import loop_gone, owned_elsewhere

    async def _abandon(pool: _Pool) -> None:
        """Close a pool whose event loop is gone: its idle connections closed here, its workers (tasks of the dead
        loop) never awaited — `psycopg_pool.AsyncConnectionPool.close` would wait for them on that loop."""
        pool._closed = True  # getconn refuses, putconn closes what comes back
        idle, pool._pool = list(pool._pool), type(pool._pool)()
        for conn in idle:
            await conn.close()


if True:  # ASYNC
    from psycopg_pool.pool_async import StopWorker

_pool_log = logging.getLogger("psycopg.pool")  # psycopg_pool's own logger, for the worker's warnings

TOO_MANY_CONNECTIONS = "53300"  # max_connections, or the role's or database's CONNECTION LIMIT
_TOO_MANY = ("too many connections", "too many clients")  # the server's 53300 texts: libpq gives no SQLSTATE at login


def _too_many_connections(exc: BaseException) -> bool:
    """True if a connection attempt was refused only because the server (or the role's or database's CONNECTION
    LIMIT) allows no more sessions (SQLSTATE 53300; at login libpq passes on the server's text alone)."""
    if getattr(exc, "sqlstate", None) == TOO_MANY_CONNECTIONS:
        return True
    text = str(exc)
    return any(phrase in text for phrase in _TOO_MANY)


class _Pool(psycopg_pool.AsyncConnectionPool[AConn]):
    """psycopg_pool's pool, which also fails waiting clients at once when a connection attempt fails (unless the
    server only refuses more sessions while the pool has some: then they wait for one to come back)."""

    def __init__(self, *args: Any, describe_error: Callable[[Exception], Exception], **kwargs: Any) -> None:
        self.last_error: Exception | None = None
        if True:  # ASYNC
            self.hv_loop: asyncio.AbstractEventLoop | None = None  # set by open (see loop_gone)
        self._describe_error = describe_error
        super().__init__(*args, **kwargs)

    async def _connect(self, timeout: float | None = None) -> AConn:
        try:
            conn = await super()._connect(timeout)
        except Exception as exc:
            if self._nconns > 1 and _too_many_connections(exc):
                # the server (or the role's CONNECTION LIMIT) allows no more sessions, but this pool has some: its
                # waiting clients get one when it comes back; psycopg_pool tries to grow again later
                raise
            error = self._describe_error(exc)
            self.last_error = error
            async with self._lock:
                waiting = list(self._waiting)
                self._waiting.clear()
            for client in waiting:
                await client.fail(error)
            raise
        self.last_error = None
        return conn

    async def _get_ready_connection(self, timeout: float | None) -> AConn | None:
        """psycopg_pool's pick of an idle connection, which takes the front one: a single-shard operation's own
        session is brought to the front first, if idle (shard-affine sessions: `_fanout.bring_preferred_forward`)."""
        bring_preferred_forward(self._pool)
        return await super()._get_ready_connection(timeout)

    if True:  # ASYNC

        @classmethod
        async def worker(cls, q: Any) -> None:
            """psycopg_pool's maintenance worker, except that its own cancellation ends it.

            psycopg_pool catches ``CancelledError`` from each task it runs (to keep the pool consistent) and goes
            back to its queue, so a worker cancelled while it opened a connection for a growing pool (asyncio.run()
            ending with the store still open, then used from the next asyncio.run()) lost the cancellation and
            asyncio.run() waited for it forever. A task that is being cancelled (``cancelling()``) now stops.
            """
            me = asyncio.current_task()
            while True:
                task = await q.get()
                if isinstance(task, StopWorker):
                    return
                try:
                    await task.run()
                except (Exception, asyncio.CancelledError) as exc:
                    if me is not None and me.cancelling():
                        raise
                    _pool_log.warning("task run %s failed: %s: %s", task, exc.__class__.__name__, exc)
                if me is not None and me.cancelling():  # swallowed on its way (asyncio.wait_for inside psycopg)
                    raise asyncio.CancelledError

    else:

        def _getconn_unchecked(self, timeout: float) -> AConn:
            """psycopg_pool's wait for a connection, safe from exceptions raised by signal handlers (`_poolguard`)."""
            return cast(AConn, signal_safe_getconn(self, timeout))


class AsyncPostgresServerStore(StoreCore):
    """One PostgreSQL server as the `AsyncDatastore` sees it: a pool, the shards' schemas, hstore or jsonb bodies.

    ``settings`` are libpq connection parameters (``host``, ``port``, ``dbname``, ``user``, ``password``, ``sslmode``
    ...) and/or a ``conninfo`` string; ``backend`` is ``"hstore"`` (text to text) or ``"jsonb"`` (JSON types).
    `AsyncPostgresServerStore` awaits every round trip on the caller's event loop (a full pool or a slow server
    makes the waiting task wait, never the loop; the pool belongs to the loop that first used the store);
    `PostgresServerStore` is its thread-safe sync form. ``settings["pgbouncer"]`` says whether a pooler stands in
    front of the server (``"auto"``, ``"transaction"``, ``"session"``, ``"off"``; see ``_bouncer``).
    """

    __module__ = "hvbackend_postgres"
    leases_across_processes = True  # its worker leases hold across processes and hosts (Datastore worker="auto")

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions, *, backend: str = "jsonb") -> None:
        super().__init__(settings, options, backend=backend)
        self._cursor_factory = (
            _logging_cursor(options.logger, options.log_values) if options.logger is not None else None
        )
        self._lent_cursor = _lent_cursor(self._cursor_factory or psycopg.AsyncCursor, self._stub_probe)  # user SQL
        self._pool: _Pool | None = None
        self._pool_lock = ALock()
        self._lock = threading.Lock()  # guards the borrowed-connection book-keeping (no await inside)
        self._borrowed: dict[int, tuple[AConn, _Pool]] = {}
        self._handles: dict[int, LentConnection] = {}  # id(connection) -> the handle lent for it
        self._lent_holds: dict[int, Hold] = {}  # id(connection) -> its borrower's hold (`_selflock`)
        self._commit_counters = CommitCounters()  # lost writes settled by asking the server (see _commit)
        self._prepared = PreparedNames()  # our write statements each pooled connection has prepared (_onetrip)
        # read-your-writes with standbys (hvcore._areadrouter): writes bring back the WAL position past their commit
        self.track_wal = False
        self._wal_written = 0  # the highest such position seen (bytes)
        self._wal_gaps = 0  # writes that may have committed without bringing it back (a lost exchange)
        self._wal_gaps_covered = 0  # ... of which a later `wal_position()` read covers this many
        self._dollar: dict[str, bytes] = {}  # write statements with $n placeholders
        self._xid_in_txn = False  # True once the server refused pg_current_xact_id() in RETURNING (Citus)
        self._write_sql: dict[tuple[int, bool | None, str | None], str] = {}  # update (merge) and delete (None)
        self.pgbouncer = pgbouncer_mode(settings)  # as configured; `pooling` is what it resolved to
        self.pooling: str | None = None if self.pgbouncer == "auto" else self.pgbouncer
        self._detect_lock = ALock()
        self._returning = 0  # connections on their way back to the pool (shielded from cancellation)
        self._bindable: set[int] = set()  # shards whose schema was seen, for lending behind a transaction pooler
        if True:  # ASYNC
            self._retired: set[asyncio.Task[None]] = set()  # old pools closing in the background

    # -- identity --------------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<AsyncPostgresServerStore {self.backend} {self._label} {state} borrowed={self._lent}>"

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def _configure(self, conn: AConn) -> None:
        conn.adapters.register_dumper(Key, Int8Dumper)
        conn.adapters.register_dumper(Key, Int8BinaryDumper)
        set_json_loads(load_json, conn)
        set_json_dumps(dump_json, conn)
        configure_preparation(conn)  # room for every shard's point statements, prepared (_fanout)
        mark_session(conn)  # its random line over shard ids: which shards prefer it (_fanout, shard-affine sessions)
        if self._cursor_factory is not None:
            conn.cursor_factory = self._cursor_factory
        if self.pooling is None:
            async with self._detect_lock:
                if self.pooling is None:
                    self.pooling = await self._detect_pooling(conn)
        if self.pooling == "transaction":
            conn.prepare_threshold = None  # prepared statements stay with a server session (see _bouncer)
        if self.pooling != "off":  # behind a pooler RESET ALL would also undo what it keeps per client
            cast(Any, conn).hv_restore = restore_sql(conn.pgconn)
        elif GENERIC_POINT_PLANS and prepare_hot(conn):  # our point statements planned once per session (_fanout)
            await conn.execute(POINT_PLANS_SQL)
            cast(Any, conn).hv_generic = True
            cast(Any, conn).hv_restore = "; " + POINT_PLANS_SQL  # after RESET ALL, once a lent connection is back
        remember_baseline(conn)  # what a lent connection's return restores (forget_user_state)

    async def _detect_pooling(self, conn: AConn) -> str:
        """``pgbouncer="auto"``: "off" for a direct TCP connection, else "transaction" (see ``_bouncer``)."""
        try:
            row = await (await conn.execute(POOLER_HINT_SQL, prepare=False)).fetchone()
        except psycopg.Error as exc:
            self._log("pgbouncer='auto': %s did not answer the check (%s): transaction pooling", self._label, exc)
            return "transaction"
        mode = "transaction" if pooler_possible(client_endpoint(conn.pgconn)[1], row[0] if row else None) else "off"
        # no label here: the statement log of tests is searched for bound values, and a port may contain them
        self._log("pgbouncer='auto': %s", "direct" if mode == "off" else "not the server's port: transaction pooling")
        return mode

    async def _new_pool(self) -> _Pool:
        pool = _Pool(
            self._conninfo,
            **self._pool_kwargs(),
            connection_class=shard_bound_async_class(bounded_async_connection_class(self._options.operation_timeout)),
            configure=self._configure,
            open=False,
            describe_error=self._unavailable,
        )
        await pool.open()
        if True:  # ASYNC
            pool.hv_loop = asyncio.get_running_loop()  # its workers' loop (see close)
        return pool

    async def open(self) -> None:
        """Create the pool (idempotent); connections are made on first use, so a server that is down fails later."""
        if self._pool is not None:
            return
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self._new_pool()

    async def close(self) -> None:
        """Close the pool and every idle connection (idempotent); connections still borrowed close when returned."""
        if True:  # ASYNC
            if self._pool is not None:
                elsewhere = owned_elsewhere(self._pool.hv_loop, f"the pool of {self._label}")
                if elsewhere is not None:  # its workers run there: close it from there
                    raise elsewhere
            pool, self._pool = self._pool, None  # no lock: it may belong to a loop that is gone (below)
            if pool is not None and loop_gone(pool.hv_loop):
                await _abandon(pool)
            elif pool is not None:
                await pool.close(timeout=1.0)
            retired = [task for task in self._retired if not loop_gone(task.get_loop())]
            self._retired = set()
            if retired:
                await asyncio.gather(*retired, return_exceptions=True)
        else:
            async with self._pool_lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close(timeout=1.0)

    def after_fork_in_child(self) -> None:
        """Forget the inherited pool without closing its sockets (they are the parent's sessions)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._closed = True  # its finalizer must not signal the parent's workers
            _orphans.append(pool)
        _orphans.extend(conn for conn, _ in self._borrowed.values())
        self._borrowed = {}
        self._borrower = {}
        self._handles = {}
        self._lent_holds = {}
        self._holdings.clear()
        self._self_locks.clear()
        self._lent = 0
        self._waiting = 0
        self._lock = threading.Lock()
        self._pool_lock = ALock()
        self._detect_lock = ALock()
        self._returning = 0
        if True:  # ASYNC
            self._retired = set()

    # -- connections -----------------------------------------------------------------------------------------

    async def _current_pool(self) -> _Pool:
        pool = self._pool
        if pool is None:
            await self.open()
            pool = self._pool
            if pool is None:
                raise ServerUnavailable(f"the store of {self._label} was closed")
        if pool.last_error is not None:
            pool = await self._recover(pool)
        return pool

    if True:  # ASYNC

        async def _follow_loop(self, pool: _Pool) -> _Pool | None:
            """``pool`` was opened on an event loop that runs no more (an earlier ``asyncio.run()``): its workers,
            which make its connections, will never run again, so it is closed (idle connections) and a new pool
            opened on the running loop. A pool of another loop that still runs (another thread's) is left to it:
            `WrongEventLoop` at once, where waiting on it would only end in pool timeouts."""
            elsewhere = owned_elsewhere(pool.hv_loop, f"the pool of {self._label}")
            if elsewhere is not None:
                raise elsewhere
            if not loop_gone(pool.hv_loop):
                return pool
            if self._pool is pool:  # the first caller on the new loop: the old locks may be held by dead tasks
                self._pool_lock = ALock()
                self._detect_lock = ALock()
            async with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
                    await _abandon(pool)
                    self._pool = await self._new_pool()
                return self._pool

    async def _recover(self, failed: _Pool) -> _Pool:
        """The last connection attempt failed: probe the server now; if it is back, start from a fresh pool."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
        except psycopg.Error as exc:
            raise self._attempt_failed(self._unavailable(exc)) from None
        await probe.close()
        async with self._pool_lock:
            if self._pool is failed:
                self._pool = await self._new_pool()
            pool = self._pool
        if pool is not failed:
            if True:  # ASYNC
                task = asyncio.create_task(failed.close(timeout=5.0))  # its workers may still be retrying a connect
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
            else:
                failed.close(timeout=0)
        if pool is None:
            raise ServerUnavailable(f"the store of {self._label} was closed")
        return pool

    @staticmethod
    async def _healthy(conn: AConn) -> bool:
        """Cheap checkout check: a dead socket shows up as readable while idle (no round trip in the usual case); a
        session not clean (`session_clean`: in a pipeline or a transaction) is unusable too."""
        if not session_clean(conn):
            return False
        state = idle_socket_state(conn.pgconn)
        if state is not None:
            return state
        try:  # a termination notice, EOF, or just a notification: a round trip tells
            await conn.execute("")
        except psycopg.Error:
            return False
        return True

    async def _checkout(self, shard: int | None = None, *, watch: bool = True) -> tuple[AConn, _Pool]:
        """Borrow a checked connection: dead ones are discarded and replaced without failing the caller.

        ``shard``: the one shard the borrower will work on (a point operation, a lent connection or transaction
        bound to it): the pool then hands out the idle session that shard prefers (`_fanout.bring_preferred_forward`).
        ``watch``: a caller holding an open transaction on this server has its statements watched for a wait on
        that transaction (`_watch`; not a connection lent to user code).
        """
        self._no_second_attempt()  # this server did not answer earlier in the running call
        deadline = time.monotonic() + self._options.pool_block_timeout
        while True:
            pool = self._pool
            if True:  # ASYNC
                if pool is not None and pool.hv_loop is not asyncio.get_running_loop():
                    pool = await self._follow_loop(pool)
            if pool is None or pool.last_error is not None:
                pool = await self._current_pool()
            if True:  # ASYNC
                task = asyncio.current_task()
                cancels = task.cancelling() if task is not None else 0
            # metrics.wait_time: "all" records every checkout's wait, "waits" those that find no idle connection
            waits = not pool._pool  # no idle connection: this caller waits (stats()["waiting"] counts it meanwhile)
            timed = metrics.on and (metrics.wait_all or (metrics.wait_some and waits))
            if waits:
                with self._lock:
                    self._waiting += 1
            preference = preferred_shard.set(shard)
            try:
                conn = await pool.getconn(max(deadline - time.monotonic(), 0.001))
            except psycopg_pool.PoolTimeout:
                if pool.last_error is not None:  # waited while every connection attempt failed
                    raise self._attempt_failed(pool.last_error) from None
                if not self._lent and not pool._pool and pool._growing:
                    # none in use, none idle: the wait was for the pool's attempt to open one, which the server
                    # has not answered (its connect_timeout ends about when pool_block_timeout does)
                    raise self._attempt_failed(self._no_session()) from None
                if metrics.on:
                    metrics.connection_timeout(self._label)
                # connections in use, and maybe a new one under way that the server has not answered
                raise self._pool_timeout(connecting=bool(pool._growing)) from None
            except psycopg_pool.PoolClosed:
                if self._pool is None or self._pool is pool:  # the store was closed while this call waited
                    raise closed_while_waiting(self._label) from None
                continue  # replaced by a fresh pool meanwhile
            finally:
                preferred_shard.reset(preference)
                if waits:
                    with self._lock:
                        self._waiting -= 1
            if True:  # ASYNC
                if task is not None and task.cancelling() > cancels:
                    # cancelled as the pool handed the connection over: psycopg_pool waits with asyncio.wait_for,
                    # which on Python 3.11 returns the result and drops a cancellation arriving as the wait ends
                    # (CPython gh-86296, fixed in 3.12); the caller asked to stop, so it stops, and nothing is lost
                    await self._give_back(conn, pool)
                    raise asyncio.CancelledError
            try:
                healthy = await self._healthy(conn)
            except BaseException:  # interrupted (cancelled, a signal) during the round trip: state unknown
                await self._give_back(conn, pool, discard=True)
                raise
            if healthy:
                if timed:
                    metrics.connection_wait(self._label, time.monotonic() - deadline + self._options.pool_block_timeout)
                with self._lock:
                    self._lent += 1
                if self._self_locks.open and watch:  # some transaction is open on this server: is it this caller's?
                    self._watch(conn)
                return conn, pool
            self._log("discarding a dead connection to %s", self._label)
            await self._give_back(conn, pool, discard=True)

    def _watch(self, conn: AConn) -> None:
        """Watch the statements ``conn`` runs for the running code if it holds sessions of this server (an open
        transaction, a lent connection: `held`, see `_selflock`): `_check_self_lock` runs after `SELF_LOCK_DELAY` s
        unless the connection is back by then."""
        holds = self._self_locks.mine(held())
        if not holds:
            return
        cast(Any, conn).hv_watch = self._start_watch(current_owner(), holds, self._session_pid(conn))

    def _start_watch(self, owner: object, holds: tuple[Hold, ...], pid: int) -> SelfLockWatch:
        """A watch of session ``pid`` (run for ``owner``) against ``holds``: `_check_self_lock` after
        `SELF_LOCK_DELAY` s unless stopped first."""
        watch = SelfLockWatch(owner, holds, pid)
        if True:  # ASYNC
            watch.handle = asyncio.get_running_loop().call_later(SELF_LOCK_DELAY, self._spawn_check, watch)
        else:
            watch.handle = call_later(SELF_LOCK_DELAY, self._check_self_lock, watch)
        return watch

    async def _lent_wait(self, conn: AConn, wait: Any, gen: Any, interval: float, timeout: float | None) -> Any:
        """``wait(gen, interval, timeout)`` (psycopg's, for a statement of user SQL on ``conn``, lent by
        `get_connection` or a `cursor` block), watched like a plain call's statement if the borrower holds other
        sessions of this server (the lent one is excluded: it is the one waiting): a wait for one of them is
        cancelled after `SELF_LOCK_DELAY` s and raises `SelfDeadlock` (the borrower's transaction on ``conn`` is
        then aborted, as after any failed statement)."""
        locks = self._self_locks
        own = self._lent_holds.get(id(conn))
        if own is not None and (own.holder != current_owner() or not holds_now(own)):
            # a lent connection used by a thread or task other than its holder (handed to another thread or task,
            # even one running in a copy of the borrower's context): the session is held by whoever runs SQL on
            # it, judged by thread and task, not by context, so it is that code's from now on (`SelfLocks.used`)
            moved = locks.used(own)
            if moved is not own:
                own = self._lent_holds[id(conn)] = moved
        holds = tuple(hold for hold in locks.mine(held()) if hold is not own) if len(locks.open) > 1 else ()
        if not holds:
            return await wait(gen, interval, timeout)
        watch = self._start_watch(object(), holds, self._session_pid(conn))
        try:
            return await wait(gen, interval, timeout)
        except psycopg.errors.QueryCanceled as exc:
            if watch.stop():
                entry = locks.open.get(own) if own is not None else None
                if entry is not None and entry[2] == HELD_IN_TRANSACTION:  # a transaction's own statement
                    via = "tx.cursor()" if getattr(conn, "hv_in_tx", None) is not None else "tx"
                    found = locks.error(watch.owner, entry[1], self._label, raw=True, nested=(entry[1], via))
                else:
                    found = locks.error(watch.owner, cast(Any, conn).hv_shard, self._label, raw=True)
                if found is not None:
                    raise found from exc
            raise
        finally:
            if watch.stop():  # fired, yet the statement ended otherwise: its cancel must not reach the next one
                await self._cancel_sent(watch)
            locks.forget(watch.owner)

    @staticmethod
    async def _cancel_sent(watch: SelfLockWatch) -> None:
        """Wait (up to `SELF_LOCK_POLL_MAX` s) until the cancel ``watch`` fired has reached the server: a lent
        connection goes on being used (unlike a plain call's, which is discarded), and a cancel arriving at an idle
        session is ignored, one arriving during the borrower's next statement would cancel it."""
        deadline = time.monotonic() + SELF_LOCK_POLL_MAX
        while not watch.sent and time.monotonic() < deadline:
            await asleep(0.005)

    def holds_session(self) -> bool:
        """True if the running code holds a session of this server (an open transaction, a lent connection): its
        reads and inserts then run statements of their own, never in another caller's batch (``hvcore._acoalesce``),
        where a wait of theirs for that session could not be recognised (`_selflock`)."""
        return bool(self._self_locks.open) and bool(self._self_locks.mine(held()))

    def _spawn_check(self, watch: SelfLockWatch) -> None:
        """Start `_check_self_lock` (asyncio: as a task of the loop, kept until it ends)."""
        if True:  # ASYNC
            if watch.done:
                return
            task = asyncio.ensure_future(self._check_self_lock(watch))
            self._self_locks.tasks.add(task)
            task.add_done_callback(self._self_locks.tasks.discard)
        else:
            self._check_self_lock(watch)

    def _unwatch(self, conn: AConn) -> bool:
        """The watched call on ``conn`` is over; True if its statement was cancelled (the session is not reused)."""
        watch: SelfLockWatch = cast(Any, conn).hv_watch
        cast(Any, conn).hv_watch = None
        fired = watch.stop()
        self._self_locks.forget(watch.owner)
        return fired

    async def _check_self_lock(self, watch: SelfLockWatch) -> None:
        """Ask the server, on a connection of its own, whether the watched session waits for one of the sessions its
        caller holds (`BLOCKED_BY_SQL`); if so, note it and cancel the statement (`_translate` then raises
        `SelfDeadlock`), else ask again after a pause (doubling up to `SELF_LOCK_POLL_MAX`) while the call goes on.
        Best effort: a failure here leaves the call waiting as it would without the watch."""
        conn: AConn | None = None
        pause = SELF_LOCK_DELAY
        try:
            while not watch.done and watch.pid:
                ours = self._self_locks.pids(watch.holds)
                if not ours:
                    return
                if conn is None:
                    conn = await bounded_async_connection_class(self._options.operation_timeout).connect(
                        self._conninfo, **{**self._kwargs, "autocommit": True}
                    )
                cur = await conn.execute(BLOCKED_BY_SQL, {"pid": watch.pid, "ours": ours})
                row = await cur.fetchone()
                if row is not None and row[0] and watch.fire():
                    self._self_locks.found(watch.owner, str(row[1] or ""), list(row[0]), watch.holds, row[3])
                    await conn.execute(CANCEL_SQL, (watch.pid, row[2]))
                    self._log("a call on %s waited for its own transaction (pid %s): cancelled", self._label, row[0])
                    return
                await asleep(pause)
                pause = min(pause * 2, SELF_LOCK_POLL_MAX)
        except (psycopg.Error, OSError) as exc:
            self._log("checking what a call on %s waits for failed: %s", self._label, exc)
        finally:
            watch.sent = True
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await conn.close()

    async def _checkin(self, conn: AConn, pool: _Pool) -> None:
        """Give a connection back; a return cannot be cancelled half-way (a half-done return loses the slot)."""
        with self._lock:
            self._lent -= 1
        if conn.hv_watch is not None and self._unwatch(conn):  # type: ignore[attr-defined]
            await self._give_back(conn, pool, discard=True)  # cancelled (_selflock): no late cancel for the next one
            return
        if True:  # ASYNC
            if session_clean(conn) and not (pool._lock.locked() or pool._waiting):
                # psycopg_pool's return of an idle connection with its lock free and nobody waiting never suspends,
                # so no cancellation can reach it: the common case needs no shield (a task per return)
                await pool.putconn(conn)
                return
        await self._give_back(conn, pool)

    async def _give_back(self, conn: AConn, pool: _Pool, *, discard: bool = False) -> None:
        """Return ``conn`` to ``pool``, closing it first if it is in an unknown state: the pool then replaces it.

        Every caller's own work is done or rolled back by now, so a connection that is not idle in autocommit (a
        statement, a transaction or a half-restored state left behind by an interruption) cannot be trusted: it is
        closed, never reused. On asyncio the
        return runs to its end even if the caller is cancelled meanwhile.
        """
        if True:  # ASYNC
            await ashield(self._return_to_pool(conn, pool, discard))
        else:
            self._return_to_pool(conn, pool, discard)

    async def _return_to_pool(self, conn: AConn, pool: _Pool, discard: bool) -> None:
        self._returning += 1
        try:
            if not conn.closed and (discard or not session_clean(conn)):
                await conn.close()
            await pool.putconn(conn)
        finally:
            self._returning -= 1

    async def get_connection(self, shard_id: int) -> AConn:
        """Borrow a connection (transactional, rows as dicts by default) whose search path is the shard's schema."""
        path, schema = self._search_path(shard_id)
        conn, pool = await self._checkout(shard_id, watch=False)  # what user code runs there is its own business
        try:
            if self.pooling == "transaction":  # every transaction it opens starts with SET LOCAL (see _bouncer)
                if shard_id not in self._bindable:
                    row = await (await conn.execute(SCHEMA_EXISTS_SQL, (schema,))).fetchone()
                    if not row or not row[0]:
                        raise self._shard_missing(shard_id)
                    self._bindable.add(shard_id)
                cast(Any, conn).hv_bind = shard_search_path(shard_id, self._ext_schema).as_bytes(conn)
                cast(Any, conn).hv_end_reset = True  # each of its transactions ends resetting the session (_bouncer)
            else:
                query = SEARCH_PATH_AUTO_PLANS_SQL if plans_generic(conn) else SEARCH_PATH_SQL
                cur = await conn.execute(query, (path.as_string(conn), schema))
                row = await cur.fetchone()
                if not row or not row[1]:
                    raise self._shard_missing(shard_id)
            await conn.set_autocommit(False)
            conn.row_factory = self._user_row_factory
            conn.cursor_factory = self._lent_cursor  # a forwarding stub's refusal is ShardMoved (`_reset` undoes)
            conn.server_cursor_factory = _LentServerCursor  # its SQL checked as the cursors' is (`_reset` undoes)
            cast(Any, conn).hv_shard = shard_id
        except BaseException as exc:
            cast(Any, conn).hv_bind = None
            cast(Any, conn).hv_end_reset = False
            await self._checkin(conn, pool)
            if isinstance(exc, psycopg.OperationalError):
                raise self._unavailable(exc) from None
            raise
        handle = LentConnection(conn, f"shard {shard_id} on {self._label}")
        cast(Any, conn).hv_lend = handle  # cursors made through it are refused once it is returned (LentCursor)
        # a plain call of the borrower's waiting for what its SQL there locked fails fast (_selflock)
        hold = self._self_locks.opened(self._session_pid(conn), shard_id, LENT) if self.pooling == "off" else None
        self._hook_wait(conn, hold)  # and its SQL waiting for the borrower's other sessions (`_lent_wait`)
        with self._lock:
            self._borrowed[id(conn)] = (conn, pool)
            self._borrower[id(conn)] = self._holdings.take(CONNECTION)
            self._handles[id(conn)] = handle
        return cast(AConn, handle)

    def _hook_wait(self, conn: AConn, hold: Hold | None) -> None:
        """``conn`` is the session of ``hold`` (a lent connection, a transaction's): its statements' waits go through
        `_lent_wait` until `_unhook_wait` (none if ``hold`` is None: behind a pooler)."""
        if hold is not None:
            self._lent_holds[id(conn)] = hold
            cast(Any, conn).hv_lent_wait = self._lent_wait

    def _unhook_wait(self, conn: AConn) -> Hold | None:
        """Undo `_hook_wait` (before the session's last statements: rollback, reset); its hold, if it had one."""
        cast(Any, conn).hv_lent_wait = None
        return self._lent_holds.pop(id(conn), None)

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` (the handle `get_connection` lent, or its connection) is borrowed from this store now."""
        real = lent_target(conn)
        entry = self._borrowed.get(id(real))
        return entry is not None and entry[0] is real

    async def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection: an open transaction is rolled back, the session reset (``RESET ALL``, role,
        cursors, LISTEN, advisory locks, temporary tables: ``_bouncer.RESET_SQL``), autocommit and tuple rows
        restored. A connection that cannot be brought back to that state is closed (the pool replaces it)."""
        await self._put_back(conn, session_reset=True)

    async def _put_back(self, lent: Any, *, session_reset: bool) -> None:
        conn = lent_target(lent)
        with self._lock:
            entry = self._borrowed.get(id(conn))
            if entry is None or entry[0] is not conn:
                raise ConnectionMisuse(f"{lent!r} is not borrowed from {self._label} (returned twice?)")
            if lent is conn and id(conn) in self._handles:  # the pooled connection itself, not what was lent
                raise ConnectionMisuse(
                    f"put_connection() takes the connection get_connection() returned (a handle of the pooled one), "
                    f"not {type(conn).__name__} {conn!r} itself: give back the handle"
                )
            del self._borrowed[id(conn)]
            owner = self._borrower.pop(id(conn), None)
            handle = self._handles.pop(id(conn), None)
            hold = self._unhook_wait(conn)
        self._self_locks.closed(hold)
        if handle is not None:  # the borrower's handle lets go first: nothing of theirs reaches the next borrower
            detach(handle)
        if owner is not None:
            self._holdings.give(CONNECTION, owner)
        pool = entry[1]
        clean = False
        cast(Any, conn).hv_bind = cast(Any, conn).hv_lend = None
        cast(Any, conn).hv_moved = cast(Any, conn).hv_shard = None
        ended_reset = cast(Any, conn).hv_end_reset  # every transaction it ended reset the session (_bouncer.end_gen)
        try:
            if not conn.closed:
                status = conn.pgconn.transaction_status
                if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
                    await conn.rollback()  # behind a transaction pooler: ROLLBACK and the reset, one round trip
                elif status == pq.TransactionStatus.ACTIVE:
                    await conn.close()
                cast(Any, conn).hv_end_reset = False
                if not conn.closed:
                    # a session reset now would reach whichever server session a transaction pooler picks: done
                    await self._reset(conn, session_reset and not ended_reset)
                    clean = True
        except psycopg.Error:
            pass
        finally:
            cast(Any, conn).hv_end_reset = False
            if not clean and not conn.closed:  # an error, or interrupted half-way: unknown state, never reused
                await conn.close()
            await self._checkin(conn, pool)

    async def _reset(self, conn: AConn, session: bool) -> None:
        """Undo what user code may have left on an idle connection (see ``_bouncer``): the session's state with one
        round trip (``session``), then psycopg's attributes."""
        await conn.set_autocommit(True)
        if session:
            await conn.execute(reset_sql(conn))
        if conn.isolation_level is not None:
            await conn.set_isolation_level(None)
        if conn.read_only is not None:
            await conn.set_read_only(None)
        if conn.deferrable is not None:
            await conn.set_deferrable(None)
        conn.prepare_threshold = None if self.pooling == "transaction" else 5
        conn.row_factory = tuple_row
        conn.cursor_factory = self._cursor_factory or psycopg.AsyncCursor
        conn.server_cursor_factory = psycopg.AsyncServerCursor
        forget_user_state(conn)

    @asynccontextmanager
    async def cursor(self, shard_id: int) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor in the shard's schema: commit on success, rollback on error, connection always returned."""
        conn = await self.get_connection(shard_id)
        try:
            async with conn.cursor() as cur:
                yield cur
            await conn.commit()  # behind a transaction pooler the reset is its transaction's last statement
        except BaseException as exc:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
            if isinstance(exc, psycopg.Error) and exc.sqlstate in STUB_PLANNING_STATES:
                moved = await self._stub_refusal(conn, shard_id)
                if moved is not None:
                    raise moved from exc
            raise
        finally:
            await self._put_back(conn, session_reset=True)

    async def _stub_probe(self, shard_id: int) -> ShardMoved | None:
        """`_stub_refusal` on a pooled connection of its own, for a lent cursor whose statement aborted its
        transaction: None without one (a pool with room for one more connection waits up to ``pool_block_timeout``
        for it; a full one, with none idle, `STUB_PROBE_WAIT`)."""
        pool = self._pool
        if pool is None:
            return None
        stats = pool.get_stats()
        full = stats.get("pool_size", 0) >= pool.max_size and not stats.get("pool_available", 0)
        try:
            conn = await pool.getconn(STUB_PROBE_WAIT if full else self._options.pool_block_timeout)
        except psycopg_pool.PoolTimeout:
            return None
        try:
            await conn.execute(stub_probe_sql(shard_id))
        except psycopg.Error as exc:
            return moved_error(exc) if exc.sqlstate == MOVED_SQLSTATE else None
        finally:
            await self._give_back(conn, pool)
        return None

    async def _stub_refusal(self, conn: AConn, shard_id: int) -> ShardMoved | None:
        """`ShardMoved` if ``shard_id``'s table on this server is a moved shard's forwarding stub, else None.

        For a statement refused while planning (`STUB_PLANNING_STATES`), which the stub's ``ZHV01`` never
        reaches: one read (`stub_probe_sql`) on ``conn``, lent and idle, rolled back after.
        """
        if conn.closed or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return None
        cast(Any, conn).hv_shard = None  # no second probe from the lent cursor class
        try:
            await conn.execute(stub_probe_sql(shard_id))
        except ShardMoved as moved:  # the lent cursor class translated the stub's ZHV01
            return moved
        except psycopg.Error as exc:
            return moved_error(exc) if exc.sqlstate == MOVED_SQLSTATE else None
        finally:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
        return None

    def transaction(
        self, shard_id: int, *, isolation_level: str | None = None, read_only: bool = False
    ) -> AbstractAsyncContextManager[AsyncPostgresTransaction]:
        """A transaction on ``shard_id`` on one pooled connection: committed when the block ends, rolled back on an
        exception; the shard context travels with it (``SET LOCAL``), see ``_atransaction``."""
        return postgres_transaction(self, shard_id, isolation_level, read_only)

    # -- entities --------------------------------------------------------------------------------------------

    async def _hstore_schema(self) -> str:
        schema = self._ext_schema
        if schema is not None:
            return schema
        conn, pool = await self._checkout()
        try:
            row = await (await conn.execute(HSTORE_SCHEMA_SQL)).fetchone()
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await self._checkin(conn, pool)
        if row is None:
            raise self._hstore_missing()
        self._ext_schema = str(row[0])
        return self._ext_schema

    async def _ext(self) -> str | None:
        if not self._backend_checked:
            await self._check_backend()
        return await self._hstore_schema() if self.text_only else None

    async def _citus_pieces(self, conn: AConn) -> None:
        """``shards_per_statement`` = 1 where Citus distributes this database's shard schemas (Citus router-plans a
        statement naming one of them, see ``_citus``), else the default; run where the citus extension exists."""
        found = await (await conn.execute(CITUS_SHARD_SCHEMAS_SQL)).fetchone()
        self.shards_per_statement = CITUS_SHARDS_PER_STATEMENT if found is not None and found[0] else None

    async def _check_backend(self) -> None:
        """Once per store: refuse a database whose shards were provisioned by the other PostgreSQL backend.

        One catalog query (the body type of a shard table, and the hstore extension's schema) before the first
        statement on shards, so a mismatch is a `ConfigError` naming both backends rather than a type error from
        the server or a "hstore is not installed" that ``hv init`` would not cure.
        """
        conn, pool = await self._checkout()
        try:
            row = await (await conn.execute(BACKEND_CHECK_SQL)).fetchone()
            if row is not None and row[2]:  # Citus installed: are the shard schemas distributed?
                await self._citus_pieces(conn)
            ext_schema, body_type = row[:2] if row is not None else (None, None)
            mismatch = self._backend_mismatch(body_type)
            if mismatch is not None:
                raise mismatch
            if body_type is not None:
                await self._check_layout(conn)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await self._checkin(conn, pool)
        if ext_schema is not None and self._ext_schema is None:
            self._ext_schema = str(ext_schema)
        self._backend_checked = body_type is not None  # nothing provisioned yet: look again next time

    async def _check_layout(self, conn: AConn) -> None:
        """Refuse a database whose ids were made with another layout (`_legacy.layout_problem`), before the first
        statement on shards: the newest id of up to `LAYOUT_SAMPLE` shard tables, those the statistics say hold
        rows first. Two round trips, once per store: a process opened with the wrong ``layout=`` would otherwise
        write ids that sort before the stored ones (key order and ``since``/``until`` no longer creation order).
        """
        rows = await (await conn.execute(LAYOUT_SAMPLE_SQL, (LAYOUT_SAMPLE,))).fetchall()
        sample = [int(name.removeprefix("shard")) for (name,) in rows]
        if not sample:
            return
        layout, now_ms = self._options.layout, time.time_ns() // 1_000_000
        pieces = shard_pieces(sample, per_statement=self.shards_per_statement)  # bounded locks (_fanout)
        statements = [(max_id_query(piece), ()) for piece in pieces]
        for shard, max_id in [row for found in await self._pieces(conn, statements) for row in found]:
            problem = layout_problem(shard, self._label, layout, max_id=max_id, next_id_epoch=None, now_ms=now_ms)
            if problem is not None:
                raise problem

    async def _shard_sql(self, shard_id: int) -> ShardSQL:
        statements = self._sql.get(shard_id)
        if statements is None:
            statements = self._sql[shard_id] = ShardSQL.build(shard_id, self.backend, await self._ext())
        return statements

    async def _with_conn(
        self,
        shard_id: int,
        op: Callable[[AConn], Awaitable[_T]],
        *,
        one_shard: bool = False,
        shards: Sequence[int] = (),
    ) -> _T:
        """Run ``op`` (a read) on a pooled connection; one retry if the connection was lost underneath.

        ``one_shard``: ``op`` reads ``shard_id`` only, so it runs on that shard's preferred session (`_checkout`).
        ``shards``: every shard ``op`` reads, for the error's name of the one that failed (`_translate_over`)."""
        for attempt in (0, 1):
            conn, pool = await self._checkout(shard_id if one_shard else None)
            try:
                return await op(conn)
            except psycopg.OperationalError as exc:
                if attempt == 0 and conn.closed and not isinstance(exc, OperationTimeout):  # a timeout spent the time
                    self._log("connection to %s lost (%s): retrying once", self._label, type(exc).__name__)
                    continue
                error = self._translate(exc, shard_id)
                raise error from chained(error, exc)
            except psycopg.Error as exc:
                error = await self._translate_over(conn, exc, shards) if shards else self._translate(exc, shard_id)
                if error is exc:
                    raise
                raise error from chained(error, exc)
            finally:
                await self._checkin(conn, pool)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _translate_over(
        self, conn: AConn, exc: psycopg.Error, shards: Sequence[int], privileges: Sequence[str] = ("SELECT",)
    ) -> Exception:
        """`_translate` for statements over several ``shards``, naming the shard that failed: the one whose schema
        the server names; for a privilege refused on a table (the server names the table alone), the first of
        ``shards`` whose schema or table this role lacks ``privileges`` on, asked on ``conn`` (one round trip,
        best effort: else every shard is named)."""
        if exc.sqlstate == PRIVILEGE_SQLSTATE and len(shards) > 1 and named_shard(exc) is None:
            try:
                if not conn.closed and conn.pgconn.transaction_status == pq.TransactionStatus.INERROR:
                    await conn.rollback()
                schemas = [shard_schema(shard) for shard in shards]
                cur = await conn.execute(DENIED_SHARD_SQL, (schemas, list(privileges)), prepare=False)
                row = await cur.fetchone()
            except psycopg.Error:
                row = None
            if row is not None:
                return self._translate(exc, int(row[0].removeprefix("shard")))
        return self._translate(exc, shards[0], shards)

    async def _run(self, shard_id: int, query: str, params: Sequence[Any], *, retried: bool = False) -> Any:
        """Run one read statement on a pooled connection and return its first row (or None): the hot path.

        A connection lost underneath is retried once.
        """
        conn, pool = await self._checkout(shard_id)
        try:
            cur = await conn.execute(query, params, prepare=prepare_hot(conn))
            return await cur.fetchone() if cur.description is not None else None
        except psycopg.OperationalError as exc:
            if retried or not conn.closed:
                error = self._translate(exc, shard_id)
                raise error from chained(error, exc)
            self._log("connection to %s lost (%s): retrying once", self._label, type(exc).__name__)
        except psycopg.Error as exc:
            error = self._translate(exc, shard_id)
            if error is exc:
                raise
            raise error from chained(error, exc)
        finally:
            await self._checkin(conn, pool)
        return await self._run(shard_id, query, params, retried=True)

    async def _write(
        self,
        shard_id: int,
        query: Any,
        params: Sequence[Any],
        keys: Sequence[Key],
        ours: str | None = None,
    ) -> int:
        """Run one write statement (an INSERT, UPDATE or DELETE by key) in its own implicit transaction; the rows it
        wrote.

        One round trip: the statement and the Sync that commits it, in one write to the socket; nothing more than
        the write itself on a healthy connection (`_commit`: a transaction id returned with the reply measured 3-5 %
        slower, and is of use only in a reply that is lost). A connection lost underneath: the write is settled by
        the server through its session's transaction id, else by its rows (`_write_attempt`, `_settle`);
        committed → done, not committed → run again (once). ``ours``: for an INSERT, the shard's single-row INSERT,
        ``params`` being that row's values once per key: its rows are then found as stored by `stored_rows_sql`
        (built only after a loss the server could not settle); an UPDATE or DELETE by key is checked with
        `applied_sql` instead.
        """
        for attempt in (0, 1):
            rows, _, lost = await self._write_attempt(shard_id, query, params, keys, ours=ours)
            if lost is None:
                return rows
            if attempt:
                raise self._unavailable(lost) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write_attempt(
        self,
        shard_id: int,
        query: Any,
        params: Sequence[Any],
        keys: Sequence[Key],
        *,
        reused: bool = True,
        ours: str | None = None,
        ids: bool = False,
    ) -> tuple[int, set[int], psycopg.OperationalError | None]:
        """One attempt of a write: (rows written, ids of the rows an INSERT stored if
        ``ids`` (else empty), None if it committed, else the loss: nothing was stored, it may run again).

        A connection lost underneath is closed and the write settled (`_settle`). A client-side wait that gave up
        (``operation_timeout``: a cancel request was sent) first reads the replies still due for `PIPELINE_GRACE`
        s (`_read_cut`): on a server that answers they say how the write ended (the statement's error, the
        cancel's included: not committed, `_cut_write_error`; none: it finished and committed as the wait gave
        up), and the connection is closed. Past the grace (a frozen session) the write is settled too, its session
        ended at once (it is ours): committed → success; not committed → `ServerUnavailable` at once, not run
        again (the time allowed is spent). Server errors are raised translated (`_translate`); ``reused`` as for
        `_send_write`, ``ours`` as for `_write`.
        """
        conn, pool = await self._checkout(shard_id)
        box: list[pq.abc.PGresult] = []
        pid = self._session_pid(conn)  # known before the write: libpq forgets it once the connection breaks
        try:
            await self._send_write(conn, query, params, box, reused=reused)
            return returned_xid(box)[1], returned_ids(box) if ids else set(), None
        except psycopg.OperationalError as exc:
            if not self._lost(conn, exc):
                error = self._translate(exc, shard_id)
                raise error from chained(error, exc)
            timed_out = not conn.closed  # operation_timeout: a cancel request was sent; the session may still run it
            if timed_out and (await self._read_cut(conn))[0]:
                # every reply arrived after the cancel request: the server itself says how the write ended
                answer = error_in(box, conn.info.encoding)
                self._leave_pipeline(conn.pgconn, finish=True)
                await conn.close()  # a cancel request arriving late must not hit the next borrower's statement
                if answer is not None:
                    if isinstance(answer, pg_errors.QueryCanceled):
                        self._commit_counters.count(ABORTED)  # settled by the server's reply to the cancel
                    raise self._cut_write_error(answer, shard_id) from None
                self._commit_counters.count(COMMITTED)
                self._log("a write on %s finished as operation_timeout expired", self._label)
                if self.track_wal:  # committed, its WAL position unread: reads after this cover it
                    self._wal_gap()
                return command_rows(box) or 0, returned_ids(box) if ids else set(), None
            xid = returned_xid(box)[0]
            received = command_rows(box) is not None
            if timed_out:
                conn.pgconn.finish()  # this socket is done with; the session is ended while settling
            await conn.close()
            lost = exc
            self._log("connection to %s lost during a write (%s): settling its commit", self._label, exc)
        except psycopg.Error as exc:
            error = self._translate(exc, shard_id)
            if error is exc:
                raise
            raise error from chained(error, exc)
        finally:
            await self._checkin(conn, pool)
        status, stored, rows = await self._settle(
            shard_id, xid, keys, pid=pid, query=query, ours=ours, params=params, end=timed_out, received=received
        )
        if status == COMMITTED:
            if self.track_wal:  # committed without its WAL position (read-your-writes): reads after this cover it
                self._wal_gap()
            if rows is None:
                rows = command_rows(box) or 0
            return rows, (stored if stored is not None else returned_ids(box)) if ids else set(), None
        if timed_out:
            raise self._ended_uncommitted(status) from None
        return 0, set(), lost

    def _cut_write_error(self, answer: psycopg.Error, shard_id: int) -> Exception:
        """The error of a write cut off by ``operation_timeout`` whose replies then all arrived, ``answer`` (an error,
        so it did not commit): the cancel's (``57014``, `QueryCanceled`) says the write did not commit; any other is
        the statement's own failure (the lock it waited for came free as the wait gave up), raised as it would be.
        """
        if not isinstance(answer, pg_errors.QueryCanceled):
            return self._translate(answer, shard_id)
        reason = str(answer).strip().splitlines()[0] if str(answer).strip() else "canceling statement"
        error = ServerUnavailable(
            f"PostgreSQL server {self._label} did not answer within operation_timeout="
            f"{self._options.operation_timeout} s: a cancel request was sent and the server cancelled the write's "
            f"statement ({reason}), so the write did not commit (nothing of it is stored); it can be run again"
        )
        error.timed_out = True
        return error

    def _ended_uncommitted(self, status: str) -> ServerUnavailable:
        """The error of a write that timed out on the client and was settled as not committed (``status``)."""
        how = "the server says aborted" if status == ABORTED else "no commit of it was found or sent"
        error = ServerUnavailable(
            f"PostgreSQL server {self._label} did not answer within operation_timeout="
            f"{self._options.operation_timeout} s: the write's session was ended and the write did not commit "
            f"({how}: nothing of it is stored); it can be run again"
        )
        error.timed_out = True
        return error

    async def _send_write(
        self, conn: AConn, query: str, params: Sequence[Any], box: list[pq.abc.PGresult], *, reused: bool = True
    ) -> None:
        """Parse (once per connection) / Bind / Execute, Sync in one write (`_onetrip`); results into ``box``.

        One reply packet: the statement's results come with the commit's. A grouped insert returns its transaction
        id (`XID_GROUP_RETURNING`); a server that refuses a volatile function in RETURNING (a Citus coordinator
        routes the row to a worker) gets, from then on, statements without it in an explicit transaction that reads
        the coordinator's id first: BEGIN, SELECT pg_current_xact_id(), the statement, COMMIT, Sync, still one
        write. A server error is
        raised as psycopg's exception; a statement the session no longer has (DISCARD ALL, DEALLOCATE) or already
        has is sent unprepared. ``reused=False``: a statement text that varies (a multi-row INSERT of any size) is
        sent unprepared.
        """
        if not PIPELINE:  # libpq before 14: the same one round trip, through psycopg's execute
            cur = await conn.execute(query, params)
            if self.track_wal:
                self._wal_gap()  # committed, no position with it: read-your-writes reads it after (one round trip)
            if cur.pgresult is not None:
                box.append(cur.pgresult)
            return
        if self._cursor_factory is not None:
            self._log_statement(query, params, conn)
        tx = Transformer(conn)
        values = tx.dump_sequence(params, [PyFormat.AUTO] * len(params))
        pgconn = conn.pgconn
        prepare = reused and conn.prepare_threshold is not None
        for _ in range(3):
            in_txn = self._xid_in_txn
            statement = without_xid(query) if in_txn else query
            text = self._dollar.get(statement)
            if text is None:
                text = self._dollar[statement] = dollar_params(statement)[0]
            name = PreparedNames.name(text + repr(tx.types).encode()) if prepare else b""
            fresh = prepare and not self._prepared.known(conn, name)
            del box[:]
            track, tail = self.track_wal, list[pq.abc.PGresult]()
            pgconn.enter_pipeline_mode()
            try:
                if in_txn:
                    pgconn.send_query_params(b"BEGIN", None)
                    pgconn.send_query_params(XID_SQL, None)
                if fresh:
                    pgconn.send_prepare(name, text, param_types=tx.types)
                if prepare:
                    pgconn.send_query_prepared(name, values, param_formats=tx.formats)
                else:
                    pgconn.send_query_params(text, values, param_types=tx.types, param_formats=tx.formats)
                if in_txn:
                    pgconn.send_query_params(b"COMMIT", None)
                pgconn.pipeline_sync()
                if track:  # read-your-writes: the WAL position after the commit, in the same exchange
                    pgconn.send_query_params(WAL_AFTER_WRITE_SQL, None)
                    pgconn.pipeline_sync()
                    await conn.wait(until_second_sync(pgconn, box, tail))
                else:
                    await conn.wait(until_sync(pgconn, box))
            except BaseException as exc:
                # cancelled or interrupted with results still due: the session is unusable; a lost connection or a
                # client-side timeout is left to the caller, which settles it (`_write`)
                self._leave_pipeline(pgconn, finish=not isinstance(exc, psycopg.OperationalError))
                raise
            self._leave_pipeline(pgconn, finish=True)
            if track:
                self._wal_seen(position_after_write(tail))
            error = error_in(box, conn.info.encoding)  # the Parse's (if sent) or the statement's
            if error is not None and pgconn.transaction_status != pq.TransactionStatus.IDLE:
                await conn.rollback()  # an explicit transaction the error left open
            if prepare and isinstance(error, (pg_errors.InvalidSqlStatementName, pg_errors.DuplicatePreparedStatement)):
                # the session lost our statements (DISCARD ALL, DEALLOCATE) or is another server session behind a
                # transaction pooler: forget them and send this one unprepared (nothing was executed)
                self._prepared.forget(conn)
                prepare = False
                continue
            if isinstance(error, pg_errors.FeatureNotSupported) and not in_txn and "RETURNING" in str(error):
                self._log("%s refuses pg_current_xact_id() in RETURNING: transaction ids read first", self._label)
                self._xid_in_txn = True  # nothing was executed: the statement was refused when planned
                continue
            if error is not None:
                raise error
            if fresh:
                self._prepared.add(conn, name)
            if command_rows(box) is None:
                raise psycopg.InterfaceError(f"no result for a write on {self._label}: {[r.status for r in box]}")
            return
        raise AssertionError("unreachable")  # pragma: no cover (the third try returns or raises)

    @staticmethod
    def _leave_pipeline(pgconn: pq.abc.PGconn, *, finish: bool) -> None:
        """Leave libpq's pipeline mode; if results are still due, end the session when ``finish``."""
        if pgconn.status != pq.ConnStatus.OK or pgconn.pipeline_status == pq.PipelineStatus.OFF:
            return
        try:
            pgconn.exit_pipeline_mode()
        except psycopg.Error:
            if finish:
                pgconn.finish()

    @staticmethod
    def _lost(conn: AConn, exc: psycopg.OperationalError) -> bool:
        """True if a write's outcome is unknown: its connection died, or a client-side wait gave up mid-statement.

        An error the server sent (it has an SQLSTATE) rolled the transaction back: not lost, just failed.
        """
        return conn.closed or exc.sqlstate is None

    @staticmethod
    def _session_pid(conn: AConn) -> int:
        """The server process of a connection (0 if libpq no longer knows it: read it before a write that may break)."""
        try:
            return int(conn.pgconn.backend_pid)
        except psycopg.Error:
            return 0

    async def _settle(
        self,
        shard_id: int,
        xid: int | None,
        keys: Sequence[Key],
        *,
        pid: int = 0,
        query: str | None = None,
        ours: str | None = None,
        params: Sequence[Any] = (),
        end: bool = False,
        received: bool = True,
    ) -> tuple[str, set[int] | None, int | None]:
        """Whether a write whose connection was lost committed (`_commit`), asked on a fresh connection; with the
        ids its INSERT stored and the rows it wrote when they had to be read (else None).

        ``xid``: its transaction id, if it arrived. If not: on a direct connection its session (``pid``) is watched
        in ``pg_stat_activity`` for the id until it is gone (`_watch_session`); behind a pooler, every session
        running the same statement (``query``) must finish (`_wait_statement_gone`). With an id, the server says
        (`_xact_status`): ``committed``, ``aborted``, or `UNKNOWN` if it no longer remembers it. With none, the rows
        decide (`_read_outcome`: ``ours`` for an INSERT, `applied_sql` for an UPDATE or DELETE): `COMMITTED` or
        `UNKNOWN`. ``query`` None: a COPY whose ``BEGIN`` did not answer, so its COMMIT was never sent: `UNKNOWN`.
        ``end``: the client gave up (``operation_timeout``): a session still running is ended at once, not after
        `SETTLE_SECONDS`. ``received``: the statement's own result arrived; if not and it committed, its rows are
        read. `WriteOutcomeUnknown` if no server answers or the session does not end.
        """
        if xid is None and query is None:
            self._commit_counters.count(UNKNOWN)
            return UNKNOWN, None, None
        try:
            conn = await bounded_async_connection_class(self._options.operation_timeout).connect(
                self._conninfo, **{**self._kwargs, "autocommit": True}
            )
        except psycopg.Error as exc:
            raise self._outcome_unknown(xid, keys, f"no server answered the question ({type(exc).__name__})") from None
        ended = False
        try:
            if xid is None and query is not None:
                if self.pooling == "off" and pid:
                    xid, ended = await self._watch_session(conn, pid, keys, end=end)
                else:
                    await self._wait_statement_gone(conn, query, keys, end=end)
            if xid is None and query is not None:
                status, ids, rows = await self._read_outcome(
                    conn, query, ours, params, len(keys), lock_wait=self._end_wait() if end else None
                )
                self._commit_counters.count(status, ended=ended, by_rows=True)
                self._log("lost write on %s, no transaction id seen: %s (by its rows)", self._label, status)
                return status, ids, rows
            assert xid is not None  # a COPY without its id returned above
            status, terminated = await self._xact_status(conn, xid, keys, end=end)
            self._commit_counters.count(status, ended=ended or terminated)
            self._log("lost write transaction %s on %s: %s", xid, self._label, status)
            if status != COMMITTED or received or query is None:
                return status, None, None
            return (COMMITTED, *(await self._read_outcome(conn, query, ours, params, len(keys), committed=True))[1:])
        except pg_errors.LockNotAvailable:
            why = f"its rows could not be read within {self._end_wait()} s: another session holds a lock on the table"
            raise self._outcome_unknown(xid, keys, why) from None
        except psycopg.Error as exc:
            raise self._outcome_unknown(xid, keys, f"the question failed ({type(exc).__name__}: {exc})") from None
        finally:
            await conn.close()

    def _end_wait(self) -> float:
        """Seconds the settling of a write cut off by ``operation_timeout`` waits at most for each step after the
        session was ended (it to go, its rows to be readable): half the timeout, at least 0.5 s, at most
        `SETTLE_SECONDS`; so a frozen session or a table another session keeps locked ends the call at about 1.5x
        the timeout with `WriteOutcomeUnknown` instead of `SETTLE_SECONDS` later."""
        return min(SETTLE_SECONDS, max((self._options.operation_timeout or 2 * SETTLE_SECONDS) / 2, 0.5))

    async def _xact_status(self, conn: AConn, xid: int, keys: Sequence[Key], *, end: bool) -> tuple[str, bool]:
        """``pg_xact_status(xid)`` once the transaction is no longer in progress; and whether its session was ended.

        In progress: waited for up to `SETTLE_SECONDS` (``end``: not at all), then its session is ended with
        ``pg_terminate_backend``; `WriteOutcomeUnknown` if it is still in progress `SETTLE_SECONDS` (``end``:
        `_end_wait`) after that.
        """
        deadline = time.monotonic() + (0.0 if end else SETTLE_SECONDS)
        ended = False
        while True:
            row = await (await conn.execute(STATUS_SQL, (str(xid),))).fetchone()
            status = str(row[0]) if row is not None and row[0] is not None else UNKNOWN
            if status != IN_PROGRESS:
                return status, ended
            if time.monotonic() > deadline:
                if ended:
                    raise self._outcome_unknown(xid, keys, "it is still in progress after its session was ended")
                await conn.execute(TERMINATE_SQL, (str(xid & 0xFFFFFFFF),))
                ended = True
                deadline = time.monotonic() + (self._end_wait() if end else SETTLE_SECONDS)
            await asleep(SETTLE_POLL)

    async def _watch_session(self, conn: AConn, pid: int, keys: Sequence[Key], *, end: bool) -> tuple[int | None, bool]:
        """Watch the session of a lost write (direct connection: backend ``pid``) until it is gone, so can no longer
        commit: the transaction id it was seen running (`SESSION_XID_SQL`; None if none was seen) and whether it
        had to be ended.

        It is given `SETTLE_SECONDS` (``end``: none, the client gave up) before ``pg_terminate_backend``;
        `WriteOutcomeUnknown` if it is still there `SETTLE_SECONDS` (``end``: `_end_wait`) after that.
        """
        deadline = time.monotonic() + (0.0 if end else SETTLE_SECONDS)
        xid: int | None = None
        started: Any = None
        ended = False
        while True:
            row = await (await conn.execute(SESSION_XID_SQL, (pid,))).fetchone()
            if row is None or (started is not None and row[2] != started):  # gone (a reused pid is another session)
                return xid, ended
            started = row[2]
            if row[0] is not None:
                xid = full_xid(int(row[0]), int(row[3]))
            if time.monotonic() > deadline:
                if ended:
                    raise self._outcome_unknown(xid, keys, f"its session (pid {pid}) stays after being ended")
                await conn.execute(TERMINATE_PID_SQL, (pid,))
                ended = True
                deadline = time.monotonic() + (self._end_wait() if end else SETTLE_SECONDS)
            await asleep(SETTLE_POLL)

    async def _wait_statement_gone(self, conn: AConn, query: str, keys: Sequence[Key], *, end: bool = False) -> None:
        """Behind a pooler (the pid the client saw is the pooler's): wait until every session of our role that was
        running the same statement when we first asked has moved on (bounded by `SETTLE_SECONDS`; ``end``, the
        client gave up: `_end_wait`), so that a lost write can no longer commit. `WriteOutcomeUnknown` if it does
        not happen in time.
        """
        limit = self._end_wait() if end else SETTLE_SECONDS
        deadline = time.monotonic() + limit
        text = self._dollar.get(query) or self._dollar.get(without_xid(query)) or dollar_params(query)[0]
        params: dict[str, Any] = {"since": None, "query": text.decode()}
        while True:
            row = await (await conn.execute(SAME_STATEMENT_SQL, params)).fetchone()
            assert row is not None
            params["since"] = params["since"] or row[0]
            if not row[1]:
                return
            if time.monotonic() > deadline:
                raise self._outcome_unknown(
                    None,
                    keys,
                    f"{row[1]} session(s) running the same statement did not finish within {limit} s",
                )
            await asleep(SETTLE_POLL)

    @staticmethod
    async def _read_outcome(
        conn: AConn,
        query: str,
        ours: str | None,
        params: Sequence[Any],
        count: int,
        *,
        committed: bool = False,
        lock_wait: float | None = None,
    ) -> tuple[str, set[int] | None, int]:
        """What a lost write left in place, read once nothing can commit it any more: (`COMMITTED` or `UNKNOWN`,
        the ids an INSERT stored, the rows written).

        ``ours`` (an INSERT's single-row statement, ``params`` its rows' values): the ids stored with exactly these
        values (`stored_rows_sql`); some → committed. Otherwise ``query`` is an UPDATE or DELETE by key: its
        `applied_sql` says whether the row holds what it writes (or is absent) → committed. ``committed``: the
        server said so already; only the ids or rows are wanted (an UPDATE whose row is gone wrote none).
        ``lock_wait``: seconds the read may wait for a lock another session holds on the table (its transaction's
        ``lock_timeout``: `LockNotAvailable` past it); None: as long as the connection's bound allows.
        """
        if lock_wait is not None:
            async with conn.transaction():
                await conn.execute(LOCAL_LOCK_TIMEOUT_SQL, (f"{lock_wait * 1000:.0f}",))
                return await AsyncPostgresServerStore._read_outcome(
                    conn, query, ours, params, count, committed=committed
                )
        if ours is not None:
            ids = {int(row[0]) for row in await (await conn.execute(stored_rows_sql(ours, count), params)).fetchall()}
            return (COMMITTED if ids else UNKNOWN), ids, len(ids)
        row = await (await conn.execute(applied_sql(without_xid(query)), params)).fetchone()
        if committed:
            return COMMITTED, None, int(row is not None)
        done = row is not None and bool(row[0])
        return (COMMITTED if done else UNKNOWN), None, int(done)

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one entity with a single INSERT (one round trip); `DuplicateKey` if the id is taken.

        A lost connection is settled by asking the server (`_write`: the transaction id its session ran), or, when
        no server can name the transaction, by reading the row once nothing can commit it.
        """
        statements = self._sql.get(shard_id) or await self._shard_sql(shard_id)
        params = self._insert_params(key, kind, data)
        try:
            await self._write(shard_id, statements.insert, params, (key,), statements.insert)
        except pg_errors.UniqueViolation as exc:  # the key, or a unique secondary index (_indexes)
            raise unique_violation(exc, shard_id, self._label) or self._duplicate(shard_id, key) from None

    async def insert_group(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> set[int]:
        """Store rows of one shard with one multi-row INSERT (one implicit transaction); the ids it stored.

        ``ON CONFLICT DO NOTHING``: a row whose key or unique value is taken is left out, not an error; the caller
        (``hvcore._acoalesce.WriteCoalescer``, for overlapping ``put()``) runs such a row alone with `insert`
        to give it its own outcome. The statement returns the ids stored and its transaction id; after a lost
        connection the write is settled (`_write_attempt`); committed → the ids received (or read); not committed →
        an empty set (nothing stored: every row runs alone). Never retried here. A server that refuses the statement
        (Citus: no transaction id in a multi-row INSERT's RETURNING) turns ``insert_groups`` off for this store.
        """
        statements = self._sql.get(shard_id) or await self._shard_sql(shard_id)
        query = self._group_insert_sql(statements, len(rows)) + XID_GROUP_RETURNING
        params = [value for key, kind, data in rows for value in self._insert_params(key, kind, data)]
        keys = [row[0] for row in rows]
        try:
            _, stored, lost = await self._write_attempt(
                shard_id, query, params, keys, reused=False, ours=statements.insert, ids=True
            )
        except pg_errors.FeatureNotSupported:  # Citus: no transaction id in a multi-row INSERT's RETURNING
            self.insert_groups = False  # puts run one INSERT each on this server from now on
            raise
        return set() if lost is not None else stored

    async def fetch(self, shard_id: int, key: Key) -> Record | None:
        """The entity stored under ``key``, or None."""
        statements = self._sql.get(shard_id) or await self._shard_sql(shard_id)
        row = await self._run(shard_id, statements.fetch, (key,))
        if row is None:
            return None
        return Record(key, row[0], row[1])  # kind: smallint → int; body: a fresh dict from the JSON loader

    async def _hstore_type(self, conn: AConn) -> None:
        if self._hstore_info is None:
            info = await TypeInfo.fetch(conn, self._hstore_type_name(await self._hstore_schema()))
            if info is None:
                raise self._hstore_missing()
            self._hstore_info = info

    async def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """Store many entities of one shard in one transaction: one binary COPY; `DuplicateKey` if a key is taken.

        COPY was measured against a pipelined executemany in one transaction (benchmarks/bench_batches.py):
        about 4-6 µs per row against 10-18, so a batch of 1000 costs what about 25 single inserts do.
        """
        if not rows:
            return
        if not self._backend_checked:
            await self._check_backend()
        statement = self._copy_sql(shard_id)
        keys = [row[0] for row in rows]
        for attempt in (0, 1):
            conn, pool = await self._checkout(shard_id)
            xid: int | None = None
            lost: psycopg.OperationalError | None = None
            taken = timed_out = False
            try:
                if self.text_only:
                    await self._hstore_type(conn)
                self._log_copy(statement, rows)
                # BEGIN and the transaction id in one round trip (one simple-protocol query), before any row
                first = await conn.execute(BEGIN_XID_SQL, prepare=False)
                first.nextset()  # the SELECT's rows follow the BEGIN's (empty) result
                row = await first.fetchone()
                xid = int(row[0]) if row is not None else None
                async with conn.cursor() as cur:
                    if self._hstore_info is not None:
                        register_hstore(self._hstore_info, cur)
                    async with cur.copy(statement) as copy:
                        copy.set_types(self._copy_types())
                        for values in self._copy_rows(rows):
                            await copy.write_row(values)
                await conn.execute("COMMIT")
                return
            except pg_errors.UniqueViolation as exc:  # a key, or a unique secondary index (_indexes)
                error = unique_violation(exc, shard_id, self._label)
                if error is not None:
                    raise error from None
                taken = True
            except psycopg.OperationalError as exc:
                if not self._lost(conn, exc):
                    failure = self._translate(exc, shard_id)
                    raise failure from chained(failure, exc)
                timed_out = not conn.closed  # operation_timeout: the session may still run the COPY
                if timed_out:
                    conn.pgconn.finish()  # this socket is done with; the session is ended while settling
                await conn.close()
                lost = exc
                self._log("connection to %s lost during a COPY (%s): asking its commit status", self._label, exc)
            except psycopg.Error as exc:
                if not is_unique_violation(exc):
                    translated = self._translate(exc, shard_id)
                    if translated is exc:
                        raise
                    raise translated from chained(translated, exc)
                # a Citus coordinator relays a worker's COPY unique violation as an internal error
                error = unique_violation(exc, shard_id, self._label)
                if error is not None:
                    raise error from None
                taken = True
            finally:
                await self._end_transaction(conn)
                await self._checkin(conn, pool)
            if taken:
                raise await self._taken_keys(shard_id, keys)
            assert lost is not None  # every other way out of the attempt returned or raised
            status = (await self._settle(shard_id, xid, keys, end=timed_out))[0]
            if status == COMMITTED:
                return
            if timed_out:
                raise self._ended_uncommitted(status) from None
            if attempt:
                raise self._unavailable(lost) from None

    @staticmethod
    async def _end_transaction(conn: AConn) -> None:
        """Roll back what a failed write left open (a dead connection is left to the pool to discard)."""
        if conn.closed or conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
            return
        try:
            await conn.rollback()
        except psycopg.Error:
            await conn.close()

    async def _taken_keys(self, shard_id: int, keys: Sequence[Key]) -> DuplicateKey:
        """The `DuplicateKey` of a batch: which of its keys another writer holds (one query, after the refusal)."""
        query = self._taken_sql(shard_id)

        async def op(conn: AConn) -> list[tuple[Any, ...]]:
            return list(await (await conn.execute(query, ([int(k) for k in keys],))).fetchall())

        taken = sorted(int(row[0]) for row in await self._with_conn(shard_id, op, one_shard=True))
        within = len(set(keys)) != len(keys)
        if not taken and not within:
            return self._duplicate_batch(shard_id, len(keys))
        return DuplicateKey(
            f"{len(taken)} key(s) of this batch of {len(keys)} already exist in shard {shard_id} on {self._label} "
            f"(first: {taken[:3]})",
            keys=tuple(taken),
        )

    async def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """Records stored under these (shard, key) pairs, in one round trip; missing keys are left out.

        One statement per `SHARDS_PER_STATEMENT` shards (keys bound as one array per shard), all sent in one
        pipeline, each in its own transaction: any number of keys and shards stays within the lock table
        (see `_fanout`).
        """
        if not items:
            return []
        statements = self._fetch_many_statements(items, await self._ext())
        first_shard = items[0][0]

        async def op(conn: AConn) -> list[tuple[Any, ...]]:
            return [row for rows in await self._pieces(conn, statements) for row in rows]

        shards = list(dict.fromkeys(shard for shard, _ in items))
        return self._records(items, await self._with_conn(first_shard, op, shards=shards))

    async def _pieces(
        self, conn: AConn, statements: Sequence[tuple[Any, Sequence[Any]]], *, values_matter: bool = False
    ) -> list[list[Any]]:
        """The rows of each statement, run in one round trip: a pipeline, each statement in a transaction of its own.

        A single statement runs alone in autocommit (its own transaction too). With several, each is wrapped in
        ``BEGIN``/``COMMIT`` so its locks are released before the next one plans (a pipeline without them is one
        implicit transaction holding every lock to the end). Statements of one schema each (``shards_per_statement``
        1, Citus) share a transaction `pieces_per_transaction` at a time: as many locks as one full piece, and Citus
        opens a transaction on a worker once per group, not per statement. An error rolls the open transaction back.
        ``values_matter``: the statements' plans may depend on the values bound (a query's filter), so on a session
        in generic-plan mode each transaction plans them as PostgreSQL does by default (`_fanout.AUTO_PLANS_SQL`).
        """
        auto_plans = values_matter and plans_generic(conn)
        if len(statements) == 1 and not auto_plans:
            query, params = statements[0]
            return [list(await (await conn.execute(query, params)).fetchall())]
        cursors: list[psycopg.AsyncCursor[Any]] = []
        per_transaction = pieces_per_transaction(self.shards_per_statement)  # 1, or 16 one-schema pieces on Citus
        last = len(statements) - 1

        async def send() -> None:
            for i, (query, params) in enumerate(statements):
                if i % per_transaction == 0:
                    await conn.execute("BEGIN")
                    if auto_plans:
                        await conn.execute(AUTO_PLANS_SQL)
                cursors.append(await conn.cursor().execute(query, params))
                if i % per_transaction == per_transaction - 1 or i == last:
                    await conn.execute("COMMIT")

        try:
            await self._pipelined(conn, send)
        except psycopg.Error:
            if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                try:
                    await conn.rollback()
                except psycopg.Error:
                    await conn.close()
            raise
        return [list(await cur.fetchall()) for cur in cursors]

    async def _pipelined(self, conn: AConn, send: Callable[[], Awaitable[None]]) -> None:
        """Run ``send`` (statements it queues with ``conn.execute``) in one psycopg pipeline: every result read.

        Every pipelined fan-out (query pages, `fetch_many`, filter writes, row counts) runs here, so that one cut
        off by ``operation_timeout`` ends as a point operation does, at the timeout: the bounded connection sent a
        cancel request for the statement the server runs (a lock wait, say); the pipeline's remaining results (that
        statement's error, the aborted ones after it) are then read for at most `PIPELINE_GRACE` s, each attached
        to its cursor (so a cursor says whether its statement ran), and the connection is closed, never reused (a
        cancel request arriving late would hit its next statement; the pool replaces it). `PipelineTimeout` then,
        its ``settled`` True if every result arrived; if they all arrived without an error (the statement finished
        as the wait gave up) the pipeline succeeded. (psycopg's own exit from the pipeline waited for the busy
        statement a second time, then failed with "cannot exit pipeline mode while busy", and the connection's
        clean-up waited a third.) Any other error is raised as it comes.
        """
        settled = False
        try:
            async with conn.pipeline():
                try:
                    await send()
                except OperationTimeout:  # cut off while sending: psycopg's exit would wait again; nothing to read
                    self._end_cut(conn)
                    raise
        except psycopg.OperationalError as exc:
            cut = timeout_in(exc)
            if cut is None:
                raise
            if not conn.closed:
                settled, error = await self._read_cut(conn)
                if settled and error is None:
                    self._log("a pipeline on %s finished as operation_timeout expired", self._label)
                    await conn.close()
                    return
                if error is not None and settled and not isinstance(error, pg_errors.QueryCanceled):
                    await conn.close()
                    raise error from None  # the pipeline's own failure, once the lock it waited for was free
            await conn.close()
            timeout = PipelineTimeout(*cut.args)
            timeout.settled = settled
            raise timeout from None

    async def _read_cut(self, conn: AConn) -> tuple[bool, psycopg.Error | None]:
        """Read on the pipeline a timeout cut off (its suspended generator, `_common.resumed`) for `PIPELINE_GRACE`
        s at most: (whether every result arrived, the first error among them)."""
        gen = cast(Any, conn).hv_cut
        cast(Any, conn).hv_cut = None
        if gen is None:
            return False, None
        grace = min(PIPELINE_GRACE, (self._options.operation_timeout or 4 * PIPELINE_GRACE) / 4)
        try:
            await psycopg.AsyncConnection.wait(conn, resumed(gen), timeout=grace)  # unbounded class: no second cancel
        except psycopg.errors._WaitTimeout:
            self._end_cut(conn, gen)
            return False, None
        except psycopg.Error as exc:  # the cancelled statement's error, raised once every result was read
            return conn.pgconn.status == pq.ConnStatus.OK, exc
        return conn.pgconn.status == pq.ConnStatus.OK, None

    @staticmethod
    def _end_cut(conn: AConn, gen: Any = None) -> None:
        """Close the session of a pipeline cut off with results still due (and the generator left reading them)."""
        conn.pgconn.finish()
        gen = gen or cast(Any, conn).hv_cut
        cast(Any, conn).hv_cut = None
        if gen is not None:
            with contextlib.suppress(Exception):
                gen.close()

    async def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge ``data`` into the stored body (``||``), or replace it; False if the key is not stored.

        One round trip; a lost connection is settled by asking the server (`_write`), or, when no server can name
        the transaction, by reading the row (already as written: done, True; never applied twice).
        """
        ext = await self._ext()
        query = self._write_sql.get((shard_id, merge, ext))
        if query is None:
            composed = self._update_sql(shard_id, ext, merge=merge)
            query = self._write_sql[(shard_id, merge, ext)] = composed.as_string(None)
        params = (*self._body_params(data), key)
        try:
            return await self._write(shard_id, query, params, (key,)) > 0
        except pg_errors.UniqueViolation as exc:  # a unique secondary index (_indexes)
            raise unique_violation(exc, shard_id, self._label) or exc from None

    async def delete(self, shard_id: int, key: Key) -> bool:
        """Delete one entity; False if the key is not stored (one round trip, settled like `update`: a lost delete
        that committed is True, not run again into False; one the server cannot name is True if the row is absent)."""
        query = self._write_sql.get((shard_id, None, None))
        if query is None:
            composed = self._delete_sql(shard_id)
            query = self._write_sql[(shard_id, None, None)] = composed.as_string(None)
        return await self._write(shard_id, query, (key,), (key,)) > 0

    async def update_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any], counts: dict[int, int]
    ) -> int:
        """Merge ``data`` into every record of these shards matching ``spec``; the rows changed (see `_write_where`)."""
        return await self._write_where(shard_ids, spec, data, counts)

    async def delete_where(self, shard_ids: Sequence[int], spec: QuerySpec, counts: dict[int, int]) -> int:
        """Delete every record of these shards matching ``spec``; the rows deleted (see `_write_where`)."""
        return await self._write_where(shard_ids, spec, None, counts)

    async def _write_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any] | None, counts: dict[int, int]
    ) -> int:
        """A filter update (``data``) or delete (None) in pieces, each piece a transaction of its own.

        One statement per shard; the statements of a piece of `_fanout.shard_pieces` shards (16: 64 relations
        locked, as a query's piece) run between ``BEGIN`` and ``COMMIT``, and up to `PIPELINE_PIECES` pieces go
        to the server in one pipeline (one round trip). A piece commits or rolls back as a whole; pieces are not
        atomic together. ``counts`` receives the rows written per shard as each piece commits, so after an
        error the caller knows what is done (the pipeline stops at the failing piece: later ones never run).
        Returns the rows written by this call. Errors: as `query`'s (`ShardMoved`, `NotProvisioned`,
        `ServerLimitReached`, `ServerUnavailable`), `DuplicateValue` for a unique secondary index.
        """
        statements, pieces = self._write_where_pieces(shard_ids, spec, await self._ext(), data)
        written = 0
        for start in range(0, len(pieces), PIPELINE_PIECES):
            batch = pieces[start : start + PIPELINE_PIECES]
            conn, pool = await self._checkout()
            try:
                written += await self._write_pieces(conn, batch, statements, counts)
            except psycopg.Error as exc:
                failed = self._failed_shard(exc, batch, counts)
                if isinstance(exc, pg_errors.UniqueViolation):
                    raise unique_violation(exc, failed, self._label) or exc from None
                piece = next((p for p in batch if any(shard not in counts for shard in p)), [failed])  # the failing one
                privileges = ("SELECT", "DELETE" if data is None else "UPDATE")
                error = await self._translate_over(conn, exc, piece, privileges)
                if error is exc:
                    raise
                raise error from chained(error, exc)
            finally:
                await self._checkin(conn, pool)
        return written

    async def _write_pieces(
        self,
        conn: AConn,
        pieces: Sequence[Sequence[int]],
        statements: Mapping[int, tuple[str, list[Any]]],
        counts: dict[int, int],
    ) -> int:
        """Run pieces of a filter write in one pipeline, each between BEGIN and COMMIT; rows written by those
        that committed go into ``counts`` (also when a later piece fails, which is then raised)."""
        sent: list[tuple[list[tuple[int, psycopg.AsyncCursor[Any]]], psycopg.AsyncCursor[Any]]] = []
        failure: psycopg.Error | None = None
        generic = plans_generic(conn)  # a filter's plan depends on its values (_fanout.GENERIC_POINT_PLANS)

        async def send() -> None:
            for piece in pieces:
                await conn.execute("BEGIN")
                if generic:
                    await conn.execute(AUTO_PLANS_SQL)
                cursors = []
                for shard in piece:
                    query, params = statements[shard]
                    cursors.append((shard, await conn.cursor().execute(query, params)))
                sent.append((cursors, await conn.execute("COMMIT")))

        try:
            await self._pipelined(conn, send)
        except psycopg.Error as exc:
            failure = exc
        written = done = 0
        for cursors, commit in sent:
            if commit.statusmessage != "COMMIT":  # the failing piece (rolled back) and those never run
                break
            done += 1
            for shard, cur in cursors:
                counts[shard] = counts.get(shard, 0) + max(cur.rowcount, 0)
                written += max(cur.rowcount, 0)
        if isinstance(failure, PipelineTimeout):
            raise self._filter_write_cut(failure, done, len(pieces), written) from None
        if failure is not None:
            if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                try:
                    await conn.rollback()
                except psycopg.Error:
                    await conn.close()
            raise failure
        return written

    def _filter_write_cut(self, cut: PipelineTimeout, done: int, pieces: int, written: int) -> OperationTimeout:
        """The error of a filter write's pipeline cut off by ``operation_timeout``: what of it committed."""
        head = (
            f"PostgreSQL server {self._label} did not answer within operation_timeout={self._options.operation_timeout}"
            f" s: a cancel request was sent for the filter write's statement and its session closed; {done} of the "
            f"{pieces} piece(s) sent to this server committed ({written} record(s))"
        )
        if cut.settled:
            tail = "; the cancelled piece and the pieces after it did not commit (nothing of them is stored)"
        else:
            tail = (
                "; the server did not confirm the others in time (the session was closed with replies unread), so "
                "more of them may have committed: that count is a lower bound"
            )
        return OperationTimeout(f"{head}{tail}; running the call again finishes the job")

    @staticmethod
    def _failed_shard(exc: psycopg.Error, pieces: Sequence[Sequence[int]], counts: Mapping[int, int]) -> int:
        """The shard a failed filter write names (its schema), else the first shard of the batch not done."""
        schema = exc.diag.schema_name or ""
        if schema.startswith("shard") and schema[5:].isdigit():
            return int(schema[5:])
        return next((shard for piece in pieces for shard in piece if shard not in counts), pieces[0][0])

    async def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> AsyncGenerator[Record, None]:
        """Matching records of these shards in key order, streamed: pages by key (`_query_pieces`), each read on a
        connection borrowed for that round trip only.

        No connection is held between records, so a stream left early (``break`` out of ``async for``, an
        exception in the loop body) has nothing to give back: neither the event loop's clean-up of the abandoned
        generator nor the end of ``asyncio.run()`` has to run anything on a pooled session. (It was one server-side
        cursor per statement, its connection held until the generator was closed: left early, it went back only
        when the generator was collected, as a task the ending loop cancelled.)
        """
        if not shard_ids or spec.limit == 0:
            return
        ext = await self._ext()
        pieces = self._query_pieces_of(shard_ids, spec, ext)
        stream = self._query_pieces(pieces, spec, ext)
        try:
            async for record in stream:
                yield record
        finally:
            await stream.aclose()

    async def _query_pieces(
        self, pieces: list[list[int]], spec: QuerySpec, ext: str | None
    ) -> AsyncGenerator[Record, None]:
        """A query over more shards than one statement may lock: pages of each piece, merged in key order.

        Each piece of shards (`_fanout.shard_pieces`) is read in pages by key (``id > last ORDER BY id LIMIT n``,
        sizes from `query_fetch_sizes`, none past ``limit``), every page a statement in its own transaction; the
        pages of all pieces that need one are sent in one pipeline (the first round trip asks every piece). No
        connection or lock is held between round trips, however slowly the stream is consumed. The pieces are
        merged with a heap of each piece's next key (as `heapq.merge` does), and ``limit`` stops the stream.
        """
        key_type = self._options.layout.key_type
        first = max(10, FIRST_FILL_ROWS // len(pieces))  # the first round trip buffers ≤ FIRST_FILL_ROWS rows
        states = [QueryPiece(shards, query_fetch_sizes(spec.limit, first)) for shards in pieces]
        await self._fill(states, spec, ext, key_type)
        heap = [(int(p.rows[0].key), i) for i, p in enumerate(states) if p.rows]
        heapq.heapify(heap)
        emitted = 0
        while heap:
            index = heap[0][1]
            piece = states[index]
            yield piece.rows.popleft()
            emitted += 1
            if spec.limit is not None and emitted >= spec.limit:
                return
            if not piece.rows and not piece.done:
                low_water = [p for p in states if p is not piece and not p.done and len(p.rows) < QUERY_FETCH_FIRST]
                await self._fill([piece, *low_water[: PIPELINE_PIECES - 1]], spec, ext, key_type)
            if piece.rows:
                heapq.heapreplace(heap, (int(piece.rows[0].key), index))
            else:
                heapq.heappop(heap)

    async def _fill(self, states: Sequence[QueryPiece], spec: QuerySpec, ext: str | None, key_type: type[Key]) -> None:
        """Read the next page of each piece in ``states``, in one pipeline (see `_pieces`)."""
        statements: list[tuple[Any, Sequence[Any]]] = []
        filled: list[tuple[QueryPiece, int]] = []
        for piece in states:
            size = next(piece.sizes, 0)
            if size == 0:  # read as many rows as the limit allows already
                piece.done = True
                continue
            low = spec.low if piece.last is None else max(spec.low or 0, piece.last + 1)
            page = dataclasses.replace(spec, low=low, limit=size)
            statements.append(self._query_sql(piece.shards, page, ext))
            filled.append((piece, size))

        async def op(conn: AConn) -> list[list[Any]]:
            return await self._pieces(conn, statements, values_matter=True)

        if not statements:
            return
        shards = [shard for piece, _ in filled for shard in piece.shards]
        pages = await self._with_conn(states[0].shards[0], op, shards=shards)
        for (piece, size), rows in zip(filled, pages, strict=True):
            records = query_records(rows, key_type)
            piece.rows.extend(records)
            if records:
                piece.last = int(records[-1].key)
            if len(rows) < size:
                piece.done = True

    # -- operations ------------------------------------------------------------------------------------------

    async def database_identity(self) -> str:
        """Which database this entry reaches, whatever it is called (see `_move.database_identity`): a move's
        forwarding stub names its target so, and `AsyncDatastore` matches it to its own entries. One new session."""
        conn = await self._admin()
        try:
            row = await (await conn.execute(IDENTITY_SQL)).fetchone()
            try:
                async with conn.transaction():
                    found = await (await conn.execute(SYSTEM_ID_SQL)).fetchone()
                    system = str(found[0]) if found else "?"
            except pg_errors.InsufficientPrivilege:  # pg_control_system() revoked: start time and database decide
                system = "?"
        finally:
            await conn.close()
        return identity_text(system, row)

    async def _admin(self, *, bounded: bool = False) -> AConn:
        """A session of its own (not pooled), in autocommit. ``bounded``: each exchange is bounded by
        ``operation_timeout`` like the pool's (row counts, `provisioned`); unbounded for provisioning, whose DDL and
        advisory lock may rightly take longer."""
        cls = bounded_async_connection_class(self._options.operation_timeout) if bounded else psycopg.AsyncConnection
        self._no_second_attempt()
        try:
            conn = await cls.connect(self._conninfo, **{**self._kwargs, "autocommit": True})
        except psycopg.OperationalError as exc:
            raise self._attempt_failed(self._unavailable(exc)) from None
        await self._configure(conn)
        return conn

    async def _ensure_hstore(self, conn: AConn, report: ProvisionReport) -> str:
        row = await (await conn.execute(HSTORE_SCHEMA_SQL)).fetchone()
        if row is None:
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
            except psycopg.Error as exc:
                raise self._cannot_create_hstore(exc) from None
            report.notes.append("created extension hstore")
            row = await (await conn.execute(HSTORE_SCHEMA_SQL)).fetchone()
            assert row is not None
        self._ext_schema = str(row[0])
        return self._ext_schema

    async def _existing(self, conn: AConn, shard_ids: Sequence[int]) -> dict[int, tuple[set[str], str | None]]:
        names = {shard_schema(s): s for s in shard_ids}
        relations = sorted(required_relations(self.backend) | {BODY_INDEX})  # the body index: see _todo
        cur = await conn.execute(catalog_query(), (relations, list(names)))
        return {names[r[0]]: (set(r[1]), r[2]) for r in await cur.fetchall()}

    async def provision(
        self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> ProvisionReport:
        """Create the extension, schemas, tables and indexes this server's shards need; idempotent, resumable.

        The catalog is read first, so a re-run only touches missing shards; the rest is created in transactions of
        `PROVISION_BATCH` shards over `PROVISION_WORKERS` concurrent sessions. A role without CREATE on the
        database gets `PermissionDenied` naming the GRANT; a read-only server `ReadOnlyServer`; a recorded
        migration that leaves the new shard's schema when replayed there `MigrationError`.
        """
        try:
            return await self._provision(shard_ids, progress)
        except psycopg.Error as exc:
            if exc.sqlstate == ESCAPED_PATH:  # a recorded migration replayed on a new shard left its schema
                raise MigrationError(
                    f"provisioning on {self._label} stopped: {exc.diag.message_primary}. That batch of new shards "
                    "was rolled back (nothing of it is created). A recorded migration must run in the shard's "
                    "schema: record a corrected file (hv migrate) or remove it from hypervault.migrations, then "
                    "run hv init again",
                    server=self._label,
                ) from None
            refused = self._refusal(exc)
            if refused is None:
                raise
            raise refused from None

    async def _provision(
        self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> ProvisionReport:
        started = time.perf_counter()
        report = ProvisionReport(server=self._label, shards=len(shard_ids))
        conn = await self._admin()
        try:
            if self.pooling == "transaction":  # resolved by _admin's configure; the lock would outlive the session
                raise ConfigError(session_lock_refusal("provisioning (hv init)", self._label))
            await conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK,))
            ext = await self._ensure_hstore(conn, report) if self.text_only else None
            existing = await self._existing(conn, shard_ids)
            await self._check_existing(conn, existing)
            todo = self._todo(shard_ids, existing)
            citus = await self._citus_coordinator(conn)
            if citus:  # a Citus coordinator: also the shard schemas that exist but are not distributed yet
                cur = await conn.execute(CITUS_UNDISTRIBUTED_SQL, ([shard_schema(s) for s in shard_ids],))
                undistributed = {str(r[0]) for r in await cur.fetchall()}
                todo = [s for s in shard_ids if s in set(todo) or shard_schema(s) in undistributed]
            if progress is not None and len(shard_ids) > len(todo):
                progress(len(shard_ids) - len(todo))
            batches = [todo[i : i + PROVISION_BATCH] for i in range(0, len(todo), PROVISION_BATCH)]
            # shards of an earlier release, which gave every shard a body index: recorded (unless recorded or being
            # dropped already), so the new shards get it too (_indexes.adopt_body_index)
            if any(relations & {BODY_INDEX, BODY_INDEX_UNSET} for relations, _ in existing.values()):
                adopted: bool = await ato_thread(adopt_body_index, self)
                if adopted:
                    report.notes.append(f"recorded the body index ({BODY_INDEX}): existing shards have it")
            extra = await ato_thread(new_shard_ddl, self, ext, todo)  # recorded indexes and migrations (_migrate)
            await self._run_batches(batches, ext, progress, extra, citus=citus)
            report.created = len(todo)
        finally:
            await conn.close()
        report.seconds = time.perf_counter() - started
        return report

    async def _citus_coordinator(self, conn: AConn) -> bool:
        """True if this server is a Citus coordinator: provisioning then distributes each new shard schema."""
        row = await (await conn.execute(CITUS_EXTENSION_SQL)).fetchone()
        if row is None:
            return False
        check_citus_version(str(row[0]), None, self._label)
        info = await (await conn.execute(CITUS_COORDINATOR_SQL)).fetchone()
        return bool(info and info[1])

    async def _check_existing(self, conn: AConn, existing: Mapping[int, tuple[set[str], str | None]]) -> None:
        """Refuse shards that hold the 2015 library's table or ids of another layout (`_legacy`), creating nothing.

        Two queries: the catalog (the 2015 ``type`` column, a 2015 ``next_id()`` and its epoch, which tables hold
        rows), then the newest id of up to `LAYOUT_SAMPLE` shards holding rows (backward primary-key scans).
        """
        if not existing:
            return
        names = {shard_schema(shard): shard for shard in existing}
        rows = await (await conn.execute(LEGACY_SQL, (list(names),))).fetchall()
        old_tables, epochs, sample = legacy_signs(rows, names)
        layout, now_ms = self._options.layout, time.time_ns() // 1_000_000
        for shard, epoch in sorted(epochs.items()):
            problem = layout_problem(shard, self._label, layout, max_id=None, next_id_epoch=epoch, now_ms=now_ms)
            if problem is not None:
                raise problem
        if old_tables:
            raise legacy_table_error(old_tables, self._label)
        if sample:
            pieces = shard_pieces(sample, per_statement=self.shards_per_statement)  # bounded locks (_fanout)
            statements = [(max_id_query(piece), ()) for piece in pieces]
            for shard, max_id in [row for rows in await self._pieces(conn, statements) for row in rows]:
                problem = layout_problem(shard, self._label, layout, max_id=max_id, next_id_epoch=None, now_ms=now_ms)
                if problem is not None:
                    raise problem

    async def _run_batches(
        self,
        batches: list[list[int]],
        ext: str | None,
        progress: Callable[[int], None] | None,
        extra: Callable[[int], str] = lambda shard_id: "",
        *,
        citus: bool = False,
    ) -> None:
        if not batches:
            return
        queue = iter(batches)
        lock = threading.Lock()
        errors: list[BaseException] = []

        async def work() -> None:
            conn = await self._admin()
            try:
                # Durable when provision() returns, whatever the database's default: each batch waits for its WAL
                # flush (measured: 2 ms per commit here, about 80 ms over the 41 batches of 8192 shards, under 1 %)
                await conn.execute("SET synchronous_commit = on")
                while not errors:
                    with lock:
                        batch = next(queue, None)
                    if batch is None:
                        return
                    ddl = "".join(shard_ddl(s, self.backend, ext) + extra(s) for s in batch)
                    if citus:  # on a Citus coordinator each schema becomes a distributed schema on a worker
                        ddl += distribute_sql([shard_schema(s) for s in batch]) + ";"
                    await conn.execute(f"BEGIN;{ddl}COMMIT;")
                    if progress is not None:
                        progress(len(batch))
            except BaseException as exc:
                errors.append(exc)
            finally:
                await conn.close()

        await agather(*(aspawn(work) for _ in range(PROVISION_WORKERS)))
        if errors:
            error = errors[0]
            if isinstance(error, psycopg.OperationalError):
                raise self._unavailable(error) from None
            raise error

    async def provisioned(self, shard_ids: Sequence[int]) -> list[int]:
        """The shards among ``shard_ids`` whose entities table exists on this server."""
        conn = await self._admin(bounded=True)
        try:
            existing = await self._existing(conn, shard_ids)
        finally:
            await conn.close()
        return [s for s in shard_ids if TABLE in existing.get(s, (set(), None))[0]]

    async def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Exact rows per provisioned shard (shards without a table are left out); `ServerUnavailable` naming
        ``operation_timeout`` if a count waits past it (a shard's table locked by another session, say)."""
        conn = await self._admin(bounded=True)
        counts: dict[int, int] = {}
        try:
            existing = await self._existing(conn, shard_ids)
            # a table, not a moved shard's forwarding view (which raises ShardMoved when read): its body type is known
            shards = [s for s in shard_ids if TABLE in existing.get(s, (set(), None))[0] and existing[s][1] is not None]
            if await (await conn.execute(CITUS_EXTENSION_SQL)).fetchone() is not None:
                await self._citus_pieces(conn)  # a store that ran no statement on shards yet (hv status)
            pieces = shard_pieces(shards, per_statement=self.shards_per_statement)  # bounded locks (_fanout)
            statements = [(count_query(piece), ()) for piece in pieces]
            for i in range(0, len(statements), PIPELINE_PIECES):
                for rows in await self._pieces(conn, statements[i : i + PIPELINE_PIECES]):
                    for shard, count in rows:
                        counts[int(shard)] = int(count)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await conn.close()
        return counts

    async def row_estimates(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Approximate rows per provisioned shard from the server's statistics (``pg_stat_user_tables.n_live_tup``:
        rows inserted less rows deleted, as counted by the server: a session's counts arrive up to ~10 s after its
        writes (PostgreSQL's PGSTAT_IDLE_INTERVAL), an ANALYZE racing a DELETE can leave it off until the next
        ANALYZE, 0 after a statistics reset): one catalog query, no shard table scanned or locked, so
        ``hv status --watch`` costs the same for 8192 shards of a billion rows as for 16 small ones. Moved shards'
        forwarding views are left out. Through a Citus coordinator whose shard schemas are distributed, each
        schema's rows are the statistics of the node holding its placement (`CITUS_ROW_ESTIMATES_SQL`: one more
        catalog query on every node, the highest count where a placement being moved exists twice)."""
        names = {shard_schema(s): s for s in shard_ids}
        conn = await self._admin(bounded=True)
        try:
            cur = await conn.execute(ROW_ESTIMATES_SQL, (TABLE, list(names)))
            estimates = {names[schema]: max(int(rows), 0) for schema, rows in await cur.fetchall()}
            if await (await conn.execute(CITUS_EXTENSION_SQL)).fetchone() is not None:
                await self._citus_pieces(conn)  # a store that ran no statement on shards yet (hv status --watch)
                if self.shards_per_statement == CITUS_SHARDS_PER_STATEMENT:
                    # the coordinator's tables of distributed schemas are shells (0 rows): the rows are counted by
                    # the node holding each schema's placement
                    for result in await (await conn.execute(CITUS_ROW_ESTIMATES_SQL)).fetchall():
                        for schema, rows in citus_row_estimates(result[0]).items():
                            if schema in names:
                                estimates[names[schema]] = max(estimates.get(names[schema], 0), rows)
            return estimates
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await conn.close()

    async def lease_worker(
        self, *, bits: int = 4, namespace: str = "default", ttl: float = 10.0, acquire_timeout: float = 0.0
    ) -> PostgresWorkerLease:
        """Lease a free worker number on this server until closed (see `hvbackend_postgres.lease_worker`).

        Its connection is held between renewals only on a direct connection: behind a pooler (or before the store
        knows), each renewal connects anew, so that the lease never holds a pooler's server session idle.
        """
        settings = {**self._kwargs, "conninfo": self._conninfo, "application_name": "hypervault-lease"}
        return await alease_worker(
            settings,
            bits=bits,
            namespace=namespace,
            ttl=ttl,
            acquire_timeout=acquire_timeout,
            keep_connection=self.pooling == "off",
        )

    if True:  # ASYNC
        pass
    else:

        def shard_mover(self) -> PostgresMover:
            """Shard-move operations with this server as the source (``Datastore.move_shard``), see ``_move``."""
            return PostgresMover(self)

        def shard_cluster(self) -> CitusCoordinator | None:
            """The Citus cluster this server coordinates, or None for a plain server (or a Citus worker), see
            ``_citus``; `ConfigError` for a Citus version hypervault does not support."""
            conn = self._admin()
            try:
                info = read_citus(conn, self._label)
            finally:
                conn.close()
            return CitusCoordinator(self, info) if info is not None and info.coordinator else None

    def index_builder(self) -> PostgresIndexes:
        """Secondary-index operations on this server (blocking, on sessions of their own), see ``_indexes``."""
        return PostgresIndexes(self)

    def migrator(self) -> PostgresMigrator:
        """Migration operations on this server (blocking, on sessions of their own), see ``_migrate``."""
        return PostgresMigrator(self)

    async def wal_position(self) -> tuple[bool, int]:
        """This server's WAL position, for read replicas: ``(in_recovery, lsn)``, ``lsn`` in bytes.

        A primary answers ``(False, pg_current_wal_insert_lsn())``, a standby ``(True, pg_last_wal_replay_lsn())``
        (see ``_replica.WAL_POSITION_SQL``). One round trip on a pooled connection; `ServerUnavailable` if the server
        cannot be reached.
        """
        gaps = self._wal_gaps
        conn, pool = await self._checkout()
        try:
            row = await (await conn.execute(WAL_POSITION_SQL)).fetchone()
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            await self._checkin(conn, pool)
        in_recovery, lsn = wal_position_of(row)
        if not in_recovery:
            self._wal_seen(lsn, covers=gaps)
        return in_recovery, lsn

    def written_position(self) -> int | None:
        """A WAL position (bytes) past the commit of every write this store finished, or None if unknown.

        Known only while ``track_wal`` is set (the read router sets it on primaries with standbys): each write
        then brings back the primary's position after its commit in the same exchange (`_send_write`), so
        read-your-writes costs no round trip of its own. None before the first such write, or while a write whose
        exchange was lost (settled by asking the server) is not covered by a later `wal_position` read.
        """
        if not self.track_wal or self._wal_gaps != self._wal_gaps_covered or not self._wal_written:
            return None
        return self._wal_written

    def _wal_seen(self, lsn: int | None, covers: int | None = None) -> None:
        """Fold a primary WAL position read after some commits into `written_position`; ``covers``: the number of
        gaps counted before the read began (a position read later covers the writes they stand for)."""
        with self._lock:
            if lsn is not None and lsn > self._wal_written:
                self._wal_written = lsn
            if covers is not None and lsn is not None and covers > self._wal_gaps_covered:
                self._wal_gaps_covered = covers

    def _wal_gap(self) -> None:
        """A write committed without bringing back its position (a lost exchange, settled by asking the server; an
        old libpq): `written_position` is None until a `wal_position` read that began after this covers it."""
        with self._lock:
            self._wal_gaps += 1

    def stats(self) -> dict[str, Any]:
        """Pool figures: pool_max, size, available, borrowed (lent by this store), waiting, connection errors;
        ``replacing``: connections counted in ``size`` that are being opened, returned or replaced (``size`` =
        ``available`` + ``borrowed`` + ``replacing``); ``pgbouncer``/``pooling``: the setting and what it resolved
        to (None until the first connection when "auto")."""
        pool = self._pool
        stats = self._stats(pool.get_stats() if pool is not None else {})
        stats["replacing"] = max(0, stats["size"] - stats["available"] - stats["borrowed"])
        stats["pgbouncer"] = self.pgbouncer
        stats["pooling"] = self.pooling
        return {**stats, **self._commit_counters.as_dict()}
