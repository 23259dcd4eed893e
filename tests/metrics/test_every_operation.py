"""Every public operation of `Datastore` and `AsyncDatastore`, enumerated from the class: each records exactly one
``db.client.operation.duration`` with the semantic conventions' attributes, ``error.type`` added when it fails.

A new public method fails `test_every_public_method_is_an_operation_or_said_not_to_be` until it is given a call
here (and records its duration) or is listed in `NOT_OPERATIONS` with the reason."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from fixtures.otel import metric_points
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hvcore
from hvcore import metrics

DURATION = "db.client.operation.duration"
SHARD = 3

NOT_OPERATIONS = {  # public methods that are no database operation of the conventions' kind, and why
    "as_key": "no I/O",
    "store_for": "no I/O",
    "timeline": "no I/O: a scope for read-your-writes",
    "open": "the datastore's life cycle",
    "close": "the datastore's life cycle",
    "disconnect": "the datastore's life cycle",
    "reinstantiate": "the datastore's life cycle",
    "provision": "administration (schemas, tables)",
    "status": "administration",
    "create_index": "administration (schema change)",
    "create_body_index": "administration (schema change)",
    "drop_index": "administration (schema change)",
    "drop_body_index": "administration (schema change)",
    "list_indexes": "administration",
    "migrate": "administration (schema change)",
    "migration_status": "administration",
    "move_shard": "administration: recorded as hypervault.shard.moves and its pause and duration",
    "move_state": "administration",
    "rollback_move": "administration",
    "placement_version": "administration (the shard map)",
    "reload_placement": "administration (the shard map)",
    "shared_databases": "administration",
    "refresh_replicas": "hypervault's own replication-lag reads, no operation of the caller's",
    "get_connection": "a raw connection: the caller's own SQL, which hypervault cannot name",
    "put_connection": "a raw connection given back",
    "cursor": "a raw cursor: the caller's own SQL, which hypervault cannot name",
}


class Boom(Exception):
    """What a store made to fail raises."""


def _public_methods(cls: type) -> set[str]:
    """The public methods of ``cls`` (properties and class methods are no operations)."""
    return {
        name for name in dir(cls) if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name))
    }


# -- one call of each operation, touching shard SHARD only (one server): sync, then async -------------------------


def _transaction(ds: Any, key: Any, fail: bool) -> None:
    with ds.transaction(SHARD) as tx:
        tx.get(key)
        if fail:
            raise Boom("in the block")


SYNC: dict[str, Callable[[Any, Any, bool], object]] = {
    "put": lambda ds, key, fail: ds.put(SHARD, 1, n="a"),
    "put_many": lambda ds, key, fail: ds.put_many(SHARD, 1, [{"n": "a"}, {"n": "b"}]),
    "get": lambda ds, key, fail: ds.get(key),
    "get_many": lambda ds, key, fail: ds.get_many([key]),
    "update": lambda ds, key, fail: ds.update(key, n="b"),
    "replace": lambda ds, key, fail: ds.replace(key, n="c"),
    "delete": lambda ds, key, fail: ds.delete(key),
    "query": lambda ds, key, fail: list(ds.query(kind=1, shards=[SHARD])),
    "update_where": lambda ds, key, fail: ds.update_where(set={"n": "d"}, kind=1, shards=[SHARD]),
    "delete_where": lambda ds, key, fail: ds.delete_where(kind=9, shards=[SHARD]),
    "transaction": _transaction,
}


async def _atransaction(ds: Any, key: Any, fail: bool) -> None:
    async with ds.transaction(SHARD) as tx:
        await tx.get(key)
        if fail:
            raise Boom("in the block")


async def _alist(stream: AsyncIterator[Any]) -> list[Any]:
    return [record async for record in stream]


ASYNC: dict[str, Callable[[Any, Any, bool], Awaitable[object]]] = {
    "put": lambda ds, key, fail: ds.put(SHARD, 1, n="a"),
    "put_many": lambda ds, key, fail: ds.put_many(SHARD, 1, [{"n": "a"}, {"n": "b"}]),
    "get": lambda ds, key, fail: ds.get(key),
    "get_many": lambda ds, key, fail: ds.get_many([key]),
    "update": lambda ds, key, fail: ds.update(key, n="b"),
    "replace": lambda ds, key, fail: ds.replace(key, n="c"),
    "delete": lambda ds, key, fail: ds.delete(key),
    "query": lambda ds, key, fail: _alist(ds.query(kind=1, shards=[SHARD])),
    "update_where": lambda ds, key, fail: ds.update_where(set={"n": "d"}, kind=1, shards=[SHARD]),
    "delete_where": lambda ds, key, fail: ds.delete_where(kind=9, shards=[SHARD]),
    "transaction": _atransaction,
}

# the store method each operation's round trip goes through (made to raise Boom for the failure case)
STORE_METHOD = {
    "put": "insert",
    "put_many": "insert_many",
    "get": "fetch",
    "get_many": "fetch_many",
    "update": "update",
    "replace": "update",
    "delete": "delete",
    "query": "query",
    "update_where": "update_where",
    "delete_where": "delete_where",
}


def _failing(store: Any, method: str, is_async: bool) -> None:
    """Make ``store.method`` raise `Boom` (a stream: on its first record)."""
    if method == "query":
        if is_async:

            async def astream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                raise Boom(method)
                yield  # an async generator

            setattr(store, method, astream)
        else:

            def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
                raise Boom(method)
                yield  # a generator

            setattr(store, method, stream)
    elif is_async:

        async def araise(*args: Any, **kwargs: Any) -> Any:
            raise Boom(method)

        setattr(store, method, araise)
    else:

        def sraise(*args: Any, **kwargs: Any) -> Any:
            raise Boom(method)

        setattr(store, method, sraise)


def _forget_coalescers(ds: Any) -> None:
    """Drop the read and write coalescers, which bound the store's methods when made (made again on next use)."""
    ds._readers.clear()
    ds._writers.clear()


def _semconv(store: Any) -> dict[str, Any]:
    """The attributes the conventions ask of an operation on ``store``, written out from its label here."""
    label: str = store.label
    if label.startswith("memory:"):
        return {"db.system.name": "hypervault.memory", "server.address": label}
    where, _, dbname = label.partition("/")
    host, _, port = where.rpartition(":")
    attrs: dict[str, Any] = {"db.system.name": "postgresql", "server.address": host.strip("[]")}
    if int(port) != 5432:  # "conditionally required: if using a port other than the default port"
        attrs["server.port"] = int(port)
    attrs["db.namespace"] = dbname
    return attrs


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    made = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[made])
    assert metrics.use(provider)
    yield made
    metrics.use(None)
    provider.shutdown()


def test_every_public_method_is_an_operation_or_said_not_to_be():
    for cls in (hvcore.Datastore, hvcore.AsyncDatastore):
        methods = _public_methods(cls)
        assert methods - set(NOT_OPERATIONS) - set(SYNC) == set(), (
            f"{cls.__name__}: a public method neither recorded here as an operation nor listed in NOT_OPERATIONS"
        )
        assert (set(SYNC) | set(NOT_OPERATIONS)) - methods == set(), f"{cls.__name__}: names of no method"
    assert set(SYNC) == set(ASYNC) == set(STORE_METHOD) | {"transaction"}


def _durations_queued() -> list[dict[str, Any]]:
    inst = metrics.instruments()
    assert inst is not None
    return [dict(attrs) for histogram, _, attrs, _ in list(metrics._pending) if histogram is inst.duration]


def _check(name: str, store: Any, fail: bool, done: list[tuple[str, bool]]) -> None:
    expected = {**_semconv(store), "db.operation.name": name}
    if fail:
        expected["error.type"] = "Boom"
    assert _durations_queued() == [expected], f"{name} ({'failing' if fail else 'succeeding'})"
    done.append((name, fail))
    metrics.flush()


def _exported(reader: InMemoryMetricReader, done: list[tuple[str, bool]], store: Any) -> None:
    """What the SDK received: one measurement per call, with exactly the conventions' attribute keys."""
    counts: dict[tuple[str, bool], int] = {}
    for point in metric_points(reader, DURATION):
        attrs = dict(point.attributes)
        assert {k: v for k, v in attrs.items() if k not in ("db.operation.name", "error.type")} == _semconv(store)
        assert attrs.get("error.type") in (None, "Boom")
        mine = (attrs["db.operation.name"], "error.type" in attrs)
        counts[mine] = counts.get(mine, 0) + point.count
    assert counts == {mine: done.count(mine) for mine in done}


def _run_sync(ds: Any, reader: InMemoryMetricReader) -> None:
    store = ds.store_for(SHARD)
    done: list[tuple[str, bool]] = []
    for fail in (False, True):
        for name, call in SYNC.items():
            key = ds.put(SHARD, 1, n="k")  # a record of its own for each call (delete removes it)
            done.append(("put", False))
            metrics.flush()  # the queue holds only what the call records
            if fail and name != "transaction":
                _failing(store, STORE_METHOD[name], False)
                _forget_coalescers(ds)
            try:
                if fail:
                    with pytest.raises(Boom, match=STORE_METHOD.get(name, "in the block")):
                        call(ds, key, fail)
                else:
                    call(ds, key, fail)
            finally:
                if fail and name != "transaction":
                    delattr(store, STORE_METHOD[name])
                    _forget_coalescers(ds)
            _check(name, store, fail, done)
    _exported(reader, done, store)


async def _run_async(ds: Any, reader: InMemoryMetricReader) -> None:
    store = ds.store_for(SHARD)
    done: list[tuple[str, bool]] = []
    for fail in (False, True):
        for name, call in ASYNC.items():
            key = await ds.put(SHARD, 1, n="k")
            done.append(("put", False))
            metrics.flush()
            if fail and name != "transaction":
                _failing(store, STORE_METHOD[name], True)
                _forget_coalescers(ds)
            try:
                if fail:
                    with pytest.raises(Boom, match=STORE_METHOD.get(name, "in the block")):
                        await call(ds, key, fail)
                else:
                    await call(ds, key, fail)
            finally:
                if fail and name != "transaction":
                    delattr(store, STORE_METHOD[name])
                    _forget_coalescers(ds)
            _check(name, store, fail, done)
    _exported(reader, done, store)


def test_every_operation_records_one_duration_memory_sync(reader):
    with hvcore.Datastore([dict(shards="0-16", name="every-op")], backend="memory") as ds:
        _run_sync(ds, reader)


def test_every_operation_records_one_duration_memory_async(reader):
    async def scenario() -> None:
        async with hvcore.AsyncDatastore([dict(shards="0-16", name="every-op-async")], backend="memory") as ds:
            await _run_async(ds, reader)

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_every_operation_records_one_duration_postgres(pg_datastore_factory, reader, backend):
    ds = pg_datastore_factory(backend)
    _run_sync(ds, reader)
    servers = list(ds._config.servers)
    made = InMemoryMetricReader()  # the async run's figures apart from the sync run's
    provider = MeterProvider(metric_readers=[made])
    metrics.use(provider)

    async def scenario() -> None:
        async with hvcore.AsyncDatastore(servers, backend=backend) as adb:
            await _run_async(adb, made)

    try:
        asyncio.run(scenario())
    finally:
        provider.shutdown()
