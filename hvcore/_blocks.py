"""Context managers made from generators that refuse a second ``with``: a typed error instead of contextlib's."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Generic, ParamSpec, TypeVar

from hvcore.errors import HypervaultError

__all__ = ["aonce_block", "once_block"]

P = ParamSpec("P")
T = TypeVar("T")


def _reused(what: str, error: type[HypervaultError]) -> HypervaultError:
    return error(
        f"this {what} block was already used by a `with` statement: a block runs once, so each `with` needs its "
        f"own call (write `with {what} as ...:` in the loop instead of keeping the object {what} returned)"
    )


class _Once(AbstractContextManager[T], Generic[T]):
    """A generator's context manager entered at most once (`once_block`)."""

    __slots__ = ("_error", "_made", "_used", "_what")

    def __init__(self, made: AbstractContextManager[T], what: str, error: type[HypervaultError]) -> None:
        self._made, self._what, self._error, self._used = made, what, error, False

    def __enter__(self) -> T:
        if self._used:
            raise _reused(self._what, self._error)
        self._used = True
        return self._made.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self._made.__exit__(kind, exc, tb)


class _AOnce(AbstractAsyncContextManager[T], Generic[T]):
    """An async generator's context manager entered at most once (`aonce_block`)."""

    __slots__ = ("_error", "_made", "_used", "_what")

    def __init__(self, made: AbstractAsyncContextManager[T], what: str, error: type[HypervaultError]) -> None:
        self._made, self._what, self._error, self._used = made, what, error, False

    async def __aenter__(self) -> T:
        if self._used:
            raise _reused(self._what, self._error)
        self._used = True
        return await self._made.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._made.__aexit__(kind, exc, tb)


def once_block(
    what: str, error: type[HypervaultError]
) -> Callable[[Callable[P, Iterator[T]]], Callable[P, AbstractContextManager[T]]]:
    """`contextlib.contextmanager` whose block object refuses a second ``with`` with ``error`` naming ``what``
    (``"db.transaction(shard)"``), where contextlib raises ``AttributeError: ... has no attribute 'args'``."""

    def decorate(fn: Callable[P, Iterator[T]]) -> Callable[P, AbstractContextManager[T]]:
        made = contextmanager(fn)

        @functools.wraps(fn)
        def block(*args: P.args, **kwargs: P.kwargs) -> AbstractContextManager[T]:
            return _Once(made(*args, **kwargs), what, error)

        return block

    return decorate


def aonce_block(
    what: str, error: type[HypervaultError]
) -> Callable[[Callable[P, AsyncIterator[T]]], Callable[P, AbstractAsyncContextManager[T]]]:
    """`contextlib.asynccontextmanager` whose block object refuses a second ``async with`` (see `once_block`)."""

    def decorate(fn: Callable[P, AsyncIterator[T]]) -> Callable[P, AbstractAsyncContextManager[T]]:
        made = asynccontextmanager(fn)

        @functools.wraps(fn)
        def block(*args: P.args, **kwargs: P.kwargs) -> AbstractAsyncContextManager[T]:
            return _AOnce(made(*args, **kwargs), what, error)

        return block

    return decorate
