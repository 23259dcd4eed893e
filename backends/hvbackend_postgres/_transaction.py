# WARNING: generated from backends/hvbackend_postgres/_atransaction.py by tools/async_to_sync.py.
# Do not edit: edit the source, then run the tool.
"""`PostgresTransaction`: one transaction on one shard of a PostgreSQL server.

The transaction carries its shard context itself: ``BEGIN`` and ``SET LOCAL search_path`` go out in one round trip
(`hvbackend_postgres._shardtx.shard_search_path`), and every statement hypervault sends names the shard's schema,
so nothing depends on session state: it works through PgBouncer in transaction mode, and the connection goes back
to the pool as it came. Statements are never prepared on the server (``prepare=False``, and no automatic
preparation for statements run through ``tx.cursor()`` during the transaction), for the same reason.
A key taken by another writer is ``ON CONFLICT DO NOTHING`` (single rows) or a rolled-back savepoint
(``put_many``'s COPY), so the façade retries with a fresh key without aborting the transaction. The single-row
INSERT names no conflict target: a moved shard's forwarding stub is a view, on which PostgreSQL refuses
``ON CONFLICT (id)`` while planning (no unique index: 42P10) before the stub's trigger could answer, so it would
never report `ShardMoved`. Every statement a transaction sends reaches the stub's function or trigger, which
raises ``ZHV01`` (`ShardMoved`); raw SQL through ``tx.cursor()`` does too when it reads or writes the table.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.rows import tuple_row
from psycopg.types.hstore import register_hstore

from hvbackend_postgres._bouncer import pre_commit_sql, reset_sql
from hvbackend_postgres._common import chained, query_fetch_sizes, query_records
from hvbackend_postgres._fanout import AUTO_PLANS_SQL, plans_generic
from hvbackend_postgres._indexes import is_unique_violation, unique_violation
from hvbackend_postgres._lent import TransactionHandle, detach, lend_cursor
from hvbackend_postgres._schema import ShardSQL
from hvbackend_postgres._selflock import TRANSACTION as HELD_IN_TRANSACTION
from hvbackend_postgres._shardtx import shard_search_path
from hvcore._backend import QuerySpec, Record
from hvcore._holdings import TRANSACTION, Hold
from hvcore._key import Key
from hvcore.errors import ServerUnavailable, TransactionConflict, TransactionError

AUTO_BEGIN = sql.SQL("; " + AUTO_PLANS_SQL)  # a transaction on a session in generic-plan mode: its own plan mode
PostgresServerStore = Any  # the store of the transaction's server (not imported: it imports this module)

__all__ = ["PostgresTransaction", "begin_sql", "postgres_transaction"]

Conn = psycopg.Connection[Any]

_LEVELS = {"read committed": "READ COMMITTED", "repeatable read": "REPEATABLE READ", "serializable": "SERIALIZABLE"}
_CONFLICTS = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def begin_sql(shard_id: int, ext: str | None, isolation_level: str | None, read_only: bool) -> sql.Composed:
    """``BEGIN [ISOLATION LEVEL ...] [READ ONLY]; SET LOCAL search_path = shardNNNN, <ext>``: one round trip."""
    words = ["BEGIN"]
    if isolation_level is not None:
        words.append(f"ISOLATION LEVEL {_LEVELS[isolation_level]}")
    if read_only:
        words.append("READ ONLY")
    return sql.SQL("{}; {}").format(sql.SQL(" ".join(words)), shard_search_path(shard_id, ext))


class PostgresTransaction:
    """The statements of one transaction on one shard, on one borrowed connection (a `StoreTransaction`)."""

    __module__ = "hvbackend_postgres"

    def __init__(self, store: PostgresServerStore, conn: Conn, shard_id: int, ext: str | None) -> None:
        self._store = store
        self._conn = conn
        self.shard_id = shard_id
        self._ext = ext
        statements = ShardSQL.build(shard_id, store.backend, ext)
        self._insert = statements.insert + " ON CONFLICT DO NOTHING"  # no target: see the module's docstring
        self._insert_plain = statements.insert
        self._fetch = statements.fetch
        self._names = itertools.count(1)
        self._streams: set[psycopg.ServerCursor[Any]] = set()  # cursors of query streams not finished yet
        self.user_sql = False  # tx.cursor() was lent: the session is reset when the transaction ends (see _bouncer)

    def __repr__(self) -> str:
        return f"<PostgresTransaction shard={self.shard_id} on {self._store.label}>"

    def aborted(self) -> bool:
        """True if the connection is gone or not in a usable transaction (an error aborted it)."""
        conn = self._conn
        return conn.closed or conn.pgconn.transaction_status != pq.TransactionStatus.INTRANS

    def _error(self, exc: psycopg.Error) -> Exception:
        """The typed error for a driver error inside the transaction."""
        if is_unique_violation(exc):
            duplicate = unique_violation(exc, self.shard_id, self._store.label)
            if duplicate is not None:
                return duplicate  # `insert`'s plain INSERT: the key was free a statement earlier
            return TransactionConflict(
                f"a key of shard {self.shard_id} on {self._store.label} was taken by another transaction while this one wrote it: it is rolled back; run it again"
            )
        if isinstance(exc, _CONFLICTS):
            return TransactionConflict(
                f"PostgreSQL refused the transaction on shard {self.shard_id} of {self._store.label} to keep transactions isolated ({exc.sqlstate}: {exc.diag.message_primary}): it is rolled back; run it again"
            )
        translated: Exception = self._store._translate(exc, self.shard_id)
        return translated

    def _execute(self, query: Any, params: Any = None) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(query, params, prepare=False)
        except psycopg.Error as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from chained(error, exc)

    # -- entities ------------------------------------------------------------------------------------------------

    def insert(self, key: Key, kind: int, data: Mapping[str, Any]) -> bool:
        """One ``INSERT ... ON CONFLICT DO NOTHING``: False if the key is taken (the transaction goes on).

        A row left out with its key free took a unique secondary index's value: the plain INSERT then raises
        `DuplicateValue` (aborting the transaction, as any error does). Both extra statements run only then.
        """
        params = self._store._insert_params(key, kind, data)
        cur = self._execute(self._insert, params)
        if cur.rowcount == 1:
            return True
        if self.fetch(key) is not None:
            return False
        cur = self._execute(self._insert_plain, params)
        return cur.rowcount == 1

    def insert_many(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> bool:
        """One binary COPY inside a savepoint: a taken key rolls back to it and returns False."""
        store, conn = (self._store, self._conn)
        if store.text_only:
            store._hstore_type(conn)
        statement = store._copy_sql(self.shard_id)
        name = sql.Identifier(f"hv_copy_{next(self._names)}")
        self._execute(sql.SQL("SAVEPOINT {}").format(name))
        store._log_copy(statement, rows)
        try:
            with conn.cursor() as cur:
                if store._hstore_info is not None:
                    register_hstore(store._hstore_info, cur)
                with cur.copy(statement) as copy:
                    copy.set_types(store._copy_types())
                    for row in store._copy_rows(rows):
                        copy.write_row(row)
        except psycopg.Error as exc:
            if is_unique_violation(exc):
                self._execute(sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(name))
                duplicate = unique_violation(exc, self.shard_id, store.label)
                if duplicate is not None:
                    raise duplicate from None
                return False
            error = self._error(exc)
            if error is exc:
                raise
            raise error from chained(error, exc)
        self._execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
        return True

    def fetch(self, key: Key) -> Record | None:
        """The record under ``key`` as the transaction sees it, or None."""
        row = self._execute(self._fetch, (key,)).fetchone()
        return None if row is None else Record(key, row[0], row[1])

    def fetch_many(self, keys: Sequence[Key]) -> list[Record]:
        """The records of these keys in one statement; missing keys are left out."""
        items = [(self.shard_id, key) for key in keys]
        query, params, _ = self._store._fetch_many_sql(items, self._ext)
        rows = self._execute(query, params).fetchall()
        records: list[Record] = self._store._records(items, rows)
        return records

    def update(self, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge into (``||``) or replace the body; False if the key is not stored."""
        query = self._store._update_sql(self.shard_id, self._ext, merge=merge)
        cur = self._execute(query, (*self._store._body_params(data), key))
        return cur.rowcount > 0

    def delete(self, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        cur = self._execute(self._store._delete_sql(self.shard_id), (key,))
        return cur.rowcount > 0

    def query(self, spec: QuerySpec) -> Generator[Record, None, None]:
        """Matching records of the shard in key order, through a server-side cursor of the transaction."""
        store, conn = (self._store, self._conn)
        query, params = store._query_sql([self.shard_id], spec, self._ext)
        key_type = store._options.layout.key_type
        cur = conn.cursor(name=f"hv_tx_query_{next(self._names)}", row_factory=tuple_row)
        self._streams.add(cur)
        try:
            store._log_statement(query, params, conn)  # a server-side cursor: the logging cursor class is not used
            cur.execute(query, params)
            for size in query_fetch_sizes(spec.limit):
                rows = cur.fetchmany(size)
                yield from query_records(rows, key_type)
                if len(rows) < size:
                    break
        except psycopg.Error as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from chained(error, exc)
        finally:
            self._streams.discard(cur)
            with contextlib.suppress(psycopg.Error):
                cur.close()  # CLOSE, if the transaction is still usable (psycopg checks)

    def _forget_streams(self) -> None:
        """Mark the cursors of query streams left unfinished closed, on the client only (the transaction's end closes
        them on the server): a stream finalized later must not send its CLOSE on a connection that another borrower
        holds by then."""
        streams, self._streams = (self._streams, set())
        for cur in streams:
            psycopg.Cursor.close(cur)  # the plain cursor's close: no CLOSE statement

    @contextmanager
    def cursor(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor of the transaction's connection (rows as the datastore's ``row_factory``); commits nothing.

        A statement refused by a moved shard's forwarding stub (``ZHV01``) raises `ShardMoved`."""
        self.user_sql = True
        # the lent cursor class: a statement the forwarding stub of a moved shard refuses raises ShardMoved
        conn: Any = self._conn
        conn.hv_shard = conn.hv_in_tx = self.shard_id  # statements ending the transaction are refused (_common)
        conn._num_transactions += 1  # psycopg's own guard: commit()/rollback() refused, as in conn.transaction()
        # the cursor and its ``connection`` reach the pooled connection through a handle of this block's own, which
        # refuses every use once the block ends (the pool may lend the connection to someone else after)
        store = self._store

        def make_cursor(row_factory: Any = None) -> Any:
            return store._lent_cursor(conn, row_factory=row_factory or store._user_row_factory)

        handle = TransactionHandle(conn, f"shard {self.shard_id} on {store.label}", make_cursor)
        conn.hv_lend = handle  # the lent cursor checks its borrow against it (LentCursor._check_lent)
        try:
            with make_cursor() as cur:
                yield lend_cursor(handle, cur)
        finally:
            detach(handle)
            conn._num_transactions -= 1
            conn.hv_shard = conn.hv_moved = conn.hv_in_tx = conn.hv_lend = None

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """``SAVEPOINT``; ``RELEASE`` when the block ends, ``ROLLBACK TO`` and ``RELEASE`` on an exception."""
        name = sql.Identifier(f"hv_savepoint_{next(self._names)}")
        self._execute(sql.SQL("SAVEPOINT {}").format(name))
        try:
            yield
        except BaseException:
            if not self._conn.closed:
                with contextlib.suppress(psycopg.Error):  # a lost connection: aborted() reports it
                    self._conn.execute(
                        sql.SQL("ROLLBACK TO SAVEPOINT {0}; RELEASE SAVEPOINT {0}").format(name), prepare=False
                    )
            raise
        self._execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))

    # -- the end -------------------------------------------------------------------------------------------------

    def _commit(self, before: str = "", then: str = "") -> None:
        """``COMMIT`` (with statements ``before`` and ``then`` in the same message); typed errors."""
        conn = self._conn
        try:
            conn.execute(before + "COMMIT" + then, prepare=False)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and conn.closed:
                lost = self._store._unavailable(exc)
                raise ServerUnavailable(
                    f"{lost} (the connection was lost during COMMIT: whether the transaction on shard {self.shard_id} committed is unknown)"
                ) from None
            error = self._error(exc)
            if error is exc:
                raise
            raise error from chained(error, exc)


def _rollback(conn: Conn, then: str = "") -> None:
    """Roll back whatever is open, followed by ``then`` (statements, in the same message); a connection that cannot
    is closed (the pool then replaces it)."""
    if conn.closed:
        return
    if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:  # interrupted mid-statement
        conn.close()
        return
    try:
        conn.execute("ROLLBACK" + then, prepare=False)
    except psycopg.Error:
        conn.close()


def _reset_session(store: PostgresServerStore, conn: Conn, *, session: bool) -> None:
    """After a transaction whose connection user code had (``tx.cursor()``): the session's state and psycopg's
    attributes back to the pool's (the store's own reset, see ``_bouncer``); a connection that cannot is closed."""
    if conn.closed:
        return
    try:
        store._reset(conn, session)
    except psycopg.Error:
        conn.close()


@contextmanager
def postgres_transaction(
    store: PostgresServerStore, shard_id: int, isolation_level: str | None, read_only: bool
) -> Iterator[PostgresTransaction]:
    """Borrow a connection, begin on ``shard_id``; commit when the block ends, roll back on an exception.

    A connection found dead at ``BEGIN`` is replaced once (nothing ran yet). The connection goes back to the pool
    idle, or closed if it could not be rolled back.
    """
    ext = store._ext()
    begin = begin_sql(shard_id, ext, isolation_level, read_only)
    held: tuple[Conn, Any, int | None] | None = None  # from the checkout on, every way out gives it back
    owner: object = None
    hold: Hold | None = None
    try:
        for attempt in (0, 1):
            conn, pool = store._checkout(shard_id, watch=False)  # a nested transaction: see _selflock
            held = (conn, pool, conn.prepare_threshold)
            try:
                conn.execute(begin + AUTO_BEGIN if plans_generic(conn) else begin, prepare=False)
            except psycopg.Error as exc:
                if attempt == 0 and conn.closed and isinstance(exc, psycopg.OperationalError):
                    held = None
                    store._checkin(conn, pool)
                    continue  # found dead at BEGIN: nothing ran yet, so once more on a fresh connection
                error = store._translate(exc, shard_id)
                if error is exc:
                    raise
                raise error from chained(error, exc)
            break
        owner = store._holdings.take(TRANSACTION)  # a PoolTimeout of this caller's meanwhile names the transaction
        if store.pooling == "off":  # a plain call of this caller's waiting for this session fails fast (_selflock)
            hold = store._self_locks.opened(store._session_pid(conn), shard_id, HELD_IN_TRANSACTION)
            store._hook_wait(conn, hold)  # and its statements waiting for the caller's other sessions (nested)
        # Statements run through tx.cursor() are not prepared either: behind PgBouncer in transaction mode a
        # prepared statement stays with a server session the next transaction may not get (restored after).
        conn.prepare_threshold = None
        tx = PostgresTransaction(store, conn, shard_id, ext)
        pooled = getattr(store, "pooling", None) == "transaction"
        try:
            yield tx
        except BaseException:
            tx._forget_streams()
            if tx.user_sql and pooled:
                # behind a transaction-mode pooler, with the ROLLBACK in one message (a reset sent after would reach
                # whichever server session comes next): what survives a rollback (advisory locks, PREPARE) goes
                _rollback(conn, "; " + reset_sql(conn, restore=False))
            else:
                _rollback(conn)
            if tx.user_sql:
                _reset_session(store, conn, session=not pooled)
            raise
        tx._forget_streams()
        if conn.closed:
            raise ServerUnavailable(
                f"PostgreSQL server {store.label} is unavailable: the connection of the transaction on shard {shard_id} was lost, and the server rolled the transaction back"
            )
        if tx.aborted():
            _rollback(conn)
            raise TransactionError(
                f"the transaction on shard {shard_id} of {store.label} is no longer open on its connection (a COMMIT or ROLLBACK through tx.cursor()?): nothing more is committed"
            )
        if tx.user_sql and pooled and (not tx.aborted()):
            # behind a transaction-mode pooler, in the transaction's own server session: the reset after COMMIT in
            # the same message (deferred triggers at COMMIT keep the transaction's settings and search path)
            tx._commit(pre_commit_sql(conn) + "; ", "; " + reset_sql(conn, restore=False))
        else:
            tx._commit()
        if tx.user_sql:
            _reset_session(store, conn, session=not pooled)
    finally:
        if owner is not None:
            store._holdings.give(TRANSACTION, owner)
            store._unhook_wait(conn)
            store._self_locks.closed(hold)
        if held is not None:
            conn, pool, threshold = held
            if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                _rollback(conn)
            conn.prepare_threshold = threshold
            store._checkin(conn, pool)
