"""Nothing reachable from a connection lent by get_connection() acts on the pooled session once it is returned.

A user test found two ways past the guard: a server-side cursor (``conn.cursor("name")``: psycopg's
``server_cursor_factory``, not the guarded cursor class) and a bound method taken before the return
(``ex = conn.execute; db.put_connection(conn); ex("select 1")``). Each entry point below is taken while the
connection is lent and used after it was returned, while the next borrower holds the very same session
(``pool_max=1``): the use must raise `ConnectionMisuse`, and the next borrower's transaction must be untouched.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.pgservers import _fresh_database
from psycopg import pq

import hvcore

MARK = "SELECT set_config('hv.mark', 'misused', false)"
MARK_P = "SELECT set_config('hv.mark', %s, false)"
SCROLL = "SELECT generate_series(1, 1000)"
COPY_OUT = "COPY (SELECT 1) TO STDOUT"

Take = Callable[[Any], Any]
Use = Callable[[Any], Any]

# name: (what is taken while lent, how it is used after the return); the sync and the async connection alike
# (an async use returns an awaitable, awaited by the test)
ENTRIES: dict[str, tuple[Take, Use]] = {
    "execute, bound before": (lambda c: c.execute, lambda f: f(MARK)),
    "execute after": (lambda c: c, lambda c: c.execute(MARK)),
    "cursor, bound before": (lambda c: c.cursor, lambda f: f()),
    "client cursor made before: execute": (lambda c: c.cursor(), lambda cur: cur.execute(MARK)),
    "client cursor made before: bound execute": (lambda c: c.cursor().execute, lambda f: f(MARK)),
    "client cursor made before: executemany": (lambda c: c.cursor(), lambda cur: cur.executemany(MARK_P, [("x",)])),
    "client cursor: its connection": (lambda c: c.cursor().connection, lambda conn: conn.execute(MARK)),
    "server cursor made before: execute": (lambda c: c.cursor("hv_t"), lambda cur: cur.execute(MARK)),
    "server cursor made before: bound execute": (lambda c: c.cursor("hv_t").execute, lambda f: f(MARK)),
    "server cursor, bound cursor method": (lambda c: c.cursor, lambda f: f("hv_t")),
    "server cursor: its connection": (lambda c: _kept(c.cursor("hv_t")).connection, lambda conn: conn.execute(MARK)),
    "server cursor: stream": (lambda c: c.cursor("hv_t"), lambda cur: cur.stream(MARK)),
    "transaction() made before": (lambda c: c.transaction(), lambda tx: _enter(tx)),
    "transaction, bound before": (lambda c: c.transaction, lambda f: _enter(f())),
    "pipeline() made before": (lambda c: c.pipeline(), lambda p: _enter(p)),
    "pipeline, bound before": (lambda c: c.pipeline, lambda f: _enter(f())),
    "copy, bound before": (lambda c: c.cursor().copy, lambda f: _enter(f(COPY_OUT))),
    "copy() made before": (lambda c: c.cursor().copy(COPY_OUT), lambda cm: _enter(cm)),
    "stream() made before": (lambda c: c.cursor().stream(MARK), lambda it: _step(it)),
    "notifies() made before": (lambda c: c.notifies(timeout=0.05), lambda gen: _step(gen)),
    "commit, bound before": (lambda c: c.commit, lambda f: f()),
    "rollback, bound before": (lambda c: c.rollback, lambda f: f()),
    "set_autocommit, bound before": (lambda c: c.set_autocommit, lambda f: f(True)),
    "autocommit set after": (lambda c: c, lambda c: setattr(c, "autocommit", True)),
    "cancel_safe, bound before": (lambda c: c.cancel_safe, lambda f: f()),
    "close, bound before": (lambda c: c.close, lambda f: f()),
}

# fetching from a cursor that ran while lent: a server-side one fetches on the session
FETCHES: dict[str, tuple[str, Use]] = {
    "server cursor: fetchmany": ("hv_t", lambda cur: cur.fetchmany(10)),
    "server cursor: fetchone": ("hv_t", lambda cur: cur.fetchone()),
    "server cursor: scroll": ("hv_t", lambda cur: cur.scroll(1)),
    "server cursor: iteration": ("hv_t", lambda cur: _step(cur)),
    "client cursor: fetchone": ("", lambda cur: cur.fetchone()),
}


_KEPT: list[Any] = []


def _kept(cursor: Any) -> Any:
    """A server-side cursor kept alive (one collected while open warns: ResourceWarning) until the next test."""
    _KEPT[:] = [cursor]
    return cursor


_ASYNC: list[bool] = [False]  # the API the running case uses (a wrapt proxy has both kinds of dunders)


def _enter(manager: Any) -> Any:
    return manager.__aenter__() if _ASYNC[0] else manager.__enter__()


def _step(iterator: Any) -> Any:
    return anext(aiter(iterator)) if _ASYNC[0] else next(iter(iterator))


def _servers(pg_fresh_db: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**pg_fresh_db, "shards": "0-8"}]


def _open_theirs(theirs: Any) -> None:
    """The next borrower's own transaction, with a setting of its own."""
    theirs.execute("SELECT set_config('hv.theirs', 'mine', true)")


THEIRS_SQL = "SELECT current_setting('hv.theirs', true), current_setting('hv.mark', true)"


def _check_theirs(conn_status: Any, row: Any) -> None:
    assert conn_status == pq.TransactionStatus.INTRANS, "the next borrower's transaction was ended"
    assert tuple(row.values()) == ("mine", None) or tuple(row.values()) == ("mine", ""), row


@pytest.fixture(scope="module")
def provisioned(pg_main: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    """One provisioned database for the module's many cases (each leaves it as it found it)."""
    with _fresh_database(pg_main) as settings:
        with hvcore.Datastore(_servers(settings), backend="jsonb") as db:
            db.provision()
        yield _servers(settings)


def _sync_case(servers: list[dict[str, Any]], take: Take, use: Use, fetch: str | None = None) -> None:
    _ASYNC[0] = False
    with hvcore.Datastore(servers, backend="jsonb", pool_max=1) as db:
        conn = db.get_connection(3)
        if fetch is not None:
            taken: Any = conn.cursor(fetch) if fetch else conn.cursor()
            taken.execute(SCROLL)
        else:
            taken = take(conn)
        db.put_connection(conn)
        theirs = db.get_connection(4)  # pool_max=1: the same pooled session
        try:
            _open_theirs(theirs)
            with pytest.raises(hvcore.ConnectionMisuse, match=r"returned with put_connection\(\)"):
                use(taken)
            _check_theirs(theirs.pgconn.transaction_status, theirs.execute(THEIRS_SQL).fetchone())
        finally:
            db.put_connection(theirs)
        assert db._stores[0].stats()["borrowed"] == 0


@pytest.mark.parametrize("entry", ENTRIES, ids=list(ENTRIES))
def test_sync_entry_points_are_refused_after_return(provisioned: list[dict[str, Any]], entry: str) -> None:
    take, use = ENTRIES[entry]
    _sync_case(provisioned, take, use)


@pytest.mark.parametrize("entry", FETCHES, ids=list(FETCHES))
def test_sync_fetches_are_refused_after_return(provisioned: list[dict[str, Any]], entry: str) -> None:
    name, use = FETCHES[entry]
    _sync_case(provisioned, lambda c: c, use, fetch=name)


async def _settle(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


def _async_case(servers: list[dict[str, Any]], take: Take, use: Use, fetch: str | None = None) -> None:
    _ASYNC[0] = True

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", pool_max=1) as db:
            conn = await db.get_connection(3)
            if fetch is not None:
                taken: Any = conn.cursor(fetch) if fetch else conn.cursor()
                await taken.execute(SCROLL)
            else:
                taken = take(conn)
            await db.put_connection(conn)
            theirs = await db.get_connection(4)
            try:
                await theirs.execute("SELECT set_config('hv.theirs', 'mine', true)")
                with pytest.raises(hvcore.ConnectionMisuse, match=r"returned with put_connection\(\)"):
                    await _settle(use(taken))
                row = await (await theirs.execute(THEIRS_SQL)).fetchone()
                _check_theirs(theirs.pgconn.transaction_status, row)
            finally:
                await db.put_connection(theirs)
            assert db._stores[0].stats()["borrowed"] == 0

    asyncio.run(main())


ASYNC_ONLY: dict[str, tuple[Take, Use]] = {
    # a coroutine made while lent, awaited after the return
    "execute() coroutine made before": (lambda c: c.execute(MARK), lambda co: co),
    "commit() coroutine made before": (lambda c: c.commit(), lambda co: co),
    "cursor execute() coroutine made before": (lambda c: c.cursor().execute(MARK), lambda co: co),
}
ASYNC_ENTRIES: dict[str, tuple[Take, Use]] = {**ENTRIES, **ASYNC_ONLY}


@pytest.mark.parametrize("entry", ASYNC_ENTRIES, ids=list(ASYNC_ENTRIES))
def test_async_entry_points_are_refused_after_return(provisioned: list[dict[str, Any]], entry: str) -> None:
    take, use = ASYNC_ENTRIES[entry]
    _async_case(provisioned, take, use)


@pytest.mark.parametrize("entry", FETCHES, ids=list(FETCHES))
def test_async_fetches_are_refused_after_return(provisioned: list[dict[str, Any]], entry: str) -> None:
    name, use = FETCHES[entry]
    _async_case(provisioned, lambda c: c, use, fetch=name)


def test_the_lent_connection_still_works_while_lent(provisioned: list[dict[str, Any]]) -> None:
    """The guard stays out of the way until the return: every entry point above works while lent."""
    with hvcore.Datastore(provisioned, backend="jsonb", pool_max=1) as db:
        conn = db.get_connection(3)
        try:
            ex = conn.execute
            assert ex("SELECT 1 AS one").fetchone() == {"one": 1}
            with conn.cursor("hv_t") as cur:
                cur.execute(SCROLL)
                assert cur.fetchmany(3) == [{"generate_series": n} for n in (1, 2, 3)]
                assert cur.connection is conn
            with conn.transaction():
                conn.execute(MARK)
            with conn.pipeline():
                conn.execute("SELECT 1")
            with conn.cursor() as client, client.copy(COPY_OUT) as copy:
                assert b"".join(bytes(chunk) for chunk in copy) == b"1\n"
            assert [row["generate_series"] for row in conn.cursor().stream("SELECT generate_series(1, 3)")] == [1, 2, 3]
            assert list(conn.notifies(timeout=0.01)) == []
            conn.commit()
        finally:
            db.put_connection(conn)


def test_a_server_cursor_left_open_is_closed_with_the_return(provisioned: list[dict[str, Any]]) -> None:
    """The session reset closed it on the server: the client side says so too (no ResourceWarning later)."""
    with hvcore.Datastore(provisioned, backend="jsonb", pool_max=1) as db:
        conn = db.get_connection(3)
        cur = conn.cursor("hv_t")
        cur.execute(SCROLL)
        close = cur.close  # taken while lent
        db.put_connection(conn)
        assert cur.closed
        cur.close()  # closing again sends nothing: allowed
        close()


MEMORY: dict[str, tuple[Take, Use]] = {
    "execute, bound before": ENTRIES["execute, bound before"],
    "execute after": ENTRIES["execute after"],
    "cursor, bound before": ENTRIES["cursor, bound before"],
    "cursor made before: execute": ENTRIES["client cursor made before: execute"],
    "cursor made before: fetchone": (lambda c: c.execute("SELECT 1"), lambda cur: cur.fetchone()),
    "cursor made before: fetchall": (lambda c: c.execute("SELECT 1"), lambda cur: cur.fetchall()),
    "cursor made before: rows": (lambda c: c.cursor(), lambda cur: cur.rows()),
    "cursor: its connection": (lambda c: c.cursor().connection, lambda conn: conn.execute("SELECT 1")),
    "transaction() made before": ENTRIES["transaction() made before"],
    "commit, bound before": ENTRIES["commit, bound before"],
    "rollback, bound before": ENTRIES["rollback, bound before"],
}


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("entry", MEMORY, ids=list(MEMORY))
def test_memory_entry_points_are_refused_after_return(entry: str, api: str) -> None:
    take, use = MEMORY[entry]
    _ASYNC[0] = api == "async"  # the async memory connection has psycopg's async shape (AsyncMemoryConnection)
    servers = [dict(shards="0-8")]
    if api == "sync":
        with hvcore.Datastore(servers, backend="memory") as db:
            conn = db.get_connection(3)
            taken = take(conn)
            db.put_connection(conn)
            with pytest.raises(hvcore.ConnectionMisuse, match=r"returned with put_connection\(\)"):
                use(taken)
        return

    async def main() -> None:
        async with hvcore.AsyncDatastore(servers, backend="memory") as db:
            conn = await db.get_connection(3)
            taken = await _settle(take(conn))  # ``await conn.execute(...)``: the cursor
            await db.put_connection(conn)
            with pytest.raises(hvcore.ConnectionMisuse, match=r"returned with put_connection\(\)"):
                await _settle(use(taken))

    asyncio.run(main())


def _public_methods(cls: type) -> list[str]:
    return sorted(n for n in dir(cls) if not n.startswith("_") and inspect.isfunction(getattr(cls, n, None)))


@pytest.mark.parametrize("api", ["sync", "async"])
def test_every_public_method_taken_while_lent_is_refused_after_return(
    provisioned: list[dict[str, Any]], api: str
) -> None:
    """The kind, not the cases above: every public method of psycopg's connection and of both cursor classes, taken
    while lent, raises ConnectionMisuse when called (or awaited) after the return, before looking at its arguments."""
    import psycopg

    classes = (
        (psycopg.Connection, psycopg.Cursor, psycopg.ServerCursor)
        if api == "sync"
        else (psycopg.AsyncConnection, psycopg.AsyncCursor, psycopg.AsyncServerCursor)
    )
    names = {cls: [n for n in _public_methods(cls) if n not in ("connect", "close")] for cls in classes}

    def take(conn: Any) -> dict[str, Any]:
        made = {classes[0]: conn, classes[1]: conn.cursor(), classes[2]: _kept(conn.cursor("hv_all"))}
        return {f"{cls.__name__}.{n}": getattr(made[cls], n) for cls in classes for n in names[cls]}

    async def check(methods: dict[str, Any]) -> list[str]:
        missed = []
        for name, method in methods.items():
            try:
                await _settle(method())
            except hvcore.ConnectionMisuse:
                continue
            except Exception as exc:  # reported below
                missed.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                missed.append(f"{name}: ran")
        return missed

    if api == "sync":
        with hvcore.Datastore(provisioned, backend="jsonb", pool_max=1) as db:
            conn = db.get_connection(3)
            methods = take(conn)
            db.put_connection(conn)
            theirs = db.get_connection(4)
            try:
                missed = asyncio.run(check(methods))
            finally:
                db.put_connection(theirs)
    else:

        async def main() -> list[str]:
            async with hvcore.AsyncDatastore(provisioned, backend="jsonb", pool_max=1) as db:
                conn = await db.get_connection(3)
                methods = take(conn)
                await db.put_connection(conn)
                theirs = await db.get_connection(4)
                try:
                    return await check(methods)
                finally:
                    await db.put_connection(theirs)

        missed = asyncio.run(main())
    assert len(names[classes[0]]) > 20 and len(names[classes[2]]) > 10
    assert missed == []
