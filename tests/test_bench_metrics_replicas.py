"""The suite's ``metrics`` and ``replicas`` parts: their figures become rows with the right ratios (no servers run).

The scripts' ``run()`` take minutes (callgrind, a streaming standby); what can drift without a run is the shape the
suite's normalisers read, checked here against results shaped as the scripts write them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"hv_test_{name}", ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_metrics_and_replicas_are_suite_parts_with_normalisers(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = _load(monkeypatch, "suite")
    assert {"metrics", "replicas"} <= set(suite.PARTS) <= set(suite.NORMALISERS)
    bench = _load(monkeypatch, "bench_metrics")
    assert bench.VARIANTS[0] == "off" and not hasattr(bench, "BareDatastore")  # no hand-kept uninstrumented copy

    rows = suite.rows_metrics(
        {
            "jsonb_ir": {"off": 400_000.0, "on": 600_000.0},
            "jsonb_wall_us": {"off": 200.0, "on": 210.0},
            "put_fsync_wall_us": {"off": 1000.0, "on": 1010.0},
        }
    )
    assert [r.measure for r in rows] == [
        "metrics on: put+get, jsonb, client instructions",
        "metrics on: put+get, jsonb (fsync off)",
        "metrics on: put, jsonb (fsync on)",
    ]
    assert rows[0].ratio == pytest.approx(400_000 / 600_000)  # below 1: metrics on costs

    reads = {
        setup: {"per_s": value, "ratio": value / 100}
        for setup, value in (("primary only", 100.0), ("replica only", 150.0), ("primary + replica", 120.0))
    }
    puts = {
        "put, no standby": {"us": 500.0, "ratio": 1.0},
        "put, standby (read-your-writes)": {"us": 550.0, "ratio": 1.1},
        "put, standby, read_your_writes=False": {"us": 500.0, "ratio": 1.0},
    }
    rows = suite.rows_replicas({"threads": 4, "reads": {"get_many": reads, "query": reads}, "put": puts})
    assert len(rows) == 6
    assert rows[0].ratio == pytest.approx(1.5) and rows[0].comparison == "primary only"
    assert rows[4].measure == "put, standby (read-your-writes)" and rows[4].ratio == pytest.approx(500 / 550)


def test_bench_metrics_summarises_the_callers_path_beside_the_total_and_reaches_every_sdk_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The summary's lines (on / off per workload) and ``--sdk-stages``' subjects, each called once without
    valgrind: the stages read the SDK's private objects, which a new SDK release may move."""
    bench = _load(monkeypatch, "bench_metrics")
    figures = {"off": 100.0, "on": 110.0}
    r = {key: figures for key in ("jsonb_caller_us", "jsonb_ir", "jsonb_cpu_us", "jsonb_wall_us")}
    assert bench.summary(r) == [
        "jsonb put+get (fsync off)  caller's path: wall 1.100× | total: client instructions 1.100×, "
        "client CPU time 1.100×, wall 1.100×"
    ]
    for stage in bench.SDK_STAGES:
        bench.stage_worker(stage, 1)


def test_bench_metrics_hands_the_queue_over_between_blocks_outside_the_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block must not pay for the previous variant's queued measurements (the switch of provider hands the queue
    over): ``before`` runs outside the timing, ``after`` (the all-costs remainder) inside it."""
    import time

    bench = _load(monkeypatch, "bench_metrics")
    ran: list[str] = []

    def slow(name: str) -> Callable[[], None]:
        def run() -> None:
            ran.append(name)
            time.sleep(0.02)

        return run

    candidates = {"off": lambda: None, "on": lambda: None}
    walls, _ = bench.measure_cpu(candidates, 10, 3, before={n: slow("before " + n) for n in candidates})
    assert max(walls.values()) < 0.002  # 20 ms before each block of 10 calls: not in the 10 calls' time
    assert ran.count("before off") == ran.count("before on") == 4  # the warm-up's block and each round's
    walls, _ = bench.measure_cpu(candidates, 10, 3, after={"off": slow("after off"), "on": lambda: None})
    assert walls["off"] >= 0.002 > walls["on"]  # the remainder handed over by a block is its own cost

    from opentelemetry.sdk.metrics import MeterProvider

    import hvcore

    provider = MeterProvider()
    try:
        hvcore.metrics.use(provider)
        with hvcore.Datastore([dict(shards="0-16", name="bench-switch")], backend="memory") as db:
            db.put(3, 1, n=1)
            assert hvcore.metrics.pending == 1
            bench._switch(None, "waits")()  # to "off": the queue goes to its SDK first, outside the timing
            assert hvcore.metrics.pending == 0 and hvcore.metrics.on is False
    finally:
        hvcore.metrics.use(None)
        provider.shutdown()
    figures = {"off": 100.0, "on": 104.0}
    r = {key: figures for key in ("jsonb_caller_us", "jsonb_caller_cpu_us", "jsonb_cpu_us")}
    assert bench.summary(r) == [
        "jsonb put+get (fsync off)  caller's path: wall 1.040×, client CPU time 1.040× | total: client CPU time 1.040×"
    ]
