# WARNING: generated from hvcore/_adatastore.py by tools/async_to_sync.py.
# Do not edit: edit the source, then run the tool.
"""`Datastore`: routes shards to servers and keys to rows, over any registered backend."""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import logging
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from enum import Enum
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hvcore import _schemaops
from hvcore._acompat import Lock, cancel, gather, spawn, to_thread
from hvcore._attempts import one_attempt_per_call
from hvcore._backend import (
    ProvisionReport,
    QuerySpec,
    Record,
    ServerStore,
    SupportsFilterWrites,
    SupportsRowEstimates,
    SupportsWorkerLease,
)
from hvcore._blocks import once_block
from hvcore._config import check_server_entries
from hvcore._facade import (
    PUT_ATTEMPTS,
    FacadeBase,
    SequenceArg,
    check_kind,
    check_progress,
    check_sequence,
    too_many_duplicates,
)
from hvcore._generator import KeyGenerator
from hvcore._key import Key, KeyLayout
from hvcore._metrics import metrics
from hvcore._placement import MAX_HOPS, PlacementMixin, match_identity
from hvcore._plugins import PluginRegistry
from hvcore._readrouter import ReadRouter, ReplicaChoice
from hvcore._replicas import Timeline, TimelineScope, check_read_from, current_timeline
from hvcore._row import Row
from hvcore._schemadefs import (
    FieldFilter,
    IndexInfo,
    IndexReport,
    IndexSpec,
    MigrationReport,
    MigrationStatus,
    SchemaProgress,
    bind_filters,
    load_migrations,
    split_ranges,
)
from hvcore._shardmap import format_ranges
from hvcore._transaction import ShardTransaction, open_transaction
from hvcore._worker import WorkerSlice, home_start
from hvcore.errors import (
    ConfigError,
    ConnectionMisuse,
    DuplicateKey,
    HypervaultError,
    InvalidArgument,
    InvalidData,
    InvalidQuery,
    ShardMapError,
    ShardMoved,
)

if TYPE_CHECKING:  # psycopg is an optional dependency: only the types are named here
    from psycopg import Connection, Cursor

__all__ = ["Datastore"]

_T = TypeVar("_T")

_live_stores: weakref.WeakSet[Datastore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_live_stores):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

_logger = logging.getLogger("hvcore")
AUTO_LEASE: dict[str, Any] = {"bits": 8, "namespace": "auto"}
'The lease of ``worker="auto"``: 256 numbers, each a place to start a millisecond\'s sequence (`home_start`).'
AUTO_CLOSE_WAIT = 0.5
'Seconds `close` waits for a ``worker="auto"`` lease to be given back; past that it goes on in the background (a\nnumber not given back frees itself a ``ttl`` after its last renewal; only starts, not uniqueness, depend on it).'


class _HomeFollower:
    """Follows a ``worker="auto"`` lease: once it is lost (another holder took the number), the generator goes back
    to random starts, so that two processes never count from one home in step."""

    def __init__(self, lease: Any, generator: Any) -> None:
        self._lease = weakref.ref(lease)
        self._generator = weakref.ref(generator)

    def _follow_grant(self) -> None:
        lease, generator = (self._lease(), self._generator())
        if lease is not None and generator is not None and (lease.lost is not None):
            generator.start_each_ms_at(None)


def _close_within(lease: Any, seconds: float) -> None:
    """Close ``lease`` in a daemon thread and wait for it at most ``seconds``."""
    closing = threading.Thread(target=lease.close, name="hypervault-lease-close", daemon=True)
    closing.start()
    closing.join(seconds)


def _release_when_collected(owner: object, lease: Any) -> weakref.finalize[Any, Any]:
    """Close ``lease`` (in the background: a collection must not wait for a server) once ``owner`` is garbage
    collected without being closed: a dropped datastore leaves no renewal thread and no held number behind."""
    return weakref.finalize(owner, _close_within, lease, 0)


def _fetch_many_timed(store: ServerStore, items: Sequence[tuple[int, Key]]) -> list[Record]:
    """``store.fetch_many(items)`` as a list, its duration recorded as one ``get_many`` when metrics are on."""
    if not metrics.on:
        return list(store.fetch_many(items))
    started = perf_counter()
    try:
        records = store.fetch_many(items)
    except BaseException as exc:
        metrics.operation("get_many", store, perf_counter() - started, exc)
        raise
    metrics.operation("get_many", store, perf_counter() - started)
    return list(records)


class Datastore(PlacementMixin, FacadeBase[ServerStore]):
    """Entities in logical shards spread over physical servers, behind the 2015 library's API.

    ``connections`` is a list of connection-setting dicts, each with ``shards='a-b'`` (half-open:
    ``'1-9'`` is shards 1..8); the rest of each dict is passed to the backend as it is. ``pool_max``
    connections per server, ``pool_block_timeout`` seconds to wait for one, ``logger`` logs every
    statement. ``operation_timeout`` bounds each exchange with a server on the client side (default 60 s; None
    waits forever): a server that stops answering without closing its sockets then fails the call with
    `ServerUnavailable` instead of hanging it. It applies to raw ``cursor()`` statements too. ``worker`` says how
    independent processes sharing shards keep apart: ``"auto"`` (the default) leases a start from the first
    PostgreSQL server (namespace ``auto`` of ``hypervault.worker_leases``, 256 numbers) so that each process counts
    each millisecond's ids from its own place, full speed, and otherwise (memory backend, ``sequence`` given, or the
    lease refused: every number held, no CREATE privilege, server down) uses a random start per millisecond, with a
    warning on the ``hvcore`` logger (`worker_status` says which); collisions left are redrawn, never stored over.
    ``"lease"`` (or a dict of lease options: ``bits``, ``namespace``, ``ttl``, ``acquire_timeout``) leases a worker
    number owning a slice of the sequence for the store's lifetime: keys unique by construction, or an error; a
    `WorkerSlice` is a fixed one; None: a random start per millisecond, no lease (docs/guarantees.md has the
    guarantees and figures of each). ``coalesce_reads`` (default
    True) merges ``get()`` calls that overlap on one server into one batch read, ``coalesce_writes`` (default True)
    merges overlapping ``put()`` calls of a shard into multi-row INSERTs (a store whose ``insert_groups`` is true), each
    call keeping its own result or error (``hvcore._coalesce``); a lone call goes straight through. On `Datastore`
    the calls merged are those of threads that would otherwise wait for a pooled connection.

    Read replicas: a server entry may list its standbys, ``replicas=[dict(host=..., port=...)]`` (each inherits
    the server's other settings). ``read_from="replica"`` sends `get`, `get_many` and `query` to a standby whose
    replay lag is within ``max_replica_lag`` seconds (default 1.0), else to the primary, never failing while the
    primary is up; each of them takes ``read_from=`` for one call. After a write to a shard, its reads go to the
    primary until a standby has replayed past that write (read-your-writes, per `timeline`: a put, update, replace
    or delete on a server with standbys brings the WAL position back in its own exchange; put_many and
    transactions read it after, one more round trip; ``read_your_writes=False`` turns it off).
    Writes always go to primaries. README "Read replicas" has the details and figures.

    `Datastore` opens its pools on ``await db.open()`` or on entering ``with``; its I/O methods are
    coroutines, ``cursor()`` is a context manager and ``query()`` an iterator. `Datastore` opens them
    in its constructor. Use either as a context manager, or call ``close()`` when done.
    """

    __module__ = "hvcore"

    def __init__(
        self,
        connections: Sequence[Mapping[str, Any]],
        pool_max: int = 10,
        pool_block_timeout: float = 5,
        logger: logging.Logger | None = None,
        *,
        backend: str = "hstore",
        layout: KeyLayout | str | int = KeyLayout.DEFAULT,
        sequence: SequenceArg = None,
        allow_gaps: bool = False,
        row_factory: str = "row",
        registry: PluginRegistry | None = None,
        operation_timeout: float | None = 60.0,
        values: str | None = None,
        log_values: bool = False,
        worker: WorkerSlice | Mapping[str, Any] | str | None = "auto",
        read_from: str = "primary",
        max_replica_lag: float = 1.0,
        read_your_writes: bool = True,
        coalesce_reads: bool = True,
        coalesce_writes: bool = True,
    ) -> None:
        self._configure(
            connections,
            pool_max,
            pool_block_timeout,
            logger,
            backend,
            layout,
            sequence,
            allow_gaps,
            row_factory,
            registry,
            operation_timeout,
            values,
            log_values,
            worker,
            read_from,
            max_replica_lag,
            read_your_writes,
        )
        self._factory = self._registry.backend(backend)
        self._read_from = self._config.read_from
        self._timeline = Timeline()  # the process-wide read-your-writes positions (outside any `timeline()` block)
        self._lent_shards: dict[int, tuple[Any, int]] = {}  # id(conn) → (conn, shard) of get_connection, with standbys
        self._router: ReadRouter | None = None
        if any(self._replica_settings):
            self._router = ReadRouter(
                self._replica_settings,
                self._factory,
                self._options,
                max_lag=self._config.max_replica_lag,
                primaries=self._live,
            )
        check_sequence(sequence, asyncio=False)
        source: Any = sequence
        if isinstance(sequence, str):
            source = self._sequence_from_url(sequence, asyncio=False)
        self._sequence = source
        self._owns_sequence = isinstance(sequence, str)
        self._sequence_closed = False  # an owned sequence closed by close(): made again by the next open
        self._lease: Any = None  # the leased worker number (worker="lease" or "auto"), held from open() to close()
        self._worker_status = "in-process sequence, random start per millisecond"  # see worker_status
        self._lease_tried = False  # worker="auto": whether this open() asked for a lease yet
        self._lease_finalizer: weakref.finalize[Any, Any] | None = None  # gives the lease back if never closed
        self._home_follower: Any = None  # worker="auto": drops the leased start if the lease is lost
        self.generator = self._make_generator(source)
        self._ever_opened = False
        self._lock = Lock()
        self._retired: list[ServerStore] = []  # closed stores whose borrowed connections have not come back yet
        self._identities: dict[str, str] | None = None  # server label -> database identity (`_follow_moved`)
        self._index_catalog = _schemaops.IndexCatalog()  # index definitions, for where/range filters
        for name, flag in (("coalesce_reads", coalesce_reads), ("coalesce_writes", coalesce_writes)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")
        self._coalesce_reads = coalesce_reads
        self._coalesce_writes = coalesce_writes
        self._readers: dict[int, Any] = {}  # id(store) -> its ThreadReadCoalescer (hvcore._coalesce), made on first get
        self._writers: dict[int, Any] = {}  # id(store) -> its ThreadWriteCoalescer, made on first put
        self._open_stores()
        self._ensure_generator()
        _live_stores.add(self)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _check_settings(self) -> None:
        """Build each server's store without opening it: its backend checks its settings (no I/O)."""
        self._build_stores()
        if self._router is not None:
            self._router.check()

    def _build_stores(self) -> list[ServerStore]:
        """Each server's store, not opened: built by its backend, which checks its settings (`check_server_entries`:
        every refused entry named)."""
        shards = [server.get("shards") for server in self._config.servers]
        return check_server_entries(self._settings, lambda settings: self._factory(settings, self._options), shards)

    def _open_stores(self) -> None:
        stores = self._build_stores()
        try:
            for store in stores:
                store.open()
        except BaseException:
            for store in stores:
                store.close()
            raise
        if self._sequence_closed:  # close() closed the sequence this store made from its URL: make a new one
            url = self._config.sequence
            assert url is not None
            self._sequence = self._sequence_from_url(url, asyncio=False)
            self.generator = self._make_generator(self._sequence)
            self._sequence_closed = False
        self._stores = stores
        self._identities = None
        if self._router is not None:
            self._router.attach(stores, track_writes=self._config.read_your_writes)
        self._closed = False
        self._ever_opened = True
        metrics.watch(self)  # looks the meter provider up again: figures start once one is configured

    def open(self) -> None:
        """Open every server's pool if closed (idempotent)."""
        with self._lock:
            if self._closed:
                self._open_stores()
            self._ensure_generator()

    def disconnect(self) -> None:
        """Close every pooled connection; the store is unusable until `reinstantiate()`."""
        with self._lock:
            stores, self._stores = (self._stores, [])
            self._closed = True
            self._readers = {}
            self._writers = {}
        for store in stores:
            store.close()
        if self._router is not None:
            self._router.close()
        with self._lock:
            self._retired = [s for s in (*self._retired, *stores) if s.stats().get("borrowed")]

    def reinstantiate(self) -> None:
        """Rebuild every pool (closing the old ones first); after `close()`, also the sequence made from a URL."""
        self.disconnect()
        self.open()

    def close(self) -> None:
        """Close pools, and the sequence source if this store created it from a URL (`open()` makes a new one)."""
        self.disconnect()
        if self._owns_sequence and self._sequence is not None and (not self._sequence_closed):
            self._sequence_closed = True
            self._sequence.close()
        if self._config.worker not in (None, "auto") and self.generator is not None:
            self.generator.close()  # its worker number is free for the next generator (this store's, reopened)
            self.generator = None
        lease, self._lease = (self._lease, None)
        if self._lease_finalizer is not None:
            self._lease_finalizer.detach()  # given back here instead
            self._lease_finalizer = None
        if lease is not None and self._config.auto_worker:
            to_thread(_close_within, lease, AUTO_CLOSE_WAIT)  # an unresponsive server must not hold close()
        elif lease is not None:
            lease.close()
        self._lease_tried = False
        if self._config.auto_worker and hasattr(self.generator, "start_each_ms_at"):
            self.generator.start_each_ms_at(None)  # the number is given back: random starts until open() leases again

    def __enter__(self) -> Datastore:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        self._lock = Lock()
        self._readers = {}
        self._writers = {}
        for store in (*self._stores, *self._retired):
            store.after_fork_in_child()
        self._retired = []
        if self._router is not None:
            self._router.after_fork_in_child()

    def _ensure_generator(self) -> None:
        """Make the key generator if there is none: with ``worker="lease"``, lease a number from the first server;
        with ``worker="auto"``, lease a start for the generator (`_lease_start`)."""
        if self.generator is not None:
            if self._config.auto_worker and (not self._lease_tried):
                self._lease_start()
            return
        options = self._config.lease_options
        if options is None:
            self.generator = self._make_generator(self._sequence)
            return
        store = self._live()[0]
        if not isinstance(store, SupportsWorkerLease):
            raise ConfigError(
                f"worker='lease' needs a backend that can lease worker numbers (PostgreSQL, memory); {self.backend!r} cannot: give a fixed WorkerSlice instead"
            )
        self._lease = store.lease_worker(**options)
        self._lease_finalizer = _release_when_collected(self, self._lease)
        self.generator = KeyGenerator(self.layout, worker=self._lease)

    def _lease_start(self) -> None:
        """``worker="auto"``: lease a number of namespace ``auto`` (8 bits) and start each millisecond at its home.

        Only on a backend whose leases span processes and hosts (PostgreSQL: ``leases_across_processes``); the
        in-process random start stays otherwise, and when the lease is refused (a warning says why and what to do).
        """
        self._lease_tried = True  # once per open(): a refusal is not asked again (nor warned about) on every call
        store = self._live()[0]
        if not getattr(store, "leases_across_processes", False) or not isinstance(store, SupportsWorkerLease):
            self._worker_status = f"in-process sequence, random start per millisecond ({self.backend} backend)"
            return
        try:
            lease = store.lease_worker(**AUTO_LEASE)
        except HypervaultError as exc:
            self._worker_status = f"in-process sequence, random start per millisecond (no lease: {exc})"
            _logger.warning(
                "worker='auto': no start could be leased from %s (%s: %s); keys use a random start per millisecond, so processes sharing shards may collide (each collision is redrawn, never stored over). Free or add numbers, grant CREATE on the database once (or create hypervault.worker_leases as its owner), or pass worker=None to silence this",
                cast(Any, store).label,
                type(exc).__name__,
                exc,
            )
            return
        self._lease = lease
        self._lease_finalizer = _release_when_collected(self, lease)
        home = home_start(lease.worker, self.layout)
        self.generator.start_each_ms_at(home)
        self._home_follower = _HomeFollower(lease, self.generator)
        lease._follow(self._home_follower)  # a lease lost to another holder: back to random starts
        self._worker_status = f"in-process sequence, each millisecond starting at {home} (leased number {lease.worker.id} of {lease.worker.workers}, namespace {AUTO_LEASE['namespace']!r})"

    @property
    def worker_status(self) -> str:
        """How this datastore's keys keep apart from other processes': a leased start, a slice, or a random start."""
        if self._lease is not None and (not self._config.auto_worker):
            return f"worker number {self._lease.worker.id} of {self._lease.worker.workers} (leased)"
        if isinstance(self._config.worker, WorkerSlice):
            return f"worker number {self._config.worker.id} of {self._config.worker.workers} (fixed)"
        if self._sequence is not None:
            return "shared sequence"
        if self._config.auto_worker and self._lease is not None and (self._lease.lost is not None):
            return f"in-process sequence, random start per millisecond (the leased start was lost: {self._lease.lost})"
        return self._worker_status

    def _make_generator(self, source: Any) -> Any:
        if self._config.lease_options is not None:
            return None  # made by _lease_worker() once the pools are open
        if isinstance(self._config.worker, WorkerSlice):
            return KeyGenerator(self.layout, worker=self._config.worker)
        return KeyGenerator(self.layout, sequence=source)

    # -- connections -----------------------------------------------------------------------------------------

    def get_connection(self, shard_id: int) -> Connection[Row]:
        """Borrow a connection of the server owning ``shard_id``, with the shard's schema on the search path.

        A psycopg connection in a transaction (commit it yourself), whose rows are `Row` objects (``row[0]`` and
        ``row["name"]``; ``row_factory="dict"``/``"tuple"`` for dicts or tuples); the memory backend lends a
        ``MemoryConnection`` instead. Return it with `put_connection`. On a server with standbys (and
        ``read_your_writes``), `put_connection` counts it as a write to the shard: the primary's WAL position is
        read then (one round trip) and the shard's reads stay on the primary until a standby has replayed it.
        A statement reaching a shard that moved away raises `ShardMoved` (through the connection's cursors and
        ``execute``); when the connection is returned, the datastore learns the shard's new server.
        """
        conn: Connection[Row] = self.store_for(shard_id).get_connection(shard_id)
        if self._router is not None and self._config.read_your_writes:  # put_connection notes it as a write
            self._lent_shards[id(conn)] = (conn, shard_id)
        return conn

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection; twice, or one not from this store, raises `ConnectionMisuse`.

        A connection borrowed before `disconnect()` is still taken back (and closed), so its slot is not lost.
        """
        for store in (*self._stores, *self._retired):
            if store.owns(conn):
                moved = getattr(conn, "hv_moved", None)  # a statement reached a moved shard's forwarding stub
                store.put_connection(conn)
                if isinstance(moved, ShardMoved):
                    self._learn(moved, "get_connection()")
                lent = self._lent_shards.pop(id(conn), None)
                if lent is not None and lent[0] is conn:  # whatever it committed counts as a write to its shard
                    self._note_write(lent[1])
                return
        raise ConnectionMisuse(
            f"{conn!r} is not borrowed from this Datastore: it was already returned, or came from elsewhere"
        )

    def _learn(self, moved: ShardMoved, lent: str) -> None:
        """After raw SQL refused by a moved shard's old server: later calls go to its new server."""
        with suppress(HypervaultError):
            self._follow_moved(moved)
            moved.add_note(f"nothing of it was committed; the next {lent} goes to {moved.server}: run it again there")

    def _follow_moved(self, moved: ShardMoved) -> None:
        """`_follow`, the target matched by its database identity when this config names it otherwise (``localhost``
        for ``127.0.0.1``, a PgBouncer in front): each server's identity is read once (one session each)."""
        if moved.identity and moved.server not in [store.label for store in self._live()]:
            if self._identities is None:
                found: dict[str, str] = {}
                for store in self._live():
                    identify = getattr(store, "database_identity", None)
                    if identify is not None:
                        with suppress(HypervaultError):
                            found[store.label] = identify()
                self._identities = found
            label = match_identity(moved.identity, self._identities)
            if label is not None:
                moved.server = label
        self._follow(moved)

    @once_block("db.cursor(shard)", ConnectionMisuse)
    def cursor(self, shard_id: int) -> Iterator[Cursor[Row]]:
        """A cursor in the shard's schema: commit on success, rollback on error, connection always returned.

        A psycopg cursor whose rows are `Row` objects: ``row[0]`` and ``row["version"]`` both work, as psycopg2's
        ``DictRow`` did (``row_factory="dict"``/``"tuple"`` for dicts or tuples). The memory backend yields a
        ``MemoryCursor``, which answers ``SELECT version()`` and ``SELECT 1`` only. On a server with standbys
        (and ``read_your_writes``), a block that commits counts as a write to the shard, as for `get_connection`.
        A statement reaching a shard that moved away raises `ShardMoved` (the block rolls back); the datastore
        learns the new server, so the next ``cursor(shard_id)`` goes there.
        """
        try:
            with self.store_for(shard_id).cursor(shard_id) as cur:
                yield cur
        except ShardMoved as moved:  # the shard's old server refused a statement: nothing of the block committed
            self._learn(moved, f"cursor({shard_id})")
            raise
        if self._router is not None:  # committed: read-your-writes counts the block as a write to the shard
            self._note_write(shard_id)

    def transaction(
        self, shard_id: int, *, isolation_level: str | Enum | None = None, read_only: bool = False
    ) -> AbstractContextManager[ShardTransaction]:
        """One transaction on one shard: ``with db.transaction(12) as tx:`` then ``tx.put``, ``tx.get``...

        Yields an `ShardTransaction` whose ``put``, ``put_many``, ``get``, ``get_many``, ``update``, ``replace``,
        ``delete``, ``query`` and ``cursor()`` all run in one transaction on the shard's server (keys of the shard only:
        `InvalidKey` otherwise, before any SQL); committed when the block ends, rolled back when an exception leaves it.
        ``with tx.transaction():`` inside it, or ``db.transaction(12)`` again in the same task or thread, is a
        savepoint; in a child task or another thread it is a transaction of its own (the parent's ``tx`` is only for the
        task or thread that opened it: `TransactionError` elsewhere). ``isolation_level``: None (the server's default),
        ``"read committed"``, ``"repeatable read"`` or ``"serializable"`` (case, ``_`` and ``-`` ignored; an enum such
        as psycopg's ``IsolationLevel`` by its name); ``read_only=True`` refuses writes (`TransactionError`). Bad
        arguments raise `ConfigError`, `InvalidShard` or `ShardNotFound` when this is called. The shard context travels
        with the transaction (``SET LOCAL search_path`` and schema-qualified statements), so it works through PgBouncer
        in transaction mode. A shard that moved away is reported with `ShardMoved`, never followed inside the
        transaction; `TransactionConflict` when PostgreSQL refuses it to keep transactions isolated (run it again);
        `ServerUnavailable` when the server is lost (during the commit the outcome is unknown). Transactions on
        different shards are separate transactions.
        """
        return open_transaction(self, shard_id, isolation_level, read_only)

    # -- entities --------------------------------------------------------------------------------------------

    def put(self, shard_id: int, kind: int, /, **data: Any) -> Key:
        """Store ``data`` in ``shard_id`` under a new key, ``kind`` kept outside the body; return the key."""
        store = self.store_for(shard_id)
        kind = check_kind(kind)
        store.check_data(data)
        for attempt in range(PUT_ATTEMPTS):
            key = self._next_key(shard_id)
            try:
                if self._coalesce_writes and getattr(store, "insert_groups", False):  # overlapping: multi-row INSERTs
                    insert = self._writer(store).insert
                else:
                    insert = store.insert
                if metrics.on:  # timed inline (every operation is): no wrapper call, no argument tuple
                    started = perf_counter()
                    try:
                        insert(shard_id, key, kind, data)
                    except BaseException as exc:
                        metrics.operation("put", store, perf_counter() - started, exc, shard_id)
                        raise
                    metrics.operation("put", store, perf_counter() - started, None, shard_id)
                else:
                    insert(shard_id, key, kind, data)
            except DuplicateKey:  # another writer holds the key: a fresh one, never an overwrite or a success
                self._count_collisions(shard_id, 1)
                self._log_duplicate(shard_id, key)
                self._step_past_collision(shard_id, attempt)
                continue
            except ShardMoved as moved:  # refused by the shard's old server: nothing written, retry where it is
                self._follow_moved(moved)
                store = self.store_for(shard_id)
                continue
            if self._router is not None:
                self._note_write(shard_id, carried=True)
            return key
        raise too_many_duplicates(shard_id)

    def put_many(self, shard_id: int, kind: int, rows: Iterable[Mapping[str, Any]]) -> list[Key]:
        """Store many bodies in one shard in one round trip, all or nothing; return their keys in row order.

        Keys another writer already holds are redrawn (only those: the rest of the batch keeps its keys) and the
        batch is sent again, up to `PUT_ATTEMPTS` times; the keys returned are the ones stored.
        """
        store = self.store_for(shard_id)
        kind = check_kind(kind)
        bodies = self._check_rows(rows, store.check_data)
        if not bodies:
            return []
        keys = self._keys(shard_id, len(bodies))
        for attempt in range(PUT_ATTEMPTS):
            try:
                items = [(k, kind, b) for k, b in zip(keys, bodies, strict=True)]
                if metrics.on:  # timed here (put's way), not through a wrapper: a call and an argument tuple less
                    started = perf_counter()
                    try:
                        store.insert_many(shard_id, items)
                    except BaseException as exc:
                        metrics.operation("put_many", store, perf_counter() - started, exc, shard_id)
                        raise
                    metrics.operation("put_many", store, perf_counter() - started, None, shard_id)
                else:
                    store.insert_many(shard_id, items)
            except DuplicateKey as taken:
                self._step_past_collision(shard_id, attempt)
                keys = self._redraw(shard_id, keys, taken.keys)
                continue
            except ShardMoved as moved:
                self._follow_moved(moved)
                store = self.store_for(shard_id)
                continue
            if self._router is not None:
                self._note_write(shard_id)
            return keys
        raise too_many_duplicates(shard_id)

    def _redraw(self, shard_id: int, keys: list[Key], taken: Sequence[int]) -> list[Key]:
        """``keys`` with the taken ones (all of them if the backend could not tell which) replaced by fresh keys."""
        mine = set(keys)
        known = {int(k) for k in taken if int(k) in mine}
        positions = [i for i, k in enumerate(keys) if int(k) in known] if known else list(range(len(keys)))
        self._count_collisions(shard_id, len(positions))
        self._log_duplicate(shard_id, keys[positions[0]])
        fresh: list[Key] = []
        while len(fresh) < len(positions):  # a fresh key is never one the batch already holds
            fresh.extend(k for k in self._keys(shard_id, len(positions) - len(fresh)) if k not in mine)
        out = list(keys)
        for position, key in zip(positions, fresh, strict=False):
            out[position] = key
        return out

    def get(self, key: Key | int, *, read_from: str | None = None) -> Record | None:
        """The record stored under ``key``, or None.

        ``read_from`` (``"primary"``/``"replica"``) overrides the datastore's for this call (`ConfigError` if
        neither).
        """
        key = self.as_key(key)
        shard = key.shard_id
        if self._router is not None and self._reads_replicas(read_from):
            index = self.shard_map.server_for(shard)
            choice = self._router.pick(index, (shard,), current_timeline(self._timeline))
            if choice is not None:
                standby = choice.store
                try:
                    if not metrics.on:
                        record: Record | None = standby.fetch(shard, key)
                        return record
                    started = perf_counter()
                    try:
                        record = standby.fetch(shard, key)
                    except BaseException as exc:
                        metrics.operation("get", standby, perf_counter() - started, exc, shard)
                        raise
                    metrics.operation("get", standby, perf_counter() - started, None, shard)
                    return record
                except ShardMoved as moved:  # the standby replayed the move: read where the shard is now
                    self._follow_moved(moved)
                except Exception as exc:  # down, or anything a standby cannot answer: the primary decides
                    self._router.failed(index, choice, exc)
        elif read_from is not None:
            check_read_from(read_from)
        if self._coalesce_reads:  # overlapping calls share one batch read per server (hvcore._coalesce)
            found: Record | None = self._on_shard(shard, lambda store: self._reader(store).get(shard, key), "get")
            return found
        return self._on_shard(shard, lambda store: store.fetch(shard, key), "get")

    def _writer(self, store: ServerStore) -> Any:
        """The write coalescer of ``store`` (made on first use; one per store, dropped with the stores).

        A `ThreadWriteCoalescer` (hvcore._coalesce).
        """
        writer = self._writers.get(id(store))
        if writer is None or writer.owner is not store:
            from hvcore import _coalesce

            group, limit = (cast(Any, store).insert_group, self._options.pool_max)
            solo = getattr(store, "holds_session", None)  # its caller's own statement, never in a group (_coalesce)
            writer = _coalesce.ThreadWriteCoalescer(store.insert, group, limit, owner=store, solo=solo)
            self._writers[id(store)] = writer
        return writer

    def _reader(self, store: ServerStore) -> Any:
        """The read coalescer of ``store`` (made on first use; one per store, dropped with the stores).

        A `ThreadReadCoalescer` (hvcore._coalesce).
        """
        reader = self._readers.get(id(store))
        if reader is None or reader.owner is not store:
            from hvcore import _coalesce

            limit = self._options.pool_max
            solo = getattr(store, "holds_session", None)  # its caller's own statement, never in a batch (_coalesce)
            reader = _coalesce.ThreadReadCoalescer(store.fetch, store.fetch_many, limit, owner=store, solo=solo)
            self._readers[id(store)] = reader
        return reader

    def get_many(self, keys: Iterable[Key | int], *, read_from: str | None = None) -> dict[Key, Record]:
        """Records of many keys: one round trip per server, servers read concurrently; missing keys left out.

        ``read_from`` (``"primary"``/``"replica"``) overrides the datastore's for this call.
        """
        by_server = self._group_keys(keys)
        found: dict[Key, Record] = {}
        if self._router is not None and self._reads_replicas(read_from):
            by_server = self._get_many_replicas(by_server, found)
        elif read_from is not None:
            check_read_from(read_from)
        for _ in range(MAX_HOPS):
            stores = self._live()
            try:
                records = self._fetch_by_server(stores, by_server)
            except ShardMoved as moved:
                self._follow_moved(moved)
                by_server = self._group_keys([key for items in by_server.values() for _, key in items])
                continue
            return {**found, **{r.key: r for r in records}}
        raise self._too_many_hops(-1)

    def _get_many_replicas(
        self, by_server: dict[int, list[tuple[int, Key]]], found: dict[Key, Record]
    ) -> dict[int, list[tuple[int, Key]]]:
        """Read what standbys may serve into ``found``; return the keys left for the primaries, by server."""
        router = self._router
        assert router is not None
        timeline = current_timeline(self._timeline)
        rest: list[Key] = []
        jobs: list[tuple[int, ReplicaChoice, list[tuple[int, Key]]]] = []
        for index, items in by_server.items():
            choice = router.pick(index, {shard for shard, _ in items}, timeline)
            if choice is None:
                rest.extend((key for _, key in items))
                continue
            pinned = choice.pinned
            jobs.append((index, choice, [item for item in items if item[0] not in pinned] if pinned else items))
            rest.extend((key for shard, key in items if shard in pinned))
        if not jobs:
            return by_server
        if len(jobs) == 1:
            results = [self._replica_fetch(*jobs[0])]
        else:
            results = gather(*(spawn(self._replica_fetch, *job) for job in jobs))
        for (_, _, items), records in zip(jobs, results, strict=True):
            if records is None:
                rest.extend((key for _, key in items))
            else:
                found.update((r.key, r) for r in records)
        return self._group_keys(rest)

    def _replica_fetch(self, index: int, choice: ReplicaChoice, items: list[tuple[int, Key]]) -> list[Record] | None:
        """``fetch_many`` on a standby; None if it failed (the keys are then read from the primary)."""
        try:
            return _fetch_many_timed(choice.store, items)
        except ShardMoved as moved:
            self._follow_moved(moved)
        except Exception as exc:  # down, or anything a standby cannot answer: the primary decides
            assert self._router is not None
            self._router.failed(index, choice, exc)
        return None

    @property
    def read_from(self) -> str:
        """Where reads go unless a call says otherwise: ``"primary"`` or ``"replica"`` (the ``read_from`` option)."""
        return self._read_from

    @property
    def max_replica_lag(self) -> float:
        """Seconds a standby may be behind its primary and still serve reads (the ``max_replica_lag`` option)."""
        return self._config.max_replica_lag

    def _reads_replicas(self, read_from: str | None) -> bool:
        """True if a read with this ``read_from`` argument (None: the datastore's) may go to a standby."""
        if read_from is None:
            return self._read_from == "replica"
        return check_read_from(read_from) == "replica"

    def _note_write(self, shard_id: int, carried: bool = False) -> None:
        """Record a write to ``shard_id`` in the current timeline (read-your-writes), if its server has standbys.

        ``carried``: the write was one exchange of the store's that brings back the WAL position (put, update,
        replace, delete: `ReadRouter.note_write`); others cost a round trip for it.
        """
        router = self._router
        if router is not None and self._config.read_your_writes:
            index = self.shard_map.server_for(shard_id)
            if router.has_replicas(index):
                router.note_write(index, shard_id, current_timeline(self._timeline), carried=carried)

    def timeline(self, timeline: Timeline | None = None) -> TimelineScope:
        """A ``with`` block whose writes and reads use ``timeline`` (a new empty one if None) for read-your-writes.

        Outside such blocks the datastore uses one timeline for the whole process. Give each user or request its
        own, restored from and saved to their session with `Timeline.from_token` / `Timeline.token`::

            tl = Timeline.from_token(session.get("hv"), secret=KEY)
            with db.timeline(tl):
                ...
            session["hv"] = tl.token(secret=KEY)

        The block is bound to the current thread or asyncio task (a context variable); it yields the timeline.
        """
        return TimelineScope(timeline if timeline is not None else Timeline())

    def refresh_replicas(self) -> None:
        """Read every primary's and standby's WAL position now (reads otherwise refresh them in the background,
        at most every ``max_replica_lag / 4`` seconds, between 10 and 250 ms). Never raises for a server down."""
        if self._router is not None:
            self._live()
            self._router.refresh()

    def _fetch_by_server(
        self, stores: list[ServerStore], by_server: Mapping[int, Sequence[tuple[int, Key]]]
    ) -> list[Record]:
        """Each server's (shard, key) pairs read by its ``fetch_many``, the servers' round trips overlapping.

        The first server is read by the calling task or thread while the others run in spawned ones: measured by
        benchmarks/bench_concurrency.py (1000 keys, 64 shards, 2 servers, on 2 busy cores) this beat a thread per
        server and reading the servers in turn (docs/benchmarks.md). The first failure is raised; reads already
        spawned finish on their own and return their connections. A cancelled caller (an ``asyncio.timeout``, a
        ``TaskGroup`` sibling failing) cancels the spawned reads and waits until they have ended: a read nobody
        waits for must not queue for a connection or run its statements later.
        """
        order = list(by_server.items())
        if not order:
            return []

        def read(index: int, items: Sequence[tuple[int, Key]]) -> list[Record]:
            return _fetch_many_timed(stores[index], items)

        spawned = [spawn(read, index, items) for index, items in order[1:]]
        try:
            found = read(*order[0])
        except Exception:
            raise
        except BaseException:  # cancelled or interrupted: the other reads are nobody's work any more
            cancel(spawned)
            raise
        for records in gather(*spawned):
            found.extend(records)
        return found

    def update(self, key: Key | int, /, **data: Any) -> bool:
        """Merge ``data`` into the stored body; False if the key is not stored."""
        key = self.as_key(key)
        self.store_for(key.shard_id).check_data(data)
        done = self._on_shard(key.shard_id, lambda store: store.update(key.shard_id, key, data, merge=True), "update")
        if done and self._router is not None:
            self._note_write(key.shard_id, carried=True)
        return done

    def replace(self, key: Key | int, /, **data: Any) -> bool:
        """Replace the stored body with ``data`` (kind unchanged); False if the key is not stored."""
        key = self.as_key(key)
        self.store_for(key.shard_id).check_data(data)
        done = self._on_shard(key.shard_id, lambda store: store.update(key.shard_id, key, data, merge=False), "replace")
        if done and self._router is not None:
            self._note_write(key.shard_id, carried=True)
        return done

    def delete(self, key: Key | int) -> bool:
        """Delete the entity; False if the key was not stored."""
        key = self.as_key(key)
        done = self._on_shard(key.shard_id, lambda store: store.delete(key.shard_id, key), "delete")
        if done and self._router is not None:
            self._note_write(key.shard_id, carried=True)
        return done

    def _on_shard(self, shard_id: int, op: Callable[[ServerStore], _T], name: str) -> _T:
        """Run ``op(store)`` (operation ``name``) on the server owning ``shard_id``, following `ShardMoved` refusals."""
        for _ in range(MAX_HOPS):
            store = self._live()[self.shard_map.server_for(shard_id)]
            try:
                if not metrics.on:
                    return op(store)
                started = perf_counter()  # timed inline, as every operation is: the hot path of get, update, delete
                try:
                    done = op(store)
                except BaseException as exc:
                    metrics.operation(name, store, perf_counter() - started, exc, shard_id)
                    raise
                metrics.operation(name, store, perf_counter() - started, None, shard_id)
                return done
            except ShardMoved as moved:
                self._follow_moved(moved)
        raise self._too_many_hops(shard_id)

    def query(
        self,
        kind: int | None = None,
        where: Mapping[str, Any] | None = None,
        since: dt.datetime | Key | None = None,
        until: dt.datetime | Key | None = None,
        shards: Iterable[int] | None = None,
        limit: int | None = None,
        *,
        read_from: str | None = None,
    ) -> Iterator[Record]:
        """Records in key order (creation order) across shards and servers, streamed.

        ``where`` is an equality filter on body fields (answered from the body index if built:
        `create_body_index`; the same records either way); ``since`` (inclusive) and
        ``until`` (exclusive) are aware datetimes or keys, turned into key ranges; ``shards`` limits the
        shards read. Arguments are checked when this is called, before any I/O. A shard that moves while
        the query runs is followed: the stream resumes on its new server after the last key it yielded.

        A field with a secondary index of ``kind`` (`create_index`) also takes range filters, compared as the
        index's type: ``where={"age": {">=": 18, "<": 65}}`` (operators ``>``, ``>=``, ``<``, ``<=``). Their form
        is checked when this is called; that the field has an index of ``kind`` (`InvalidQuery` if not) when the
        iteration starts, after reading the index definitions and before any query runs.

        ``read_from`` (``"primary"``/``"replica"``) overrides the datastore's for this call; a standby failing
        mid-stream is left for the primary, which resumes after the last key yielded.
        """
        replicas = self._reads_replicas(read_from) and self._router is not None
        by_server, spec = self._plan_query(kind, where, since, until, shards, limit)
        equal, ranges = split_ranges(spec.where, spec.kind)  # {F: {">=": a}} → range filters, bound to indexes later
        if ranges:
            spec = dataclasses.replace(spec, where=equal)
        stores = self._live()
        if spec.where:
            for index in by_server:
                stores[index].check_data(spec.where)
        shard_ids = [s for ids in by_server.values() for s in ids]
        if spec.where or ranges:
            return self._query_indexed(shard_ids, spec, ranges, replicas)
        return self._query_following_moves(shard_ids, spec, replicas)

    def update_where(
        self,
        *,
        set: Mapping[str, Any],
        kind: int | None = None,
        where: Mapping[str, Any] | None = None,
        since: dt.datetime | Key | None = None,
        until: dt.datetime | Key | None = None,
        shards: Iterable[int] | None = None,
    ) -> int:
        """Merge ``set`` into the body of every record matching the filter, on every shard; the records changed.

        The filter is `query`'s, checked the same way before any I/O (``kind``, ``where`` with equality and, on
        indexed fields, range filters, ``since``/``until``, ``shards``); at least one of them must be given
        (`InvalidQuery` otherwise: to change every record say so with ``shards=range(8192)``); an empty ``where={}``
        is refused too, also beside other filters (it filters nothing: leave it out). ``set`` is checked
        as `update`'s body (`InvalidData`; it must name at least one field). A record's kind and key never change.

        **Not atomic across shards.** The work is cut into pieces of at most 16 shards per server (each piece one
        transaction: 64 relations locked at most, see docs/fanout.md); a piece commits or rolls back as a whole,
        pieces commit one after another, servers run concurrently. A concurrent reader may see some pieces done
        and others not. If a piece fails, the pieces before it stay committed and later pieces of that server do
        not run: the error raised carries a note with the records already changed (a lower bound if a connection
        was lost: a piece whose commit was sent may have committed unseen). Running the same call again
        finishes the job (merging the same fields again changes nothing). A shard moved meanwhile is followed.
        `DuplicateValue` if a unique index of ``kind`` would hold a value twice in a shard (that piece unchanged);
        otherwise `query`'s errors (`NotProvisioned`, `ServerUnavailable`, `ServerLimitReached`...).
        """
        if not isinstance(set, Mapping):
            raise InvalidData(f"set must be a mapping of field names to values, got {type(set).__name__}")
        if not set:
            raise InvalidData("set is empty: name at least one field to merge into the matching bodies")
        changes = dict(set)
        by_server, spec = self._plan_write_where("update_where", kind, where, since, until, shards)
        stores = self._live()
        for index in by_server:
            stores[index].check_data(changes)
        return self._write_where("update_where", by_server, spec, changes)

    def delete_where(
        self,
        *,
        kind: int | None = None,
        where: Mapping[str, Any] | None = None,
        since: dt.datetime | Key | None = None,
        until: dt.datetime | Key | None = None,
        shards: Iterable[int] | None = None,
    ) -> int:
        """Delete every record matching the filter, on every shard; the records deleted.

        The filter and its checks are `update_where`'s (at least one of ``kind``, ``where``, ``since``,
        ``until``, ``shards``), and so is the way it runs: pieces of at most 16 shards per server, each a
        transaction of its own, **not atomic across pieces**; after a failure the pieces before it stay deleted
        (the error's note says how many records), and running the call again deletes the rest.
        """
        by_server, spec = self._plan_write_where("delete_where", kind, where, since, until, shards)
        return self._write_where("delete_where", by_server, spec, None)

    def _plan_write_where(
        self,
        name: str,
        kind: int | None,
        where: Mapping[str, Any] | None,
        since: dt.datetime | Key | None,
        until: dt.datetime | Key | None,
        shards: Iterable[int] | None,
    ) -> tuple[dict[int, list[int]], QuerySpec]:
        """The shards per server and the bound filter of `update_where`/`delete_where` (checked as `query`'s)."""
        if isinstance(where, Mapping) and (not where):  # built from a request that named no filter, most likely
            raise InvalidQuery(
                f"{name}(where={{}}): an empty where filters nothing, so the call would write every record the other filters match: leave where out to mean that, or give the fields to match"
            )
        if kind is None and where is None and (since is None) and (until is None) and (shards is None):
            raise InvalidQuery(
                f"{name}() without a filter would write every record of every shard: give kind=, where=, since=/until= or shards= (shards=range(8192) to mean every shard)"
            )
        by_server, spec = self._plan_query(kind, where, since, until, shards, None)
        equal, ranges = split_ranges(spec.where, spec.kind)
        if ranges:
            spec = dataclasses.replace(spec, where=equal)
        stores = self._live()
        if spec.where:
            for index in by_server:
                stores[index].check_data(spec.where)
        if spec.where or ranges:
            catalog = self._index_catalog
            definitions: Mapping[tuple[int, str], IndexSpec] = catalog.definitions
            if catalog.stale((spec.kind, flt.field) for flt in ranges if spec.kind is not None):
                definitions = to_thread(catalog.load, stores)
            spec = dataclasses.replace(spec, filters=bind_filters(spec.kind, spec.where, ranges, definitions))
        return (by_server, spec)

    def _write_where(
        self, name: str, by_server: dict[int, list[int]], spec: QuerySpec, data: dict[str, Any] | None
    ) -> int:
        """Run a filter write on every server concurrently, following moved shards; the records written."""
        counts: dict[int, int] = {}  # rows written per shard, filled as pieces commit
        todo = [shard for ids in by_server.values() for shard in ids]
        try:
            for _ in range(MAX_HOPS):
                stores = self._live()
                jobs = [(stores[index], ids) for index, ids in self._group_shards(todo).items()]
                if len(jobs) == 1:
                    outcomes = [_write_outcome(name, jobs[0][0], jobs[0][1], spec, data, counts)]
                else:
                    outcomes = gather(
                        *(spawn(_write_outcome, name, store, ids, spec, data, counts) for store, ids in jobs)
                    )
                failed = next((e for e in outcomes if e is not None and (not isinstance(e, ShardMoved))), None)
                if failed is not None:
                    raise failed
                moved = [e for e in outcomes if isinstance(e, ShardMoved)]
                if not moved:
                    break
                for refusal in moved:
                    self._follow_moved(refusal)
                todo = [shard for shard in todo if shard not in counts]
            else:
                raise self._too_many_hops(todo[0])
        except BaseException as exc:
            if isinstance(exc, Exception):
                exc.add_note(
                    f"{name}: {sum(counts.values())} record(s) in {len(counts)} shard(s) were already written and committed before this error (pieces are not atomic together); running the call again finishes the job"
                )
            raise
        finally:
            if self._router is not None:
                for shard, count in counts.items():
                    if count:
                        self._note_write(shard)
        return sum(counts.values())

    def _query_indexed(
        self, shard_ids: list[int], spec: QuerySpec, ranges: tuple[FieldFilter, ...], replicas: bool = False
    ) -> Iterator[Record]:
        """A query filtering on body fields: range filters bound to the recorded indexes (read when stale) first."""
        catalog = self._index_catalog
        definitions: Mapping[tuple[int, str], IndexSpec] = catalog.definitions
        if catalog.stale((spec.kind, flt.field) for flt in ranges if spec.kind is not None):
            definitions = to_thread(catalog.load, self._live())
        filters = bind_filters(spec.kind, spec.where, ranges, definitions)
        stream = cast(
            Generator[Record, None, None],
            self._query_following_moves(shard_ids, dataclasses.replace(spec, filters=filters), replicas),
        )
        try:
            yield from stream
        finally:
            stream.close()  # its connections go back now, not when the stream is collected

    def _query_following_moves(self, shard_ids: list[int], spec: QuerySpec, replicas: bool = False) -> Iterator[Record]:
        last: int | None = None
        yielded = 0
        for _ in range(MAX_HOPS):
            run = self._resumed(spec, last, yielded)
            stores = self._live()
            if replicas:
                streams = self._replica_streams(shard_ids, run)
            else:
                groups = self._group_shards(shard_ids)
                streams = [stores[index].query(ids, run) for index, ids in groups.items()]
                if metrics.on:
                    streams = [
                        self._observed_stream(stores[i], stream) for i, stream in zip(groups, streams, strict=True)
                    ]
            merged = _merge(streams, run.limit)
            try:
                for record in merged:
                    yield record
                    yielded += 1
                    last = int(record.key)
                return
            except ShardMoved as moved:
                self._follow_moved(moved)
            except _ReplicaFailed as failed:  # resumed on the primaries after the last key yielded
                assert self._router is not None
                self._router.failed(failed.index, failed.choice, failed.error)
                replicas = False
            finally:
                merged.close()  # a generator left unfinished returns its connections now, not when collected
        raise self._too_many_hops(shard_ids[0])

    def _replica_streams(self, shard_ids: list[int], run: QuerySpec) -> list[Iterator[Record]]:
        """One stream per server: from a standby for the shards it may serve, from the primary for the rest."""
        router = self._router
        assert router is not None
        timeline = current_timeline(self._timeline)
        stores = self._live()
        streams: list[Iterator[Record]] = []
        for index, ids in self._group_shards(shard_ids).items():
            choice = router.pick(index, ids, timeline)
            if choice is not None:
                mine = [shard for shard in ids if shard not in choice.pinned]
                ids = [shard for shard in ids if shard in choice.pinned]
                replica_stream = choice.store.query(mine, run)
                if metrics.on:
                    replica_stream = cast(
                        Generator[Record, None, None], self._observed_stream(choice.store, replica_stream)
                    )
                streams.append(_from_replica(index, choice, replica_stream))
            if ids:
                primary_stream = stores[index].query(ids, run)
                streams.append(self._observed_stream(stores[index], primary_stream) if metrics.on else primary_stream)
        return streams

    def _next_key(self, shard_id: int) -> Key:
        key: Key = self.generator.next_key(shard_id)
        return key

    def _keys(self, shard_id: int, count: int) -> list[Key]:
        generator = self.generator
        if isinstance(generator, KeyGenerator):
            return self._new_keys(generator, shard_id, count)
        keys: list[Key] = []
        size = self.layout.sequence_size
        while len(keys) < count:
            keys.extend(generator.next_keys(shard_id, min(size, count - len(keys))))
        return keys

    def _log_duplicate(self, shard_id: int, key: Key) -> None:
        if self.logger is not None:
            self.logger.warning("key %s already stored in shard %s: retrying with fresh keys", key, shard_id)

    def _observed_stream(self, store: ServerStore, stream: Iterator[Record]) -> Iterator[Record]:
        """``stream``, the time spent waiting for its records recorded as one ``query`` operation on ``store``."""
        spent = 0.0
        error: BaseException | None = None
        try:
            while True:
                started = perf_counter()
                try:
                    record = next(stream, None)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    spent += perf_counter() - started
                if record is None:
                    return
                yield record
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            metrics.operation("query", store, spent, error)

    # -- operations ------------------------------------------------------------------------------------------

    @one_attempt_per_call
    def provision(self, progress: Callable[[int], None] | None = None) -> list[ProvisionReport]:
        """Create schemas, tables and indexes for every mapped shard on its server (idempotent, servers in parallel).

        Durable when it returns. ``progress(count)``, if given, is called as shards are done. A PostgreSQL backend
        first refuses shards holding the 2015 library's table or ids made with another layout (`ConfigError`);
        `ShardMapError` if a shard missing on its server holds rows on another server of the config (swapped
        lines), before anything is created.

        Index definitions (the body index too) and migrations are a deployment's, not a server's: before creating
        shards, what any server records is recorded on the servers that lack it (a server added to the config for a
        new shard range records nothing yet), so every new shard is created with the deployment's indexes (a unique
        one enforced there too) and migrations; each server's report notes what was recorded there. A server that
        had shards before it joined (provisioned on its own first) then gets them in those shards too: recorded
        migrations applied where missing (as `migrate`), recorded indexes built where missing (as `create_index`:
        CONCURRENTLY, resumable), noted in its report; a failure there (a duplicate value for a unique index, say)
        is a `MigrationError` naming the server, the shard and the command that completes the work.
        `MigrationError`, before anything is recorded or created, when the servers disagree: an index being dropped
        on one and active on another, different indexes on one field, different files under one migration version.
        """
        check_progress(progress)
        self.reload_placement()  # after a move, a shard is provisioned where it lives now, not where configured
        stores = self._live()
        self._check_homes(stores)
        if len(stores) == 1:
            return [stores[0].provision(self.shard_map.shards_of(0), progress)]
        targets = [(store, self.shard_map.shards_of(i)) for i, store in enumerate(stores)]
        # a deployment's definitions are deployment-wide: a server added for a new shard range records none yet
        shared: dict[str, list[str]] = to_thread(_schemaops.share_definitions, targets)
        spawned = [spawn(store.provision, self.shard_map.shards_of(i), progress) for i, store in enumerate(stores)]
        reports: list[ProvisionReport] = gather(*spawned)
        # a server that had shards before it joined: the definitions recorded there reach only shards made from now
        # on, so its existing shards are brought up to them here (migrations applied, indexes built CONCURRENTLY)
        completed: dict[str, list[str]] = {}
        if shared:
            self._index_catalog.invalidate()
            completed = to_thread(_schemaops.complete_definitions, targets, list(shared))
        for report in reports:
            report.notes[:0] = shared.pop(report.server, []) + completed.pop(report.server, [])
        return reports

    def _check_homes(self, stores: Sequence[ServerStore]) -> None:
        """`ShardMapError` before anything is created if a shard missing on the server the map gives it holds rows on
        another server of this config (server lines swapped, ranges edited wrongly): provisioning would create it
        empty beside its rows, and the application would read none of them. One catalog read per pair of servers
        (the row count only for the shards found elsewhere)."""
        problems: list[str] = []
        for index, store in enumerate(stores):
            mine = self.shard_map.shards_of(index)
            for other_index, other in enumerate(stores):
                if other_index == index or not mine:
                    continue
                elsewhere = {s: n for s, n in other.row_counts(mine).items() if n > 0}
                if not elsewhere:
                    continue
                here = store.row_counts(sorted(elsewhere))
                problems += [
                    f"shard {shard} is mapped to server #{index} ({store.label}), which does not have it, but its table with {rows:,} row(s) is on server #{other_index} ({other.label}): the [[servers]] lines may be swapped or their shard ranges edited wrongly; fix the config (nothing was created)"
                    for shard, rows in sorted(elsewhere.items())
                    if shard not in here
                ]
        if problems:
            raise ShardMapError(problems)

    @one_attempt_per_call
    def status(self, *, rows: str = "exact") -> list[dict[str, Any]]:
        """Per server: label, reachable, shards, pool stats, key collisions, rows (errors reported, not raised).

        ``rows="exact"`` counts every shard's rows (on PostgreSQL a ``count(*)`` of each shard table: a scan of
        every row); ``rows="estimated"`` reads them from the server's statistics instead (``n_live_tup``: one
        catalog query, no table read, approximate), as ``hv status --watch`` does; an entry says which in
        ``rows_estimated``. A backend without estimates counts exactly. `InvalidArgument` for another ``rows``.

        ``key_collisions`` counts this datastore's keys that another writer already held on that server's shards
        (each redrawn and stored under a fresh key); ``pool`` includes the commit-status checks of lost writes.
        A server with standbys also has ``replicas``: per standby its label, ``state`` (``in use``: within
        ``max_replica_lag``; ``lagging``; ``down``; ``unknown``), ``lag_seconds``, ``lag_bytes``, reads served and
        failed reads left for the primary (positions read anew first); and ``replica_reads_on_primary``: reads
        asking for a standby that the primary served (none within the bound, or read-your-writes).
        """
        if rows not in ("exact", "estimated"):
            raise InvalidArgument(
                f"status(rows={rows!r}): rows is 'exact' (count every row) or 'estimated' (statistics)"
            )
        out: list[dict[str, Any]] = []
        if self._router is not None:
            self._live()
            self._router.refresh(settle=True)
        stores = self._live()
        # every server counted at once: a server that does not answer (a locked table, say) costs operation_timeout
        # once, not once per server
        counted = gather(
            *(spawn(_server_rows, store, self.shard_map.shards_of(index), rows) for index, store in enumerate(stores))
        )
        for index, store in enumerate(stores):
            shards = self.shard_map.shards_of(index)
            entry: dict[str, Any] = {
                "server": store.label,
                "shards": format_ranges(shards),
                "shard_count": len(shards),
                "pool": store.stats(),
                "key_collisions": sum(self._collisions_by_shard.get(shard, 0) for shard in shards),
            }
            if self._router is not None and self._router.has_replicas(index):
                entry["replicas"] = self._router.describe(index)
                entry["replica_reads_on_primary"] = self._router.on_primary[index]
            estimated = rows == "estimated" and isinstance(store, SupportsRowEstimates)
            counts, exc = counted[index]
            if exc is not None:  # reported to the user as the server's state
                entry.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
            else:
                entry.update(
                    reachable=True,
                    rows=sum(counts.values()),
                    rows_estimated=estimated,
                    provisioned_shards=len(counts),
                    rows_per_shard=counts,
                )
            out.append(entry)
        return out

    # -- secondary indexes and migrations (the work is in hvcore._schemaops and the backends) ---------------------

    def _schema_targets(self) -> list[_schemaops.Target]:
        """Every server store with the shards it serves now (placement reloaded: moved shards count where they are)."""
        self.reload_placement()
        return [(store, self.shard_map.shards_of(index)) for index, store in enumerate(self._live())]

    def _moved_targets(self, targets: list[_schemaops.Target]) -> list[_schemaops.Target] | None:
        """After a schema operation: the targets again if a shard moved meanwhile (another process's move switched
        between this one reading placement and taking the servers' schema-change locks, so the operation missed it
        on both sides), else None. The operations are idempotent: running them again does what is left."""
        again = self._schema_targets()
        if [(id(store), list(shards)) for store, shards in again] == [
            (id(store), list(shards)) for store, shards in targets
        ]:
            return None
        return again

    @one_attempt_per_call
    def create_index(
        self, kind: int, field: str, *, type: str = "text", unique: bool = False, progress: SchemaProgress | None = None
    ) -> IndexReport:
        """Index body field ``field`` of ``kind`` in every shard of every server, online; resumable, idempotent.

        ``type`` is text, bigint, numeric, timestamptz or boolean: how values compare in range filters (see
        `query`); values that are not of the type are left out of the index and never match a range.
        ``unique=True`` makes the field unique among the kind's records of each shard (not across shards). On
        PostgreSQL each shard gets a partial expression index (``WHERE kind = K``) built with ``CREATE INDEX
        CONCURRENTLY``, one shard at a time per server (servers in parallel), so writes go on; the definition is
        recorded on every server first, so shards provisioned or moved there later get the index too. A rerun
        skips shards whose index is valid and rebuilds the INVALID ones an interrupted build leaves.
        ``progress(label, done, total)`` reports shards done. `InvalidKind`/`InvalidQuery` for bad arguments
        (before any I/O); `MigrationError` when a shard's build fails (a duplicate for ``unique``), naming it.
        """
        return self._create_index(IndexSpec(kind=kind, field=field, type=type, unique=unique), progress)

    @one_attempt_per_call
    def create_body_index(self, *, progress: SchemaProgress | None = None) -> IndexReport:
        """Index whole bodies in every shard of every server, online, for equality ``where`` filters; resumable.

        Without it (the default layout) a ``where`` reads every record of a shard's range that its other filters
        (``kind``, ``since``/``until``, an indexed field) leave, and checks each; with it each shard's GIN index
        (``jsonb_path_ops``; on hstore over ``hstore_to_jsonb(body)``) finds the matching records, and every write
        pays for updating it. Built like `create_index`: recorded on every server first (shards provisioned or
        moved there later get it too), then ``CREATE INDEX CONCURRENTLY`` one shard at a time per server (servers
        in parallel); a rerun skips valid indexes and rebuilds INVALID leftovers of an interrupted build. The
        report's ``index`` is `IndexSpec.body()`; `list_indexes` shows it. `MigrationError` names a shard whose
        build fails.
        """
        return self._create_index(IndexSpec.body(), progress)

    def _create_index(self, spec: IndexSpec, progress: SchemaProgress | None) -> IndexReport:
        targets = self._schema_targets()
        try:
            report: IndexReport = to_thread(_schemaops.create_index, targets, spec, progress)
            for _ in range(MAX_HOPS):
                moved = self._moved_targets(targets)
                if moved is None:
                    break
                targets = moved
                again: IndexReport = to_thread(_schemaops.create_index, targets, spec, None)
                report.built += again.built
                report.rebuilt += again.rebuilt
        finally:
            self._index_catalog.invalidate()
        return report

    @one_attempt_per_call
    def drop_index(self, kind: int, field: str, *, progress: SchemaProgress | None = None) -> IndexReport:
        """Drop the index on ``field`` of ``kind`` from every shard (``DROP INDEX CONCURRENTLY``) and forget it.

        Resumable: the definition is marked as being dropped first (range filters on it are then refused, new
        shards no longer get it), and removed once every shard is done. `InvalidQuery` if no such index is recorded.
        """
        if kind is None or field is None:  # typed callers cannot; the body index has its own call
            raise InvalidQuery(
                f"drop_index({kind!r}, {field!r}): an index on a field names its kind and field; drop the body index with drop_body_index()"
            )
        return self._drop_index(kind, field, progress)

    @one_attempt_per_call
    def drop_body_index(self, *, progress: SchemaProgress | None = None) -> IndexReport:
        """Drop the body index (`create_body_index`) from every shard (``DROP INDEX CONCURRENTLY``) and forget it.

        Resumable as `drop_index`: marked as being dropped first (new shards no longer get it), forgotten once every
        shard is done. Also drops the index from shards that have it unrecorded (provisioned by a release that gave
        every shard one); a datastore without it is left as it is (the report's ``dropped`` is 0).
        """
        return self._drop_index(None, None, progress)

    def _drop_index(self, kind: int | None, field: str | None, progress: SchemaProgress | None) -> IndexReport:
        targets = self._schema_targets()
        try:
            report: IndexReport = to_thread(_schemaops.drop_index, targets, kind, field, progress)
            for _ in range(MAX_HOPS):
                moved = self._moved_targets(targets)
                if moved is None:
                    break
                targets = moved
                report.dropped += to_thread(_schemaops.drop_built, targets, report.index)
        finally:
            self._index_catalog.invalidate()
        return report

    @one_attempt_per_call
    def list_indexes(self) -> list[IndexInfo]:
        """Every recorded index with the shards that have it valid, INVALID (an interrupted build) or not at all."""
        targets = self._schema_targets()
        infos: list[IndexInfo] = to_thread(_schemaops.list_indexes, targets)
        return infos

    @one_attempt_per_call
    def migrate(
        self, path: str | Path, *, dry_run: bool = False, progress: SchemaProgress | None = None, wait: float = 0.0
    ) -> MigrationReport:
        """Apply the numbered SQL files of directory ``path`` (``0001_name.sql``, ...) to every shard that lacks them.

        Files run in version order; each runs in every shard in its own transaction with ``SET LOCAL search_path``
        to the shard's schema (write unqualified names), and is recorded in that shard's version row in the same
        transaction, so an interruption at any point leaves each shard with or without the file, never half of it,
        and a rerun goes on where it stopped. A file of statements that cannot run in a transaction (``CREATE INDEX
        CONCURRENTLY``, ``VACUUM``...) runs them outside one (only such statements in that file: write them with
        ``IF NOT EXISTS``). Migrations are recorded on every server first: shards provisioned or moved later get them.
        ``dry_run`` reports what would run and changes nothing. Only one schema change runs per server at a time:
        another one waits up to ``wait`` seconds, then `MigrationError` names the holder. Bad files (names,
        duplicates, syntax, an applied file edited since) raise `MigrationError` before any SQL; a statement failing
        on a shard raises `MigrationError` naming the shard, file and statement (that shard rolled back, the
        shards done before it keep the file). ``progress(file, done, total)`` reports shards done per file.
        """
        migrations = load_migrations(path)
        targets = self._schema_targets()
        report: MigrationReport = to_thread(
            lambda: _schemaops.migrate(targets, migrations, dry_run=dry_run, progress=progress, wait=wait)
        )
        for _ in range(0 if dry_run else MAX_HOPS):
            moved = self._moved_targets(targets)
            if moved is None:
                break
            targets = moved
            again: MigrationReport = to_thread(_schemaops.migrate_again, targets, migrations, wait)
            _schemaops.add_rerun(report, again)
        return report

    @one_attempt_per_call
    def migration_status(self, path: str | Path | None = None) -> MigrationStatus:
        """Migration versions recorded on the servers (and files of ``path``, if given), with the shards behind."""
        migrations = load_migrations(path) if path is not None else None
        targets = self._schema_targets()
        status: MigrationStatus = to_thread(_schemaops.migration_status, targets, migrations)
        return status


class _ReplicaFailed(HypervaultError):
    """A standby's query stream failed (internal: the query resumes on the primaries)."""

    def __init__(self, index: int, choice: ReplicaChoice, error: Exception) -> None:
        super().__init__(f"standby {getattr(choice.store, 'label', '?')} failed: {type(error).__name__}")
        self.index, self.choice, self.error = (index, choice, error)


def _from_replica(
    index: int, choice: ReplicaChoice, stream: Generator[Record, None, None]
) -> Generator[Record, None, None]:
    """``stream`` from a standby, its failures (but `ShardMoved`) raised as `_ReplicaFailed`."""
    try:
        yield from stream
    except ShardMoved:
        raise
    except Exception as exc:
        raise _ReplicaFailed(index, choice, exc) from exc
    finally:
        stream.close()


def _server_rows(store: ServerStore, shards: list[int], rows: str) -> tuple[dict[int, int], Exception | None]:
    """One server's rows per shard for `Datastore.status` (estimated if asked and the backend can), or the
    error that stopped the count (returned: `status` reports it as the server's state)."""
    try:
        if rows == "estimated" and isinstance(store, SupportsRowEstimates):
            return (cast(SupportsRowEstimates, store).row_estimates(shards), None)
        return (store.row_counts(shards), None)
    except Exception as exc:
        return ({}, exc)


def _write_outcome(
    name: str,
    store: ServerStore,
    shard_ids: list[int],
    spec: QuerySpec,
    data: dict[str, Any] | None,
    counts: dict[int, int],
) -> BaseException | None:
    """One server's part of a filter write (`Datastore.update_where`): None, or the exception it raised
    (returned, so that every server's part is over before the caller raises or resumes moved shards)."""
    started = perf_counter()
    try:
        _write_on(store, shard_ids, spec, data, counts)
    except BaseException as exc:  # re-raised by the caller
        if metrics.on:
            metrics.operation(name, store, perf_counter() - started, exc)
        return exc
    if metrics.on:
        metrics.operation(name, store, perf_counter() - started)
    return None


def _write_on(
    store: ServerStore, shard_ids: list[int], spec: QuerySpec, data: dict[str, Any] | None, counts: dict[int, int]
) -> None:
    """A filter write on one server: the store's own (`SupportsFilterWrites`), or, for a backend without
    one, the matching keys read with ``query`` and written one by one."""
    if isinstance(store, SupportsFilterWrites):
        if data is None:
            store.delete_where(shard_ids, spec, counts)
        else:
            store.update_where(shard_ids, spec, data, counts)
        return
    keys = [record.key for record in store.query(shard_ids, spec)]
    for key in keys:
        write = store.delete(key.shard_id, key) if data is None else store.update(key.shard_id, key, data, merge=True)
        counts[key.shard_id] = counts.get(key.shard_id, 0) + int(write)


def _first(stream: Iterator[Record]) -> Record | BaseException | None:
    """The first record of ``stream`` (None if empty), or the exception getting it raised (to re-raise once every
    stream's first step is over: none of them may still be running when the streams are closed)."""
    try:
        return next(stream, None)
    except BaseException as exc:  # re-raised by _merge
        return exc


def _merge(streams: list[Iterator[Record]], limit: int | None) -> Generator[Record, None, None]:
    """Merge key-ordered streams lazily (a heap of each stream's next record), at most ``limit`` records."""
    try:
        if len(streams) == 1:
            emitted = 0
            if limit != 0:
                for record in streams[0]:
                    yield record
                    emitted += 1
                    if emitted == limit:
                        break
            return
        heap: list[tuple[int, int, Record]] = []
        # each server's first round trip (a pipeline of every piece of its shards) runs concurrently with the others'
        firsts = gather(*(spawn(_first, stream) for stream in streams))
        failed = next((outcome for outcome in firsts if isinstance(outcome, BaseException)), None)
        if failed is not None:
            raise failed
        for index, first in enumerate(firsts):
            if isinstance(first, Record):
                heap.append((int(first.key), index, first))
        heapq.heapify(heap)
        emitted = 0
        while heap and (limit is None or emitted < limit):
            _, index, record = heap[0]
            yield record
            emitted += 1
            following = next(streams[index], None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (int(following.key), index, following))
    finally:
        interrupted: BaseException | None = None
        for stream in streams:  # every stream is closed (returning its connection) even if one close is interrupted
            close = getattr(stream, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:
                    interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
