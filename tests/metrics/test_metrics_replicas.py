"""Metrics of read replicas on a real primary and streaming standby: fall-backs by reason, standby pools, durations."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.otel import metric_points
from fixtures.pgreplica import ReplicaPair
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from hvcore import Datastore, metrics

SHARD = 1


def _servers(pair: ReplicaPair) -> list[dict[str, Any]]:
    standby = pair.standby_settings
    return [
        dict(shards="0-4", **pair.primary_settings, replicas=[dict(host=standby["host"], port=standby["port"])]),
    ]


_points = metric_points


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    made = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[made])
    metrics.use(provider)
    yield made
    metrics.use(None)
    provider.shutdown()


def test_fallbacks_are_counted_by_reason_and_standby_pools_reported(
    pg_replica_pair: ReplicaPair, reader: InMemoryMetricReader
) -> None:
    pair = pg_replica_pair
    with Datastore(_servers(pair), backend="jsonb", read_from="replica", max_replica_lag=1.0) as db:
        db.provision()
        pair.wait_replayed()
        assert db._router is not None
        db._router.interval = 3600.0  # positions read by refresh_replicas() only
        db.refresh_replicas()
        primary, standby = db._stores[0].label, db._router._stores[0][0].label
        with db.timeline():
            key = db.put(SHARD, 1, v="a")
        pair.wait_replayed()
        db.refresh_replicas()
        assert db.get(key) is not None  # the standby: no fall-back
        assert set(db.get_many([key])) == {key}
        assert [r.key for r in db.query(kind=1, shards=[SHARD], since=key)] == [key]  # the pair is shared
        assert _points(reader, "hypervault.replica.fallbacks") == []

        pair.pause_replay()
        try:
            with db.timeline():
                mine = db.put(SHARD, 1, v="mine")
                db.refresh_replicas()
                assert db.get(mine) is not None  # my own write, not replayed: the primary
            time.sleep(1.2)
            with db.timeline():
                db.put(SHARD, 1, v="later")  # the standby is now past the bound
            db.refresh_replicas()
            assert db.get(mine) is not None  # lagging: the primary
        finally:
            pair.resume_replay()
        got = {
            (p.attributes["hypervault.reason"], p.attributes["hypervault.replica"]): p.value
            for p in _points(reader, "hypervault.replica.fallbacks")
        }
        assert got == {("read_your_writes", standby): 1, ("lag", standby): 1}
        assert {p.attributes["hypervault.server"] for p in _points(reader, "hypervault.replica.fallbacks")} == {primary}

        pools = {
            (p.attributes["db.client.connection.pool.name"], p.attributes["db.client.connection.state"]): p.value
            for p in _points(reader, "db.client.connection.count")
        }
        stats = db._router._stores[0][0].stats()
        assert pools[(standby, "idle")] == stats["available"] and pools[(standby, "used")] == stats["borrowed"] == 0
        reads = {
            (p.attributes["db.operation.name"], p.attributes["server.port"]): p.count
            for p in _points(reader, "db.client.operation.duration")
            if p.attributes["db.operation.name"] != "put"
        }
        on_standby, on_primary = int(pair.standby_settings["port"]), int(pair.primary_settings["port"])
        assert reads == {
            ("get", on_standby): 1,
            ("get_many", on_standby): 1,
            ("query", on_standby): 1,
            ("get", on_primary): 2,
        }
