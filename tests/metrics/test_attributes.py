"""The attributes of operation durations: the documented keys, one dict made per operation and store (and shard) and
handed over again on every call, found from the store object; the caller's context read as the API reads it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.otel import metric_points
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import hvcore
from hvcore import _metrics, metrics

DURATION = "db.client.operation.duration"
MEMORY_KEYS = {"db.system.name", "db.operation.name", "server.address"}  # README "Metrics": no port, no database


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    made = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[made])
    assert metrics.use(provider)
    yield made
    metrics.use(None)
    metrics.shard_attribute = False
    provider.shutdown()


@pytest.fixture
def db() -> Iterator[hvcore.Datastore]:
    with hvcore.Datastore([dict(shards="0-16", name="attrs")], backend="memory") as made:
        yield made


def _queued() -> list[tuple[Any, float, Any, Any]]:
    """The deferred measurements waiting now (histogram, seconds, attributes, context), oldest first."""
    return list(metrics._pending)


def test_each_operation_hands_over_one_dict_per_operation_and_store_with_the_documented_keys(reader, db):
    keys = [db.put(3, 1, n=i) for i in range(3)]
    for key in keys:
        db.get(key)
    queued = _queued()
    assert len(queued) == 6
    puts, gets = [q[2] for q in queued[:3]], [q[2] for q in queued[3:]]
    assert all(a is puts[0] for a in puts) and all(a is gets[0] for a in gets)  # made once, reused
    assert puts[0] is not gets[0]
    expected = {"db.system.name": "hypervault.memory", "db.operation.name": "put", "server.address": "memory:attrs"}
    assert puts[0] == expected
    assert set(gets[0]) == MEMORY_KEYS and gets[0]["db.operation.name"] == "get"
    points = metric_points(reader, DURATION)  # what the SDK received: the same attribute sets, counted
    assert sorted((dict(p.attributes)["db.operation.name"], p.count) for p in points) == [("get", 3), ("put", 3)]


def test_the_shard_attribute_follows_the_setting_both_ways(reader, db):
    db.put(3, 1, n=1)
    metrics.shard_attribute = True
    db.put(3, 1, n=2)
    db.put(4, 1, n=3)
    db.put(3, 1, n=4)
    metrics.shard_attribute = False
    db.put(3, 1, n=5)  # back to the attributes without a shard, not the last shard's
    plain, three, four, three_again, plain_again = (q[2] for q in _queued())
    assert "hypervault.shard" not in plain and plain_again is plain
    assert three["hypervault.shard"] == 3 and four["hypervault.shard"] == 4 and three_again is three
    assert set(three) == MEMORY_KEYS | {"hypervault.shard"}


def test_a_failed_operation_adds_error_type_to_a_copy(reader, db):
    db.put(3, 1, n=1)
    metrics.operation("put", db.store_for(3), 0.001, ValueError("x"))
    plain, failed = (q[2] for q in _queued())
    assert failed["error.type"] == "ValueError" and failed is not plain
    assert "error.type" not in plain  # the reused dict is never changed
    assert {k: v for k, v in failed.items() if k != "error.type"} == plain


class _Store:
    """A stand-in for a server store: only a label (what the attributes are made from)."""

    def __init__(self, label: str) -> None:
        self.label = label


def test_attributes_are_kept_on_the_store_itself_and_belong_to_that_very_store(reader):
    """Two stores, two servers: each finds its own dicts on itself (no process-wide table keyed by ``id(store)``,
    which Python reuses once a store is gone)."""
    one, two = _Store("10.0.0.1:5433/a"), _Store("10.0.0.2:5433/b")
    for store in (one, two, one, two):
        metrics.operation("get", store, 0.001)
    a1, b1, a2, b2 = (q[2] for q in _queued())
    assert a1 is a2 and b1 is b2
    assert a1["server.address"] == "10.0.0.1" and b1["server.address"] == "10.0.0.2"
    assert getattr(one, _metrics.STORE_ATTRS) == {"get": a1} and getattr(two, _metrics.STORE_ATTRS) == {"get": b1}
    assert not hasattr(_metrics.Metrics(), "_by_store")  # the one cache on the hot path is the store's


def test_a_store_that_is_gone_is_not_kept_alive_by_its_attributes(reader):
    store = _Store("10.0.0.3:5433/c")
    metrics.operation("get", store, 0.001)
    ref = weakref.ref(store)
    metrics.flush()
    del store
    gc.collect()
    assert ref() is None


def test_a_store_that_takes_no_new_attribute_still_gets_its_attributes(reader):
    class Slotted:
        __slots__ = ("label",)

        def __init__(self) -> None:
            self.label = "10.0.0.4:5433/d"

    store = Slotted()
    metrics.operation("get", store, 0.001)
    metrics.operation("get", store, 0.001, ValueError("x"))
    metrics.operation("get", store, 0.001)
    first, failed, second = (q[2] for q in _queued())
    assert first is second and first["server.address"] == "10.0.0.4" and first["server.port"] == 5433  # label cache
    assert failed == {**first, "error.type": "ValueError"}
    assert not hasattr(store, _metrics.STORE_ATTRS)


def test_the_caller_context_is_the_one_the_api_reports(reader, db):
    """The context kept with a deferred measurement (its exemplar's trace) is ``get_current()``'s, read cheaper."""
    span = trace.NonRecordingSpan(
        trace.SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        db.put(3, 1, n=1)
        inside = otel_context.get_current()
    finally:
        otel_context.detach(token)
    db.put(3, 1, n=2)
    (_, _, _, kept), (_, _, _, outside) = _queued()
    assert kept is inside and trace.get_current_span(kept) is span
    assert outside is otel_context.get_current() and trace.get_current_span(outside) is not span


def test_the_context_is_read_through_the_public_function_whatever_the_runtime_context(reader, db, monkeypatch):
    """Another runtime context (what ``OTEL_PYTHON_CONTEXT`` names) is asked too: hypervault reads no private name of
    the API, so what ``get_current()`` reports is what is kept, even past a runtime context set after start-up."""
    db.put(3, 1, n=1)  # the instruments made under the default runtime context
    mine = otel_context.Context({"from": "another runtime context"})

    class Other:
        def get_current(self) -> otel_context.Context:
            return mine

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", Other())  # the test's reach inside, not hypervault's
    db.put(3, 1, n=2)
    assert _queued()[-1][3] is mine
