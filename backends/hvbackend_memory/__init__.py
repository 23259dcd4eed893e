"""The ``memory`` backend: the whole façade contract in process memory, for users' unit tests."""

from __future__ import annotations

import copy
import json
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from hvcore._backend import BackendOptions, ProvisionReport, Record, check_text, iter_fields
from hvcore._key import Key
from hvcore.errors import ConnectionMisuse, DuplicateKey, InvalidData, NotProvisioned, PoolTimeout
from hvcore.hookspecs import hookimpl

__all__ = ["MemoryConnection", "MemoryCursor", "MemoryServerStore", "hypervault_register_backends"]

_SERVERS: dict[str, dict[int, dict[int, Record]]] = {}  # name -> shard -> id -> record; shared like a real server
_SERVERS_LOCK = threading.Lock()


@hookimpl
def hypervault_register_backends(register: Callable[[str, Any], None]) -> None:
    """Register the ``memory`` backend."""
    register("memory", MemoryServerStore)


class MemoryCursor:
    """A cursor-like view of one shard: rows as records, no SQL (``execute`` explains what to use instead)."""

    def __init__(self, connection: MemoryConnection) -> None:
        self.connection = connection

    @property
    def shard_id(self) -> int:
        """The shard this cursor reads."""
        return self.connection.shard_id

    def execute(self, query: object, params: object = None) -> MemoryCursor:
        """Not supported: the memory backend runs no SQL."""
        raise NotImplementedError(
            "the memory backend runs no SQL: use Datastore.put/get, or cursor.rows() to read the shard"
        )

    def rows(self) -> list[Record]:
        """Every record of the shard, in key order."""
        return self.connection.server.rows(self.shard_id)


class MemoryConnection:
    """What `Datastore.get_connection` hands out with the memory backend."""

    def __init__(self, server: MemoryServerStore, shard_id: int) -> None:
        self.server = server
        self.shard_id = shard_id
        self.closed = False

    def __repr__(self) -> str:
        return f"<MemoryConnection server={self.server.label!r} shard={self.shard_id}>"

    def cursor(self) -> MemoryCursor:
        """A cursor on this connection's shard."""
        return MemoryCursor(self)

    def commit(self) -> None:
        """Nothing to commit: every write is immediate."""

    def rollback(self) -> None:
        """Nothing to roll back."""


class MemoryServerStore:
    """One in-memory "server": a dict per shard, a bounded pool of pretend connections.

    Settings: ``name`` (stores with the same name share data within the process, like one real server;
    default: a fresh private server), ``values`` = ``"json"`` (default: JSON types kept, like the jsonb backend)
    or ``"text"`` (strings only, like hstore), ``provisioned`` (default True; False makes shards need
    `provision` first, as on PostgreSQL).
    """

    _counter = 0

    def __init__(self, settings: Mapping[str, Any], options: BackendOptions) -> None:
        unknown = set(settings) - {"name", "values", "provisioned"}
        if unknown:
            raise InvalidData(
                f"memory backend: unknown setting(s) {sorted(unknown)}: expected name, values, provisioned"
            )
        values = settings.get("values", "json")
        if values not in ("json", "text"):
            raise InvalidData(f"memory backend: values must be 'json' or 'text', got {values!r}")
        if "name" in settings:
            self.name = str(settings["name"])
        else:
            with _SERVERS_LOCK:
                MemoryServerStore._counter += 1
                self.name = f"memory-{MemoryServerStore._counter}"
        self.text_only = values == "text"
        self._auto_provision = bool(settings.get("provisioned", True))
        self._options = options
        self._logger = options.logger
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(options.pool_max)
        self._borrowed: dict[int, MemoryConnection] = {}
        self._open = False

    @property
    def label(self) -> str:
        """The server's name."""
        return f"memory:{self.name}"

    def __repr__(self) -> str:
        return f"<MemoryServerStore {self.label} borrowed={len(self._borrowed)}>"

    def _shards(self) -> dict[int, dict[int, Record]]:
        with _SERVERS_LOCK:
            return _SERVERS.setdefault(self.name, {})

    def _table(self, shard_id: int) -> dict[int, Record]:
        shards = self._shards()
        table = shards.get(shard_id)
        if table is None:
            if not self._auto_provision:
                raise NotProvisioned(f"shard {shard_id} does not exist on {self.label}: run `hv init` (provision())")
            with self._lock:
                table = shards.setdefault(shard_id, {})
        return table

    def _log(self, message: str, *args: object) -> None:
        if self._logger is not None:
            self._logger.info(message, *args)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def open(self) -> None:
        """Nothing to connect."""
        self._open = True

    def close(self) -> None:
        """Forget borrowed connections (their slots come back)."""
        with self._lock:
            for conn in self._borrowed.values():
                conn.closed = True
            self._borrowed.clear()
            self._slots = threading.BoundedSemaphore(self._options.pool_max)
            self._open = False

    def after_fork_in_child(self) -> None:
        """Connections borrowed by the parent's threads are not the child's."""
        self._borrowed = {}
        self._slots = threading.BoundedSemaphore(self._options.pool_max)
        self._lock = threading.RLock()

    # -- connections -----------------------------------------------------------------------------------------

    def get_connection(self, shard_id: int) -> MemoryConnection:
        """Borrow a pretend connection, waiting up to ``pool_block_timeout`` for a free slot."""
        self._table(shard_id)
        if not self._slots.acquire(timeout=self._options.pool_block_timeout):
            raise PoolTimeout(
                f"no connection to {self.label} free within {self._options.pool_block_timeout} s "
                f"(pool_max={self._options.pool_max}, all borrowed): return connections with put_connection()"
            )
        conn = MemoryConnection(self, shard_id)
        with self._lock:
            self._borrowed[id(conn)] = conn
        return conn

    def owns(self, conn: Any) -> bool:
        """True if ``conn`` is borrowed from this store right now."""
        return self._borrowed.get(id(conn)) is conn

    def put_connection(self, conn: Any) -> None:
        """Return a borrowed connection."""
        with self._lock:
            if self._borrowed.get(id(conn)) is not conn:
                raise ConnectionMisuse(f"{conn!r} is not borrowed from {self.label} (returned twice?)")
            del self._borrowed[id(conn)]
        self._slots.release()

    @contextmanager
    def cursor(self, shard_id: int) -> Iterator[MemoryCursor]:
        """A cursor on a borrowed connection, returned afterwards whatever happens."""
        conn = self.get_connection(shard_id)
        try:
            yield conn.cursor()
        finally:
            self.put_connection(conn)

    # -- entities --------------------------------------------------------------------------------------------

    def check_data(self, data: Mapping[str, Any]) -> None:
        """Strings only in text mode; JSON-representable values otherwise."""
        for name, value in iter_fields(data):
            check_text(name, name)
            if self.text_only:
                if value is not None and not isinstance(value, str):
                    raise InvalidData(
                        f"field {name!r} is {type(value).__name__} {value!r}: this backend stores text only "
                        f"(hstore); pass str({value!r}) or use the jsonb backend"
                    )
                if value is not None:
                    check_text(name, value)
            else:
                _check_json(name, value)

    def insert(self, shard_id: int, key: Key, kind: int, data: Mapping[str, Any]) -> None:
        """Store a deep copy, so later changes to the caller's objects do not leak in."""
        table = self._table(shard_id)
        body = dict(data) if self.text_only else json.loads(json.dumps(data))  # stored as jsonb would: tuples → lists
        record = Record(key, kind, body)
        with self._lock:
            if int(key) in table:
                raise DuplicateKey(f"key {int(key)} already exists in shard {shard_id} on {self.label}")
            table[int(key)] = record
        self._log("memory insert shard=%s id=%s kind=%s", shard_id, int(key), kind)

    def fetch(self, shard_id: int, key: Key) -> Record | None:
        """A copy of the stored record, or None."""
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

    # -- operations ------------------------------------------------------------------------------------------

    def provision(self, shard_ids: Sequence[int], progress: Callable[[int], None] | None = None) -> ProvisionReport:
        """Create the shards' tables (idempotent)."""
        report = ProvisionReport(server=self.label, shards=len(shard_ids))
        shards = self._shards()
        with self._lock:
            for shard in shard_ids:
                if shard not in shards:
                    shards[shard] = {}
                    report.created += 1
        if progress is not None:
            progress(len(shard_ids))
        return report

    def row_counts(self, shard_ids: Sequence[int]) -> dict[int, int]:
        """Rows per existing shard."""
        shards = self._shards()
        return {s: len(shards[s]) for s in shard_ids if s in shards}

    def stats(self) -> dict[str, Any]:
        """Pool figures."""
        borrowed = len(self._borrowed)
        return {
            "pool_max": self._options.pool_max,
            "borrowed": borrowed,
            "available": self._options.pool_max - borrowed,
        }


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
        f"field {name!r} is {type(value).__name__} {value!r}: store JSON types (str, int, float, bool, None, list, dict)"
    )
