"""The handle `get_connection` lends: the pooled psycopg connection until `put_connection`, refused after."""

from __future__ import annotations

from typing import Any, NoReturn

import wrapt

from hvcore.errors import ConnectionMisuse


def _misuse(where: str) -> ConnectionMisuse:
    return ConnectionMisuse(
        f"this connection to {where} was returned with put_connection(): the pool has lent it to another borrower "
        "since, and a statement through it would run inside that borrower's transaction; borrow one again with "
        "get_connection() (or use `with db.cursor(shard) as cur:`, which returns it for you)"
    )


class _Returned:
    """What a returned handle wraps: every use raises `ConnectionMisuse`."""

    closed = True  # as the borrower sees it: ``if not conn.closed`` guards stay quiet, every use is refused

    def __init__(self, where: str) -> None:
        self.where = where

    def __getattr__(self, name: str) -> NoReturn:
        if name.startswith("__"):  # wrapt and Python probe optional dunders: absent, not misuse
            raise AttributeError(name)
        raise _misuse(self.where)

    def __enter__(self) -> NoReturn:
        raise _misuse(self.where)

    def __exit__(self, *exc: object) -> None:
        """Nothing to undo: ``__enter__`` refused."""

    async def __aenter__(self) -> NoReturn:
        raise _misuse(self.where)

    async def __aexit__(self, *exc: object) -> None:
        """Nothing to undo: ``__aenter__`` refused."""


class LentConnection(wrapt.ObjectProxy[Any]):
    """A borrowed psycopg connection, as itself: ``isinstance(conn, psycopg.Connection)``, every attribute and method.

    Once it is given back with `put_connection` the handle lets go of the pool's connection (which the pool then
    lends to others) and every use of it raises `ConnectionMisuse`, instead of running in the next borrower's
    transaction (each borrow gets a handle of its own); only ``closed`` still answers (True). A transparent proxy
    by ``wrapt.ObjectProxy`` (Graham Dumpleton's wrapt), so psycopg's own functions (``sql.Composable.as_string``,
    ``TypeInfo.fetch``...) take it.
    """

    def __init__(self, conn: Any, where: str) -> None:
        super().__init__(conn)
        self._self_where = where

    def __repr__(self) -> str:
        wrapped = self.__wrapped__
        if isinstance(wrapped, _Returned):
            return f"<hypervault connection to {self._self_where}, returned with put_connection()>"
        return f"<hypervault connection to {self._self_where}: {wrapped!r}>"

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"a connection cannot be pickled ({self!r})")

    def hv_misuse(self) -> ConnectionMisuse:
        """The error for a use of this handle, or of a cursor made through it, after it was returned."""
        return _misuse(self._self_where)


def lent_target(conn: Any) -> Any:
    """The pooled connection behind ``conn`` (a `LentConnection` or the connection itself); None once returned."""
    if isinstance(conn, LentConnection):
        wrapped = conn.__wrapped__
        return None if isinstance(wrapped, _Returned) else wrapped
    return conn


def detach(handle: LentConnection) -> None:
    """Let go of the pooled connection: every later use of ``handle`` raises `ConnectionMisuse`."""
    handle.__wrapped__ = _Returned(handle._self_where)
