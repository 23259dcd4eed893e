"""`AsyncShardTransaction`: one transaction on one shard, behind ``AsyncDatastore.transaction(shard_id)`` (asyncio).

This module is the source of ``hvcore/_transaction.py`` (`ShardTransaction`, for `Datastore`), which
tools/async_to_sync.py writes from it: edit this one, then run the tool.

The façade's half of a transaction: arguments, keys and shards checked before any SQL, fresh keys retried, the
aborted state (an error from the server aborts the transaction, as in PostgreSQL, until the block or the enclosing
savepoint ends), savepoints for nested blocks, and no silent following of a moved shard. The backend's half is a
`hvcore._backend.AsyncStoreTransaction` (PostgreSQL: ``hvbackend_postgres._atransaction``; memory:
``hvbackend_memory``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from contextvars import ContextVar, Token
from time import perf_counter
from typing import Any, TypeVar, cast

from hvcore._acompat import ashield, ato_thread
from hvcore._backend import AsyncStoreTransaction, AsyncSupportsTransactions, QuerySpec, Record
from hvcore._blocks import aonce_block
from hvcore._facade import PUT_ATTEMPTS, too_many_duplicates
from hvcore._key import Key
from hvcore._metrics import metrics
from hvcore._schemadefs import FieldFilter, IndexSpec, bind_filters, check_kind, split_ranges
from hvcore._show import show_value
from hvcore.errors import (
    ConfigError,
    ConnectionMisuse,
    HypervaultError,
    InvalidKey,
    PoolTimeout,
    ShardMoved,
    StoreClosed,
    TransactionError,
)

AsyncDatastore = Any  # the AsyncDatastore that opened the transaction (not imported: it imports this module)

__all__ = ["ISOLATION_LEVELS", "AsyncShardTransaction", "check_isolation_level", "open_transaction"]

_T = TypeVar("_T")

ISOLATION_LEVELS = ("read committed", "repeatable read", "serializable")
"""The isolation levels a transaction may ask for (PostgreSQL's; None keeps the server's default)."""

# The transactions open in this thread (or asyncio task), innermost last: a nested db.transaction(same shard)
# becomes a savepoint of the open one instead of a second connection. asyncio runs every child task in a copy of
# its parent's context (asyncio.to_thread too), so the copy holds the parent's transactions: each transaction also
# knows its home (`_Home`), and only code running there joins it or uses it.
_OPEN: ContextVar[tuple[AsyncShardTransaction, ...]] = ContextVar("hv_open_transactions", default=())


class _Home:
    """The contextvars context a transaction was opened in: one asyncio task's, or one thread's.

    `here` tells that context from every other, copies included (a child task of ``asyncio.gather``,
    ``create_task`` or a ``TaskGroup``, a thread of ``asyncio.to_thread`` or ``copy_context().run``): Python 3.11
    shows no context's identity, but a `ContextVar` token resets only in the context that set it (``ValueError``
    elsewhere). The variable is this transaction's own and is unset again by `leave`, so nothing accumulates.
    """

    __slots__ = ("_pid", "_token", "_var")

    def __init__(self) -> None:
        self._var: ContextVar[None] = ContextVar("hv_transaction_home")
        self._token: Token[None] | None = self._var.set(None)
        self._pid = os.getpid()  # a child forked inside the block has the same context, but not the connection

    def here(self) -> bool:
        """True if the running code is in the home context of the process that opened it (no I/O; False once
        `leave` ran)."""
        if self._token is None or self._pid != os.getpid():
            return False
        try:
            self._var.reset(self._token)
        except ValueError:  # the token was made in another context: a copy of it, or another thread's
            return False
        self._token = self._var.set(None)
        return True

    def leave(self) -> None:
        """Unset the variable in the home context (the transaction ended); later `here` calls are False."""
        if self.here():
            self._var.reset(cast("Token[None]", self._token))
        self._token = None


def _running() -> str:
    """The asyncio task or the thread running this code, for messages."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop running in this thread
        task = None
    if task is not None:
        return f"task {task.get_name()!r}"
    return f"thread {threading.current_thread().name!r}"


def check_isolation_level(level: object) -> str | None:
    """``level`` as one of `ISOLATION_LEVELS` (case, ``_`` and ``-`` ignored; a psycopg ``IsolationLevel`` by its
    name), or None; `ConfigError` naming the valid ones otherwise."""
    if level is None:
        return None
    text = level.name if isinstance(level, enum.Enum) else level
    if isinstance(text, str):
        name = " ".join(text.replace("_", " ").replace("-", " ").lower().split())
        if name in ISOLATION_LEVELS:
            return name
    hint = " (PostgreSQL runs read uncommitted as read committed: ask for that)"
    raise ConfigError(
        f"isolation_level must be one of {', '.join(map(repr, ISOLATION_LEVELS))} or None (the server's default), "
        f"got {show_value(level)}" + (hint if "uncommitted" in str(text).lower() else "")
    )


class AsyncShardTransaction:
    """A transaction bound to one shard: every call runs in one PostgreSQL transaction on the shard's server.

    Got from ``async with db.transaction(shard_id) as tx:``; committed when the block ends, rolled back when an
    exception leaves it. Keys must belong to the shard (`InvalidKey` otherwise, before any SQL). An error from the
    server aborts the transaction (as PostgreSQL does): later calls raise `TransactionError` until the block, or the
    enclosing ``async with tx.transaction():`` savepoint block, ends and rolls it back. It belongs to the asyncio
    task (or thread) that opened it: called from another one (a child task of ``asyncio.gather``/``create_task``/
    ``TaskGroup``, a thread), every method raises `TransactionError` before any I/O; that task opens its own with
    ``db.transaction(shard_id)``.
    """

    __module__ = "hvcore"

    def __init__(
        self,
        db: AsyncDatastore,
        store: Any,
        tx: AsyncStoreTransaction,
        shard_id: int,
        isolation_level: str | None,
        read_only: bool,
    ) -> None:
        self._db = db
        self._store = store
        self._tx = tx
        self.shard_id = shard_id
        self.isolation_level = isolation_level
        self.read_only = read_only
        self._state = "open"
        self._error: BaseException | None = None  # what aborted the transaction, if something did
        self._error_depth = 0  # the savepoint depth it happened at (rolling back to that savepoint clears it)
        self._depth = 0
        self._wrote = False  # a write was sent: the commit is noted for read-your-writes (read replicas)
        self._home = _Home()  # the context (task, thread) that opened it: the only one that joins or uses it
        self._opened_by = _running()

    def __repr__(self) -> str:
        return f"<AsyncShardTransaction shard={self.shard_id} {self.state} on {self._store.label}>"

    @property
    def state(self) -> str:
        """``"open"``, ``"aborted"`` (an error; roll back), ``"committed"`` or ``"rolled back"``."""
        if self._state == "open" and (self._error is not None or self._tx.aborted()):
            return "aborted"
        return self._state

    # -- state -------------------------------------------------------------------------------------------------

    def _check(self, operation: str, *, write: bool = False) -> None:
        """Raise `TransactionError` unless the transaction can run ``operation`` now (no I/O)."""
        shard = self.shard_id
        if self._state != "open":
            raise TransactionError(
                f"{operation}: the transaction on shard {shard} was {self._state}; start a new one with "
                f"db.transaction({shard})"
            )
        if not self._home.here():
            raise TransactionError(
                f"{operation}: the transaction on shard {shard} belongs to the {self._opened_by} that opened it, "
                f"and this is {_running()}: a transaction is used only in the asyncio task or thread that opened it "
                "(a child task or thread would interleave its calls and savepoints with the parent's on one "
                f"connection); open one there with db.transaction({shard}), its own. On Python 3.11 "
                "asyncio.wait_for and asyncio.shield run their awaitable in a new task: use asyncio.timeout() instead"
            )
        if self._error is not None or self._tx.aborted():
            raise self._aborted_error(operation)
        if self._db._closed:
            closed = StoreClosed(
                f"{operation}: the datastore was disconnected while the transaction on shard {shard} was open: "
                "nothing more runs in it, and it is rolled back when its block ends"
            )
            self._abort(closed)
            raise closed
        if write:
            if self.read_only:
                raise TransactionError(
                    f"{operation}: the transaction on shard {shard} is read-only (read_only=True); open it without "
                    "read_only to write"
                )
            self._wrote = True

    def _aborted_error(self, operation: str) -> TransactionError:
        cause = f" by {type(self._error).__name__}: {self._error}" if self._error is not None else " by an error"
        if operation == "commit":
            what = "so it was rolled back and nothing was committed (the error was caught inside its block)"
        elif operation == "savepoint release":
            what = "so the block was rolled back to its savepoint (the error was caught inside it)"
        else:
            what = "leave its block (or the enclosing `with tx.transaction():` savepoint block) to roll it back"
        return TransactionError(f"{operation}: the transaction on shard {self.shard_id} was aborted{cause}; {what}")

    def _abort(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            self._error_depth = self._depth

    async def _run(self, op: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """Run one backend call; an error aborts the transaction, a moved shard is reported, never followed."""
        try:
            return await op(*args, **kwargs)
        except ShardMoved as moved:
            self._abort(moved)
            raise await self._moved(moved) from moved
        except BaseException as exc:
            self._abort(exc)
            raise

    async def _moved(self, moved: ShardMoved) -> ShardMoved:
        """The error for a shard that moved away under the transaction; new transactions go to its new server
        (matched by database identity when this config names it otherwise, as the datastore's own calls do)."""
        with suppress(HypervaultError):
            await self._db._follow_moved(moved)
        return ShardMoved(
            f"{moved}: the transaction on shard {self.shard_id} cannot follow it (its statements ran on the old "
            "server) and is rolled back when its block ends; run it again (new transactions go to the new server)",
            shard_id=moved.shard_id,
            server=moved.server,
            version=moved.version,
            identity=moved.identity,
        )

    def _key(self, key: object, operation: str) -> Key:
        """``key`` as a key of this shard: `InvalidKey` for another layout's key or another shard's (no I/O)."""
        checked: Key = self._db.as_key(key)
        if checked.shard_id != self.shard_id:
            raise InvalidKey(
                f"{operation}: key {int(checked)} belongs to shard {checked.shard_id}, but this transaction is bound "
                f"to shard {self.shard_id}: use db.{operation}() outside it, or db.transaction({checked.shard_id})"
            )
        return checked

    # -- entities ------------------------------------------------------------------------------------------------

    async def put(self, kind: int, /, **data: Any) -> Key:
        """Store ``data`` in the transaction's shard under a new key (``kind`` outside the body); return the key."""
        kind = check_kind(kind)
        self._store.check_data(data)
        self._check("put", write=True)
        for _ in range(PUT_ATTEMPTS):
            key: Key = await self._db._next_key(self.shard_id)
            if await self._run(self._tx.insert, key, kind, data):
                return key
            self._db._log_duplicate(self.shard_id, key)
        raise too_many_duplicates(self.shard_id)

    async def put_many(self, kind: int, rows: Iterable[Mapping[str, Any]]) -> list[Key]:
        """Store many bodies in the transaction's shard, all or nothing; return their keys in row order."""
        kind = check_kind(kind)
        bodies: list[Mapping[str, Any]] = self._db._check_rows(rows, self._store.check_data)
        self._check("put_many", write=True)
        if not bodies:
            return []
        for _ in range(PUT_ATTEMPTS):
            keys: list[Key] = await self._db._keys(self.shard_id, len(bodies))
            batch = [(k, kind, b) for k, b in zip(keys, bodies, strict=True)]
            if await self._run(self._tx.insert_many, batch):
                return keys
            self._db._log_duplicate(self.shard_id, keys[0])
        raise too_many_duplicates(self.shard_id)

    async def get(self, key: Key | int) -> Record | None:
        """The record under ``key`` as the transaction sees it (its own writes included), or None."""
        checked = self._key(key, "get")
        self._check("get")
        return await self._run(self._tx.fetch, checked)

    async def get_many(self, keys: Iterable[Key | int]) -> dict[Key, Record]:
        """Records of many keys of the transaction's shard in one round trip; missing keys are left out."""
        if isinstance(keys, str | bytes | Mapping) or not isinstance(keys, Iterable):
            raise InvalidKey(f"get_many() takes an iterable of keys, got {type(keys).__name__} {show_value(keys)}")
        checked = [self._key(key, "get_many") for key in keys]
        self._check("get_many")
        if not checked:
            return {}
        found = await self._run(self._tx.fetch_many, checked)
        return {record.key: record for record in found}

    async def update(self, key: Key | int, /, **data: Any) -> bool:
        """Merge ``data`` into the stored body; False if the key is not stored."""
        checked = self._key(key, "update")
        self._store.check_data(data)
        self._check("update", write=True)
        return await self._run(self._tx.update, checked, data, merge=True)

    async def replace(self, key: Key | int, /, **data: Any) -> bool:
        """Replace the stored body with ``data`` (kind unchanged); False if the key is not stored."""
        checked = self._key(key, "replace")
        self._store.check_data(data)
        self._check("replace", write=True)
        return await self._run(self._tx.update, checked, data, merge=False)

    async def delete(self, key: Key | int) -> bool:
        """Delete the entity; False if the key was not stored."""
        checked = self._key(key, "delete")
        self._check("delete", write=True)
        return await self._run(self._tx.delete, checked)

    def query(
        self,
        kind: int | None = None,
        where: Mapping[str, Any] | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = None,
    ) -> AsyncIterator[Record]:
        """The shard's records in key order as the transaction sees them, streamed; arguments as `AsyncDatastore.query`.

        Checked when called, before any I/O; range filters on indexed fields are bound to the recorded indexes when
        the iteration starts (`InvalidQuery` if the field has none).
        """
        _, spec = self._db._plan_query(kind, where, since, until, [self.shard_id], limit)
        equal, ranges = split_ranges(spec.where, spec.kind)
        if ranges:
            spec = dataclasses.replace(spec, where=equal)
        if spec.where:
            self._store.check_data(spec.where)
        self._check("query")
        return self._stream(spec, ranges)

    async def _stream(self, spec: QuerySpec, ranges: tuple[FieldFilter, ...]) -> AsyncGenerator[Record, None]:
        if spec.where or ranges:
            catalog = self._db._index_catalog
            definitions: Mapping[tuple[int, str], IndexSpec] = catalog.definitions
            if catalog.stale((spec.kind, flt.field) for flt in ranges if spec.kind is not None):
                definitions = await ato_thread(catalog.load, self._db._live())
            spec = dataclasses.replace(spec, filters=bind_filters(spec.kind, spec.where, ranges, definitions))
        self._check("query")
        if spec.limit == 0:
            return
        stream = self._tx.query(spec)
        try:
            async for record in stream:
                yield record
        except ShardMoved as moved:
            self._abort(moved)
            raise await self._moved(moved) from moved
        except Exception as exc:
            self._abort(exc)
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    @aonce_block("tx.cursor()", ConnectionMisuse)
    async def cursor(self) -> AsyncIterator[Any]:
        """A cursor in the transaction, the shard's schema first on the search path (write unqualified names).

        A psycopg cursor whose rows are `Row` objects, as `AsyncDatastore.cursor` lends; it commits nothing: the
        transaction does when its block ends. The memory backend yields its ``AsyncMemoryCursor``, reading the
        shard as the transaction sees it. A statement reaching a shard that moved away raises `ShardMoved` (as
        every method does).
        """
        self._check("cursor", write=not self.read_only)  # statements of its own may write
        try:
            async with self._tx.cursor() as cur:
                yield cur
        except ShardMoved as moved:  # a statement of its own reached a moved shard's forwarding stub
            self._abort(moved)
            raise await self._moved(moved) from moved

    @aonce_block("tx.transaction()", TransactionError)
    async def transaction(self) -> AsyncIterator[AsyncShardTransaction]:
        """A savepoint: the block's changes are kept when it ends, undone (and only those) when an exception leaves it.

        Yields this transaction. An error that aborted the transaction inside the block is cleared when the block
        rolls back to its savepoint, so the outer transaction can go on; a block ending normally although such an
        error was caught inside it rolls back to its savepoint and raises `TransactionError`.
        """
        self._check("transaction")
        self._depth += 1
        depth = self._depth
        try:
            async with self._tx.savepoint():
                yield self
                if self._error is not None:
                    raise self._aborted_error("savepoint release")
        finally:
            self._depth = depth - 1
            if self._error is not None and self._error_depth >= depth:  # rolled back to before the error
                self._error = None


def _open_one(db: AsyncDatastore, shard_id: int) -> AsyncShardTransaction | None:
    """The innermost transaction of ``db`` on ``shard_id`` opened by this thread or task and still open, if any."""
    for tx in reversed(_OPEN.get()):
        if tx._db is db and tx.shard_id == shard_id and tx._state == "open" and tx._home.here():
            return tx
    return None


def open_transaction(
    db: AsyncDatastore, shard_id: int, isolation_level: object, read_only: object
) -> AbstractAsyncContextManager[AsyncShardTransaction]:
    """``db.transaction(...)``: arguments checked now (before any I/O), the transaction begun on entering the block."""
    level = check_isolation_level(isolation_level)
    if type(read_only) is not bool:
        raise ConfigError(f"read_only must be True or False, got {show_value(read_only)}")
    store = db.store_for(shard_id)  # InvalidShard / ShardNotFound / StoreClosed
    outer = _open_one(db, shard_id)
    if outer is not None:
        if level is not None and level != outer.isolation_level:
            raise ConfigError(
                f"a transaction on shard {shard_id} is already open here ({outer.isolation_level or 'the default'} "
                f"isolation): a nested one is a savepoint of it and cannot ask for {level!r}"
            )
        if read_only and not outer.read_only:
            raise ConfigError(
                f"a transaction on shard {shard_id} is already open here and writes: a nested one is a savepoint of "
                "it and cannot be read-only"
            )
        return outer.transaction()
    if not isinstance(store, AsyncSupportsTransactions):
        raise ConfigError(
            f"the {db.backend!r} backend has no transactions (it does not implement SupportsTransactions)"
        )
    return _begin(db, store, shard_id, level, read_only)


@aonce_block("db.transaction(shard)", TransactionError)
async def _begin(
    db: AsyncDatastore, store: Any, shard_id: int, level: str | None, read_only: bool
) -> AsyncIterator[AsyncShardTransaction]:
    tx: AsyncShardTransaction | None = None
    started = perf_counter() if metrics.on else None  # the whole transaction is one operation, "transaction"
    committing = False  # the block's own work is over: what ends it from here (COMMIT) may have committed
    try:
        async with store.transaction(shard_id, isolation_level=level, read_only=read_only) as backend_tx:
            tx = AsyncShardTransaction(db, store, backend_tx, shard_id, level, read_only)
            _OPEN.set((*_OPEN.get(), tx))
            try:
                yield tx
                if db._closed:  # disconnect() meanwhile: a transaction does not commit into a closed datastore
                    raise StoreClosed(
                        f"the datastore was disconnected while the transaction on shard {shard_id} was open: rolled "
                        "back, nothing committed"
                    )
                if tx._error is not None or backend_tx.aborted():
                    raise tx._aborted_error("commit")
                committing = True
            finally:
                _OPEN.set(tuple(t for t in _OPEN.get() if t is not tx))
                tx._home.leave()
    except BaseException as exc:
        if tx is not None:
            tx._state = "rolled back"
            if committing and tx._wrote:
                # cut off on the way to or from COMMIT (a cancellation as the reply comes in, the connection lost):
                # it may have committed, so reads in this timeline go where it would be seen, as after any write.
                # Shielded: a second cancellation must not drop the note half-way
                await ashield(db._note_write(shard_id))
        elif isinstance(exc, PoolTimeout):
            held = [t.shard_id for t in _OPEN.get() if t._store is store and t._home.here()]
            if held:  # the caller waits for connections it holds itself
                exc.add_note(
                    f"this thread or task holds {len(held)} of them itself, in open transactions on shard(s) "
                    f"{', '.join(map(str, held))} of the same server: each transaction on another shard needs a "
                    "connection of its own, so nesting them needs pool_max above that count (or one shard's "
                    "transaction at a time)"
                )
        if started is not None:
            metrics.operation("transaction", store, perf_counter() - started, exc, shard_id)
        raise
    if started is not None:
        metrics.operation("transaction", store, perf_counter() - started, None, shard_id)
    if tx is not None:
        tx._state = "committed"
        if tx._wrote:  # reads on standbys wait for this commit in the current timeline, as after any write
            await db._note_write(shard_id)
