"""One connection attempt per server per call: a server that did not answer is not tried again in the same call.

A call that reaches a server in several steps (``provision`` reads the recorded placement, then checks and creates
the shards; ``hv status`` counts rows, then reads the database's identity) used to try a server that never answers
once per step, each attempt costing ``connect_timeout``. Inside `one_attempt_per_server` (the datastore's operator
calls and every ``hv`` command enter it), the first failed connection attempt to a server is remembered
(`failed_attempt`), and a later attempt in the same call gets that error at once (`earlier_failure`), without
connecting. Servers are told apart by their label (``host:port/dbname``); a refused login is not remembered (it
answers at once, and another role of the same server may log in).

The scope is a contextvars context value, so the threads and tasks that run the pieces of a call (the datastore's
fan-out, ``asyncio.to_thread``) share it; the pool's own workers, which make connections for the pool, do not:
the store records what a caller was told (`failed_attempt`). No I/O.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from hvcore.errors import ServerUnavailable

__all__ = ["earlier_failure", "failed_attempt", "one_attempt_per_call", "one_attempt_per_server"]

_F = TypeVar("_F", bound=Callable[..., Any])

_FAILED: ContextVar[dict[str, ServerUnavailable] | None] = ContextVar("hv_failed_servers", default=None)


@contextmanager
def one_attempt_per_server(*, fresh: bool = False) -> Iterator[None]:
    """Within: a server whose connection attempt failed is not tried again (its error is raised at once).

    Nested inside another such scope, the outer one goes on (one attempt for the whole outer call) unless
    ``fresh`` (a new round of ``hv status --watch``: a server that came back is seen again)."""
    if _FAILED.get() is not None and not fresh:
        yield
        return
    token = _FAILED.set({})
    try:
        yield
    finally:
        _FAILED.reset(token)


def one_attempt_per_call(fn: _F) -> _F:
    """Decorate a sync or async method: each call runs inside `one_attempt_per_server`."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with one_attempt_per_server():
                return await fn(*args, **kwargs)

        return cast(_F, run_async)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with one_attempt_per_server():
            return fn(*args, **kwargs)

    return cast(_F, run)


def earlier_failure(label: str) -> ServerUnavailable | None:
    """A copy of the error of the failed connection attempt to ``label`` earlier in the running call, or None (no
    such failure, or outside `one_attempt_per_server`): the caller raises it instead of connecting again."""
    failed = _FAILED.get()
    error = failed.get(label) if failed else None
    return None if error is None else copy.copy(error).with_traceback(None)


def failed_attempt(label: str, error: BaseException) -> None:
    """Remember that a connection attempt to ``label`` failed with ``error`` (a `ServerUnavailable`; other errors,
    a refused login, are not remembered), if inside `one_attempt_per_server`. The first failure is kept."""
    failed = _FAILED.get()
    if failed is not None and isinstance(error, ServerUnavailable) and not error.timed_out:
        failed.setdefault(label, error)
