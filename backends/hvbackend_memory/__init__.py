"""The ``memory`` backend: the whole façade contract in process memory, for users' unit tests.

It takes the production connection list as it is (libpq settings are checked as the PostgreSQL backends check
them, and never connected to) and applies the value rules of the backend it stands in for: jsonb's by default,
hstore's with ``values="text"`` (the `Datastore` option, or a server's ``values`` setting); the checks are the same
function the PostgreSQL backends call (`hvcore._backend.check_body`), and ``where`` compares as PostgreSQL does.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import heapq
import itertools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

from hvcore._backend import BackendOptions, ProvisionReport, QuerySpec, Record, check_body, json_default
from hvcore._config import VALUE_RULES, libpq_settings
from hvcore._holdings import CONNECTION, TRANSACTION, Holdings, closed_while_waiting, pool_timeout
from hvcore._key import Key
from hvcore._metrics import metrics
from hvcore._row import Row
from hvcore._schemadefs import IndexSpec, typed_value
from hvcore._worker import WorkerGrant, WorkerSlice
from hvcore.errors import (
    ConfigError,
    ConnectionMisuse,
    DuplicateKey,
    DuplicateValue,
    MigrationError,
    NoFreeWorker,
    NotProvisioned,
    PoolTimeout,
)
from hvcore.hookspecs import BackendRegistrar, hookimpl

_T = TypeVar("_T")

__all__ = [
    "AsyncMemoryConnection",
    "AsyncMemoryCursor",
    "AsyncMemoryServerStore",
    "MemoryConnection",
    "MemoryCursor",
    "MemoryIndexes",
    "MemoryServerStore",
    "MemoryWorkerLease",
    "hypervault_register_backends",
]

_SERVERS: dict[str, dict[int, dict[int, Record]]] = {}  # name -> shard -> id -> record; shared like a real server
_SERVERS_LOCK = threading.Lock()
_VALUE_RULES: dict[str, bool] = {}  # name -> text_only of the first store that used the server (one rule per server)
_INDEXES: dict[str, dict[str, tuple[IndexSpec, set[int]]]] = {}  # name -> index name -> (definition, built shards)
MEMORY_SETTINGS = ("name", "values", "provisioned")
"""Settings of the memory backend itself; every other one (but ``shards``) is a libpq setting, checked, unused."""
VERSION = "hypervault memory backend (in-process; runs no SQL)"
_PROBES = {  # the only statements a memory cursor answers: connection checks, as `SELECT version()` in the 2015 README
    "select version()": ("version", VERSION),
    "select 1": ("?column?", 1),
}


@hookimpl
def hypervault_register_backends(register: BackendRegistrar) -> None:
    """Register the ``memory`` backend."""
    register("memory", MemoryServerStore, async_factory=AsyncMemoryServerStore)


class MemoryCursor:
    """A cursor-like view of one shard: rows as records, no SQL.

    ``execute`` answers only the connection checks ``SELECT version()`` and ``SELECT 1`` (so code that probes its
    connection runs unchanged), with rows that are `hvcore.Row` objects like the PostgreSQL backends' ones; any other
    statement raises `NotImplementedError` saying what to use instead. ``rows()`` reads the shard's records.
    """

    def __init__(self, connection: MemoryConnection) -> None:
        self.connection = connection
        self.closed = False
        self._result: list[Row] = []
        self._rowcount = -1

    @property
    def shard_id(self) -> int:
        """The shard this cursor reads."""
        return self.connection.shard_id

    def execute(self, query: object, params: object = None) -> MemoryCursor:
        """Answer ``SELECT version()`` or ``SELECT 1``; any other statement raises `NotImplementedError`."""
        self.connection.check_lent()
        text = re.sub(r"\s+", " ", query.strip().rstrip(";").strip().lower()) if isinstance(query, str) else None
        probe = _PROBES.get(text) if text is not None and params is None else None
        if probe is None:
            raise NotImplementedError(
                f"the memory backend runs no SQL ({query!r}): use Datastore.put/get/query, or cursor.rows() to "
                "read the shard (only SELECT version() and SELECT 1 are answered)"
            )
        name, value = probe
        self._result = [Row((value,), {name: 0})]
        self._rowcount = 1
        return self

    def fetchone(self) -> Row | None:
        """The next row of the last ``execute``, or None."""
        self.connection.check_lent()
        return self._result.pop(0) if self._result else None

    def fetchall(self) -> list[Row]:
        """The remaining rows of the last ``execute``."""
        self.connection.check_lent()
        rows, self._result = self._result, []
        return rows

    def fetchmany(self, size: int = 1) -> list[Row]:
        """Up to ``size`` of the remaining rows of the last ``execute``."""
        self.connection.check_lent()
        rows, self._result = self._result[:size], self._result[size:]
        return rows

    def executemany(self, query: object, params_seq: object) -> None:
        """Runs no SQL: raises `NotImplementedError` (as ``execute`` does for anything but a connection check)."""
        self.connection.check_lent()
        raise NotImplementedError(f"the memory backend runs no SQL ({query!r}): use Datastore.put_many")

    @property
    def rowcount(self) -> int:
        """Rows the last ``execute`` answered (-1 before one), as psycopg's."""
        return self._rowcount

    def __iter__(self) -> Iterator[Row]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        """Nothing to release (``closed`` turns True, as psycopg's)."""
        self.closed = True

    def __enter__(self) -> MemoryCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self) -> list[Record]:
        """Every record of the shard, in key order."""
        self.connection.check_lent()
        return self.connection.server.rows(self.shard_id)


class MemoryConnection:
    """What `Datastore.get_connection` hands out with the memory backend."""

    def __init__(self, server: MemoryServerStore, shard_id: int) -> None:
        self.server = server
        self.shard_id = shard_id
        self.closed = False
        self.returned = False  # given back with put_connection(): every use raises ConnectionMisuse, as on PostgreSQL

    def __repr__(self) -> str:
        state = ", returned with put_connection()" if self.returned else ""
        return f"<MemoryConnection server={self.server.label!r} shard={self.shard_id}{state}>"

    def check_lent(self) -> None:
        """`ConnectionMisuse` once returned: the PostgreSQL backends refuse it too (the pool lends it to others)."""
        if self.returned:
            raise ConnectionMisuse(
                f"this connection to shard {self.shard_id} on {self.server.label} was returned with put_connection(): "
                "borrow one again with get_connection() (or use `with db.cursor(shard) as cur:`)"
            )

    def cursor(self) -> MemoryCursor:
        """A cursor on this connection's shard."""
        self.check_lent()
        return MemoryCursor(self)

    autocommit = False  # as a lent PostgreSQL connection: in a transaction the borrower commits

    def execute(self, query: object, params: object = None) -> MemoryCursor:
        """``cursor().execute(query, params)``, as psycopg's ``Connection.execute``: the cursor, to fetch from."""
        return self.cursor().execute(query, params)

    @contextmanager
    def transaction(self) -> Iterator[MemoryConnection]:
        """A block as psycopg's ``conn.transaction()`` opens one; nothing to commit or roll back here."""
        self.check_lent()
        yield self

    def commit(self) -> None:
        """Nothing to commit: every write is immediate."""
        self.check_lent()

    def rollback(self) -> None:
        """Nothing to roll back."""
        self.check_lent()

    def __enter__(self) -> MemoryConnection:
        """``with conn:`` as on a lent PostgreSQL connection: commit at the end (roll back on an exception), the
        connection still borrowed (give it back with put_connection)."""
        self.check_lent()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.returned:  # given back inside the block: refused (nothing to commit), unless already failing
            if exc_type is None:
                self.check_lent()
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


class AsyncMemoryCursor:
    """What the memory backend's `AsyncDatastore` cursors are: a `MemoryCursor` shaped as psycopg's ``AsyncCursor``
    (``await cur.execute(...)``, ``await cur.fetchone()``, ``async with``, ``async for``), so code written for
    PostgreSQL runs unchanged in unit tests; ``rows()`` (memory only) stays a plain call."""

    def __init__(self, sync: MemoryCursor, connection: AsyncMemoryConnection | None = None) -> None:
        self.sync = sync
        self.connection = connection if connection is not None else AsyncMemoryConnection(sync.connection)

    def __repr__(self) -> str:
        return f"<AsyncMemoryCursor shard={self.sync.shard_id}>"

    @property
    def shard_id(self) -> int:
        """The shard this cursor reads."""
        return self.sync.shard_id

    @property
    def closed(self) -> bool:
        """True once closed, as psycopg's."""
        return self.sync.closed

    @property
    def rowcount(self) -> int:
        """As `MemoryCursor.rowcount`."""
        return self.sync.rowcount

    async def execute(self, query: object, params: object = None) -> AsyncMemoryCursor:
        """As `MemoryCursor.execute`, awaited."""
        self.sync.execute(query, params)
        return self

    async def executemany(self, query: object, params_seq: object) -> None:
        """As `MemoryCursor.executemany`, awaited."""
        self.sync.executemany(query, params_seq)

    async def fetchone(self) -> Row | None:
        """As `MemoryCursor.fetchone`, awaited."""
        return self.sync.fetchone()

    async def fetchmany(self, size: int = 1) -> list[Row]:
        """As `MemoryCursor.fetchmany`, awaited."""
        return self.sync.fetchmany(size)

    async def fetchall(self) -> list[Row]:
        """As `MemoryCursor.fetchall`, awaited."""
        return self.sync.fetchall()

    async def __aiter__(self) -> AsyncIterator[Row]:
        while (row := self.sync.fetchone()) is not None:
            yield row

    async def close(self) -> None:
        """As `MemoryCursor.close`, awaited."""
        self.sync.close()

    async def __aenter__(self) -> AsyncMemoryCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sync.close()

    def rows(self) -> list[Record]:
        """As `MemoryCursor.rows` (a plain call: memory only)."""
        return self.sync.rows()


class AsyncMemoryConnection:
    """What the memory backend's `AsyncDatastore.get_connection` lends: a `MemoryConnection` shaped as psycopg's
    ``AsyncConnection`` (``await conn.execute(...)``, ``await conn.commit()``, ``async with conn:``)."""

    def __init__(self, sync: MemoryConnection) -> None:
        self.sync = sync

    def __repr__(self) -> str:
        return repr(self.sync).replace("<MemoryConnection", "<AsyncMemoryConnection", 1)

    autocommit = False  # as a lent PostgreSQL connection: in a transaction the borrower commits

    @property
    def shard_id(self) -> int:
        """The shard this connection is lent for."""
        return self.sync.shard_id

    @property
    def closed(self) -> bool:
        """True once returned with put_connection."""
        return self.sync.closed

    @property
    def returned(self) -> bool:
        """True once returned with put_connection: every use raises `ConnectionMisuse`."""
        return self.sync.returned

    def check_lent(self) -> None:
        """As `MemoryConnection.check_lent`."""
        self.sync.check_lent()

    def cursor(self) -> AsyncMemoryCursor:
        """A cursor on this connection's shard (a plain call, as psycopg's ``AsyncConnection.cursor``)."""
        return AsyncMemoryCursor(self.sync.cursor(), self)

    async def execute(self, query: object, params: object = None) -> AsyncMemoryCursor:
        """``cursor().execute(query, params)``, as psycopg's ``AsyncConnection.execute``."""
        return await self.cursor().execute(query, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncMemoryConnection]:
        """As `MemoryConnection.transaction`, with ``async with``."""
        with self.sync.transaction():
            yield self

    async def commit(self) -> None:
        """As `MemoryConnection.commit`, awaited."""
        self.sync.commit()

    async def rollback(self) -> None:
        """As `MemoryConnection.rollback`, awaited."""
        self.sync.rollback()

    async def __aenter__(self) -> AsyncMemoryConnection:
        self.sync.__enter__()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.sync.__exit__(exc_type, exc, tb)


def _sync_connection(conn: Any) -> Any:
    """The `MemoryConnection` behind ``conn`` (an `AsyncMemoryConnection` or one itself)."""
    return conn.sync if isinstance(conn, AsyncMemoryConnection) else conn


class MemoryWorkerLease(WorkerGrant):
    """A worker number held in this process until closed: what ``worker="lease"`` gets on the memory backend."""

    __module__ = "hvbackend_memory"
    _held: dict[tuple[str, int], set[int]] = {}  # noqa: RUF012 (process-wide registry, guarded by _lock)
    _lock = threading.Lock()

    @classmethod
    def take(cls, bits: int, namespace: str) -> MemoryWorkerLease:
        """The lowest free number of ``namespace`` (`NoFreeWorker` when all ``2**bits`` are held)."""
        with cls._lock:
            held = cls._held.setdefault((namespace, bits), set())
            free = next((n for n in range(1 << bits) if n not in held), None)
            if free is None:
                raise NoFreeWorker(
                    f"all {1 << bits} worker numbers of namespace {namespace!r} are held in this process"
                )
            held.add(free)
        return cls(WorkerSlice(id=free, bits=bits), floor_ms=-1, horizon_ms=2**62, scope=f"memory {namespace}")

    def close(self) -> None:
        """Give the number back."""
        with self._lock:
            self._held.get((self.scope.removeprefix("memory "), self.worker.bits), set()).discard(self.worker.id)

    async def aclose(self) -> None:
        """Give the number back."""
        self.close()


class _SlotUse:
    """``with store._slot():``: takes a pretend connection for the block and gives it back (a plain class: this is
    on every memory call, where a generator-based context manager cost more than the call itself)."""

    __slots__ = ("_generation", "_store")

    def __init__(self, store: MemoryServerStore) -> None:
        self._store = store
        self._generation: int | None = None

    def __enter__(self) -> None:
        store = self._store
        if not getattr(store._local, "held", False):
            self._generation = store._take_slot(store._options.pool_block_timeout)

    def __exit__(self, *exc: object) -> None:
        if self._generation is not None:
            self._store._release_slot(self._generation)


class MemoryServerStore:
    """One in-memory "server": a dict per shard, a bounded pool of pretend connections.

    Settings: ``name`` (stores with the same name share data within the process, like one real server;
    default: a fresh private server), ``values`` (``"jsonb"``, the default: JSON types kept, exactly the jsonb
    backend's rules; ``"text"``: strings or None only, the hstore backend's rules; ``"json"``/``"hstore"`` are the
    same two), ``provisioned`` (default True; False makes shards need `provision` first, as on PostgreSQL). Every
    other setting must be a libpq connection setting (``host``, ``port``, ``dbname``/``database``, ``user``,
    ``password``, ``sslmode``, ``conninfo``/``dsn``, ...): checked as the PostgreSQL backends check them
    (`hvcore._config.libpq_settings`), never connected to, so a production connection list works as it is.
    Raises `ConfigError` (never showing a password) for anything else.
    """

    _counter = 0

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions) -> None:
        libpq = {k: v for k, v in settings.items() if k not in MEMORY_SETTINGS and k != "shards"}
        if libpq:
            try:
                libpq_settings(libpq)
            except ConfigError as exc:
                raise ConfigError(
                    f"memory backend: {exc} (its own settings are {', '.join(MEMORY_SETTINGS)}; the others must be "
                    "libpq connection settings, as for the hstore and jsonb backends)"
                ) from None
        self.text_only = _value_rules(settings.get("values"), options.values) == "text"
        if "name" in settings:
            self.name = str(settings["name"])
        else:
            self.name = _private_name(settings)
        self._rules_recorded = False  # this store's value rules are the server's (see _shards)
        with _SERVERS_LOCK:
            self._check_value_rules(record=False)  # a server already used with the other rules: refused now
        self._auto_provision = bool(settings.get("provisioned", True))
        self._options = options
        self._logger = options.logger
        self._lock = threading.RLock()
        self._slot_free = threading.Condition(self._lock)  # a pretend connection came back (see _take_slot)
        self._borrowed: dict[int, MemoryConnection] = {}
        self._borrower: dict[int, tuple[object, str]] = {}  # id(conn) → who borrowed it, held as what (`Holdings`)
        self._holdings = Holdings()
        self._local = threading.local()  # .held: the async store took this call's slot already
        self._in_use = 0  # pretend connections taken (calls running, streams open, connections borrowed)
        self._waiting = 0
        self._generation = 0  # a new pool of pretend connections each close() (see _release_slot)
        self._open = False

    @property
    def label(self) -> str:
        """The server's name."""
        return f"memory:{self.name}"

    def __repr__(self) -> str:
        return f"<MemoryServerStore {self.label} borrowed={len(self._borrowed)}>"

    def _shards(self) -> dict[int, dict[int, Record]]:
        with _SERVERS_LOCK:
            if not self._rules_recorded:  # once per store: a later store with other rules is refused on its side
                self._check_value_rules(record=True)
                self._rules_recorded = True
            return _SERVERS.setdefault(self.name, {})

    def _check_value_rules(self, *, record: bool) -> None:
        """`ConfigError` if the named server keeps the other value rules (as PostgreSQL's layout check refuses an
        hstore store on jsonb tables); ``record``: this store's rules become the server's if it has none yet."""
        rules = _VALUE_RULES.setdefault(self.name, self.text_only) if record else _VALUE_RULES.get(self.name)
        if rules is not None and rules != self.text_only:
            kept, asked = ("text", "jsonb") if rules else ("jsonb", "text")
            raise ConfigError(
                f"memory server {self.name!r} keeps {kept} values (the rules of the store that first used it), but "
                f"this store has values={asked!r}: use values={kept!r}, or another server name"
            )

    def _table(self, shard_id: int) -> dict[int, Record]:
        shards = self._shards()
        table = shards.get(shard_id)
        if table is None:
            if not self._auto_provision:
                raise NotProvisioned(f"shard {shard_id} does not exist on {self.label}: run `hv init` (provision())")
            with self._lock:
                table = shards.get(shard_id)
                if table is None:  # created on first use: with the active indexes, as provisioning gives them
                    table = shards[shard_id] = {}
                    MemoryIndexes(self).provisioned([shard_id])
        return table

    def _log(self, message: str, *args: object) -> None:
        """Log an operation at DEBUG (as the PostgreSQL backends log statements)."""
        if self._logger is not None:
            self._logger.debug(message, *args)

    def _shown(self, values: object) -> str:
        """`` | values: ...`` when ``log_values=True`` was asked for, else nothing (bodies are user data)."""
        return f" | values: {values!r}" if self._options.log_values and self._logger is not None else ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Nothing to connect."""
        self._open = True

    def close(self) -> None:
        """End the pool: running calls and waiters let go of it (a new generation); connections still borrowed stay
        lent until `put_connection` takes them back (and closes them), as a PostgreSQL store does: their slots
        stay taken meanwhile, so ``stats()["borrowed"]`` counts them and the datastore keeps this store to take
        them back."""
        with self._lock:
            self._slot_free.notify_all()  # waiters see the new generation's free pool
            self._in_use = len(self._borrowed)
            self._generation += 1
            self._open = False

    def after_fork_in_child(self) -> None:
        """Connections borrowed by the parent's threads are not the child's."""
        self._borrowed = {}
        self._borrower = {}
        self._holdings = Holdings()
        self._lock = threading.RLock()
        self._slot_free = threading.Condition(self._lock)
        self._in_use = 0
        self._waiting = 0
        self._generation += 1

    # -- connections -----------------------------------------------------------------------------------------

    def get_connection(self, shard_id: int) -> MemoryConnection:
        """Borrow a pretend connection, waiting up to ``pool_block_timeout`` for a free slot."""
        return self._borrow(shard_id, self._options.pool_block_timeout)

    def get_connection_nowait(self, shard_id: int) -> MemoryConnection:
        """Borrow a pretend connection or raise `PoolTimeout` at once."""
        return self._borrow(shard_id, 0)

    def _borrow(self, shard_id: int, timeout: float, held_as: str = CONNECTION) -> MemoryConnection:
        """A pretend connection, counted in `Holdings` as ``held_as`` (a transaction's: `TRANSACTION`)."""
        self._table(shard_id)
        self._take_slot(timeout)
        conn = MemoryConnection(self, shard_id)
        with self._lock:
            self._borrowed[id(conn)] = conn
            self._borrower[id(conn)] = (self._holdings.take(held_as), held_as)
        return conn

    def _take_slot(self, timeout: float) -> int:
        """Take a pretend connection for a call, waiting up to ``timeout`` s (0: not at all), as a PostgreSQL pool
        does: every operation needs one while it runs (a query stream to start, none between its records), so
        code that holds more at once than ``pool_max`` allows fails here as it would on PostgreSQL.
        Returns the pool's generation (for `_release_slot`)."""
        pool_max = self._options.pool_max
        with self._lock:
            if self._in_use < pool_max:
                self._in_use += 1
                return self._generation
            if timeout > 0:
                deadline = time.monotonic() + timeout
                generation = self._generation
                self._waiting += 1
                try:
                    while self._in_use >= pool_max:
                        left = deadline - time.monotonic()
                        if left <= 0 or (not self._slot_free.wait(left) and self._in_use >= pool_max):
                            break
                finally:
                    self._waiting -= 1
                if self._generation != generation:  # closed meanwhile, as a PostgreSQL pool refuses its waiters
                    raise closed_while_waiting(self.label)
                if self._in_use < pool_max:
                    self._in_use += 1
                    return self._generation
        if timeout > 0:
            metrics.connection_timeout(self.label)
        options = self._options
        raise pool_timeout(self.label, options.pool_block_timeout, options.pool_max, self._holdings.mine())

    def _slot(self) -> _SlotUse:
        """One operation's pretend connection (none taken when the async store took it for this call)."""
        return _SlotUse(self)

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is borrowed from this store right now."""
        entry = self._borrowed.get(id(conn))
        return entry is not None and entry is conn

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        with self._lock:
            entry = self._borrowed.get(id(conn))
            if entry is None or entry is not conn:  # None is no connection, even though get() returns it
                raise ConnectionMisuse(f"{conn!r} is not borrowed from {self.label} (returned twice?)")
            del self._borrowed[id(conn)]
            holder = self._borrower.pop(id(conn), None)
        conn.returned = conn.closed = True
        if holder is not None:
            self._holdings.give(holder[1], holder[0])
        self._release_slot(self._generation)

    def _release_slot(self, generation: int) -> None:
        """Give a pretend connection back, unless the pool was closed (and renewed) since it was taken: a stream
        finalized after `close` must not free a slot of the new pool."""
        with self._lock:
            if generation != self._generation:
                return
            self._in_use -= 1
            if self._waiting:
                self._slot_free.notify()

    def _count_waiting(self, change: int) -> None:
        """Callers waiting for a pretend connection right now (``stats()["waiting"]``)."""
        with self._lock:
            self._waiting += change

    @contextmanager
    def cursor(self, shard_id: int) -> Iterator[MemoryCursor]:
        """A cursor on a borrowed connection, returned afterwards whatever happens."""
        conn = self.get_connection(shard_id)
        try:
            yield conn.cursor()
        finally:
            if not conn.returned:  # taken back already (by the caller, through put_connection)
                self.put_connection(conn)

    @contextmanager
    def transaction(
        self, shard_id: int, *, isolation_level: str | None = None, read_only: bool = False
    ) -> Iterator[Any]:
        """A transaction on ``shard_id`` holding one connection slot (see ``hvbackend_memory._transaction``)."""
        from hvbackend_memory._transaction import memory_transaction

        conn = self._borrow(shard_id, self._options.pool_block_timeout, TRANSACTION)
        try:
            with memory_transaction(self, conn, shard_id, isolation_level, read_only) as tx:
                yield tx
        finally:
            if not conn.returned:  # taken back already (by the caller, through put_connection)
                self.put_connection(conn)

    # -- entities --------------------------------------------------------------------------------------------

    def check_data(self, data: Mapping[str, Any]) -> None:
        """The value rules of the backend this one stands in for: jsonb's, or hstore's with ``values="text"``."""
        check_body(data, text_only=self.text_only)

    def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store a deep copy, so later changes to the caller's objects do not leak in."""
        with self._slot():
            table = self._table(shard_id)
            record = Record(key, kind, self._stored_body(data))
            with self._lock:
                if int(key) in table:
                    raise DuplicateKey(f"key {int(key)} already exists in shard {shard_id} on {self.label}")
                MemoryIndexes(self).check_unique(shard_id, table, [record])
                table[int(key)] = record
            self._log("memory insert shard=%s id=%s kind=%s%s", shard_id, int(key), kind, self._shown(data))

    def fetch(self, shard_id: int, key: Key) -> Record | None:
        """A copy of the stored record, or None."""
        with self._slot():
            record = self._table(shard_id).get(int(key))
            self._log("memory fetch shard=%s id=%s", shard_id, int(key))
            if record is None:
                return None
            return Record(key, record.kind, copy.deepcopy(record.data))

    def rows(self, shard_id: int) -> list[Record]:
        """Every record of a shard in key order (copies)."""
        table = self._table(shard_id)
        with self._lock:
            items = sorted(table.items())
        return [Record(r.key, r.kind, copy.deepcopy(r.data)) for _, r in items]

    def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """Store every row or none (one lock, checked first)."""
        with self._slot():
            table = self._table(shard_id)
            records = [Record(key, kind, self._stored_body(data)) for key, kind, data in rows]
            with self._lock:
                taken = [int(r.key) for r in records if int(r.key) in table]
                if taken or len({int(r.key) for r in records}) != len(records):
                    raise DuplicateKey(
                        f"key(s) {taken[:5]} already exist in shard {shard_id} on {self.label}", keys=tuple(taken)
                    )
                MemoryIndexes(self).check_unique(shard_id, table, records)
                for record in records:
                    table[int(record.key)] = record
            self._log(
                "memory insert_many shard=%s rows=%s%s", shard_id, len(records), self._shown([r.data for r in records])
            )

    def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """Copies of the stored records among ``items``."""
        with self._slot():
            out = []
            for shard_id, key in items:
                record = self._table(shard_id).get(int(key))
                if record is not None:
                    out.append(Record(key, record.kind, copy.deepcopy(record.data)))
            self._log("memory fetch_many keys=%s", len(items))
            return out

    def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge into or replace a stored body."""
        with self._slot():
            table = self._table(shard_id)
            body = self._stored_body(data)
            with self._lock:
                record = table.get(int(key))
                if record is None:
                    return False
                new_body = {**record.data, **body} if merge else body
                updated = Record(record.key, record.kind, new_body)
                MemoryIndexes(self).check_unique(shard_id, table, [updated])
                table[int(key)] = updated
            self._log("memory update shard=%s id=%s merge=%s%s", shard_id, int(key), merge, self._shown(data))
            return True

    def delete(self, shard_id: int, key: Key) -> bool:
        """Remove a record."""
        with self._slot():
            table = self._table(shard_id)
            with self._lock:
                found = table.pop(int(key), None) is not None
            self._log("memory delete shard=%s id=%s", shard_id, int(key))
            return found

    def update_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any], counts: dict[int, int]
    ) -> int:
        """Merge ``data`` into every record of these shards matching ``spec``; the rows changed.

        Each shard is changed as a whole under the store's lock (as a PostgreSQL piece commits as a whole);
        ``counts`` receives the rows changed per shard as each shard is done. `DuplicateValue` (that shard left
        unchanged) if a unique index of the kind would hold a value twice.
        """
        with self._slot():
            body = self._stored_body(data)
            written = 0
            for shard_id in shard_ids:
                table = self._table(shard_id)
                with self._lock:
                    changed = [
                        Record(r.key, r.kind, {**r.data, **body})
                        for r in table.values()
                        if spec.matches(r, text_values=self.text_only)
                    ]
                    MemoryIndexes(self).check_unique(shard_id, table, changed)
                    for record in changed:
                        table[int(record.key)] = record
                    counts[shard_id] = counts.get(shard_id, 0) + len(changed)
                written += len(changed)
            self._log("memory update_where shards=%s rows=%s%s", len(shard_ids), written, self._shown(data))
            return written

    def delete_where(self, shard_ids: Sequence[int], spec: QuerySpec, counts: dict[int, int]) -> int:
        """Delete every record of these shards matching ``spec``; the rows deleted (``counts`` as `update_where`)."""
        with self._slot():
            written = 0
            for shard_id in shard_ids:
                table = self._table(shard_id)
                with self._lock:
                    gone = [key for key, r in table.items() if spec.matches(r, text_values=self.text_only)]
                    for key in gone:
                        del table[key]
                    counts[shard_id] = counts.get(shard_id, 0) + len(gone)
                written += len(gone)
            self._log("memory delete_where shards=%s rows=%s", len(shard_ids), written)
            return written

    def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> Iterator[Record]:
        """Matching records of these shards in key order (a snapshot of each shard, copied lazily); the stream takes
        a pretend connection to start and holds none between records, as a PostgreSQL one reads its pages on a
        connection borrowed for each round trip (left early, it has nothing to give back)."""
        with self._slot():
            records = self._query_records(shard_ids, spec)
        yield from records

    def _query_records(self, shard_ids: Sequence[int], spec: QuerySpec) -> Iterator[Record]:
        fields = sorted(spec.where) if spec.where else []
        self._log(
            "memory query shards=%s kind=%s where fields=%s low=%s high=%s limit=%s%s",
            len(shard_ids),
            spec.kind,
            fields,
            spec.low,
            spec.high,
            spec.limit,
            self._shown(spec.where),
        )
        streams = []
        for shard_id in shard_ids:
            table = self._table(shard_id)
            with self._lock:
                snapshot = sorted(table.items())
            streams.append(r for _, r in snapshot if spec.matches(r, text_values=self.text_only))
        merged = heapq.merge(*streams, key=lambda r: r.key)
        for record in merged if spec.limit is None else itertools.islice(merged, spec.limit):
            yield Record(record.key, record.kind, copy.deepcopy(record.data))

    @staticmethod
    def _stored_body(data: Mapping[str, Any]) -> dict[str, Any]:
        # Stored as PostgreSQL stores it: plain JSON types (tuples come back as lists, mappings as dicts, str and
        # int subclasses as str and int), a fresh copy the caller's objects cannot change.
        body: dict[str, Any] = json.loads(json.dumps(data, default=json_default))
        return body

    # -- operations ------------------------------------------------------------------------------------------

    def provision(self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> ProvisionReport:
        """Create the shards' tables (idempotent)."""
        report = ProvisionReport(server=self.label, shards=len(shard_ids))
        shards = self._shards()
        with self._lock:
            created = [shard for shard in shard_ids if shard not in shards]
            for shard in created:
                shards[shard] = {}
            report.created = len(created)
        MemoryIndexes(self).provisioned(created)
        if progress is not None:
            progress(len(shard_ids))
        return report

    def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Rows per existing shard."""
        with self._slot():
            shards = self._shards()
            return {s: len(shards[s]) for s in shard_ids if s in shards}

    def row_estimates(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Rows per existing shard: exact here, as counting is cheap in memory (`SupportsRowEstimates`)."""
        return self.row_counts(shard_ids)

    def lease_worker(
        self, *, bits: int = 4, namespace: str = "default", ttl: float = 10.0, acquire_timeout: float = 0.0
    ) -> MemoryWorkerLease:
        """A worker number free in this process (the memory backend's stand-in for a PostgreSQL lease)."""
        return MemoryWorkerLease.take(bits, namespace)

    def index_builder(self) -> MemoryIndexes:
        """Secondary indexes of this server: definitions only (queries filter by `QuerySpec.matches` anyway)."""
        return MemoryIndexes(self)

    def stats(self) -> dict[str, Any]:
        """Pool figures with the PostgreSQL stores' keys: ``pool_max``, ``size`` (always ``pool_max``: pretend
        connections are all open), ``available``, ``borrowed`` (taken by running calls and borrowed
        connections), ``replacing`` (0) and ``waiting`` (callers waiting for one)."""
        with self._lock:
            in_use, waiting = self._in_use, self._waiting
        pool_max = self._options.pool_max
        return {
            "pool_max": pool_max,
            "size": pool_max,
            "available": pool_max - in_use,
            "borrowed": in_use,
            "replacing": 0,
            "waiting": waiting,
        }


class MemoryIndexes:
    """The `IndexBuilder` of a memory server: records definitions (shared by stores of the same name) and the shards
    "built", so `list_indexes` and provisioning behave as on PostgreSQL; filtering needs no index structure.

    Building marks a shard (checking a unique index's values first); a marked shard enforces a unique index on
    writes (`DuplicateValue`). The body index is a definition and marks only: equality filters read every record
    either way. `list_indexes` reports marked shards as valid (never INVALID: a build cannot be interrupted)."""

    def __init__(self, server: MemoryServerStore) -> None:
        self.server = server

    def _table(self) -> dict[str, tuple[IndexSpec, set[int]]]:
        with _SERVERS_LOCK:
            return _INDEXES.setdefault(self.server.name, {})

    def definitions(self) -> list[IndexSpec]:
        """Every index recorded on this server."""
        with _SERVERS_LOCK:
            return [spec for spec, _ in _INDEXES.get(self.server.name, {}).values()]

    def record(self, spec: IndexSpec) -> None:
        """Record ``spec`` as active."""
        table = self._table()
        with _SERVERS_LOCK:
            for other, _ in table.values():
                if (other.kind, other.field) == (spec.kind, spec.field) and other.name != spec.name:
                    raise MigrationError(
                        f"field {spec.field!r} of kind {spec.kind} already has an index ({other.type}) on "
                        f"{self.server.label}: drop it first"
                    )
            _, built = table.get(spec.name, (spec, set()))
            table[spec.name] = (dataclasses.replace(spec, state="active"), built)

    def build(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> dict[str, int]:
        """Mark the index built in every existing shard among ``shard_ids``."""
        table = self._table()
        counts = {"built": 0, "present": 0, "rebuilt": 0}
        shards = self.server._shards()
        for shard in shard_ids:
            if stop():
                break
            if shard in shards or self.server._auto_provision:
                built = table[spec.name][1]
                if spec.unique and shard not in built:
                    self._check_existing(spec, shard)
                counts["present" if shard in built else "built"] += 1
                built.add(shard)
            progress(1)
        return counts

    def _check_existing(self, spec: IndexSpec, shard: int) -> None:
        values: set[Any] = set()
        with self.server._lock:
            records = list(self.server._shards().get(shard, {}).values())
        for record in records:
            value = typed_value(record.data.get(str(spec.field)), spec.type, text_values=self.server.text_only)
            if record.kind != spec.kind or value is None:
                continue
            if value in values:
                raise MigrationError(
                    f"building index {spec.name} (kind {spec.kind}, field {spec.field!r}, unique) failed in shard "
                    f"{shard} on {self.server.label}: the value {value!r} is there twice",
                    server=self.server.label,
                    shard_id=shard,
                )
            values.add(value)

    def mark_dropping(self, spec: IndexSpec) -> None:
        """Record that ``spec`` is being dropped."""
        table = self._table()
        with _SERVERS_LOCK:
            if spec.name in table:
                table[spec.name] = (dataclasses.replace(spec, state="dropping"), table[spec.name][1])

    def drop(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> int:
        """Forget the index in these shards; returns how many had it."""
        entry = self._table().get(spec.name)
        dropped = 0
        for shard in shard_ids:
            if stop():
                break
            if entry is not None and shard in entry[1]:
                entry[1].discard(shard)
                dropped += 1
            progress(1)
        return dropped

    def forget(self, spec: IndexSpec) -> None:
        """Remove the definition."""
        with _SERVERS_LOCK:
            _INDEXES.get(self.server.name, {}).pop(spec.name, None)

    def states(self, shard_ids: Sequence[int]) -> tuple[list[int], dict[str, tuple[list[int], list[int]]]]:
        """Existing shards among ``shard_ids``, and per index the shards it was built in (none is ever invalid).

        On a server that provisions shards on first use (``provisioned=True``, the default) every shard exists:
        `build` marks them all, and a shard made on first use gets the active indexes, so an index built is
        reported valid in every shard (not missing, nor absent because the shard holds nothing yet)."""
        shards = self.server._shards()
        live = list(shard_ids) if self.server._auto_provision else [s for s in shard_ids if s in shards]
        return live, {name: ([s for s in live if s in built], []) for name, (_, built) in self._table().items()}

    def check_unique(self, shard_id: int, table: Mapping[int, Record], records: Sequence[Record]) -> None:
        """`DuplicateValue` if ``records`` (new, or replacing the stored ones of their keys) break a unique index
        of ``shard_id``: two records of the index's kind with the same typed value (as on PostgreSQL)."""
        with _SERVERS_LOCK:
            uniques = [
                spec
                for spec, built in _INDEXES.get(self.server.name, {}).values()
                if spec.unique and spec.state == "active" and shard_id in built
            ]
        text = self.server.text_only
        for spec in uniques:
            replaced = {int(r.key) for r in records}
            seen = {
                value
                for key, stored in table.items()
                if key not in replaced and stored.kind == spec.kind
                for value in [typed_value(stored.data.get(str(spec.field)), spec.type, text_values=text)]
                if value is not None
            }
            for record in records:
                if record.kind != spec.kind:
                    continue
                value = typed_value(record.data.get(str(spec.field)), spec.type, text_values=text)
                if value is None:
                    continue
                if value in seen:
                    raise DuplicateValue(
                        f"shard {shard_id} on {self.server.label} already holds a record with this value "
                        f"({value!r}) under the unique index {spec.name}: nothing was written (unique indexes are "
                        "unique within each shard)"
                    )
                seen.add(value)

    def provisioned(self, shard_ids: Sequence[int]) -> None:
        """New shards get every active index, as provisioning does on PostgreSQL."""
        for spec, built in self._table().values():
            if spec.state == "active":
                built.update(shard_ids)


_UNNAMED: dict[int, tuple[Mapping[str, Any], str]] = {}  # id(settings) -> (settings, name); keeps settings alive


def _private_name(settings: Mapping[str, Any]) -> str:
    """The name of an unnamed server: a fresh one per settings object, the same one when a datastore reopens.

    A `Datastore` makes its stores again from the same settings on `reinstantiate()`, and the data must still be
    there afterwards, as on a real server.
    """
    with _SERVERS_LOCK:
        entry = _UNNAMED.get(id(settings))
        if entry is not None and entry[0] is settings:
            return entry[1]
        MemoryServerStore._counter += 1
        name = f"memory-{MemoryServerStore._counter}"
        _UNNAMED[id(settings)] = (settings, name)
        return name


def _value_rules(server: object, datastore: str | None) -> str:
    """``"jsonb"`` or ``"text"`` from a server's ``values`` setting and the datastore's ``values`` option."""
    if server is None:
        return datastore or "jsonb"
    rules = VALUE_RULES.get(server) if isinstance(server, str) else None
    if rules is None:
        raise ConfigError(
            f"memory backend: values must be 'jsonb' (JSON types, the jsonb rules; also spelt 'json') or 'text' "
            f"(strings, the hstore rules; also spelt 'hstore'), got {server!r}"
        )
    if datastore is not None and datastore != rules:
        raise ConfigError(f"memory backend: this server says values={server!r}, the datastore values={datastore!r}")
    return rules


class AsyncMemoryServerStore:
    """The asyncio face of `MemoryServerStore` (same data, awaitable methods; nothing here blocks)."""

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions) -> None:
        self.sync = MemoryServerStore(settings, options)
        self._options = options

    @property
    def label(self) -> str:
        """The server's name."""
        return self.sync.label

    def __repr__(self) -> str:
        return f"<AsyncMemoryServerStore {self.label}>"

    async def open(self) -> None:
        """Nothing to connect."""
        self.sync.open()

    async def close(self) -> None:
        """Forget borrowed connections."""
        self.sync.close()

    def after_fork_in_child(self) -> None:
        """As the sync store."""
        self.sync.after_fork_in_child()

    def check_data(self, data: Mapping[str, Any]) -> None:
        """As the sync store."""
        self.sync.check_data(data)

    async def get_connection(self, shard_id: int) -> AsyncMemoryConnection:
        """Borrow a pretend connection, waiting (without blocking the loop) up to ``pool_block_timeout``."""
        return AsyncMemoryConnection(await self._waiting_for(lambda: self.sync.get_connection_nowait(shard_id)))

    async def _take_slot(self) -> int:
        """A pretend connection for one call, waited for without blocking the loop (see the sync `_take_slot`);
        the pool's generation, for `_release_slot`."""
        return await self._waiting_for(lambda: self.sync._take_slot(0))

    async def _waiting_for(self, take: Callable[[], _T]) -> _T:
        """``take()`` until it does not raise `PoolTimeout`, polling up to ``pool_block_timeout`` (counted in
        ``stats()["waiting"]`` meanwhile)."""
        try:
            return take()
        except PoolTimeout:
            if self._options.pool_block_timeout <= 0:
                raise
        deadline = time.monotonic() + self._options.pool_block_timeout
        generation = self.sync._generation
        self.sync._count_waiting(1)
        try:
            while True:
                await asyncio.sleep(0.005)
                if self.sync._generation != generation:  # closed while this call waited (see the sync _take_slot)
                    raise closed_while_waiting(self.label)
                try:
                    return take()
                except PoolTimeout:
                    if time.monotonic() >= deadline:
                        metrics.connection_timeout(self.label)
                        raise
        finally:
            self.sync._count_waiting(-1)

    async def _call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a sync store method with the pretend connection taken here (the loop never blocks on the pool)."""
        generation = await self._take_slot()
        local = self.sync._local
        local.held = True
        try:
            return method(*args, **kwargs)
        finally:
            local.held = False
            self.sync._release_slot(generation)

    async def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        self.sync.put_connection(_sync_connection(conn))

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is borrowed from this store."""
        return self.sync.owns(_sync_connection(conn))

    @asynccontextmanager
    async def cursor(self, shard_id: int) -> AsyncIterator[AsyncMemoryCursor]:
        """A cursor on a borrowed connection, returned afterwards whatever happens."""
        conn = await self.get_connection(shard_id)
        try:
            yield conn.cursor()
        finally:
            if not conn.returned:  # taken back already (by the caller, through put_connection)
                self.sync.put_connection(conn.sync)

    @asynccontextmanager
    async def transaction(
        self, shard_id: int, *, isolation_level: str | None = None, read_only: bool = False
    ) -> AsyncIterator[Any]:
        """A transaction on ``shard_id`` holding one connection slot (see ``hvbackend_memory._transaction``)."""
        from hvbackend_memory._transaction import AsyncMemoryTransaction, memory_transaction

        conn = await self._waiting_for(lambda: self.sync._borrow(shard_id, 0, TRANSACTION))
        try:
            with memory_transaction(self.sync, conn, shard_id, isolation_level, read_only) as tx:
                yield AsyncMemoryTransaction(tx)
        finally:
            if not conn.returned:  # taken back already (by the caller, through put_connection)
                self.sync.put_connection(conn)

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """As the sync store."""
        await self._call(self.sync.insert, shard_id, key, kind, data)

    async def fetch(self, shard_id: int, key: Key) -> Record | None:
        """As the sync store."""
        return await self._call(self.sync.fetch, shard_id, key)

    async def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """As the sync store."""
        await self._call(self.sync.insert_many, shard_id, rows)

    async def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """As the sync store."""
        return await self._call(self.sync.fetch_many, items)

    async def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """As the sync store."""
        return await self._call(self.sync.update, shard_id, key, data, merge=merge)

    async def delete(self, shard_id: int, key: Key) -> bool:
        """As the sync store."""
        return await self._call(self.sync.delete, shard_id, key)

    async def update_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any], counts: dict[int, int]
    ) -> int:
        """As the sync store."""
        return await self._call(self.sync.update_where, shard_ids, spec, data, counts)

    async def delete_where(self, shard_ids: Sequence[int], spec: QuerySpec, counts: dict[int, int]) -> int:
        """As the sync store."""
        return await self._call(self.sync.delete_where, shard_ids, spec, counts)

    async def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> AsyncIterator[Record]:
        """As the sync store: a pretend connection to start, none held between records."""
        self.sync._release_slot(await self._take_slot())
        for record in self.sync._query_records(shard_ids, spec):
            yield record

    async def provision(
        self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> ProvisionReport:
        """As the sync store."""
        return self.sync.provision(shard_ids, progress)

    async def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """As the sync store."""
        return await self._call(self.sync.row_counts, shard_ids)

    async def row_estimates(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """As the sync store."""
        return await self._call(self.sync.row_estimates, shard_ids)

    async def lease_worker(
        self, *, bits: int = 4, namespace: str = "default", ttl: float = 10.0, acquire_timeout: float = 0.0
    ) -> MemoryWorkerLease:
        """A worker number free in this process (the memory backend's stand-in for a PostgreSQL lease)."""
        return self.sync.lease_worker(bits=bits, namespace=namespace, ttl=ttl, acquire_timeout=acquire_timeout)

    def index_builder(self) -> MemoryIndexes:
        """As the sync store (blocking calls; nothing here waits)."""
        return self.sync.index_builder()

    def stats(self) -> dict[str, Any]:
        """As the sync store."""
        return self.sync.stats()
