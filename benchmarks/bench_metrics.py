"""Benchmark what metrics cost: put + get with metrics on against the same code with metrics off.

Usage: ``python benchmarks/bench_metrics.py [--quick] [--json PATH] [--no-callgrind] [--sdk-stages] [--flush-thread]``.

Every variant runs hypervault as shipped; only the OpenTelemetry set-up differs (nothing is copied or kept in step
by hand), on the memory backend and on a throwaway PostgreSQL server (jsonb, started by the script):

- ``off``: no meter provider configured (the baseline of every ratio);
- ``on``: an OpenTelemetry SDK ``MeterProvider`` with an ``InMemoryMetricReader``, hypervault's defaults (one
  duration per operation; a connection's wait only when the checkout had to wait);
- ``on_all_waits``: the same with ``hvcore.metrics.wait_time = "all"`` (a wait-time measurement per checkout too);
- ``on_no_exemplars``: ``on`` with the SDK's exemplar filter ``always_off`` (``OTEL_METRICS_EXEMPLAR_FILTER``).

Measures, each printed as ratios to ``off`` from this one run: instructions per put+get counted by valgrind's
callgrind (each variant runs N and 5N times in a fresh process; the difference over 4N is the per-call count, free
of start-up and of the noise of a shared machine), wall-clock medians of interleaved blocks (``_shared.measure``)
of put+get, and of a lone ``put`` to a PostgreSQL server with its default durability (fsync on): what users feel.
Durations are deferred (hvcore/_metrics.py), so each wall measure is taken twice: **all costs** (the deferred
measurements handed to the SDK on the caller's thread every 64 calls, inside the timing: the CPU metrics cost in
all) and **caller** (handed over after the timing, as a collection or the background thread would: the latency a
caller sees). The instruction counts include the hand-over (the worker drains the queue before it ends).
For scale, the SDK's own cost of one histogram measurement is counted too, by number of attributes;
``--sdk-stages`` counts only that, stage by stage of ``Histogram.record`` (where its instructions go).
What the off path costs is one attribute read per call (``hvcore.metrics.on``), not measured here (it was 0.99–1.00×
against a hand-made uninstrumented copy, which this script no longer keeps). Goal (issue 18): on ≤ 5 %.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import callgrind_instructions, measure

import hvcore
from hvcore import _metrics
from hvcore._metrics import DURATION_BUCKETS

VARIANTS = ("off", "on", "on_all_waits", "on_no_exemplars")
SHARD = 3
BODY = {"name": "benchmark", "colour": "red", "size": 3}
OP_ATTRS: dict[str, Any] = {  # an operation's attributes on a server at a non-default port (as the benchmark's)
    "db.system.name": "postgresql",
    "db.operation.name": "get",
    "server.address": "127.0.0.1",
    "server.port": 5433,
    "db.namespace": "app",
}


def _provider(variant: str) -> Any:
    """The meter provider of ``variant`` (None for ``off``)."""
    if variant == "off":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    options: dict[str, Any] = {}
    if variant == "on_no_exemplars":
        from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter

        options["exemplar_filter"] = AlwaysOffExemplarFilter()
    return MeterProvider(metric_readers=[InMemoryMetricReader()], **options)


def _wait_mode(variant: str) -> str:
    return "all" if variant == "on_all_waits" else "waits"


def make(variant: str, backend: str, settings: Mapping[str, Any] | None) -> tuple[hvcore.Datastore, Any]:
    """A provisioned datastore for ``variant`` (and its meter provider, None for ``off``), metrics pointed at it."""
    provider = _provider(variant)
    hvcore.metrics.use(provider)
    hvcore.metrics.wait_time = _wait_mode(variant)
    if backend == "memory":
        servers: list[dict[str, Any]] = [dict(shards="0-16", name=f"bench-{variant}")]
    else:
        assert settings is not None
        servers = [dict(settings, shards="0-16")]
    ds = hvcore.Datastore(servers, backend=backend)
    ds.provision()
    assert hvcore.metrics.on is (variant != "off")
    return ds, provider


def round_trip(ds: hvcore.Datastore) -> Callable[[], None]:
    """One put and one get of what it wrote."""

    def call() -> None:
        ds.get(ds.put(SHARD, 1, **BODY))

    return call


def put_only(ds: hvcore.Datastore) -> Callable[[], None]:
    """One put."""

    def call() -> None:
        ds.put(SHARD, 1, **BODY)

    return call


DRAIN_EVERY = 64  # calls between two inline hand-overs of the deferred measurements (the "all costs" measures)


def wall(
    backend: str,
    settings: Mapping[str, Any] | None,
    ops: int,
    rounds: int,
    subject: Callable[[hvcore.Datastore], Callable[[], None]] = round_trip,
    *,
    drain: bool = True,
) -> tuple[dict[str, float], dict[str, float]]:
    """Median µs per call of ``subject`` for each variant, interleaved blocks: wall time, and the process's CPU
    time (user + system, every thread: `time.process_time`).

    ``hvcore.metrics`` is one per process: before each block, outside the timing, the measurements still queued
    are handed to the SDK and it is pointed at the variant's provider. (Before 2026-11-30 16:10 UTC the switch was
    made by the block's first call, inside the timing, and a switch hands the queue over: each block paid for the
    previous variant's measurements, "off" for those of "on_no_exemplars", which made the caller's path of "on"
    look faster than "off".) ``drain``: every `DRAIN_EVERY` calls, and at the end of the block, the deferred
    measurements are handed to the SDK on the caller's thread, inside the timing (every cost of metrics on is
    counted, by the variant that made them); otherwise they wait until after the block (what the caller's path
    costs: the hand-over then happens on a collection or the background thread, here kept from starting).
    """
    made = {variant: make(variant, backend, settings) for variant in VARIANTS}
    calls = {v: _draining(subject(ds), drain) for v, (ds, _) in made.items()}
    before = {v: _switch(provider, _wait_mode(v)) for v, (_, provider) in made.items()}
    after = {v: hvcore.metrics.flush for v in made} if drain else None
    flush_at = _metrics.FLUSH_AT
    if not drain:
        _metrics.FLUSH_AT = 1 << 62
    try:
        medians, cpu = measure_cpu(calls, ops, rounds, before, after)
    finally:
        _metrics.FLUSH_AT = flush_at
        hvcore.metrics.flush()
    for ds, provider in made.values():
        ds.close()
        if provider is not None:
            provider.shutdown()
    hvcore.metrics.use(None)
    hvcore.metrics.wait_time = "waits"
    return (
        {variant: seconds * 1e6 for variant, seconds in medians.items()},
        {variant: seconds * 1e6 for variant, seconds in cpu.items()},
    )


def measure_cpu(
    candidates: Mapping[str, Callable[[], object]],
    ops: int,
    rounds: int,
    before: Mapping[str, Callable[[], object]] | None = None,
    after: Mapping[str, Callable[[], object]] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """`_shared.measure` (median seconds per call, blocks in rotating order, one warm-up) timing each block by the
    wall clock and by the process's CPU time at once: (wall medians, CPU medians). ``before[name]()`` runs before
    each of its blocks, outside the timing; ``after[name]()`` at the end of each, inside it."""
    names = list(candidates)
    for name in names:
        if before is not None:
            before[name]()
        for _ in range(max(ops // 5, 1)):
            candidates[name]()
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            fn = candidates[name]
            if before is not None:
                before[name]()
            finish = after[name] if after is not None else None
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            for _ in range(ops):
                fn()
            if finish is not None:
                finish()
            cpus[name].append((time.process_time() - cpu_started) / ops)
            walls[name].append((time.perf_counter() - wall_started) / ops)
    return (
        {name: statistics.median(values) for name, values in walls.items()},
        {name: statistics.median(values) for name, values in cpus.items()},
    )


def _switch(provider: Any, wait_time: str) -> Callable[[], None]:
    """What runs before each block of a variant, outside the timing: the queued measurements (another variant's,
    or this one's left from its previous block) handed to the SDK, then hvcore.metrics pointed at ``provider``."""
    state = hvcore.metrics

    def switch() -> None:
        state.flush()
        state.use(provider)
        state.wait_time = wait_time

    return switch


def _draining(call: Callable[[], None], drain: bool) -> Callable[[], None]:
    """``call``; with ``drain``, the deferred measurements handed to the SDK every `DRAIN_EVERY` calls."""
    if not drain:
        return call
    state = hvcore.metrics
    calls = [0]

    def run() -> None:
        call()
        calls[0] += 1
        if calls[0] % DRAIN_EVERY == 0:
            state.flush()

    return run


def flush_thread(backend: str, settings: Mapping[str, Any] | None, calls: int) -> dict[str, float]:
    """What the background thread costs: ``calls`` put+get with metrics on and hypervault's defaults (the thread
    hands the queue to the SDK each time `FLUSH_AT` measurements wait), then the same put+get with metrics off.

    CPU time is read per thread (``time.pthread_getcpuclockid``): the flush thread's over the measurements it
    handed over, and, for the ratios of the same run, the caller's CPU time per put+get off and on, and the
    CPU per measurement of the same hand-over made on the caller's thread (`Metrics.flush` of a queue as long as
    `FLUSH_AT`, timed with ``time.thread_time``). Per put+get, the thread's CPU is two measurements' (what is
    left in the queue below `FLUSH_AT` at the end is not counted on either side). Keys:
    ``thread_us_per_measurement``, ``caller_flush_us_per_measurement``, ``measurements``, ``thread_us_per_call``,
    ``off_us_per_call``, ``on_caller_us_per_call``.
    """
    state = hvcore.metrics
    ds, provider = make("on", backend, settings)
    call = round_trip(ds)
    for _ in range(100):  # warm-up, then the queue emptied and the thread started (idle) outside the timing
        call()
    state.flush()
    state._wake_flusher()
    thread = state._flusher
    assert thread is not None and thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    _settle(state)
    thread_started, caller_started = time.clock_gettime(clock), time.thread_time()
    queued = state.pending
    for _ in range(calls):
        call()
    on_caller = time.thread_time() - caller_started
    made = 2 * calls  # one duration per put, one per get (no connection waits in one thread)
    _settle(state)
    handed = queued + made - state.pending
    thread_cpu = time.clock_gettime(clock) - thread_started
    # the same hand-over on the caller's thread: a queue of FLUSH_AT (what one wake of the thread finds)
    flush_at = _metrics.FLUSH_AT
    _metrics.FLUSH_AT = 1 << 62
    try:
        state.flush()
        for _ in range(flush_at // 2):
            call()
        waiting = state.pending
        started = time.thread_time()
        state.flush()
        caller_flush = (time.thread_time() - started) / waiting
    finally:
        _metrics.FLUSH_AT = flush_at
    ds.close()
    provider.shutdown()
    ds, _ = make("off", backend, settings)
    call = round_trip(ds)
    for _ in range(100):
        call()
    started = time.thread_time()
    for _ in range(calls):
        call()
    off = time.thread_time() - started
    ds.close()
    hvcore.metrics.use(None)
    return {
        "measurements": float(handed),
        "thread_us_per_measurement": thread_cpu / handed * 1e6 if handed else float("nan"),
        "caller_flush_us_per_measurement": caller_flush * 1e6,
        "thread_us_per_call": 2 * thread_cpu / handed * 1e6 if handed else float("nan"),  # two per put+get
        "off_us_per_call": off / calls * 1e6,
        "on_caller_us_per_call": on_caller / calls * 1e6,
    }


def _settle(state: Any, timeout: float = 30.0) -> None:
    """Wait until the flush thread is idle: no wake pending, no drain running."""
    deadline = time.monotonic() + timeout
    while state._flush_wanted.is_set() or state._draining:
        if time.monotonic() > deadline:
            raise RuntimeError("the metrics flush thread did not settle")
        time.sleep(0.01)
    time.sleep(0.05)


def flush_thread_lines(figures: Mapping[str, float], label: str) -> list[str]:
    """The flush thread's figures as printed: CPU per measurement and ratios of the same run."""
    f = figures
    return [
        f"flush thread, {label}: {f['thread_us_per_measurement']:.2f} µs CPU per measurement handed over "
        f"({f['measurements']:,.0f}), {f['thread_us_per_measurement'] / f['caller_flush_us_per_measurement']:.3f}× "
        f"the same hand-over on the caller's thread ({f['caller_flush_us_per_measurement']:.2f} µs)",
        f"flush thread, {label}: {f['thread_us_per_call']:.2f} µs CPU per put+get = "
        f"{f['thread_us_per_call'] / f['off_us_per_call']:.3f}× the caller's CPU per put+get off "
        f"({f['off_us_per_call']:.2f} µs); caller's CPU on "
        f"{f['on_caller_us_per_call'] / f['off_us_per_call']:.3f}× off",
    ]


SDK_CASES = ("5 attributes", "4 attributes", "no attributes", "5 attributes, exemplars off")


def _sdk_histogram(case: str) -> tuple[Any, Any, dict[str, Any] | None]:
    """(provider, histogram, attributes) of one `SDK_CASES` case."""
    provider = _provider("on_no_exemplars" if "exemplars off" in case else "on")
    histogram = provider.get_meter("bench").create_histogram(
        "h", unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS
    )
    if case.startswith("no"):
        return provider, histogram, None
    # "4 attributes": what a server on the default port 5432 records (no server.port)
    return provider, histogram, {k: v for k, v in OP_ATTRS.items() if k != "server.port" or case.startswith("5")}


def sdk_record_us(ops: int, rounds: int) -> float:
    """Median µs of one SDK histogram measurement with an operation's 5 attributes (what ``on`` adds per record)."""
    provider, histogram, attrs = _sdk_histogram(SDK_CASES[0])
    seconds = measure({"record": lambda: histogram.record(0.0002, attrs)}, ops, rounds)["record"]
    provider.shutdown()
    return seconds * 1e6


def sdk_worker(case: str, count: int) -> None:
    """The callgrind subject for the SDK alone: ``count`` histogram measurements of one `SDK_CASES` case."""
    _, histogram, attrs = _sdk_histogram(case)
    for _ in range(100):
        histogram.record(0.0002, attrs)
    gc.collect()
    gc.disable()
    for _ in range(count):
        histogram.record(0.0002, attrs)
    gc.enable()


SDK_STAGES = (
    "Histogram.record",
    "Measurement(...), its attributes validated and copied",
    "the attributes validated and copied alone (_clean_attribute_value)",
    "exemplar filter (trace based)",
    "MeasurementConsumer.consume_measurement",
    "_ViewInstrumentMatch.consume_measurement",
    "the series key alone (_hash_attributes)",
    "aggregation (explicit buckets)",
)


def _sdk_stage(stage: str) -> Callable[[], object]:
    """One stage of the SDK's ``Histogram.record`` (5 attributes, a context holding no span), called alone.

    Reads the SDK's private objects (version 1.45.2): a benchmark's look inside, which hypervault never does.
    """
    from time import time_ns

    from opentelemetry.attributes import _clean_attribute_value
    from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    from opentelemetry.sdk.metrics._internal.measurement import Measurement

    _, histogram, attrs = _sdk_histogram(SDK_CASES[0])
    context = _metrics._no_span()
    histogram.record(0.0002, attrs, context)
    measurement = Measurement(0.0002, time_ns(), histogram, context, attrs)
    consumer = histogram._measurement_consumer
    (storage,) = consumer._reader_storages.values()
    (match,) = storage._get_or_init_view_instrument_match(histogram)
    (aggregation,) = match._attributes_aggregation.values()
    exemplar_filter = consumer._sdk_config.exemplar_filter
    stages: dict[str, Callable[[], object]] = dict(
        zip(
            SDK_STAGES,
            (
                lambda: histogram.record(0.0002, attrs, context),
                lambda: Measurement(0.0002, time_ns(), histogram, context, attrs),
                lambda: _clean_attribute_value(attrs, None),
                lambda: exemplar_filter.should_sample(0.0002, 0, attrs, context),
                lambda: consumer.consume_measurement(measurement),
                lambda: match.consume_measurement(measurement, False),
                lambda: _hash_attributes(attrs),
                lambda: aggregation.aggregate(measurement, False),
            ),
            strict=True,
        )
    )
    return stages[stage]


def stage_worker(stage: str, count: int) -> None:
    """The callgrind subject of one `SDK_STAGES` stage: ``count`` calls."""
    call = _sdk_stage(stage)
    for _ in range(100):
        call()
    gc.collect()
    gc.disable()
    for _ in range(count):
        call()
    gc.enable()


def worker(variant: str, backend: str, settings: Mapping[str, Any] | None, count: int) -> None:
    """The callgrind subject: ``count`` put+get calls of one variant after a warm-up of 50."""
    ds, _ = make(variant, backend, settings)
    call = round_trip(ds)
    for _ in range(50):
        call()
    gc.collect()
    gc.disable()  # collections triggered at different moments are the main noise between two counts
    for _ in range(count):
        call()
    hvcore.metrics.flush()  # the deferred measurements are counted too
    gc.enable()
    ds.close()


def instructions(variant: str, backend: str, settings: Mapping[str, Any] | None, count: int) -> int:
    """Instructions callgrind counts for a worker process making ``count`` put+get calls (``backend`` ``sdk``:
    ``count`` measurements of the SDK case ``variant``)."""
    return callgrind_instructions(__file__, "--worker", variant, backend, json.dumps(settings), str(count))


def per_call(
    backend: str, settings: Mapping[str, Any] | None, count: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, float]:
    """Instructions per call of each variant: (Ir(5·count) - Ir(count)) / (4·count)."""
    return {
        variant: (instructions(variant, backend, settings, 5 * count) - instructions(variant, backend, settings, count))
        / (4 * count)
        for variant in variants
    }


def run(quick: bool, callgrind: bool | None = None, variants: tuple[str, ...] = ("off", "on")) -> dict[str, Any]:
    """Every measure on memory and on fresh local PostgreSQL servers; the figures.

    ``callgrind`` (default: when not ``quick`` and valgrind is installed) adds the instruction counts of
    ``variants`` (the suite's part: off and on, about 10 minutes on 2 busy cores; the command line: every variant).
    """
    from fixtures.localpg import local_servers

    if callgrind is None:
        callgrind = not quick
    callgrind = callgrind and shutil.which("valgrind") is not None
    ops, rounds = (300, 7) if quick else (1000, 21)
    results: dict[str, Any] = {"quick": quick, "ops_per_block": ops, "rounds": rounds, "variants": list(variants)}
    results["sdk_record_us"] = sdk_record_us(ops * 5, rounds)
    if callgrind:
        results["sdk_record_ir"] = per_call("sdk", None, 2000, SDK_CASES)
    results["memory_wall_us"], results["memory_cpu_us"] = wall("memory", None, ops * 5, rounds)
    results["memory_flush_thread"] = flush_thread("memory", None, ops * 20)
    if callgrind:
        results["memory_ir"] = per_call("memory", None, 300, variants)  # the garbage collector off: stable counts
    with local_servers(1, fsync=False) as local:
        settings = dict(local[0].settings)
        results["jsonb_wall_us"], results["jsonb_cpu_us"] = wall("jsonb", settings, ops // 3, rounds)
        results["jsonb_flush_thread"] = flush_thread("jsonb", settings, ops * 10)
        results["jsonb_caller_us"], results["jsonb_caller_cpu_us"] = wall(
            "jsonb", settings, ops // 3, rounds, drain=False
        )
        if callgrind:
            results["jsonb_ir"] = per_call("jsonb", settings, 100, variants)
    with local_servers(1, fsync=True) as durable:  # the put users feel: a commit that waits for its WAL flush
        durable_settings = dict(durable[0].settings)
        results["put_fsync_wall_us"], results["put_fsync_cpu_us"] = wall(
            "jsonb", durable_settings, ops // 5, rounds, put_only
        )
        results["put_fsync_caller_us"], results["put_fsync_caller_cpu_us"] = wall(
            "jsonb", durable_settings, ops // 5, rounds, put_only, drain=False
        )
    return results


def _ratios(figures: Mapping[str, float]) -> str:
    off = figures["off"]
    return " | ".join(
        f"{v} {figures[v]:,.1f}" + ("" if v == "off" else f" ({figures[v] / off:.3f}×)")
        for v in VARIANTS
        if v in figures
    )


MEASURES = (
    ("memory_ir", "memory, put+get, instructions"),
    ("jsonb_ir", "jsonb, put+get, instructions (client)"),
    ("memory_wall_us", "memory, put+get, wall µs, all costs"),
    ("memory_cpu_us", "memory, put+get, CPU µs, all costs"),
    ("jsonb_wall_us", "jsonb, put+get, wall µs, all costs (fsync off)"),
    ("jsonb_cpu_us", "jsonb, put+get, client CPU µs, all costs (fsync off)"),
    ("jsonb_caller_us", "jsonb, put+get, wall µs, caller (fsync off)"),
    ("jsonb_caller_cpu_us", "jsonb, put+get, client CPU µs, caller (fsync off)"),
    ("put_fsync_wall_us", "jsonb, put, wall µs, all costs (fsync on)"),
    ("put_fsync_cpu_us", "jsonb, put, client CPU µs, all costs (fsync on)"),
    ("put_fsync_caller_us", "jsonb, put, wall µs, caller (fsync on)"),
    ("put_fsync_caller_cpu_us", "jsonb, put, client CPU µs, caller (fsync on)"),
)

SUMMARY = (  # (workload, key of the caller's path, (name, key) of each total): "on" against "off" of each measure
    (
        "jsonb put+get (fsync off)",
        "jsonb_caller_us",
        (("client instructions", "jsonb_ir"), ("client CPU time", "jsonb_cpu_us"), ("wall", "jsonb_wall_us")),
    ),
    (
        "jsonb put (fsync on)",
        "put_fsync_caller_us",
        (("client CPU time", "put_fsync_cpu_us"), ("wall", "put_fsync_wall_us")),
    ),
)


def summary(r: Mapping[str, Any]) -> list[str]:
    """One line per workload: metrics on / off on the caller's path beside the total-cost measures (goal 1.05×)."""
    lines = []
    for workload, caller, totals in SUMMARY:
        if caller not in r:
            continue
        parts = ", ".join(f"{name} {_ratio(r[key])}" for name, key in totals if key in r)
        cpu = r.get(caller.removesuffix("_us") + "_cpu_us")
        on_caller = f"wall {_ratio(r[caller])}" + (f", client CPU time {_ratio(cpu)}" if cpu else "")
        lines.append(f"{workload:26} caller's path: {on_caller} | total: {parts}")
    return lines


def _ratio(figures: Mapping[str, float]) -> str:
    return f"{figures['on'] / figures['off']:.3f}×"


def main() -> None:
    """Command-line entry: print each measure with its ratios to ``off`` (and write them as JSON if asked)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, variant, backend, settings, count = sys.argv
        if backend == "sdk":
            sdk_worker(variant, int(count))
        elif backend == "sdk_stage":
            stage_worker(variant, int(count))
        else:
            worker(variant, backend, json.loads(settings), int(count))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls, no callgrind (a smoke run)")
    parser.add_argument("--no-callgrind", action="store_true", help="wall-clock only")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--callgrind-variants", default=",".join(VARIANTS), help="variants counted by callgrind")
    parser.add_argument(
        "--flush-thread", action="store_true", help="only the flush thread's CPU per measurement (memory, jsonb)"
    )
    parser.add_argument(
        "--sdk-stages", action="store_true", help="only where one SDK measurement's instructions go (callgrind)"
    )
    args = parser.parse_args()
    if args.sdk_stages:
        for stage, figure in per_call("sdk_stage", None, 2000, SDK_STAGES).items():
            print(f"{stage:60} {figure:9,.0f} instructions")
        return
    if args.flush_thread:
        from fixtures.localpg import local_servers

        calls = _metrics.FLUSH_AT * (2 if args.quick else 5)  # 4 or 10 wakes of the thread
        for line in flush_thread_lines(flush_thread("memory", None, calls), "memory"):
            print(line)
        with local_servers(1, fsync=False) as local:
            for line in flush_thread_lines(flush_thread("jsonb", dict(local[0].settings), calls // 2), "jsonb"):
                print(line)
        return
    variants = tuple(v for v in VARIANTS if v in args.callgrind_variants.split(","))
    if "off" not in variants:
        parser.error("--callgrind-variants must include off (the ratios' baseline)")
    r = run(args.quick, callgrind=False if args.no_callgrind else None, variants=variants)
    print("metrics on vs off (no meter provider), ratios to off from this run; goal: on ≤ 1.05×")
    print(f"one SDK histogram measurement (5 attributes): {r['sdk_record_us']:.2f} µs wall")
    if "sdk_record_ir" in r:
        print("instructions per SDK measurement: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["sdk_record_ir"].items()))
    for key, label in MEASURES:
        if key in r:
            print(f"{label:52} {_ratios(r[key])}")
    for backend in ("memory", "jsonb"):
        if f"{backend}_flush_thread" in r:
            for line in flush_thread_lines(r[f"{backend}_flush_thread"], backend):
                print(line)
    print("on / off, the caller's path (measurements handed over after the timing) and in total (handed over on the")
    print("caller's thread every 64 calls, inside the timing; instructions include the hand-over); goal ≤ 1.05×:")
    for line in summary(r):
        print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
