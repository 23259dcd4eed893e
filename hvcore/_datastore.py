"""The `Datastore` façade: routes shards to servers and keys to rows, over any registered backend."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hvcore._backend import BackendOptions, ProvisionReport, Record, ServerStore
from hvcore._config import DatastoreConfig, check_servers, load_config, parse_layout
from hvcore._generator import KeyGenerator
from hvcore._key import Key, KeyLayout
from hvcore._plugins import PluginRegistry, default_registry
from hvcore._sequence import SequenceSource
from hvcore._shardmap import ShardMap, format_ranges
from hvcore.errors import (
    ConnectionMisuse,
    DuplicateKey,
    InvalidKey,
    InvalidKind,
    StoreClosed,
)

__all__ = ["KIND_MAX", "Datastore", "check_kind"]

KIND_MAX = 32767  # kind is stored as a PostgreSQL smallint
PUT_ATTEMPTS = 8  # fresh keys tried when an insert hits an existing key

_live_stores: weakref.WeakSet[Datastore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_live_stores):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_kind(kind: object) -> int:
    """Return ``kind`` if it is an int in 0..32767, else raise `InvalidKind`."""
    if type(kind) is int and 0 <= kind <= KIND_MAX:
        return kind
    if isinstance(kind, int) and not isinstance(kind, bool) and 0 <= kind <= KIND_MAX:
        return int(kind)
    raise InvalidKind(
        f"kind must be an int in 0..{KIND_MAX} (stored as a smallint), got {type(kind).__name__} {kind!r}"
    )


class Datastore:
    """Entities in logical shards spread over physical servers, behind the 2015 library's API.

    ``connections`` is a list of connection-setting dicts, each with ``shards='a-b'`` (half-open: ``'1-9'`` is
    shards 1..8); the rest of each dict is passed to the backend as it is. ``pool_max`` connections per server,
    ``pool_block_timeout`` seconds to wait for one, ``logger`` logs every statement. Use as a context manager,
    or call ``disconnect()`` when done.
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
        sequence: SequenceSource | str | None = None,
        allow_gaps: bool = False,
        row_factory: str = "dict",
        registry: PluginRegistry | None = None,
    ) -> None:
        check_servers(connections)
        config = DatastoreConfig(
            servers=tuple(connections),
            backend=backend,
            pool_max=pool_max,
            pool_block_timeout=pool_block_timeout,
            layout=parse_layout(layout),
            sequence=sequence if isinstance(sequence, str) else None,
            allow_gaps=allow_gaps,
            row_factory=row_factory,
            logger=logger,
        )
        self._config = config
        self._registry = registry or default_registry()
        self.layout: KeyLayout = config.layout
        self.shard_map, self._settings = ShardMap.from_connections(
            config.servers, layout=config.layout, allow_gaps=config.allow_gaps
        )
        self._factory = self._registry.backend(config.backend)
        self._options = BackendOptions(
            pool_max=config.pool_max,
            pool_block_timeout=float(config.pool_block_timeout),
            logger=logger,
            layout=config.layout,
            row_factory=config.row_factory,
        )
        self.logger = logger
        if isinstance(sequence, str):
            source: SequenceSource | None = self._registry.sequence(sequence.split("://", 1)[0])(sequence)
            self._owns_sequence = True
        else:
            source = sequence
            self._owns_sequence = False
        self._sequence = source
        self.generator = KeyGenerator(config.layout, sequence=source)
        self._key_type = config.layout.key_type
        self._lock = threading.Lock()
        self._stores: list[ServerStore] = []
        self._closed = True
        self._open_stores()
        _live_stores.add(self)

    @classmethod
    def from_config(cls, config: str | Path | DatastoreConfig, **overrides: Any) -> Datastore:
        """Open a datastore from a TOML config file (or a parsed `DatastoreConfig`)."""
        cfg = config if isinstance(config, DatastoreConfig) else load_config(config)
        kwargs: dict[str, Any] = {
            "pool_max": cfg.pool_max,
            "pool_block_timeout": cfg.pool_block_timeout,
            "logger": cfg.logger,
            "backend": cfg.backend,
            "layout": cfg.layout,
            "sequence": cfg.sequence,
            "allow_gaps": cfg.allow_gaps,
            "row_factory": cfg.row_factory,
        }
        kwargs.update(overrides)
        return cls(list(cfg.servers), **kwargs)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _open_stores(self) -> None:
        stores = [self._factory(settings, self._options) for settings in self._settings]
        try:
            for store in stores:
                store.open()
        except BaseException:
            for store in stores:
                store.close()
            raise
        self._stores = stores
        self._closed = False

    def disconnect(self) -> None:
        """Close every pooled connection; the store is unusable until `reinstantiate()`."""
        with self._lock:
            stores, self._stores = self._stores, []
            self._closed = True
        for store in stores:
            store.close()

    def reinstantiate(self) -> None:
        """Rebuild every pool (closing the old ones first)."""
        self.disconnect()
        with self._lock:
            self._open_stores()

    def close(self) -> None:
        """Close pools and the sequence source this store created."""
        self.disconnect()
        if self._owns_sequence and self._sequence is not None:
            self._sequence.close()

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        for store in self._stores:
            store.after_fork_in_child()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        servers = (
            ", ".join(
                f"{store.label} [{format_ranges(self.shard_map.shards_of(i))}]" for i, store in enumerate(self._stores)
            )
            or f"{len(self._settings)} server(s)"
        )
        return f"<Datastore backend={self._config.backend!r} {state} {servers}>"

    @property
    def backend(self) -> str:
        """Name of the storage backend."""
        return self._config.backend

    @property
    def servers(self) -> list[ServerStore]:
        """The per-server stores, in connection-list order."""
        return list(self._live())

    def _live(self) -> list[ServerStore]:
        stores = self._stores
        if self._closed or not stores:
            raise StoreClosed("this Datastore is disconnected: call reinstantiate() to open its pools again")
        return stores

    def store_for(self, shard_id: int) -> ServerStore:
        """The server store owning ``shard_id`` (`InvalidShard`/`ShardNotFound` otherwise)."""
        index = self.shard_map.server_for(shard_id)
        return self._live()[index]

    # -- connections -----------------------------------------------------------------------------------------

    def get_connection(self, shard_id: int) -> Any:
        """Borrow a connection of the server owning ``shard_id``, with the shard's schema on the search path."""
        return self.store_for(shard_id).get_connection(shard_id)

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection; twice, or one not from this store, raises `ConnectionMisuse`."""
        for store in self._stores:
            if store.owns(conn):
                store.put_connection(conn)
                return
        raise ConnectionMisuse(
            f"{conn!r} is not borrowed from this Datastore: it was already returned, or came from elsewhere"
        )

    @contextmanager
    def cursor(self, shard_id: int) -> Iterator[Any]:
        """A cursor in the shard's schema: commit on success, rollback on error, connection always returned."""
        with self.store_for(shard_id).cursor(shard_id) as cur:
            yield cur

    # -- entities --------------------------------------------------------------------------------------------

    def put(self, shard_id: int, kind: int, /, **data: Any) -> Key:
        """Store ``data`` in ``shard_id`` under a new key, with ``kind`` kept outside the body; return the key."""
        store = self.store_for(shard_id)
        kind = check_kind(kind)
        store.check_data(data)
        next_key = self.generator.next_key
        for _ in range(PUT_ATTEMPTS):
            key = next_key(shard_id)
            try:
                store.insert(shard_id, key, kind, data)
            except DuplicateKey:
                if self.logger is not None:
                    self.logger.warning("key %s already stored in shard %s: retrying with a fresh key", key, shard_id)
                continue
            return key
        raise DuplicateKey(
            f"{PUT_ATTEMPTS} fresh keys for shard {shard_id} were all taken: another process shares this shard "
            "with the in-process sequence; use a shared sequence (sequence='redis://...')"
        )

    def get(self, key: Key | int) -> Record | None:
        """The record stored under ``key``, or None."""
        key = self.as_key(key)
        shard = key.shard_id
        return self.store_for(shard).fetch(shard, key)

    def as_key(self, key: object) -> Key:
        """``key`` as a key of this store's layout; `InvalidKey` for strings, floats or another layout's keys."""
        if isinstance(key, Key):
            if type(key).layout != self.layout:
                raise InvalidKey(
                    f"{key!r} decodes with another layout ({type(key).layout}); this Datastore uses {self.layout}: "
                    f"rebuild it with layout.key(int(key))"
                )
            return key
        return self._key_type(key)

    # -- operations ------------------------------------------------------------------------------------------

    def provision(self, progress: Callable[[int], None] | None = None) -> list[ProvisionReport]:
        """Create schemas, tables and indexes for every mapped shard on its server (idempotent, servers in parallel)."""
        stores = self._live()
        if len(stores) == 1:
            return [stores[0].provision(self.shard_map.shards_of(0), progress)]
        with ThreadPoolExecutor(max_workers=len(stores), thread_name_prefix="hv-provision") as pool:
            futures = [
                pool.submit(store.provision, self.shard_map.shards_of(i), progress) for i, store in enumerate(stores)
            ]
            return [f.result() for f in futures]

    def status(self) -> list[dict[str, Any]]:
        """Per server: label, reachable, shards, pool stats, rows (errors reported, not raised)."""
        out: list[dict[str, Any]] = []
        for index, store in enumerate(self._live()):
            shards = self.shard_map.shards_of(index)
            entry: dict[str, Any] = {
                "server": store.label,
                "shards": format_ranges(shards),
                "shard_count": len(shards),
                "pool": store.stats(),
            }
            try:
                counts = store.row_counts(shards)
            except Exception as exc:  # reported to the user as the server's state
                entry.update(reachable=False, error=f"{type(exc).__name__}: {exc}")
            else:
                entry.update(
                    reachable=True,
                    rows=sum(counts.values()),
                    provisioned_shards=len(counts),
                    rows_per_shard=counts,
                )
            out.append(entry)
        return out
