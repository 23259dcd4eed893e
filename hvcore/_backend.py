"""What a storage backend implements: one `ServerStore` per physical server (façade layer, no I/O here)."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hvcore import errors as _errors
from hvcore._key import Key, KeyLayout
from hvcore._schemadefs import FieldFilter, IndexSpec, Migration
from hvcore._show import show_value

__all__ = [
    "AdoptionReport",
    "AsyncBackendFactory",
    "AsyncServerStore",
    "AsyncStoreTransaction",
    "AsyncSupportsFilterWrites",
    "AsyncSupportsRowEstimates",
    "AsyncSupportsTransactions",
    "AsyncSupportsWorkerLease",
    "BackendFactory",
    "BackendOptions",
    "IndexBuilder",
    "Migrator",
    "MoveProgress",
    "MoveReport",
    "NodeShard",
    "ProvisionReport",
    "QuerySpec",
    "Record",
    "ServerStore",
    "ShardCluster",
    "ShardMover",
    "StoreTransaction",
    "SupportsFilterWrites",
    "SupportsIndexes",
    "SupportsMigrations",
    "SupportsRowEstimates",
    "SupportsShardCluster",
    "SupportsShardMoves",
    "SupportsTransactions",
    "SupportsWorkerLease",
    "check_body",
    "check_json",
    "check_text",
    "iter_fields",
    "json_default",
    "json_equal",
    "show_value",
]


@dataclass(frozen=True, slots=True)
class Record:
    """One stored entity: its key, its kind and its body."""

    key: Key
    kind: int
    data: dict[str, Any]


Record.__module__ = "hvcore"


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendOptions:
    """Settings every backend receives from the `Datastore`."""

    pool_max: int = 10
    pool_block_timeout: float = 5.0
    logger: logging.Logger | None = None
    layout: KeyLayout = KeyLayout.DEFAULT
    row_factory: str = "row"  # "row" (hvcore.Row), "dict" or "tuple": rows handed out by get_connection()/cursor()
    operation_timeout: float | None = 60.0  # client-side bound on one exchange with a server (None: wait forever)
    values: str | None = None  # "jsonb" or "text": value rules asked for (the memory backend's); None: the backend's
    log_values: bool = False  # log bound values with each statement (user data: off unless asked)


BackendOptions.__module__ = "hvcore"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuerySpec:
    """A validated query; every filter is optional, ``low``/``high`` are inclusive key bounds.

    ``filters`` are typed filters on indexed fields (range filters, and equality hints that ``where`` implies),
    bound to the index definitions of ``kind`` (see `FieldFilter`).
    """

    kind: int | None = None
    where: Mapping[str, Any] | None = None
    low: int | None = None
    high: int | None = None
    limit: int | None = None
    filters: tuple[FieldFilter, ...] = ()

    def matches(self, record: Record, *, text_values: bool = False) -> bool:
        """True if ``record`` passes every filter: the reference semantics every backend must match.

        ``text_values``: the backend stores text-only bodies (typed filters then read strings as their type).
        """
        if self.kind is not None and record.kind != self.kind:
            return False
        if self.low is not None and record.key < self.low:
            return False
        if self.high is not None and record.key > self.high:
            return False
        data = record.data
        if self.where and not all(name in data and json_equal(data[name], value) for name, value in self.where.items()):
            return False
        return all(flt.matches(data, text_values=text_values) for flt in self.filters)


QuerySpec.__module__ = "hvcore"


@dataclass(slots=True)
class ProvisionReport:
    """What one `ServerStore.provision` call did."""

    server: str
    shards: int = 0
    created: int = 0  # shards whose schema/table had to be created
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class ServerStore(Protocol):
    """One physical server as a backend sees it; the `Datastore` routes shards to these.

    Connections handed out by `get_connection` must be returned with `put_connection`; returning one twice or
    to the wrong store raises `ConnectionMisuse`. Methods taking ``shard_id`` operate in that shard's schema.
    """

    @property
    def label(self) -> str:
        """A name for messages and reprs: host/port/db, never a password."""
        ...

    def open(self) -> None:
        """Create pools (idempotent)."""
        ...

    def close(self) -> None:
        """Close every pooled connection (idempotent)."""
        ...

    def after_fork_in_child(self) -> None:
        """Forget pools inherited over fork without closing the parent's sessions; next use reopens."""
        ...

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Raise `InvalidData` naming the field if ``data`` cannot be stored as given (before any SQL)."""
        ...

    def get_connection(self, shard_id: int) -> Any:
        """Borrow a connection whose search path is the shard's schema."""
        ...

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        ...

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is currently borrowed from this store."""
        ...

    def cursor(self, shard_id: int) -> AbstractContextManager[Any]:
        """A cursor on a borrowed connection; commit on success, rollback on error, connection always returned."""
        ...

    def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one entity; raise `DuplicateKey` if the key exists."""
        ...

    def fetch(self, shard_id: int, key: Key) -> Record | None:
        """The entity stored under ``key``, or None."""
        ...

    def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """Store many entities of one shard in one transaction (all or nothing); `DuplicateKey` if a key exists.

        The error's ``keys`` name the batch's taken keys when the backend can tell (the façade redraws only those).
        """
        ...

    def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """Records stored under these (shard, key) pairs in one round trip; missing keys are left out."""
        ...

    def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge ``data`` into the stored body, or replace it (``merge=False``); False if the key is not stored."""
        ...

    def delete(self, shard_id: int, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        ...

    def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> Iterator[Record]:
        """Records of these shards matching ``spec`` in key order, streamed rather than loaded at once."""
        ...

    def provision(self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> ProvisionReport:
        """Create schemas, tables, indexes (and extensions) for these shards; idempotent."""
        ...

    def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Rows stored per shard (only shards that exist)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Pool figures: size, available, borrowed, waiting."""
        ...


MoveProgress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called at each phase start (done=0) and as work advances."""


@dataclass(slots=True, kw_only=True)
class MoveReport:
    """What one shard move did: servers, rows, timings (the write pause is ``pause_seconds``).

    ``engine`` names a distributed database that moved the shard between its nodes (``"Citus 13.0.5"``; source and
    target are then nodes, ``host:port``), empty for hypervault's own move between servers.
    """

    shard_id: int
    source: str
    target: str
    engine: str = ""
    version: int = 0
    rows: int = 0
    copy_seconds: float = 0.0
    catchup_rounds: int = 0
    catchup_rows: int = 0
    fence_attempts: int = 0
    pause_seconds: float = 0.0
    checksum: str = ""
    dropped_source: bool = False
    resumed_from: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {name: getattr(self, name) for name in self.__slots__}


class ShardMover(Protocol):
    """A backend's shard-move operations with one server as the source (``store.shard_mover()``)."""

    def placement(self) -> dict[int, tuple[str, int]]:
        """Shard → (server label, version) recorded on this server (empty if none moved)."""
        ...

    def record_placement(self, shard_id: int, server: str, version: int, identity: str = "") -> None:
        """Record that ``shard_id`` lives on ``server`` since ``version`` (idempotent, keeps the highest);
        ``identity``: the server's `database_identity`, so processes naming it otherwise match the record."""
        ...

    def move_state(self, shard_id: int) -> dict[str, Any] | None:
        """The unfinished move of ``shard_id`` recorded on this server (its source), or None."""
        ...

    def database_identity(self) -> str:
        """Which database this server entry reaches: equal for two entries that name one database under two names
        (``127.0.0.1`` and ``localhost``, a copied entry), different for distinct databases."""
        ...

    def move_to(self, shard_id: int, target: Any, *, drop_source: bool, progress: MoveProgress | None) -> MoveReport:
        """Move ``shard_id`` from this server to ``target`` online (resuming an interrupted move)."""
        ...

    def rollback(self, shard_id: int, target: Any) -> str:
        """Undo an unfinished move before its switch; the shard stays here. Returns what was undone."""
        ...

    def drop_source(self, shard_id: int) -> bool:
        """Drop the copy a finished move left on this server; False if there was none."""
        ...


@runtime_checkable
class SupportsShardMoves(Protocol):
    """A `ServerStore` whose backend can move shards between servers online (the PostgreSQL ones)."""

    def shard_mover(self) -> ShardMover:
        """Shard-move operations with this server as the source (or holder of placement records)."""
        ...


@runtime_checkable
class SupportsWorkerLease(Protocol):
    """A `ServerStore` that can lease worker numbers (``Datastore(worker="lease")``), see `hvcore.WorkerGrant`."""

    def lease_worker(
        self, *, bits: int = 4, namespace: str = "default", ttl: float = 10.0, acquire_timeout: float = 0.0
    ) -> Any:
        """Lease a free worker number (a started `WorkerGrant` with ``close()``/``aclose()``) until closed."""
        ...


@dataclass(frozen=True, slots=True)
class NodeShard:
    """Where a distributed database keeps one logical shard: its node (``host:port``) and size in bytes."""

    shard_id: int
    node: str
    size_bytes: int


@dataclass(slots=True, kw_only=True)
class AdoptionReport:
    """What one adoption of a config's shards into a distributed database did (``hv citus adopt``).

    ``adopted``: shards handed over by this run; ``already``: adopted by an earlier (interrupted) run; ``empty``:
    shards no server held, created empty; ``relocated``: empty placements the engine put on another node first and
    that were moved (no rows) before the hand-over; ``merged_rows``: rows written through the engine while a shard
    was being adopted, merged into it; ``rows``: rows verified through the coordinator (count and checksum);
    ``phases``: seconds per phase.
    """

    coordinator: str
    engine: str
    shards: int = 0
    adopted: int = 0
    already: int = 0
    empty: int = 0
    relocated: int = 0
    merged_rows: int = 0
    rows: int = 0
    verified: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # config server label → node (host:port)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (for ``--json``)."""
        return {name: getattr(self, name) for name in self.__slots__}


class ShardCluster(Protocol):
    """The distributed database one configured server fronts (a Citus coordinator): its nodes hold the shards.

    Got from ``store.shard_cluster()`` (`SupportsShardCluster`). Moves between its nodes are the engine's own
    (``citus_schema_move``), not hypervault's copy-and-switch.
    """

    def describe(self) -> str:
        """The engine and its version, e.g. ``"Citus 13.0.5"``."""
        ...

    def nodes(self) -> list[str]:
        """The nodes that can hold shards, as ``host:port``."""
        ...

    def placement(self, shard_ids: Sequence[int]) -> dict[int, NodeShard]:
        """Where each of these shards lives (shards the engine does not distribute are left out)."""
        ...

    def move_to_node(self, shard_id: int, node: str, *, progress: MoveProgress | None) -> MoveReport:
        """Move ``shard_id`` to ``node`` (``host:port``) with the engine's online move; `MoveError` if it cannot."""
        ...

    def adopt(
        self,
        holders: Mapping[int, Any],
        *,
        progress: MoveProgress | None = None,
        batch: int = 64,
    ) -> AdoptionReport:
        """Hand over shards that plain servers hold (shard → that server's store) without copying their rows.

        The servers must already be nodes of the cluster (or ready to be added). Resumable: run it again after an
        interruption. Raises `ConfigError` for a server or engine that cannot take part, `MoveError` when a
        shard cannot be handed over or verified.
        """
        ...


@runtime_checkable
class AsyncSupportsWorkerLease(Protocol):
    """The asyncio form of `SupportsWorkerLease`."""

    async def lease_worker(
        self, *, bits: int = 4, namespace: str = "default", ttl: float = 10.0, acquire_timeout: float = 0.0
    ) -> Any:
        """Lease a free worker number (a started `WorkerGrant` with ``close()``/``aclose()``) until closed."""
        ...


class IndexBuilder(Protocol):
    """A backend's secondary-index work on one server (``store.index_builder()``); blocking calls.

    Indexes are recorded per server (so shards provisioned or moved there later get them) and built shard by shard.
    ``progress(count)`` is called as shards are done; ``stop()`` returning True asks the work to end after the
    current shard (another server failed). A ``spec`` may be `IndexSpec.body()` (``create_body_index``: kind and
    field None); a backend that needs no structure for it records it like any other and builds nothing (memory).
    """

    def definitions(self) -> list[IndexSpec]:
        """Every index recorded on this server (``state`` "active", or "dropping" while a drop is unfinished)."""
        ...

    def record(self, spec: IndexSpec) -> None:
        """Record ``spec`` as active (idempotent); `MigrationError` if (kind, field) has another definition."""
        ...

    def build(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> dict[str, int]:
        """Build the index in these shards one at a time, online; counts ``built``, ``rebuilt``, ``present``."""
        ...

    def mark_dropping(self, spec: IndexSpec) -> None:
        """Record that ``spec`` is being dropped (new shards no longer get it; queries stop using it)."""
        ...

    def drop(
        self, spec: IndexSpec, shard_ids: Sequence[int], progress: Callable[[int], None], stop: Callable[[], bool]
    ) -> int:
        """Drop the index from these shards, online; returns how many had it."""
        ...

    def forget(self, spec: IndexSpec) -> None:
        """Remove the definition (after the drop finished everywhere)."""
        ...

    def states(self, shard_ids: Sequence[int]) -> tuple[list[int], dict[str, tuple[list[int], list[int]]]]:
        """Shards among ``shard_ids`` whose table lives here, and per index name its (valid, invalid) shards."""
        ...


@runtime_checkable
class SupportsIndexes(Protocol):
    """A `ServerStore` or `AsyncServerStore` whose backend has secondary indexes on body fields."""

    def index_builder(self) -> IndexBuilder:
        """Secondary-index operations on this server (blocking calls)."""
        ...


class Migrator(Protocol):
    """A backend's versioned schema migrations on one server (``store.migrator()``); blocking calls.

    Every file runs in each shard in its own transaction, the shard's schema first on the search path, and is
    recorded there in the same transaction; the migrations themselves are recorded per server, so shards
    provisioned or moved there later get them.
    """

    def check(self, migrations: Sequence[Migration]) -> list[tuple[bool, list[str]]]:
        """Parse every file before any SQL: per file (runs in a transaction?, its statements); `MigrationError`."""
        ...

    def lock(self, wait: float) -> AbstractContextManager[None]:
        """Hold this server's schema-change lock; wait up to ``wait`` s, then `MigrationError` naming the holder."""
        ...

    def registry(self) -> dict[int, tuple[str, str]]:
        """Migrations recorded on this server: version → (file name, checksum)."""
        ...

    def recorded(self) -> list[Migration]:
        """Migrations recorded on this server with their text, in version order (what provisioning replays)."""
        ...

    def record(self, migrations: Sequence[Migration]) -> None:
        """Record these migrations on this server (already-recorded versions with the same checksum are kept)."""
        ...

    def forget(self, versions: Sequence[int]) -> None:
        """Remove recorded migrations no shard applied (their files were withdrawn)."""
        ...

    def applied(self, shard_ids: Sequence[int]) -> dict[int, set[int]]:
        """Versions applied per shard, for the shards among ``shard_ids`` whose table lives on this server."""
        ...

    def apply(
        self,
        migration: Migration,
        shard_ids: Sequence[int],
        progress: Callable[[int], None],
        stop: Callable[[], bool],
    ) -> int:
        """Apply ``migration`` to these shards (one transaction each); `MigrationError` naming shard and statement."""
        ...


@runtime_checkable
class SupportsMigrations(Protocol):
    """A `ServerStore` or `AsyncServerStore` whose backend runs versioned SQL migrations (the PostgreSQL ones)."""

    def migrator(self) -> Migrator:
        """Migration operations on this server (blocking calls)."""
        ...


class StoreTransaction(Protocol):
    """One open transaction of a backend, bound to one shard (what `SupportsTransactions.transaction` yields).

    Every method runs in that transaction; the façade (`hvcore.ShardTransaction`) has checked the arguments, that
    keys belong to the shard and that the transaction may write. Errors are the store's typed ones (`ShardMoved`,
    `ServerUnavailable`, `DuplicateValue`, `TransactionConflict`...); an error from the server aborts the
    transaction, as in PostgreSQL, which `aborted` then reports.
    """

    def insert(self, key: Key, kind: int, data: Mapping[str, Any]) -> bool:
        """Store one entity; False (and nothing written, the transaction still usable) if the key is taken."""
        ...

    def insert_many(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> bool:
        """Store every row or none; False (nothing written, the transaction still usable) if a key is taken."""
        ...

    def fetch(self, key: Key) -> Record | None:
        """The entity under ``key`` as this transaction sees it (its own writes included), or None."""
        ...

    def fetch_many(self, keys: Sequence[Key]) -> list[Record]:
        """The entities under these keys as this transaction sees them; missing keys are left out."""
        ...

    def update(self, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge ``data`` into the body, or replace it (``merge=False``); False if the key is not stored."""
        ...

    def delete(self, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        ...

    def query(self, spec: QuerySpec) -> Iterator[Record]:
        """The shard's records matching ``spec`` in key order, as this transaction sees them, streamed."""
        ...

    def cursor(self) -> AbstractContextManager[Any]:
        """A cursor in the transaction, the shard's schema first on the search path (no commit when it closes)."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A savepoint: released when the block ends, rolled back to (and released) on an exception."""
        ...

    def aborted(self) -> bool:
        """True if an error aborted the transaction: only rolling back (to a savepoint) is possible (no I/O)."""
        ...


@runtime_checkable
class SupportsTransactions(Protocol):
    """A `ServerStore` whose backend runs transactions on one shard (PostgreSQL, memory): ``Datastore.transaction``."""

    def transaction(
        self, shard_id: int, *, isolation_level: str | None = None, read_only: bool = False
    ) -> AbstractContextManager[StoreTransaction]:
        """Begin a transaction on ``shard_id``: committed when the block ends, rolled back on an exception.

        ``isolation_level``: None (the server's default), ``"read committed"``, ``"repeatable read"`` or
        ``"serializable"`` (checked by the façade). The shard context travels with the transaction (PostgreSQL:
        ``SET LOCAL search_path`` and schema-qualified statements), so it holds through PgBouncer in transaction mode.
        Raises `TransactionConflict` when the commit is refused to keep transactions isolated, `ServerUnavailable`
        when the server is lost (during the commit: outcome unknown), `TransactionError` when the block ends
        normally although an error aborted the transaction (it is rolled back).
        """
        ...


class AsyncStoreTransaction(Protocol):
    """The asyncio form of `StoreTransaction`."""

    async def insert(self, key: Key, kind: int, data: Mapping[str, Any]) -> bool:
        """Store one entity; False (and nothing written, the transaction still usable) if the key is taken."""
        ...

    async def insert_many(self, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> bool:
        """Store every row or none; False (nothing written, the transaction still usable) if a key is taken."""
        ...

    async def fetch(self, key: Key) -> Record | None:
        """The entity under ``key`` as this transaction sees it (its own writes included), or None."""
        ...

    async def fetch_many(self, keys: Sequence[Key]) -> list[Record]:
        """The entities under these keys as this transaction sees them; missing keys are left out."""
        ...

    async def update(self, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge ``data`` into the body, or replace it (``merge=False``); False if the key is not stored."""
        ...

    async def delete(self, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        ...

    def query(self, spec: QuerySpec) -> AsyncIterator[Record]:
        """The shard's records matching ``spec`` in key order, as this transaction sees them, streamed."""
        ...

    def cursor(self) -> AbstractAsyncContextManager[Any]:
        """A cursor in the transaction, the shard's schema first on the search path (no commit when it closes)."""
        ...

    def savepoint(self) -> AbstractAsyncContextManager[None]:
        """A savepoint: released when the block ends, rolled back to (and released) on an exception."""
        ...

    def aborted(self) -> bool:
        """True if an error aborted the transaction: only rolling back (to a savepoint) is possible (no I/O)."""
        ...


@runtime_checkable
class AsyncSupportsTransactions(Protocol):
    """The asyncio form of `SupportsTransactions`."""

    def transaction(
        self, shard_id: int, *, isolation_level: str | None = None, read_only: bool = False
    ) -> AbstractAsyncContextManager[AsyncStoreTransaction]:
        """Begin a transaction on ``shard_id``: committed when the block ends, rolled back on an exception."""
        ...


@runtime_checkable
class SupportsFilterWrites(Protocol):
    """A `ServerStore` that updates or deletes the records matching a filter itself (``Datastore.update_where``).

    A store without these methods still serves those calls: the `Datastore` then queries the matching keys and
    writes them one by one.
    """

    def update_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any], counts: dict[int, int]
    ) -> int:
        """Merge ``data`` into every record of these shards matching ``spec`` (``spec.limit`` is None); the rows
        changed. In pieces that each commit as a whole; ``counts`` receives the rows written per shard as each
        piece commits, so a caller knows what is done when a later piece fails."""
        ...

    def delete_where(self, shard_ids: Sequence[int], spec: QuerySpec, counts: dict[int, int]) -> int:
        """Delete every record of these shards matching ``spec``; the rows deleted (``counts`` as `update_where`)."""
        ...


@runtime_checkable
class AsyncSupportsFilterWrites(Protocol):
    """The asyncio form of `SupportsFilterWrites`."""

    async def update_where(
        self, shard_ids: Sequence[int], spec: QuerySpec, data: Mapping[str, Any], counts: dict[int, int]
    ) -> int:
        """As `SupportsFilterWrites.update_where`."""
        ...

    async def delete_where(self, shard_ids: Sequence[int], spec: QuerySpec, counts: dict[int, int]) -> int:
        """As `SupportsFilterWrites.delete_where`."""
        ...


@runtime_checkable
class SupportsShardCluster(Protocol):
    """A `ServerStore` that can tell whether its server fronts a distributed database (PostgreSQL: Citus)."""

    def shard_cluster(self) -> ShardCluster | None:
        """The distributed database behind this server, or None when it is a plain server (asks the server once).

        Raises `ConfigError` when the server runs an engine version hypervault does not support.
        """
        ...


@runtime_checkable
class SupportsRowEstimates(Protocol):
    """A `ServerStore` that can estimate rows per shard without reading the shards' tables (``hv status --watch``)."""

    def row_estimates(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Approximate rows per existing shard (only shards that exist), from the server's statistics: no table is
        scanned or locked, so it costs one catalog query however many shards and rows there are."""
        ...


@runtime_checkable
class AsyncSupportsRowEstimates(Protocol):
    """The asyncio twin of `SupportsRowEstimates`."""

    async def row_estimates(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """As `SupportsRowEstimates.row_estimates`."""
        ...


BackendFactory = Callable[[Mapping[str, Any], BackendOptions], ServerStore]
"""Builds the store of one server from its connection settings (the config dict without ``shards``)."""


@runtime_checkable
class AsyncServerStore(Protocol):
    """The asyncio twin of `ServerStore`: the same methods, awaitable where they do I/O."""

    @property
    def label(self) -> str:
        """A name for messages and reprs: host/port/db, never a password."""
        ...

    async def open(self) -> None:
        """Create pools (idempotent)."""
        ...

    async def close(self) -> None:
        """Close every pooled connection (idempotent)."""
        ...

    def after_fork_in_child(self) -> None:
        """Forget pools inherited over fork without closing the parent's sessions."""
        ...

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Raise `InvalidData` naming the field if ``data`` cannot be stored as given (before any SQL)."""
        ...

    async def get_connection(self, shard_id: int) -> Any:
        """Borrow a connection whose search path is the shard's schema."""
        ...

    async def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        ...

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is currently borrowed from this store."""
        ...

    def cursor(self, shard_id: int) -> AbstractAsyncContextManager[Any]:
        """A cursor on a borrowed connection; commit on success, rollback on error, connection always returned."""
        ...

    async def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store one entity; raise `DuplicateKey` if the key exists."""
        ...

    async def fetch(self, shard_id: int, key: Key) -> Record | None:
        """The entity stored under ``key``, or None."""
        ...

    async def insert_many(self, shard_id: int, rows: Sequence[tuple[Key, int, Mapping[str, Any]]]) -> None:
        """Store many entities of one shard in one transaction (all or nothing)."""
        ...

    async def fetch_many(self, items: Sequence[tuple[int, Key]]) -> list[Record]:
        """Records stored under these (shard, key) pairs in one round trip."""
        ...

    async def update(self, shard_id: int, key: Key, data: Mapping[str, Any], *, merge: bool) -> bool:
        """Merge into or replace the stored body; False if the key is not stored."""
        ...

    async def delete(self, shard_id: int, key: Key) -> bool:
        """Delete one entity; False if the key is not stored."""
        ...

    def query(self, shard_ids: Sequence[int], spec: QuerySpec) -> AsyncIterator[Record]:
        """Records of these shards matching ``spec`` in key order, streamed."""
        ...

    async def provision(
        self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> ProvisionReport:
        """Create schemas, tables and indexes for these shards; idempotent."""
        ...

    async def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Rows stored per shard (only shards that exist)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Pool figures: size, available, borrowed, waiting."""
        ...


AsyncBackendFactory = Callable[[Mapping[str, Any], BackendOptions], AsyncServerStore]
"""Builds the asyncio store of one server."""


INT_DIGITS_MAX = 4300
"""Longest int (in decimal digits) a jsonb body may hold: Python's default limit for int ↔ str conversion
(``sys.get_int_max_str_digits()``), which JSON encoding and decoding go through."""
_INT_BITS_SAFE = 14283  # every int below 2**14283 (about 10**4299.6) has at most INT_DIGITS_MAX digits
_INT_LIMIT = 10**INT_DIGITS_MAX


def _int_too_long(value: int) -> bool:
    return value.bit_length() > _INT_BITS_SAFE and abs(value) >= _INT_LIMIT


def check_text(field_name: str, text: str) -> None:
    """Raise `InvalidData` if ``text`` cannot be PostgreSQL text: it holds a NUL or is not encodable as UTF-8."""
    from hvcore.errors import InvalidData

    if "\x00" in text:
        raise InvalidData(f"field {field_name!r} contains a NUL character (\\x00), which PostgreSQL text cannot hold")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidData(f"field {field_name!r} is not valid Unicode text ({exc.reason} at {exc.start})") from None


def check_json(name: str, value: Any, depth: int = 0) -> None:
    """Raise `InvalidData` naming ``name`` unless ``value`` round-trips exactly through jsonb.

    Accepted: str, int (at most `INT_DIGITS_MAX` digits), finite float other than ``-0.0`` (jsonb numbers have no
    negative zero), bool, None, list and tuple (read back as lists), and mappings with string keys (any `Mapping`:
    read back as dicts), nested at most 200 levels. Text must be valid PostgreSQL text (no NUL, no lone
    surrogates).
    """
    if depth > 200:
        raise _errors.InvalidData(f"field {name!r} nests deeper than 200 levels")
    if isinstance(value, str):
        check_text(name, value)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if _int_too_long(value):
            raise _errors.InvalidData(
                f"field {name!r} holds {show_value(value)}: ints of more than {INT_DIGITS_MAX} digits cannot be "
                "read back (Python's int/str limit); store such a number as a string"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _errors.InvalidData(f"field {name!r} is {value!r}: JSON has no NaN or infinity")
        if value == 0.0 and math.copysign(1.0, value) < 0:
            raise _errors.InvalidData(
                f"field {name!r} holds -0.0: jsonb numbers have no negative zero (it would read back as 0.0); store 0.0"
            )
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_json(name, item, depth + 1)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _errors.InvalidData(
                    f"field {name!r} has a non-string key {show_value(k)}: JSON object keys are strings"
                )
            check_text(name, k)
            check_json(name, v, depth + 1)
        return
    raise _errors.InvalidData(
        f"field {name!r} is {type(value).__name__} {show_value(value)}: store JSON types (str, int, float, bool, "
        "None, list or tuple, dict or another mapping)"
    )


def check_body(data: Mapping[str, Any], *, text_only: bool) -> None:
    """Raise `InvalidData` naming the field unless every field of a body can be stored and read back exactly.

    The one set of value rules of every built-in backend: ``text_only`` (hstore, and the memory backend with
    ``values="text"``): field values are str or None; otherwise (jsonb, and the memory backend by default) the
    JSON rules of `check_json`. Field names are strings that PostgreSQL text can hold, in both.
    """
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
            raise _errors.InvalidData(
                f"field {name!r} is {kind.__name__} {show_value(value)}: the hstore backend (and the memory backend "
                "with values='text') stores text only; pass it as a str or use the jsonb backend"
            )
        elif kind is int:
            if value.bit_length() > _INT_BITS_SAFE:
                check_json(name, value)
        elif kind is not bool:
            check_json(name, value)


def json_default(value: Any) -> Any:
    """``json.dumps``'s ``default``: a mapping that is not a dict (``UserDict``, ``MappingProxyType``) as a dict."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not a JSON type")


def json_equal(stored: Any, wanted: Any) -> bool:
    """Equality as PostgreSQL compares jsonb values (and hstore text): what a ``where`` filter matches.

    Numbers compare by value (``1 == 1.0``), but booleans are never numbers (``True`` does not match ``1``), strings
    never equal anything else, and lists and objects compare element by element.
    """
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if stored is None or wanted is None:
        return stored is None and wanted is None
    if isinstance(stored, str) or isinstance(wanted, str):
        return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted
    if isinstance(stored, int | float) and isinstance(wanted, int | float):
        return stored == wanted
    if isinstance(stored, list | tuple) and isinstance(wanted, list | tuple):
        return len(stored) == len(wanted) and all(map(json_equal, stored, wanted))
    if isinstance(stored, Mapping) and isinstance(wanted, Mapping):
        return stored.keys() == wanted.keys() and all(json_equal(stored[k], wanted[k]) for k in stored)
    return False


def iter_fields(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield (name, value) of a body, raising `InvalidData` for non-string field names."""
    from hvcore.errors import InvalidData

    for name, value in data.items():
        if not isinstance(name, str):
            raise InvalidData(f"field names must be strings, got {type(name).__name__} {name!r}")
        yield name, value


for _public in (
    ServerStore,
    AsyncServerStore,
    ProvisionReport,
    MoveReport,
    ShardMover,
    SupportsShardMoves,
    SupportsWorkerLease,
    AsyncSupportsWorkerLease,
    IndexBuilder,
    SupportsIndexes,
    Migrator,
    SupportsMigrations,
    StoreTransaction,
    SupportsTransactions,
    AsyncStoreTransaction,
    AsyncSupportsTransactions,
    SupportsFilterWrites,
    AsyncSupportsFilterWrites,
    NodeShard,
    AdoptionReport,
    ShardCluster,
    SupportsShardCluster,
):
    _public.__module__ = "hvcore"
