"""Deferred durations (hvcore/_metrics.py): every measurement reaches the SDK exactly once, in the collection that
follows it, with its caller's trace context; the background thread drains a long queue; a forked child starts empty."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.otel import metric_points
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import hvcore
from hvcore import _metrics, metrics

DURATION = "db.client.operation.duration"


class Provider:
    """An SDK meter provider with an in-memory reader."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def points(self, name: str = DURATION) -> list[Any]:
        return metric_points(self.reader, name)

    def count(self) -> int:
        return sum(point.count for point in self.points())


@pytest.fixture
def provider() -> Iterator[Provider]:
    made = Provider()
    assert metrics.use(made.provider)
    yield made
    metrics.use(None)
    made.provider.shutdown()


@pytest.fixture
def memory_db() -> Iterator[hvcore.Datastore]:
    with hvcore.Datastore([dict(shards="0-16", name="deferred")], backend="memory") as db:
        yield db


def test_operations_wait_in_the_queue_and_a_collection_includes_every_one(provider, memory_db):
    for _ in range(25):
        memory_db.get(memory_db.put(3, 1, n=1))
    assert metrics.pending == 50  # nothing handed to the SDK on the caller's path
    assert provider.count() == 50  # the collection drained the queue first
    assert metrics.pending == 0
    assert provider.count() == 50  # cumulative: counted once, not again


def test_an_exemplar_keeps_the_callers_span(provider, memory_db):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        memory_db.put(3, 1, n=1)
        expected = span.get_span_context().span_id
    # the collection runs outside the span: the exemplar's span id can only come from the deferred context
    exemplars = [e for point in provider.points() for e in point.exemplars]
    assert [e.span_id for e in exemplars] == [expected]


def test_the_background_thread_drains_a_long_queue_without_a_collection(provider, memory_db, monkeypatch):
    monkeypatch.setattr(_metrics, "FLUSH_AT", 16)
    for _ in range(200):
        memory_db.put(3, 1, n=1)
    flushed = threading.Event()

    def drained() -> bool:
        return metrics.pending < 16

    for _ in range(500):
        if drained():
            flushed.set()
            break
        flushed.wait(0.01)
    assert flushed.is_set(), f"{metrics.pending} measurements still queued"
    assert provider.count() == 200


def test_a_provider_change_hands_the_queue_to_the_provider_it_was_measured_under(memory_db):
    first, second = Provider(), Provider()
    try:
        metrics.use(first.provider)
        memory_db.put(3, 1, n=1)
        metrics.use(second.provider)
        memory_db.put(3, 1, n=1)
        memory_db.put(3, 1, n=1)
        assert (first.count(), second.count()) == (1, 2)
    finally:
        metrics.use(None)
        first.provider.shutdown()
        second.provider.shutdown()


@settings(max_examples=15, deadline=None)
@given(threads=st.integers(1, 6), calls=st.integers(0, 300), flush_at=st.sampled_from([1, 7, 64, 4096]))
def test_concurrent_callers_and_collections_count_each_measurement_once(threads, calls, flush_at, monkeypatch_module):
    """Callers on several threads, a collector collecting all along, the background thread draining: the total
    counted equals the calls made (none lost, none counted twice)."""
    monkeypatch_module.setattr(_metrics, "FLUSH_AT", flush_at)
    made = Provider()
    metrics.use(made.provider)
    try:
        with hvcore.Datastore([dict(shards="0-16", name="deferred-threads")], backend="memory") as db:
            done = threading.Event()

            def collect() -> None:
                while not done.is_set():
                    made.reader.get_metrics_data()

            def call() -> None:
                for _ in range(calls):
                    db.put(3, 1, n=1)

            collector = threading.Thread(target=collect)
            collector.start()
            workers = [threading.Thread(target=call) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            done.set()
            collector.join()
            assert made.count() == threads * calls
    finally:
        metrics.use(None)
        made.provider.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_forked_child_does_not_record_its_parents_measurements_again(provider, memory_db):
    memory_db.put(3, 1, n=1)
    assert metrics.pending == 1
    pid = os.fork()
    if pid == 0:  # the child: its queue starts empty
        os._exit(0 if metrics.pending == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert provider.count() == 1


def test_a_measurement_made_outside_any_span_gets_no_exemplar_from_the_span_that_hands_it_over(memory_db):
    """OpenTelemetry's empty ``Context`` is falsy, and ``Histogram.record`` replaces a falsy context with the
    current one: a measurement made outside any span must not take the trace of the code that drains the queue
    (a collection or ``flush`` made inside a span), whichever exemplar filter is set."""
    from opentelemetry.sdk.metrics import AlwaysOnExemplarFilter

    reader = InMemoryMetricReader()
    made = MeterProvider(metric_readers=[reader], exemplar_filter=AlwaysOnExemplarFilter())
    metrics.use(made)
    try:
        memory_db.put(3, 1, n=1)  # no span
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("collector"):
            points = metric_points(reader, DURATION)  # the collection drains the queue inside a sampled span
        exemplars = [e for point in points for e in point.exemplars]
        assert len(exemplars) == 1
        assert (exemplars[0].trace_id, exemplars[0].span_id) == (None, None)
    finally:
        metrics.use(None)
        made.shutdown()


def test_the_shard_attribute_follows_the_setting_between_two_calls(provider, memory_db):
    metrics.shard_attribute = True
    try:
        memory_db.delete(memory_db.get(memory_db.put(3, 1, n=1)).key)
        memory_db.put(5, 1, n=1)
        memory_db.put(5, 1, n=1)
        with memory_db.transaction(5) as tx:
            tx.put(1, n=2)
    finally:
        metrics.shard_attribute = False
    memory_db.put(5, 1, n=1)
    counts = {
        (p.attributes["db.operation.name"], p.attributes.get("hypervault.shard")): p.count for p in provider.points()
    }
    assert counts == {
        ("put", 3): 1,
        ("get", 3): 1,
        ("delete", 3): 1,
        ("put", 5): 2,
        ("transaction", 5): 1,
        ("put", None): 1,
    }


def test_a_users_views_apply_to_the_deferred_durations(memory_db):
    """Deferred measurements reach the SDK one by one through ``Histogram.record``: a View's attribute filter and
    aggregation apply to each, as they would had it been recorded on the caller's path."""
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    reader = InMemoryMetricReader()
    view = View(
        instrument_name=DURATION,
        attribute_keys={"db.operation.name"},
        aggregation=ExplicitBucketHistogramAggregation(boundaries=(0.5,)),
    )
    made = MeterProvider(metric_readers=[reader], views=[view])
    metrics.use(made)
    try:
        for _ in range(3):
            memory_db.get(memory_db.put(3, 1, n=1))
        points = {p.attributes["db.operation.name"]: p for p in metric_points(reader, DURATION)}
        assert {name: dict(p.attributes) for name, p in points.items()} == {
            "put": {"db.operation.name": "put"},
            "get": {"db.operation.name": "get"},
        }
        assert [(p.count, tuple(p.explicit_bounds), list(p.bucket_counts)) for p in points.values()] == [
            (3, (0.5,), [3, 0]),
            (3, (0.5,), [3, 0]),
        ]
    finally:
        metrics.use(None)
        made.shutdown()


def test_a_collection_waits_for_what_another_drain_took_but_has_not_recorded_yet(provider):
    """The background thread took a measurement from the queue and is inside ``Histogram.record`` when a
    collection begins: the collection waits for it (a hypothesis run above once counted 1,001 of 1,002)."""
    taken, recorded = threading.Event(), []

    class SlowHistogram:
        def record(self, value, attrs, context=None):
            taken.set()
            threading.Event().wait(0.02)  # the SDK's work, slowed down
            recorded.append(value)

    assert metrics.instruments() is not None  # made (and the collection's callbacks registered) on first use
    metrics._pending.append((SlowHistogram(), 1.0, {}, None))
    drainer = threading.Thread(target=metrics.flush)
    drainer.start()
    assert taken.wait(5)
    provider.reader.get_metrics_data()  # a collection: its callbacks drain the (now empty) queue, then wait
    assert recorded == [1.0]
    drainer.join()
