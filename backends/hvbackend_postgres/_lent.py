"""The handle `get_connection` lends: the pooled psycopg connection until `put_connection`, refused after.

Everything reachable from the handle is guarded, not only the handle itself: a method taken before the return
(``ex = conn.execute``), a coroutine made before it and awaited after, cursors of both kinds (``conn.cursor()`` and
the server-side ``conn.cursor("name")``), their ``connection``, ``conn.transaction()``, ``conn.pipeline()``,
``cursor.copy()``, ``cursor.stream()``, ``conn.notifies()`` and ``with conn:`` / ``async with conn:`` (which bind
the handle, as psycopg's bind the connection, and commit or roll back at the block's end without closing it). Each
is handed out wrapped (a bound method in a callable checking the borrow at call time, an object in `_Guarded`), so
after the return it raises `ConnectionMisuse` instead of running on the pooled session, which the pool lends to the
next borrower. A transaction's ``tx.cursor()`` lends the same kind of handle for its block (`lend_cursor`). Not
guarded: ``conn.pgconn`` (libpq's own object, which psycopg's adapters need unwrapped) and ``conn.info``
(read-only facts); code that drives libpq directly is on its own.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import MethodType
from typing import Any, NoReturn

import wrapt
from psycopg._cursor_base import BaseCursor
from psycopg.adapt import AdaptersMap
from psycopg.pq import Format

from hvcore.errors import ConnectionMisuse

_PLAIN = (type(None), bool, int, float, str, bytes, tuple, list, dict)  # results passed on as they are (fast path)
_SESSION_BOUND = (BaseCursor, AbstractContextManager, AbstractAsyncContextManager, Iterator, AsyncIterator)
"""What a lent handle's methods return that may act on the session later: cursors, transactions, pipelines,
copies (context managers), streams and notification generators (iterators): handed out as `_Guarded`."""


RETURNED = "was returned with put_connection()"
TX_CURSOR_ENDED = "is a transaction's (tx.cursor()), whose block has ended"
_AFTER = {
    RETURNED: "borrow one again with get_connection() "
    "(or use `with db.cursor(shard) as cur:`, which returns it for you)",
    TX_CURSOR_ENDED: "keep its use inside `with tx.cursor() as cur:` (open another one for more statements)",
}


def _misuse(where: str, ended: str = RETURNED) -> ConnectionMisuse:
    return ConnectionMisuse(
        f"this connection to {where} {ended}: the pool may have lent it to another borrower since, and a statement "
        f"through it would run inside that borrower's transaction; {_AFTER.get(ended, _AFTER[RETURNED])}"
    )


class _Returned:
    """What a returned handle wraps: every use raises `ConnectionMisuse`."""

    closed = True  # as the borrower sees it: ``if not conn.closed`` guards stay quiet, every use is refused

    def __init__(self, where: str, ended: str = RETURNED) -> None:
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "ended", ended)

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # wrapt and Python probe optional dunders: absent, not misuse
            raise AttributeError(name)
        raise _misuse(self.where, self.ended)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise _misuse(self.where, self.ended)  # ``conn.autocommit = True`` would reach the next borrower's session

    def __enter__(self) -> NoReturn:
        raise _misuse(self.where, self.ended)

    def __exit__(self, *exc: object) -> None:
        """Nothing to undo: ``__enter__`` refused."""

    async def __aenter__(self) -> NoReturn:
        raise _misuse(self.where, self.ended)

    async def __aexit__(self, *exc: object) -> None:
        """Nothing to undo: ``__aenter__`` refused."""


class LentConnection(wrapt.ObjectProxy[Any]):
    """A borrowed psycopg connection, as itself: ``isinstance(conn, psycopg.Connection)``, every attribute and method.

    Once it is given back with `put_connection` the handle lets go of the pool's connection (which the pool then
    lends to others) and every use of it, or of anything taken from it (see the module's docstring), raises
    `ConnectionMisuse`, instead of running in the next borrower's transaction (each borrow gets a handle of its
    own); only ``closed`` still answers (True). A transparent proxy by ``wrapt.ObjectProxy`` (Graham Dumpleton's
    wrapt), so psycopg's own functions (``sql.Composable.as_string``, ``TypeInfo.fetch``...) take it.
    """

    def __init__(self, conn: Any, where: str, ended: str = RETURNED) -> None:
        super().__init__(conn)
        self._self_where = where
        self._self_ended = ended  # what ends the lend, for `ConnectionMisuse` (RETURNED, TX_CURSOR_ENDED)
        self._self_cursors: weakref.WeakSet[BaseCursor[Any, Any]] = weakref.WeakSet()  # closed with the return

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.__wrapped__, name)  # once returned: `_Returned` raises ConnectionMisuse
        if name.startswith("__"):
            return value
        return _guard(self, value)

    def __repr__(self) -> str:
        wrapped = self.__wrapped__
        if isinstance(wrapped, _Returned):
            return f"<hypervault connection to {self._self_where}, returned with put_connection()>"
        return f"<hypervault connection to {self._self_where}: {wrapped!r}>"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"a connection cannot be pickled ({self!r})")

    # ``with conn:`` binds the handle (wrapt's would bind the pooled connection, unguarded after the return) and, as
    # psycopg's does for a pooled connection, commits (rolls back on an exception) at the end without closing it:
    # it stays borrowed until put_connection. A block ended after the return commits nothing: refused, unless an
    # exception is on its way already.

    def __enter__(self) -> LentConnection:
        _check(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if _returned(self):
            if exc_type is None:
                raise self.hv_misuse()
            return
        self.__wrapped__.__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> LentConnection:
        _check(self)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if _returned(self):
            if exc_type is None:
                raise self.hv_misuse()
            return
        await self.__wrapped__.__aexit__(exc_type, exc, tb)

    def hv_misuse(self) -> ConnectionMisuse:
        """The error for a use of this handle, or of a cursor made through it, after it was returned."""
        return _misuse(self._self_where, self._self_ended)


class TransactionHandle(LentConnection):
    """What ``cur.connection`` of a ``tx.cursor()`` is: a `LentConnection` for the block, whose client cursors
    (``cursor()``, ``execute()``) are the transaction's cursor class, so that a statement ending the transaction
    (``COMMIT``) is refused through it as through ``cur`` itself (psycopg's ``commit()`` is refused already)."""

    def __init__(self, conn: Any, where: str, make_cursor: Any) -> None:
        super().__init__(conn, where, TX_CURSOR_ENDED)
        self._self_make_cursor = make_cursor  # (row_factory=None) -> a cursor of the transaction's class

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        """As psycopg's; a client cursor (no ``name``) of the transaction's cursor class."""
        if args or kwargs.get("name"):  # a server-side cursor: psycopg's own, guarded
            return LentConnection.__getattr__(self, "cursor")(*args, **kwargs)
        _check(self)
        binary = kwargs.pop("binary", False)
        cur = self._self_make_cursor(**kwargs)
        if binary:
            cur.format = Format.BINARY
        return _guard(self, cur)

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False) -> Any:
        """As psycopg's (awaitable on an async connection): through `cursor`."""
        return self.cursor(binary=binary).execute(query, params, prepare=prepare)


def _returned(handle: LentConnection) -> bool:
    return isinstance(handle.__wrapped__, _Returned)


def _check(handle: LentConnection) -> None:
    if isinstance(handle.__wrapped__, _Returned):
        raise handle.hv_misuse()


def _guard(handle: LentConnection, value: Any, owner: _Guarded | None = None) -> Any:
    """``value``, reached through ``handle`` (from ``owner``, if a guarded object), as the borrower may keep it:
    refused once the handle is returned."""
    if isinstance(value, _PLAIN):
        return value
    if value is handle.__wrapped__ or value is handle:  # ``cursor.connection``, ``transaction.connection``
        return handle
    if isinstance(value, MethodType):
        if _is_async(value.__func__):
            return _GuardedAsyncMethod(handle, value, owner)
        return _GuardedMethod(handle, value, owner)
    if isinstance(value, BaseCursor):
        handle._self_cursors.add(value)
        return _Guarded(value, handle)
    if isinstance(value, _SESSION_BOUND) and not isinstance(value, _Guarded):
        return _Guarded(value, handle)
    return value


_ASYNC_FUNCTIONS: dict[Any, bool] = {}  # function -> is a coroutine function (asked once per method of a class)


def _is_async(function: Any) -> bool:
    found = _ASYNC_FUNCTIONS.get(function)
    if found is None:
        found = _ASYNC_FUNCTIONS[function] = inspect.iscoroutinefunction(function)
    return found


class _GuardedMethod:
    """A method reached through a lent handle: checks the borrow when called, guards what it returns."""

    __slots__ = ("_handle", "_method", "_owner")

    def __init__(self, handle: LentConnection, method: Any, owner: _Guarded | None = None) -> None:
        self._handle = handle
        self._method = method
        self._owner = owner  # the guarded object the method was taken from: ``cur.execute()`` returns ``cur``

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        handle = self._handle
        if isinstance(handle.__wrapped__, _Returned):
            if self._closes_cursor():
                return None
            raise handle.hv_misuse()
        return self._result(self._method(*args, **kwargs))

    def _result(self, result: Any) -> Any:
        owner = self._owner
        if owner is not None and result is owner.__wrapped__:  # the object itself, as the borrower holds it
            return owner
        return _guard(self._handle, result)

    def _closes_cursor(self) -> bool:
        """True (and the cursor marked closed) for a cursor's ``close`` called after the return: it sends nothing."""
        owner = getattr(self._method, "__self__", None)
        if self._method.__name__ == "close" and isinstance(owner, BaseCursor):
            _close_locally(owner)
            return True
        return False

    def __getattr__(self, name: str) -> Any:  # __name__, __doc__, __self__... of the method
        return getattr(self._method, name)

    def __repr__(self) -> str:
        return f"<guarded {self._method!r}>"


class _GuardedAsyncMethod(_GuardedMethod):
    """A coroutine method reached through a lent handle: checks the borrow when awaited (a coroutine made while lent
    and awaited after the return is refused too)."""

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        handle = self._handle
        if isinstance(handle.__wrapped__, _Returned):
            if self._closes_cursor():
                return None
            raise handle.hv_misuse()
        return self._result(await self._method(*args, **kwargs))


def _close_locally(cursor: BaseCursor[Any, Any]) -> None:
    """Mark a cursor closed without a round trip: the return's session reset closed it on the server."""
    if not cursor.closed:
        cursor._close()  # psycopg's client-side half of close()


class _Guarded(wrapt.ObjectProxy[Any]):
    """A cursor, transaction, pipeline, copy or stream made through a lent handle: usable while the handle is lent,
    `ConnectionMisuse` once it is returned (closing a cursor again is allowed: it sends nothing)."""

    def __init__(self, wrapped: Any, handle: LentConnection) -> None:
        super().__init__(wrapped)
        self._self_handle = handle

    def __getattr__(self, name: str) -> Any:
        handle = self._self_handle
        if name.startswith("__"):
            return getattr(self.__wrapped__, name)
        if _returned(handle):
            wrapped = self.__wrapped__
            if name == "closed":
                return True
            if name == "close" and isinstance(wrapped, BaseCursor):
                return self._close_after_return
            raise handle.hv_misuse()
        return _guard(handle, getattr(self.__wrapped__, name), self)

    def _close_after_return(self) -> Any:
        _close_locally(self.__wrapped__)
        if inspect.iscoroutinefunction(type(self.__wrapped__).close):
            return _done()
        return None

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"{self!r} cannot be pickled")

    def _same(self, result: Any) -> Any:
        return self if result is self.__wrapped__ else _guard(self._self_handle, result)

    def __enter__(self) -> Any:
        _check(self._self_handle)
        return self._same(self.__wrapped__.__enter__())

    def __exit__(self, *exc: Any) -> Any:
        if _returned(self._self_handle):
            if isinstance(self.__wrapped__, BaseCursor):
                _close_locally(self.__wrapped__)
                return None
            raise self._self_handle.hv_misuse()
        return self.__wrapped__.__exit__(*exc)

    async def __aenter__(self) -> Any:
        _check(self._self_handle)
        return self._same(await self.__wrapped__.__aenter__())

    async def __aexit__(self, *exc: Any) -> Any:
        if _returned(self._self_handle):
            if isinstance(self.__wrapped__, BaseCursor):
                _close_locally(self.__wrapped__)
                return None
            raise self._self_handle.hv_misuse()
        return await self.__wrapped__.__aexit__(*exc)

    def __iter__(self) -> Any:
        _check(self._self_handle)
        return self._same(iter(self.__wrapped__))

    def __next__(self) -> Any:
        _check(self._self_handle)
        return next(self.__wrapped__)

    def __aiter__(self) -> Any:
        _check(self._self_handle)
        return self._same(self.__wrapped__.__aiter__())

    async def __anext__(self) -> Any:
        _check(self._self_handle)
        return await self.__wrapped__.__anext__()


async def _done() -> None:
    """An async cursor's ``close()`` after the return: nothing to send."""


def lent_target(conn: Any) -> Any:
    """The pooled connection behind ``conn`` (a `LentConnection` or the connection itself); None once returned."""
    if isinstance(conn, LentConnection):
        wrapped = conn.__wrapped__
        return None if isinstance(wrapped, _Returned) else wrapped
    return conn


def lend_cursor(handle: LentConnection, cursor: Any) -> Any:
    """``cursor`` (made on ``handle``'s connection directly, as a transaction's) as a cursor made through ``handle``:
    its ``connection`` is the handle, and it is refused once the handle is detached."""
    handle._self_cursors.add(cursor)
    return _Guarded(cursor, handle)


def detach(handle: LentConnection) -> None:
    """Let go of the pooled connection: every later use of ``handle``, or of anything taken from it, raises
    `ConnectionMisuse`; its cursors are marked closed (the session reset that follows closes them on the server)."""
    handle.__wrapped__ = _Returned(handle._self_where, handle._self_ended)
    for cursor in list(handle._self_cursors):
        _close_locally(cursor)
    handle._self_cursors.clear()


def remember_baseline(conn: Any) -> None:
    """After the pool configured ``conn``: its adapters as the pool set them, which `forget_user_state` restores."""
    conn.hv_adapters = conn.adapters
    conn._adapters = AdaptersMap(conn.hv_adapters)  # copy-on-write: a borrower's registration changes only the copy
    conn.hv_prepared_max = conn.prepared_max


def forget_user_state(conn: Any) -> None:
    """Drop what user code added to a borrowed connection's Python side: notice and notify handlers (the pool's
    connections have none of their own: one borrower's would hear the next borrowers' notices and NOTIFY payloads,
    and one added per borrow would pile up) and adapters (a dumper, loader or type registered on ``conn.adapters``
    would change the next borrowers' values), ``prepared_max``, and the mark of a ``PREPARE`` seen; ~1 µs."""
    conn.hv_user_prepared = False  # the reset deallocated what it PREPAREd (_bouncer.DEALLOCATE_USER_SQL)
    if conn._notice_handlers:
        conn._notice_handlers.clear()
    if conn._notify_handlers:
        conn._notify_handlers.clear()
    base = getattr(conn, "hv_adapters", None)
    if base is not None:
        conn._adapters = AdaptersMap(base)  # a map the borrower kept (``conn.adapters``) no longer reaches it
        if conn.prepared_max != conn.hv_prepared_max:  # room for prepared statements, as the pool set it
            conn.prepared_max = conn.hv_prepared_max
