"""`PostgresServerStore`: one physical PostgreSQL server behind one psycopg_pool pool (hstore or jsonb bodies)."""

from __future__ import annotations

import contextlib
import math
import select
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg.types.numeric import Int8BinaryDumper, Int8Dumper

from hvbackend_postgres._schema import (
    BODY_TYPES,
    TABLE,
    ShardSQL,
    catalog_query,
    count_query,
    required_relations,
    shard_ddl,
    shard_schema,
)
from hvcore._backend import BackendOptions, ProvisionReport, QuerySpec, Record, check_text, iter_fields
from hvcore._config import redact_conninfo
from hvcore._key import Key
from hvcore.errors import (
    ConfigError,
    ConnectionMisuse,
    DuplicateKey,
    InvalidData,
    NotProvisioned,
    PoolTimeout,
    ServerUnavailable,
)

__all__ = ["PROVISION_BATCH", "PROVISION_WORKERS", "PostgresServerStore"]

Conn = psycopg.Connection[Any]
_T = TypeVar("_T")

PROVISION_BATCH = 200  # shards per provisioning transaction (thousands in one run out of lock slots)
PROVISION_WORKERS = 2  # parallel provisioning sessions per server
COUNT_BATCH = 500  # shards per row-count query
QUERY_FETCH = 500  # rows per round trip of a query stream
_ADVISORY_LOCK = 0x68765F70726F76  # "hv_prov": one provisioner per database at a time
_HSTORE_SCHEMA_SQL = (
    "SELECT n.nspname FROM pg_catalog.pg_extension e "
    "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'hstore'"
)
_NOT_PROVISIONED_STATES = frozenset({"42P01", "3F000"})  # undefined table, invalid schema name
_MISSING_TYPE_STATES = frozenset({"42704", "42883"})  # undefined object (type), undefined function
_orphans: list[Any] = []  # pools inherited over fork: kept alive so nothing finalizes the parent's sockets


def _scrub(text: str, secret: str | None) -> str:
    """``text`` with passwords masked (conninfo syntax and the literal password, if any)."""
    text = redact_conninfo(text)
    if secret:
        text = text.replace(secret, "***")
    return text


def _check_json(name: str, value: Any, depth: int = 0) -> None:
    if depth > 200:
        raise InvalidData(f"field {name!r} nests deeper than 200 levels")
    if isinstance(value, str):
        check_text(name, value)
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidData(f"field {name!r} is {value!r}: JSON has no NaN or infinity")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(name, item, depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidData(f"field {name!r} has a non-string key {k!r}: JSON object keys are strings")
            check_text(name, k)
            _check_json(name, v, depth + 1)
        return
    raise InvalidData(
        f"field {name!r} is {type(value).__name__} {value!r}: "
        "store JSON types (str, int, float, bool, None, list, dict)"
    )


def _logging_cursor(logger: Any) -> type[psycopg.Cursor[Any]]:
    """A cursor class logging every statement with its bound values before running it."""

    class LoggingCursor(psycopg.Cursor[Any]):
        """A psycopg cursor that logs each statement and its parameters."""

        def _text(self, query: Any) -> str:
            if isinstance(query, sql.Composable):
                return query.as_string(self.connection)
            if isinstance(query, bytes):
                return query.decode("utf-8", "replace")
            return str(query)

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> LoggingCursor:
            logger.info("statement: %s | values: %r", self._text(query), params)
            super().execute(query, params, **kwargs)
            return self

        def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
            params_seq = list(params_seq)
            logger.info("statement: %s | values (%d rows): %r", self._text(query), len(params_seq), params_seq)
            super().executemany(query, params_seq, **kwargs)

    return LoggingCursor


class _Pool(psycopg_pool.ConnectionPool[Conn]):
    """psycopg_pool's pool, which also fails waiting clients at once when a connection attempt fails."""

    def __init__(self, *args: Any, describe_error: Callable[[Exception], Exception], **kwargs: Any) -> None:
        self.last_error: Exception | None = None
        self._describe_error = describe_error
        super().__init__(*args, **kwargs)

    def _connect(self, timeout: float | None = None) -> Conn:
        try:
            conn = super()._connect(timeout)
        except Exception as exc:
            error = self._describe_error(exc)
            self.last_error = error
            with self._lock:
                waiting = list(self._waiting)
                self._waiting.clear()
            for client in waiting:
                client.fail(error)
            raise
        self.last_error = None
        return conn


class PostgresServerStore:
    """One PostgreSQL server as the `Datastore` sees it: a pool, the shards' schemas, hstore or jsonb bodies.

    ``settings`` are libpq connection parameters (``host``, ``port``, ``dbname``, ``user``, ``password``, ``sslmode``
    ...) and/or a ``conninfo`` string; ``backend`` is ``"hstore"`` (text to text) or ``"jsonb"`` (JSON types).
    """

    __module__ = "hvbackend_postgres"

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions, *, backend: str = "jsonb") -> None:
        if backend not in BODY_TYPES:
            raise ConfigError(f"unknown PostgreSQL body type {backend!r}: expected 'hstore' or 'jsonb'")
        self.backend = backend
        self.text_only = backend == "hstore"
        self._options = options
        raw = dict(settings)
        raw.pop("shards", None)
        conninfo = raw.pop("conninfo", "") or ""
        if not isinstance(conninfo, str):
            raise ConfigError(f"conninfo must be a string, got {type(conninfo).__name__}")
        kwargs = {k: v for k, v in raw.items() if v is not None}
        secret = kwargs.get("password")
        try:
            params = conninfo_to_dict(make_conninfo(conninfo, **kwargs))
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"invalid PostgreSQL connection settings: {_scrub(str(exc), secret)}") from None
        self._secret: str | None = str(params["password"]) if params.get("password") else None
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        port = str(params.get("port") or "5432")
        dbname = str(params.get("dbname") or params.get("user") or "postgres")
        self._label = f"{host}:{port}/{dbname}"
        self._conninfo = conninfo
        kwargs.setdefault("connect_timeout", max(2, math.ceil(options.pool_block_timeout)))
        kwargs.setdefault("application_name", "hypervault")
        self._kwargs = kwargs
        self._user_row_factory: Any = dict_row if options.row_factory == "dict" else tuple_row
        self._cursor_factory = _logging_cursor(options.logger) if options.logger is not None else None
        self._pool: _Pool | None = None
        self._pool_lock = threading.Lock()
        self._lock = threading.Lock()
        self._borrowed: dict[int, tuple[Conn, _Pool]] = {}
        self._lent = 0
        self._sql: dict[int, ShardSQL] = {}
        self._ext_schema: str | None = None

    # -- identity --------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """``host:port/dbname``, never a password."""
        return self._label

    def __repr__(self) -> str:
        state = "open" if self._pool is not None else "closed"
        return f"<PostgresServerStore {self.backend} {self._label} {state} borrowed={self._lent}>"

    def _log(self, message: str, *args: object) -> None:
        if self._options.logger is not None:
            self._options.logger.info(message, *args)

    def _unavailable(self, exc: BaseException) -> ServerUnavailable:
        text = _scrub(str(exc).strip(), self._secret)
        if "password authentication failed" in text or "authentication failed" in text:
            return ServerUnavailable(
                f"PostgreSQL server {self._label} refused the login: {text} (check user and password)"
            )
        return ServerUnavailable(f"PostgreSQL server {self._label} is unavailable: {text}")

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _configure(self, conn: Conn) -> None:
        conn.adapters.register_dumper(Key, Int8Dumper)
        conn.adapters.register_dumper(Key, Int8BinaryDumper)
        if self._cursor_factory is not None:
            conn.cursor_factory = self._cursor_factory

    def _new_pool(self) -> _Pool:
        return _Pool(
            self._conninfo,
            kwargs={**self._kwargs, "autocommit": True},
            min_size=0,
            max_size=self._options.pool_max,
            timeout=self._options.pool_block_timeout,
            configure=self._configure,
            name=self._label,
            num_workers=2,
            open=True,
            describe_error=self._unavailable,
        )

    def open(self) -> None:
        """Create the pool (idempotent); connections are made on first use, so a server that is down fails later."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = self._new_pool()

    def close(self) -> None:
        """Close the pool and every idle connection (idempotent); connections still borrowed close when returned."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1.0)

    def after_fork_in_child(self) -> None:
        """Forget the inherited pool without closing its sockets (they are the parent's sessions)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._closed = True  # its __del__ must not signal the parent's worker threads
            _orphans.append(pool)
        _orphans.extend(conn for conn, _ in self._borrowed.values())
        self._borrowed = {}
        self._lent = 0
        self._lock = threading.Lock()
        self._pool_lock = threading.Lock()

    # -- connections -----------------------------------------------------------------------------------------

    def _current_pool(self) -> _Pool:
        pool = self._pool
        if pool is None:
            self.open()
            pool = self._pool
            assert pool is not None
        if pool.last_error is not None:
            pool = self._recover(pool)
        return pool

    def _recover(self, failed: _Pool) -> _Pool:
        """The last connection attempt failed: probe the server now; if it is back, start from a fresh pool."""
        try:
            probe = psycopg.connect(self._conninfo, **self._kwargs)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None
        probe.close()
        with self._pool_lock:
            if self._pool is failed:
                self._pool = self._new_pool()
            pool = self._pool
        if pool is not failed:
            failed.close(timeout=0)
        if pool is None:
            raise ServerUnavailable(f"the store of {self._label} was closed")
        return pool

    @staticmethod
    def _healthy(conn: Conn) -> bool:
        """Cheap checkout check: a dead socket shows up as readable while idle (no round trip in the usual case)."""
        pgconn = conn.pgconn
        if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
            return False
        try:
            readable = select.select([pgconn.socket], [], [], 0)[0]
        except (OSError, ValueError, psycopg.OperationalError):
            return False
        if not readable:
            return True
        try:  # a termination notice, EOF, or just a notification: a round trip tells
            conn.execute("")
        except psycopg.Error:
            return False
        return True

    def _checkout(self) -> tuple[Conn, _Pool]:
        """Borrow a checked connection: dead ones are discarded and replaced without failing the caller."""
        timeout = self._options.pool_block_timeout
        deadline = time.monotonic() + timeout
        while True:
            pool = self._pool
            if pool is None or pool.last_error is not None:
                pool = self._current_pool()
            try:
                conn = pool.getconn(max(deadline - time.monotonic(), 0.001))
            except psycopg_pool.PoolTimeout:
                if pool.last_error is not None:  # waited while every connection attempt failed
                    raise pool.last_error from None
                raise PoolTimeout(
                    f"no connection to {self._label} free within {timeout} s (pool_max={self._options.pool_max}, "
                    "all borrowed): return connections with put_connection()"
                ) from None
            except psycopg_pool.PoolClosed:
                if self._pool is None or self._pool is pool:
                    raise ServerUnavailable(f"the pool of {self._label} is closed") from None
                continue  # replaced by a fresh pool meanwhile
            if self._healthy(conn):
                with self._lock:
                    self._lent += 1
                return conn, pool
            self._log("discarding a dead connection to %s", self._label)
            conn.close()
            pool.putconn(conn)

    def _checkin(self, conn: Conn, pool: _Pool) -> None:
        with self._lock:
            self._lent -= 1
        pool.putconn(conn)

    def get_connection(self, shard_id: int) -> Conn:
        """Borrow a connection (transactional, rows as dicts by default) whose search path is the shard's schema."""
        schema = shard_schema(shard_id)
        conn, pool = self._checkout()
        try:
            path = sql.SQL("{}, {}").format(sql.Identifier(schema), sql.Identifier(self._ext_schema or "public"))
            row = conn.execute(
                "SELECT pg_catalog.set_config('search_path', %s, false), pg_catalog.to_regnamespace(%s) IS NOT NULL",
                (path.as_string(conn), schema),
            ).fetchone()
            if not row or not row[1]:
                raise NotProvisioned(
                    f"shard {shard_id} is not provisioned on {self._label} (no schema {schema}): run `hv init`"
                )
            conn.autocommit = False
            conn.row_factory = self._user_row_factory
        except BaseException as exc:
            self._checkin(conn, pool)
            if isinstance(exc, psycopg.OperationalError):
                raise self._unavailable(exc) from None
            raise
        with self._lock:
            self._borrowed[id(conn)] = (conn, pool)
        return conn

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is borrowed from this store right now."""
        entry = self._borrowed.get(id(conn))
        return entry is not None and entry[0] is conn

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection: an open transaction is rolled back, autocommit and tuple rows restored."""
        with self._lock:
            entry = self._borrowed.get(id(conn))
            if entry is None or entry[0] is not conn:
                raise ConnectionMisuse(f"{conn!r} is not borrowed from {self._label} (returned twice?)")
            del self._borrowed[id(conn)]
        pool = entry[1]
        try:
            if not conn.closed:
                status = conn.pgconn.transaction_status
                if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
                    conn.rollback()
                elif status == pq.TransactionStatus.ACTIVE:
                    conn.close()
                if not conn.closed:
                    conn.autocommit = True
                    conn.row_factory = tuple_row
        except psycopg.Error:
            conn.close()
        finally:
            self._checkin(conn, pool)

    @contextmanager
    def cursor(self, shard_id: int) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in the shard's schema: commit on success, rollback on error, connection always returned."""
        conn = self.get_connection(shard_id)
        try:
            with conn.cursor() as cur:
                yield cur
            conn.commit()
        except BaseException:
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            raise
        finally:
            self.put_connection(conn)

    # -- entities --------------------------------------------------------------------------------------------

    def check_data(self, data: Mapping[str, Any]) -> None:
        """hstore: text values (or None) only; jsonb: JSON types only. NUL characters rejected in both."""
        text_only = self.text_only
        for name, value in data.items():
            if type(name) is not str or not name.isascii() or "\x00" in name:
                for _ in iter_fields({name: value}):  # raises for a non-string name
                    check_text(name, name)
            kind = type(value)
            if kind is str:
                if not value.isascii() or "\x00" in value:  # ASCII without NUL is always valid text
                    check_text(name, value)
            elif value is None:
                continue
            elif text_only:
                if isinstance(value, str):  # a str subclass
                    check_text(name, value)
                    continue
                raise InvalidData(
                    f"field {name!r} is {kind.__name__} {value!r}: the hstore backend stores text only; "
                    f"pass str({value!r}) or use the jsonb backend"
                )
            elif kind is not int and kind is not bool:
                _check_json(name, value)

    def _hstore_schema(self) -> str:
        schema = self._ext_schema
        if schema is not None:
            return schema
        conn, pool = self._checkout()
        try:
            row = conn.execute(_HSTORE_SCHEMA_SQL).fetchone()
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            self._checkin(conn, pool)
        if row is None:
            raise NotProvisioned(
                f"the hstore extension is not installed in {self._label}: run `hv init --config FILE` "
                "(Datastore.provision()) to create it and the shards' schemas"
            )
        self._ext_schema = str(row[0])
        return self._ext_schema

    def _shard_sql(self, shard_id: int) -> ShardSQL:
        statements = self._sql.get(shard_id)
        if statements is None:
            ext = self._hstore_schema() if self.text_only else None
            statements = self._sql[shard_id] = ShardSQL.build(shard_id, self.backend, ext)
        return statements

    def _translate(self, exc: psycopg.Error, shard_id: int) -> Exception:
        state = exc.sqlstate
        if state in _NOT_PROVISIONED_STATES:
            return NotProvisioned(
                f"shard {shard_id} is not provisioned on {self._label} ({exc.diag.message_primary}): "
                "run `hv init --config FILE` (Datastore.provision())"
            )
        if state in _MISSING_TYPE_STATES and "hstore" in str(exc):
            self._ext_schema = None
            self._sql.clear()
            return NotProvisioned(f"the hstore extension is missing in {self._label}: run `hv init --config FILE`")
        if isinstance(exc, psycopg.OperationalError) and state is None:
            return self._unavailable(exc)
        return exc

    def _with_conn(self, shard_id: int, op: Callable[[Conn], _T], *, committed: object = None) -> _T:
        """Run ``op`` on a pooled connection; one retry if the connection was lost underneath.

        ``committed`` is what a retried write returns when it hits a unique violation: its first attempt was
        committed before the connection was lost (client-side ids make this safe to tell).
        """
        for attempt in (0, 1):
            conn, pool = self._checkout()
            try:
                return op(conn)
            except pg_errors.UniqueViolation:
                if attempt and committed is not None:
                    return cast(_T, committed)
                raise
            except psycopg.OperationalError as exc:
                if attempt == 0 and conn.closed:
                    self._log("connection to %s lost (%s): retrying once", self._label, type(exc).__name__)
                    continue
                raise self._translate(exc, shard_id) from None
            except psycopg.Error as exc:
                error = self._translate(exc, shard_id)
                if error is exc:
                    raise
                raise error from None
            finally:
                self._checkin(conn, pool)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(
        self, shard_id: int, query: str, params: Sequence[Any], *, write: bool = False, retried: bool = False
    ) -> tuple[Any, ...] | None:
        """Run one statement on a pooled connection and return its first row (or None): the hot path.

        A connection lost underneath is retried once; a retried write hitting a unique violation was committed
        by its first attempt (client-side ids make this safe to tell), so it counts as done.
        """
        conn, pool = self._checkout()
        try:
            cur = conn.execute(query, params)
            return cur.fetchone() if cur.description is not None else None
        except pg_errors.UniqueViolation:
            if retried and write:
                return None
            raise
        except psycopg.OperationalError as exc:
            if retried or not conn.closed:
                raise self._translate(exc, shard_id) from None
            self._log("connection to %s lost (%s): retrying once", self._label, type(exc).__name__)
        except psycopg.Error as exc:
            error = self._translate(exc, shard_id)
            if error is exc:
                raise
            raise error from None
        finally:
            self._checkin(conn, pool)
        return self._run(shard_id, query, params, write=write, retried=True)

    def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one entity with a single autocommitted INSERT; `DuplicateKey` if the id is taken."""
        statements = self._sql.get(shard_id) or self._shard_sql(shard_id)
        params: tuple[Any, ...] = (
            (key, kind, list(data.keys()), list(data.values())) if self.text_only else (key, kind, Jsonb(data))
        )
        try:
            self._run(shard_id, statements.insert, params, write=True)
        except pg_errors.UniqueViolation:
            raise DuplicateKey(f"key {int(key)} already exists in shard {shard_id} on {self._label}") from None

    def fetch(self, shard_id: int, key: Key) -> Record | None:
        """The entity stored under ``key``, or None."""
        statements = self._sql.get(shard_id) or self._shard_sql(shard_id)
        row = self._run(shard_id, statements.fetch, (key,))
        if row is None:
            return None
        return Record(key, row[0], row[1])  # kind: smallint → int; body: a fresh dict from the JSON loader

    def _body_params(self, data: Mapping[str, Any]) -> tuple[Any, ...]:
        if self.text_only:
            return (list(data.keys()), list(data.values()))
        return (Jsonb(data),)

    def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """Store many entities of one shard in one transaction (pipelined); `DuplicateKey` if a key is taken."""
        if not rows:
            return
        statement = self._shard_sql(shard_id).insert
        params = [(key, kind, *self._body_params(data)) for key, kind, data in rows]

        def op(conn: Conn) -> bool:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(statement, params)
            return True

        try:
            self._with_conn(shard_id, op, committed=True)
        except pg_errors.UniqueViolation:
            raise DuplicateKey(
                f"a key of this batch of {len(rows)} already exists in shard {shard_id} on {self._label}"
            ) from None

    def _select_shards(self, parts: Sequence[tuple[int, sql.Composable]]) -> sql.Composed:
        ext = sql.Identifier(self._hstore_schema()) if self.text_only else None
        body = sql.SQL("{}.hstore_to_json(body)").format(ext) if ext is not None else sql.SQL("body")
        return sql.SQL(" UNION ALL ").join(
            sql.SQL("(SELECT id, kind, {body} FROM {schema}.{table}{cond})").format(
                body=body, schema=sql.Identifier(shard_schema(shard)), table=sql.Identifier(TABLE), cond=cond
            )
            for shard, cond in parts
        )

    def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """Records stored under these (shard, key) pairs, in one round trip; missing keys are left out."""
        if not items:
            return []
        by_shard: dict[int, list[Key]] = {}
        for shard, key in items:
            by_shard.setdefault(shard, []).append(key)
        keys = {int(k): k for _, k in items}
        query = self._select_shards(
            [
                (shard, sql.SQL(" WHERE id = ANY({}::bigint[])").format(sql.Literal([int(k) for k in ks])))
                for shard, ks in by_shard.items()
            ]
        )

        def op(conn: Conn) -> list[tuple[Any, ...]]:
            return list(conn.execute(query).fetchall())

        rows = self._with_conn(next(iter(by_shard)), op)
        return [Record(keys[int(r[0])], int(r[1]), dict(r[2])) for r in rows]

    def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge ``data`` into the stored body (``||``), or replace it; False if the key is not stored."""
        target = sql.SQL("{}.{}").format(sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE))
        if self.text_only:
            value: sql.Composable = sql.SQL("{}.hstore(%s::text[], %s::text[])").format(
                sql.Identifier(self._hstore_schema())
            )
        else:
            value = sql.SQL("%s")
        new_body = sql.SQL("body || {}").format(value) if merge else value
        query = sql.SQL("UPDATE {target} SET body = {body} WHERE id = %s").format(target=target, body=new_body)
        params = (*self._body_params(data), key)

        def op(conn: Conn) -> bool:
            return conn.execute(query, params).rowcount > 0

        return self._with_conn(shard_id, op)

    def delete(self, shard_id: int, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        query = sql.SQL("DELETE FROM {}.{} WHERE id = %s").format(
            sql.Identifier(shard_schema(shard_id)), sql.Identifier(TABLE)
        )

        def op(conn: Conn) -> bool:
            return conn.execute(query, (key,)).rowcount > 0

        return self._with_conn(shard_id, op)

    def _query_sql(self, shard_ids: Sequence[int], spec: QuerySpec) -> tuple[sql.Composed, list[Any]]:
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if spec.kind is not None:
            conds.append(sql.SQL("kind = %s"))
            params.append(spec.kind)
        if spec.low is not None:
            conds.append(sql.SQL("id >= %s"))
            params.append(spec.low)
        if spec.high is not None:
            conds.append(sql.SQL("id <= %s"))
            params.append(spec.high)
        if spec.where:
            if self.text_only:
                conds.append(
                    sql.SQL("body @> {}.hstore(%s::text[], %s::text[])").format(sql.Identifier(self._hstore_schema()))
                )
                params += [list(spec.where.keys()), list(spec.where.values())]
            else:
                conds.append(sql.SQL("body @> %s"))  # the GIN index narrows; exact equality below
                params.append(Jsonb(dict(spec.where)))
                for name, value in spec.where.items():
                    if isinstance(value, list | tuple | Mapping):
                        conds.append(sql.SQL("body -> %s = %s"))
                        params += [name, Jsonb(value)]
        cond = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
        limit = sql.SQL(" ORDER BY id LIMIT {}").format(sql.Literal(spec.limit)) if spec.limit is not None else None
        per_shard = [(s, cond + limit if limit is not None else cond) for s in shard_ids]
        query = sql.SQL("{} ORDER BY id").format(self._select_shards(per_shard))
        if spec.limit is not None:
            query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(spec.limit))
        return query, params * len(shard_ids)

    def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> Generator[Record, None, None]:
        """Matching records of these shards in key order, streamed through a server-side cursor.

        One connection is held while the stream is consumed; it goes back when the stream ends or is closed.
        """
        if not shard_ids or spec.limit == 0:
            return
        query, params = self._query_sql(shard_ids, spec)
        key_type = self._options.layout.key_type
        conn, pool = self._checkout()
        try:
            conn.autocommit = False
            with conn.cursor(name="hv_query") as cur:
                cur.itersize = QUERY_FETCH
                try:
                    cur.execute(query, params)
                except psycopg.Error as exc:
                    error = self._translate(exc, shard_ids[0])
                    if error is exc:
                        raise
                    raise error from None
                for row in cur:
                    yield Record(key_type(row[0]), int(row[1]), dict(row[2]))
        finally:
            if not conn.closed:
                try:
                    conn.rollback()
                    conn.autocommit = True
                except psycopg.Error:
                    conn.close()
            self._checkin(conn, pool)

    # -- operations ------------------------------------------------------------------------------------------

    def _admin(self) -> Conn:
        try:
            conn = psycopg.connect(self._conninfo, **{**self._kwargs, "autocommit": True})
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        self._configure(conn)
        return conn

    def _ensure_hstore(self, conn: Conn, report: ProvisionReport) -> str:
        row = conn.execute(_HSTORE_SCHEMA_SQL).fetchone()
        if row is None:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
            except psycopg.Error as exc:
                raise NotProvisioned(
                    f"cannot create the hstore extension in {self._label}: {_scrub(str(exc), self._secret)} "
                    "(install it as a superuser: CREATE EXTENSION hstore)"
                ) from None
            report.notes.append("created extension hstore")
            row = conn.execute(_HSTORE_SCHEMA_SQL).fetchone()
            assert row is not None
        self._ext_schema = str(row[0])
        return self._ext_schema

    def _existing(self, conn: Conn, shard_ids: Sequence[int]) -> dict[int, tuple[set[str], str | None]]:
        names = {shard_schema(s): s for s in shard_ids}
        rows = conn.execute(catalog_query(), (sorted(required_relations(self.backend)), list(names))).fetchall()
        return {names[r[0]]: (set(r[1]), r[2]) for r in rows}

    def provision(self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> ProvisionReport:
        """Create the extension, schemas, tables and indexes this server's shards need; idempotent, resumable.

        The catalog is read first, so a re-run only touches missing shards; the rest is created in transactions of
        `PROVISION_BATCH` shards over `PROVISION_WORKERS` sessions.
        """
        started = time.perf_counter()
        report = ProvisionReport(server=self._label, shards=len(shard_ids))
        conn = self._admin()
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK,))
            ext = self._ensure_hstore(conn, report) if self.text_only else None
            existing = self._existing(conn, shard_ids)
            todo: list[int] = []
            wanted = BODY_TYPES[self.backend]
            for shard in shard_ids:
                relations, body_type = existing.get(shard, (set(), None))
                if body_type is not None and body_type.rsplit(".", 1)[-1] != wanted:
                    raise ConfigError(
                        f"shard {shard} on {self._label} stores bodies as {body_type}, not {wanted}: "
                        f"this database belongs to another backend"
                    )
                if not relations >= required_relations(self.backend):
                    todo.append(shard)
            if progress is not None and len(shard_ids) > len(todo):
                progress(len(shard_ids) - len(todo))
            batches = [todo[i : i + PROVISION_BATCH] for i in range(0, len(todo), PROVISION_BATCH)]
            self._run_batches(batches, ext, progress)
            report.created = len(todo)
        finally:
            conn.close()
        report.seconds = time.perf_counter() - started
        return report

    def _run_batches(self, batches: list[list[int]], ext: str | None, progress: Callable[[int], None] | None) -> None:
        if not batches:
            return
        lock = threading.Lock()
        queue = iter(batches)
        errors: list[BaseException] = []

        def work() -> None:
            conn = self._admin()
            try:
                conn.execute("SET synchronous_commit = off")
                while not errors:
                    with lock:
                        batch = next(queue, None)
                    if batch is None:
                        return
                    ddl = "".join(shard_ddl(s, self.backend, ext) for s in batch)
                    conn.execute(f"BEGIN;{ddl}COMMIT;")
                    if progress is not None:
                        progress(len(batch))
            except BaseException as exc:
                errors.append(exc)
            finally:
                conn.close()

        workers = [threading.Thread(target=work, name=f"hv-provision-{i}") for i in range(PROVISION_WORKERS)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if errors:
            error = errors[0]
            if isinstance(error, psycopg.OperationalError):
                raise self._unavailable(error) from None
            raise error

    def provisioned(self, shard_ids: Sequence[int]) -> list[int]:
        """The shards among ``shard_ids`` whose entities table exists on this server."""
        conn = self._admin()
        try:
            existing = self._existing(conn, shard_ids)
        finally:
            conn.close()
        return [s for s in shard_ids if TABLE in existing.get(s, (set(), None))[0]]

    def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Exact rows per provisioned shard (shards without a table are left out)."""
        conn = self._admin()
        counts: dict[int, int] = {}
        try:
            existing = self._existing(conn, shard_ids)
            shards = [s for s in shard_ids if TABLE in existing.get(s, (set(), None))[0]]
            for i in range(0, len(shards), COUNT_BATCH):
                query = count_query(shards[i : i + COUNT_BATCH])
                for shard, count in conn.execute(query).fetchall():
                    counts[int(shard)] = int(count)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from None
        finally:
            conn.close()
        return counts

    def stats(self) -> dict[str, Any]:
        """Pool figures: pool_max, size, available, borrowed (lent by this store), waiting, connection errors."""
        pool = self._pool
        raw = pool.get_stats() if pool is not None else {}
        return {
            "pool_max": self._options.pool_max,
            "size": raw.get("pool_size", 0),
            "available": raw.get("pool_available", 0),
            "borrowed": self._lent,
            "waiting": raw.get("requests_waiting", 0),
            "connection_errors": raw.get("connections_errors", 0),
            "connections_lost": raw.get("connections_lost", 0) + raw.get("returns_bad", 0),
        }
