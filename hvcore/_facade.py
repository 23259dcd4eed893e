"""What `Datastore` and `AsyncDatastore` share: settings, routing and validation, all before any I/O."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from hvcore._backend import BackendOptions, QuerySpec
from hvcore._config import DatastoreConfig, check_server_entries, check_servers, load_config, parse_layout
from hvcore._key import Key, KeyLayout
from hvcore._keymaker import random_below
from hvcore._metrics import metrics
from hvcore._plugins import PluginRegistry, default_registry
from hvcore._replicas import split_replicas
from hvcore._schemadefs import KIND_MAX, check_kind
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore._shardmap import ShardMap, format_ranges
from hvcore._show import show_value
from hvcore.errors import (
    ConfigError,
    DuplicateKey,
    InvalidData,
    InvalidKey,
    InvalidQuery,
    InvalidShard,
    StoreClosed,
)

__all__ = [
    "KIND_MAX",
    "LIMIT_MAX",
    "PUT_ATTEMPTS",
    "AsyncSequenceArg",
    "FacadeBase",
    "SequenceArg",
    "check_kind",
    "check_progress",
    "check_sequence",
    "too_many_duplicates",
]

LIMIT_MAX = 2**63 - 1  # query(limit=...): a PostgreSQL bigint (and the most itertools.islice takes)
PUT_ATTEMPTS = 8  # fresh keys tried when an insert hits an existing key

StoreT = TypeVar("StoreT")

SequenceArg = SequenceSource | str | None
"""What `Datastore` takes as ``sequence``: a source, a URL such as ``redis://host:6379/0``, or None (in-process)."""
AsyncSequenceArg = SequenceSource | AsyncSequenceSource | str | None
"""What `AsyncDatastore` takes as ``sequence``: a sync or asyncio source, a URL, or None (in-process)."""


def backend_options(config: DatastoreConfig) -> BackendOptions:
    """What each server's store is built with: the datastore's pool, timeout, layout, row and value options."""
    return BackendOptions(
        pool_max=config.pool_max,
        pool_block_timeout=float(config.pool_block_timeout),
        logger=config.logger,
        layout=config.layout,
        row_factory=config.row_factory,
        operation_timeout=config.operation_timeout,
        values=config.value_rules,
        log_values=config.log_values,
    )


def check_config_servers(config: DatastoreConfig, registry: PluginRegistry | None = None) -> None:
    """Check a config's server entries as `Datastore` does, without connecting: the shard map, the ``replicas``
    lists, and each entry (and standby) built by its backend's store factory (`check_server_entries`).
    ``hv config`` runs this, so a file it shows opens."""
    _, settings = ShardMap.from_connections(config.servers, layout=config.layout, allow_gaps=config.allow_gaps)
    primaries, standbys = split_replicas(settings)
    factory = (registry or default_registry()).backend(config.backend)
    options = backend_options(config)
    check_server_entries(primaries, lambda entry: factory(entry, options), [s.get("shards") for s in config.servers])
    for replicas in standbys:
        for replica in replicas:
            factory(replica, options)


def check_sequence(sequence: object, *, asyncio: bool) -> None:
    """`ConfigError` unless ``sequence`` is None, a URL, or a sequence source this datastore can call.

    A `Datastore` takes a `SequenceSource`; an `AsyncDatastore` takes either kind (`AsyncSequenceSource` has
    an ``async def reserve``).
    """
    if sequence is None or isinstance(sequence, str):
        return  # a URL is checked by DatastoreConfig and its scheme's factory
    if isinstance(sequence, AsyncSequenceSource) and inspect.iscoroutinefunction(sequence.reserve):
        if asyncio:
            return
        raise ConfigError(f"{show_value(sequence)} is an asyncio sequence source: use it with AsyncDatastore")
    if isinstance(sequence, SequenceSource):
        return
    raise ConfigError(
        "sequence must be None (in-process), a URL such as 'redis://127.0.0.1:6379/0' or a sequence source "
        f"(hvcore.SequenceSource), got {type(sequence).__name__} {show_value(sequence)}"
    )


def check_progress(progress: object) -> None:
    """`ConfigError` unless ``progress`` is None or callable (it is called with counts as work advances)."""
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be a callable or None, got {type(progress).__name__} {show_value(progress)}")


def too_many_duplicates(shard_id: int) -> DuplicateKey:
    """The error when every fresh key of a put collided with a stored one."""
    return DuplicateKey(
        f"{PUT_ATTEMPTS} attempts with fresh keys for shard {shard_id} all collided: another process shares "
        "this shard with the in-process sequence; use a shared one (sequence='redis://...')"
    )


class FacadeBase(Generic[StoreT]):
    """Settings, shard map, key handling and argument checks of a datastore; subclasses add the I/O."""

    _stores: list[StoreT]
    _closed: bool

    def __reduce__(self) -> Any:
        """Refused: a datastore holds pools, sockets and threads of this process (pickling reaches it when one is
        handed to a multiprocessing worker or an executor)."""
        name = type(self).__name__
        raise TypeError(
            f"a {name} cannot be pickled (it holds this process's connection pools and threads): build one in each "
            f"process instead, e.g. {name}.from_config(path) in the worker's initializer, and pass the config path"
        )

    def _configure(
        self,
        connections: Sequence[Mapping[str, Any]],
        pool_max: int,
        pool_block_timeout: float,
        logger: logging.Logger | None,
        backend: str,
        layout: KeyLayout | str | int,
        sequence: object,
        allow_gaps: bool,
        row_factory: str,
        registry: PluginRegistry | None,
        operation_timeout: float | None = 60.0,
        values: str | None = None,
        log_values: bool = False,
        worker: object = None,
        read_from: str = "primary",
        max_replica_lag: float = 1.0,
        read_your_writes: bool = True,
    ) -> None:
        check_servers(connections)
        if worker == "auto" and sequence is not None:
            worker = None  # a shared sequence keeps processes apart already: nothing to lease
        if worker is not None and sequence is not None and not isinstance(sequence, str):
            raise ConfigError(
                "worker and sequence cannot be combined: a worker number owns a slice of the in-process sequence, "
                "a shared sequence source hands out every number; choose one"
            )
        if registry is not None and not isinstance(registry, PluginRegistry):
            raise ConfigError(f"registry must be a PluginRegistry or None, got {show_value(registry)}")
        config = DatastoreConfig(
            servers=tuple(connections),
            backend=backend,
            pool_max=pool_max,
            pool_block_timeout=pool_block_timeout,
            layout=parse_layout(layout),
            sequence=sequence if isinstance(sequence, str) else None,
            allow_gaps=allow_gaps,
            row_factory=row_factory,
            operation_timeout=operation_timeout,
            values=values,
            log_values=log_values,
            worker=worker,
            logger=logger,
            read_from=read_from,
            max_replica_lag=max_replica_lag,
            read_your_writes=read_your_writes,
        )
        self._config = config
        self._registry = registry or default_registry()
        self.layout: KeyLayout = config.layout
        self.logger = logger
        self.shard_map, settings = ShardMap.from_connections(
            config.servers, layout=config.layout, allow_gaps=config.allow_gaps
        )
        self._settings, self._replica_settings = split_replicas(settings)
        self._options = backend_options(config)
        self._key_type = config.layout.key_type
        self._stores = []
        self._closed = True
        self.key_collisions = 0  # keys found taken by another writer and redrawn (see _count_collisions)
        self._collisions_by_shard: dict[int, int] = {}

    def _step_past_collision(self, shard_id: int, attempt: int) -> None:
        """A key of ``shard_id`` was found taken (``attempt``: 0 for the first time in this call): move the
        generator past a random stretch of up to 32·2^attempt numbers of the millisecond, so that the next draw does
        not land on the other writer's next key, and the one after (it counts up through the same numbers: drawn
        one after the other, all 8 attempts could fall inside a batch it wrote)."""
        skip = getattr(getattr(self, "generator", None), "skip_numbers", None)
        if skip is not None:
            skip(shard_id, 1 + random_below(32 << min(attempt, 5)))

    def _count_collisions(self, shard_id: int, count: int) -> None:
        """Record ``count`` keys of ``shard_id`` found taken: each was redrawn, never overwritten or acknowledged.

        ``key_collisions`` (total) and ``status()`` (per server) show them; a metrics exporter reads the attribute.
        """
        self.key_collisions += count
        self._collisions_by_shard[shard_id] = self._collisions_by_shard.get(shard_id, 0) + count
        if metrics.on:
            metrics.key_collision(self.store_for(shard_id), count)

    @classmethod
    def from_config(cls, config: str | Path | DatastoreConfig, **overrides: Any) -> Self:
        """Open a datastore from a TOML config file (or a parsed `DatastoreConfig`); ``overrides`` replace options.

        ``from_config("hv.toml", backend="memory")`` runs unit tests on the production config: the memory backend
        then applies the value rules of the file's backend (``values="text"`` for hstore, ``"jsonb"`` for jsonb)
        unless ``values=`` is given too.
        """
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
            "operation_timeout": cfg.operation_timeout,
            "values": cfg.values,
            "log_values": cfg.log_values,
            "worker": cfg.worker,
            "read_from": cfg.read_from,
            "max_replica_lag": cfg.max_replica_lag,
            "read_your_writes": cfg.read_your_writes,
        }
        options = [
            name
            for name, p in inspect.signature(cls).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY or (p.default is not inspect.Parameter.empty)
        ]
        unknown = sorted(set(overrides) - set(options))
        if unknown:  # the same typo in the file is a ConfigError listing the settings: so is it here
            raise ConfigError(
                f"from_config() got unknown option(s) {', '.join(map(repr, unknown))}: the options are "
                f"{', '.join(options)}"
            )
        if overrides.get("backend") == "memory" and cfg.backend in ("hstore", "jsonb") and cfg.values is None:
            kwargs["values"] = "text" if cfg.backend == "hstore" else "jsonb"  # stand in for the file's backend
        kwargs.update(overrides)
        make: Callable[..., Self] = cls  # subclasses take (connections, **options)
        return make(list(cfg.servers), **kwargs)

    def _sequence_from_url(self, url: str, *, asyncio: bool) -> Any:
        """The sequence source registered for the URL's scheme, made for this store's layout."""
        factory = self._registry.sequence(url.split("://", 1)[0])
        return factory(url, asyncio=asyncio, layout=self.layout)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        servers = (
            ", ".join(
                f"{getattr(store, 'label', '?')} [{format_ranges(self.shard_map.shards_of(i))}]"
                for i, store in enumerate(self._stores)
            )
            or f"{len(self._settings)} server(s)"
        )
        return f"<{type(self).__name__} backend={self._config.backend!r} {state} {servers}>"

    @property
    def backend(self) -> str:
        """Name of the storage backend."""
        return self._config.backend

    @property
    def servers(self) -> list[StoreT]:
        """The per-server stores, in connection-list order."""
        return list(self._live())

    def _live(self) -> list[StoreT]:
        stores = self._stores
        if self._closed or not stores:
            if not getattr(self, "_ever_opened", True):
                raise StoreClosed(
                    f"this {type(self).__name__} is not open yet: use `async with {type(self).__name__}(...) as db:` "
                    "or call `await db.open()` first"
                )
            raise StoreClosed(
                f"this {type(self).__name__} is disconnected: call reinstantiate() to open its pools again"
            )
        return stores

    def store_for(self, shard_id: int) -> StoreT:
        """The server store owning ``shard_id`` (`InvalidShard`/`ShardNotFound` otherwise)."""
        index = self.shard_map.server_for(shard_id)
        return self._live()[index]

    def as_key(self, key: object) -> Key:
        """``key`` as a key of this store's layout; `InvalidKey` for strings, floats or another layout's keys."""
        if type(key) is self._key_type:  # one Key class per layout, so this is the layout check too
            return key
        if isinstance(key, Key):
            if type(key).layout != self.layout:
                raise InvalidKey(
                    f"{key!r} decodes with another layout ({type(key).layout}); this store uses {self.layout}: "
                    "rebuild it with layout.key(int(key))"
                )
            return key
        return self._key_type(key)

    def _group_keys(self, keys: Iterable[Key | int]) -> dict[int, list[tuple[int, Key]]]:
        """Keys checked and grouped by server index (every key validated before any I/O)."""
        if isinstance(keys, str | bytes | Mapping) or not isinstance(keys, Iterable):
            raise InvalidKey(f"get_many() takes an iterable of keys, got {type(keys).__name__} {show_value(keys)}")
        by_server: dict[int, list[tuple[int, Key]]] = {}
        server_for = self.shard_map.server_for
        key_type = self._key_type
        shift, mask = self.layout.shard_shift, self.layout.max_shard_id
        for raw in keys:
            key = raw if type(raw) is key_type else self.as_key(raw)
            shard = (key >> shift) & mask  # key.shard_id without the property lookups: this loop is the hot path
            server = server_for(shard)
            group = by_server.get(server)
            if group is None:
                by_server[server] = group = []
            group.append((shard, key))
        return by_server

    @staticmethod
    def _check_rows(rows: Iterable[Mapping[str, Any]], check_data: Any) -> list[Mapping[str, Any]]:
        """Every row a mapping the backend accepts, checked before any SQL; the rows as a list."""
        if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Iterable):
            raise InvalidData(f"rows must be an iterable of mappings, got {type(rows).__name__} {show_value(rows)}")
        bodies = list(rows)
        for index, row in enumerate(bodies):
            if not isinstance(row, Mapping):
                raise InvalidData(f"row {index} is a {type(row).__name__}, expected a mapping of field names to values")
            try:
                check_data(row)
            except InvalidData as exc:
                raise InvalidData(f"row {index}: {exc}") from None
        return bodies

    def _new_keys(self, generator: Any, shard_id: int, count: int) -> list[Key]:
        keys: list[Key] = []
        size = self.layout.sequence_size
        while len(keys) < count:
            keys.extend(generator.next_keys(shard_id, min(size, count - len(keys))))
        return keys

    def _time_bound(self, value: object, name: str) -> int:
        """A ``since``/``until`` argument as a key value: a key as it is; an aware datetime → the first key of the
        first whole millisecond at or after it (keys carry whole ms: ``key.created >= since`` and ``< until`` hold
        exactly for a datetime with microseconds too)."""
        if isinstance(value, Key):
            return int(self.as_key(value))
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise InvalidQuery(f"{name} must be an aware datetime (e.g. tzinfo=datetime.UTC), got {value!r}")
            ms = -((dt.datetime(1970, 1, 1, tzinfo=dt.UTC) - value) // dt.timedelta(milliseconds=1))  # rounded up
            time_part = min(max(ms - self.layout.epoch_ms, 0), self.layout.max_time_part + 1)
            return time_part << self.layout.time_shift
        raise InvalidQuery(f"{name} must be an aware datetime or a Key, got {type(value).__name__} {show_value(value)}")

    def _check_shards(self, shards: object) -> list[int]:
        """``query(shards=...)`` as sorted distinct shard ids: `InvalidQuery` unless an iterable of shard ids."""
        if isinstance(shards, str | bytes | Mapping) or not isinstance(shards, Iterable):
            raise InvalidQuery(
                f"shards must be an iterable of shard ids (a list, a range...), got {type(shards).__name__} "
                f"{show_value(shards)}"
            )
        selected: set[int] = set()
        for shard in shards:
            if type(shard) is not int and (not isinstance(shard, int) or isinstance(shard, bool)):
                raise InvalidShard(
                    f"query(shards=...) holds {type(shard).__name__} {show_value(shard)}: shard ids are ints"
                )
            selected.add(int(shard))
        return sorted(selected)

    def _group_shards(self, shard_ids: Iterable[int]) -> dict[int, list[int]]:
        """Shards by the index of the server that owns them now."""
        by_server: dict[int, list[int]] = {}
        for shard in shard_ids:
            by_server.setdefault(self.shard_map.server_for(shard), []).append(shard)
        return by_server

    @staticmethod
    def _resumed(spec: QuerySpec, last: int | None, yielded: int) -> QuerySpec:
        """``spec`` for the rest of a stream cut after key ``last`` (key order makes the resume exact)."""
        if last is None:
            return spec
        remaining = None if spec.limit is None else spec.limit - yielded
        return dataclasses.replace(spec, low=last + 1, limit=remaining)

    def _plan_query(
        self,
        kind: int | None,
        where: Mapping[str, Any] | None,
        since: dt.datetime | Key | None,
        until: dt.datetime | Key | None,
        shards: Iterable[int] | None,
        limit: int | None,
    ) -> tuple[dict[int, list[int]], QuerySpec]:
        """Validate query arguments; return the shards to read per server index and the spec backends run."""
        if kind is not None:
            kind = check_kind(kind)
        if where is not None:
            if not isinstance(where, Mapping):
                raise InvalidQuery(f"where must be a mapping of field names to values, got {type(where).__name__}")
            for name in where:
                if not isinstance(name, str):
                    raise InvalidQuery(f"where field names must be strings, got {show_value(name)}")
            where = dict(where)
        low = self._time_bound(since, "since") if since is not None else None
        # until is exclusive: a datetime ends before its millisecond, a key before itself
        high = self._time_bound(until, "until") - 1 if until is not None else None
        if low is not None and high is not None and low > high + 1:
            raise InvalidQuery(f"since ({since!r}) is after until ({until!r}): nothing could match")
        if limit is not None and (type(limit) is not int or not 0 <= limit <= LIMIT_MAX):
            raise InvalidQuery(f"limit must be an int in 0..2**63-1 or None, got {show_value(limit)}")
        selected = self.shard_map.shard_ids if shards is None else self._check_shards(shards)
        by_server = self._group_shards(selected)
        spec = QuerySpec(kind=kind, where=where or None, low=low, high=high, limit=limit)
        return by_server, spec
