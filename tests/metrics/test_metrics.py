"""Metrics through the OpenTelemetry API, read back with the SDK's in-memory reader (every backend, sync and async)."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fixtures.otel import metric_points
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hvcore
from hvcore import metrics
from hvcore.errors import NotProvisioned, PoolTimeout

OPERATIONS = {"put", "put_many", "get", "get_many", "update", "replace", "delete", "query"}
_names = itertools.count()


class Reader:
    """An SDK meter provider with an in-memory reader, used by ``hvcore.metrics`` for one test."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` collected now."""
        return metric_points(self.reader, name)

    def by_attrs(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Data points of ``name`` keyed by their attribute sets."""
        return {frozenset(p.attributes.items()): p for p in self.points(name)}

    def durations(self) -> dict[tuple[str, str], int]:
        """(db.operation.name, server.address[:port]) → count of recorded operation durations."""
        out: dict[tuple[str, str], int] = {}
        for p in self.points("db.client.operation.duration"):
            a = p.attributes
            port = a.get("server.port", 5432 if a["db.system.name"] == "postgresql" else None)  # 5432: left out
            where = a["server.address"] if port is None else f"{a['server.address']}:{port}"
            out[(a["db.operation.name"], where)] = out.get((a["db.operation.name"], where), 0) + p.count
        return out


@pytest.fixture
def reader() -> Iterator[Reader]:
    made = Reader()
    assert metrics.use(made.provider) is True
    yield made
    metrics.use(None)
    made.provider.shutdown()


@pytest.fixture
def all_waits() -> Iterator[None]:
    """``metrics.wait_time = "all"`` for one test (every checkout records its wait)."""
    metrics.wait_time = "all"
    yield
    metrics.wait_time = "waits"


def _where(store: Any) -> str:
    label: str = store.label
    return label.partition("/")[0] if label[0] != "m" else label


def test_every_operation_records_its_duration_with_the_conventions_attributes(make_datastore, backend_name, reader):
    ds = make_datastore()
    stores = ds._stores if hasattr(ds, "_stores") else ds.inner._stores
    a, b = (_where(s) for s in stores)
    key = ds.put(3, 1, name="x")
    other = ds.put(12, 1, name="y")
    ds.put_many(3, 1, [{"name": "z"}, {"name": "w"}])
    assert ds.get(key) is not None
    assert set(ds.get_many([key, other])) == {key, other}
    assert ds.update(key, extra="1") is True
    assert ds.replace(key, name="v") is True
    assert len(list(ds.query(kind=1))) == 4
    assert ds.delete(other) is True

    counts = reader.durations()
    expected = {
        ("put", a): 1,
        ("put", b): 1,
        ("put_many", a): 1,
        ("get", a): 1,
        ("get_many", a): 1,  # one operation per server, read concurrently
        ("get_many", b): 1,
        ("update", a): 1,
        ("replace", a): 1,
        ("query", a): 1,
        ("query", b): 1,
        ("delete", b): 1,
    }
    assert counts == expected
    system = "hypervault.memory" if backend_name == "memory" else "postgresql"
    for point in reader.points("db.client.operation.duration"):
        attrs = dict(point.attributes)
        assert attrs["db.system.name"] == system
        assert attrs["db.operation.name"] in OPERATIONS
        assert "error.type" not in attrs
        assert point.sum > 0 and point.sum < 60  # seconds, not ms
        if backend_name != "memory":
            assert attrs["db.namespace"]
            # the conventions want server.port only for a port other than PostgreSQL's default
            assert attrs.get("server.port") != 5432
            assert f"{attrs['server.address']}:{attrs.get('server.port', 5432)}" in {_where(s) for s in stores}
    assert reader.points("hypervault.key.collisions") == []


def test_a_failed_operation_records_its_error_type(make_datastore, backend_name, reader):
    if backend_name.endswith("-pgbouncer"):
        pytest.skip("the schema is dropped through the configured address, here a 3-connection PgBouncer: see jsonb")
    ds = make_datastore()
    with pytest.raises(NotProvisioned):
        _put_unprovisioned(ds)
    errors = [dict(p.attributes) for p in reader.points("db.client.operation.duration") if "error.type" in p.attributes]
    assert [(e["db.operation.name"], e["error.type"]) for e in errors] == [("put", "NotProvisioned")]


def _put_unprovisioned(ds: Any) -> None:
    """A put to a shard whose schema was dropped behind the store's back (memory: forgotten)."""
    inner = getattr(ds, "inner", ds)
    store = inner.store_for(7)
    if hasattr(store, "label") and store.label.startswith("memory:"):
        memory = getattr(store, "sync", store)
        memory._auto_provision = False
        memory._shards().pop(7, None)
        ds.put(7, 1, name="x")
        return
    settings = {k: v for k, v in inner._config.servers[0].items() if k != "shards"}  # shards 0-8
    with psycopg.connect(**settings, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")  # fail, not hang, if a session holds the shard's table
        conn.execute("DROP SCHEMA shard0007 CASCADE")
    try:
        ds.put(7, 1, name="x")
    finally:
        ds.provision()  # the suite's databases are reused: put the shard back


def test_a_key_collision_is_counted_and_retried(reader):
    # closed at the end: a datastore left open stays watched until the garbage collector finds it, and its pools
    # then showed in a later test's pool gauges (test_prometheus compares them with its own datastore's)
    with hvcore.Datastore([dict(shards="0-16", name=f"c{next(_names)}")], backend="memory") as ds:
        ds.provision()
        taken = ds.put(5, 1, n="first")
        fresh = ds._next_key
        calls = iter([taken])  # the first key made is one another process already stored
        ds._next_key = lambda shard: next(calls, None) or fresh(shard)  # type: ignore[method-assign,assignment]
        key = ds.put(5, 1, n="second")
        assert key != taken
        (point,) = reader.points("hypervault.key.collisions")
        assert point.value == 1 and point.attributes["hypervault.server"] == ds._stores[0].label
        failed = [p for p in reader.points("db.client.operation.duration") if "error.type" in p.attributes]
        assert [p.attributes["error.type"] for p in failed] == ["DuplicateKey"]


def test_pool_gauges_match_stats_and_timeouts_and_waits_are_recorded(pg_datastore_factory, reader, all_waits):
    ds = pg_datastore_factory("jsonb", pool_max=2, pool_block_timeout=3)
    ds.get_many([ds.put(3, 1, n="a"), ds.put(12, 1, n="b")])  # both pools have an idle connection now
    held = [ds.get_connection(3), ds.get_connection(4)]
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            ds.get(hvcore.Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=5, added_id=1))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        deadline = time.monotonic() + 2.5
        while ds._stores[0].stats()["waiting"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        expected = {store.label: store.stats() for store in ds._stores}
        counts = reader.by_attrs("db.client.connection.count")
        maxes = reader.by_attrs("db.client.connection.max")
        pending = reader.by_attrs("db.client.connection.pending_requests")
        for label, stats in expected.items():
            pool = ("db.client.connection.pool.name", label)
            assert counts[frozenset({pool, ("db.client.connection.state", "used")})].value == stats["borrowed"]
            assert counts[frozenset({pool, ("db.client.connection.state", "idle")})].value == stats["available"]
            assert maxes[frozenset({pool})].value == stats["pool_max"] == 2
            assert pending[frozenset({pool})].value == stats["waiting"]
        assert expected[ds._stores[0].label]["borrowed"] == 2 and expected[ds._stores[0].label]["waiting"] == 1
        thread.join(timeout=30)  # the waiter times out: both connections are still held
    finally:
        for conn in held:
            ds.put_connection(conn)
        thread.join(timeout=30)
    assert [type(exc) for exc in outcome] == [PoolTimeout]
    (timeouts,) = reader.points("db.client.connection.timeouts")
    assert timeouts.value == 1 and timeouts.attributes == {"db.client.connection.pool.name": ds._stores[0].label}
    waits = {p.attributes["db.client.connection.pool.name"]: p for p in reader.points("db.client.connection.wait_time")}
    assert waits[ds._stores[0].label].count >= 3 and waits[ds._stores[1].label].count >= 1
    failed = [p.attributes for p in reader.points("db.client.operation.duration") if "error.type" in p.attributes]
    assert [(a["db.operation.name"], a["error.type"]) for a in failed] == [("get", "PoolTimeout")]


def test_async_datastore_records_pools_and_operations(pg_datastore_factory, reader, all_waits):
    servers = list(pg_datastore_factory("hstore")._config.servers)

    async def scenario() -> dict[str, Any]:
        async with hvcore.AsyncDatastore(servers, backend="hstore") as db:
            key = await db.put(2, 1, n="a")
            assert await db.get(key) is not None
            return {s.label: s.stats() for s in db._stores}

    stats = asyncio.run(scenario())
    counts = reader.durations()
    assert counts[("put", next(iter(stats)).partition("/")[0])] == 1
    assert counts[("get", next(iter(stats)).partition("/")[0])] == 1
    assert {p.attributes["db.client.connection.pool.name"] for p in reader.points("db.client.connection.wait_time")}


def test_replica_fallback_hook_counts_by_reason(reader):
    metrics.replica_fallback("10.0.0.1:5432/app", "10.0.0.2:5432/app", "lag")
    metrics.replica_fallback("10.0.0.1:5432/app", "10.0.0.2:5432/app", "lag")
    metrics.replica_fallback("10.0.0.1:5432/app", "10.0.0.2:5432/app", "down")
    got = {p.attributes["hypervault.reason"]: p.value for p in reader.points("hypervault.replica.fallbacks")}
    assert got == {"lag": 2, "down": 1}


def test_moves_their_pause_and_followed_refusals_are_recorded(pg_cluster, reader):
    name = f"hvmetrics_{os.getpid()}_{next(_names)}"
    servers = []
    for index, shards in enumerate(("0-8", "8-16")):
        settings = pg_cluster.settings(index)
        with psycopg.connect(**settings, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        servers.append({**settings, "dbname": name, "shards": shards})
    with hvcore.Datastore(servers, backend="jsonb") as mover, hvcore.Datastore(servers, backend="jsonb") as stale:
        mover.provision()
        key = stale.put(3, 1, n="before")
        report = mover.move_shard(3, 1)
        assert stale.get(key) is not None  # refused by server 0, followed to server 1
        (moves,) = reader.points("hypervault.shard.moves")
        assert moves.value == 1 and dict(moves.attributes) == {
            "hypervault.source": report.source,
            "hypervault.target": report.target,
        }
        (pause,) = reader.points("hypervault.shard.move.pause")
        assert pause.count == 1 and pause.sum == pytest.approx(report.pause_seconds)
        (followed,) = reader.points("hypervault.shard_moved.followed")
        assert followed.value == 1 and followed.attributes["hypervault.server"] == report.target
        refused = [p.attributes for p in reader.points("db.client.operation.duration") if "error.type" in p.attributes]
        assert [(a["db.operation.name"], a["error.type"]) for a in refused] == [("get", "ShardMoved")]


def test_off_records_nothing_and_makes_no_instrument():
    metrics.use(None)  # the global provider: none configured in the test process
    assert metrics.on is False
    before = metrics._instruments
    with hvcore.Datastore([dict(shards="0-16", name=f"off{next(_names)}")], backend="memory") as ds:
        ds.provision()
        key = ds.put(1, 1, a="b")
        ds.get(key)
        list(ds.query())
    assert metrics.on is False and metrics._instruments is before is None
    assert metrics.use(NoOpMeterProvider()) is False  # the API's no-op provider is off too
    metrics.use(None)


def _run(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_global_provider_is_found_when_a_datastore_opens():
    out = _run(
        """
        import hvcore
        from opentelemetry import metrics as otel
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        print(hvcore.metrics.refresh())
        otel.set_meter_provider(MeterProvider(metric_readers=[reader]))
        db = hvcore.Datastore([dict(shards="0-16", name="g")], backend="memory")
        db.provision()
        db.get(db.put(1, 1, a="b"))
        names = {m.name for r in reader.get_metrics_data().resource_metrics for s in r.scope_metrics for m in s.metrics}
        print(hvcore.metrics.on, sorted(n for n in names if n.startswith("db.client.operation")))
        """
    )
    assert out.split("\n")[:2] == ["False", "True ['db.client.operation.duration']"]


def test_without_the_opentelemetry_api_installed_everything_works_and_records_nothing():
    out = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed
        import hvcore
        db = hvcore.Datastore([dict(shards="0-16", name="n")], backend="memory")
        db.provision()
        m = hvcore.metrics
        print(db.get(db.put(1, 1, a="b")).data, m.on, m.refresh(), m.instruments())
        """
    )
    assert out.strip() == "{'a': 'b'} False False None"


def test_a_query_left_early_records_one_operation_per_server_without_error(make_datastore, reader):
    ds = make_datastore()
    for shard in (3, 12):
        ds.put_many(shard, 1, [{"n": str(i)} for i in range(5)])
    stream = iter(ds.query(kind=1))
    next(stream)
    stream.close()
    assert len(list(ds.query(kind=1, limit=2))) == 2
    queries = [p for p in reader.points("db.client.operation.duration") if p.attributes["db.operation.name"] == "query"]
    assert sum(p.count for p in queries) == 4  # two queries, two servers each
    assert all("error.type" not in p.attributes for p in queries)


def test_wait_time_records_only_checkouts_that_waited_unless_told_otherwise(pg_datastore_factory, reader):
    ds = pg_datastore_factory("jsonb", pool_max=1, pool_block_timeout=10)
    assert metrics.wait_time == "waits"  # the default

    def waits() -> tuple[int, float]:
        points = reader.points("db.client.connection.wait_time")
        assert all(p.attributes == {"db.client.connection.pool.name": ds._stores[0].label} for p in points)
        return sum(p.count for p in points), sum(p.sum for p in points)

    ds.get(ds.put(3, 1, n="a"))  # the first checkout may wait for the pool's connection to open
    opened = waits()[0]
    assert opened <= 1
    ds.get(ds.put(3, 1, n="b"))  # the idle connection is there: no wait, nothing recorded
    ds.get(ds.put(3, 1, n="b"))
    assert waits()[0] == opened
    assert sum(p.count for p in reader.points("db.client.operation.duration")) == 6

    held = ds.get_connection(3)  # the only connection: the next checkout waits for it
    threading.Timer(0.3, ds.put_connection, (held,)).start()
    before = waits()[1]
    ds.put(3, 1, n="c")
    count, total = waits()
    assert count == opened + 1 and total - before >= 0.25

    metrics.wait_time = "all"
    try:
        ds.get(ds.put(3, 1, n="d"))
    finally:
        metrics.wait_time = "waits"
    assert waits()[0] == opened + 3  # the put's checkout and the get's

    metrics.wait_time = False
    try:
        assert metrics.wait_time == "off"
        held = ds.get_connection(3)
        threading.Timer(0.2, ds.put_connection, (held,)).start()
        ds.get(ds.put(3, 1, n="e"))
    finally:
        metrics.wait_time = True
    assert metrics.wait_time == "all"
    metrics.wait_time = "waits"
    assert waits()[0] == opened + 3


@pytest.mark.parametrize("bad", ["some", "", None, 1, "ALL"])
def test_a_bad_wait_time_mode_is_refused_by_name(bad):
    with pytest.raises(hvcore.ConfigError, match=r"metrics.wait_time must be one of off, waits, all .*got"):
        metrics.wait_time = bad
    assert metrics.wait_time == "waits"


def test_a_transaction_is_one_operation_with_its_outcome(make_datastore, reader):
    ds = make_datastore()
    with ds.transaction(3) as tx:
        tx.put(1, name="x")
        tx.put_many(1, [{"name": "y"}])
    with pytest.raises(ZeroDivisionError), ds.transaction(3) as tx:
        tx.put(1, name="z")
        _ = 1 / 0
    points = [dict(p.attributes) for p in reader.points("db.client.operation.duration")]
    mine = [(a["db.operation.name"], a.get("error.type")) for a in points if a["db.operation.name"] == "transaction"]
    assert sorted(mine, key=str) == [("transaction", "ZeroDivisionError"), ("transaction", None)]
