"""benchmarks/bench_metrics_off.py: the off path is counted (reads of ``metrics.on`` per put+get), and stays small."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

import hvcore
from hvcore._metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(
        "hv_test_bench_metrics_off", ROOT / "benchmarks" / "bench_metrics_off.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_reads_of_metrics_on_are_counted_and_few(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    try:
        reads = bench.checks_per_call("memory", None, 40)
    finally:
        hvcore.metrics.use(None)
    # put + get each read metrics.on once on the memory backend: a counting descriptor that saw nothing (0) or an
    # off path that grew checks (more than 2 per operation) both fail here
    assert 1 <= reads <= 4
    assert type(hvcore.metrics) is Metrics  # the counting class is taken off again
    assert hvcore.metrics.on is False


def test_summary_gives_the_share_and_the_goal(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    lines = bench.summary({"reads": {"jsonb": 4.0}, "call_ir": {"jsonb": 400_000.0}, "check_ir": 50.0})
    assert "4.00 reads × 50.0 = 200 of 400,000 instructions: 0.050% (goal met)" in lines[-1]
    lines = bench.summary({"reads": {"jsonb": 4.0}, "call_ir": {"jsonb": 10_000.0}, "check_ir": 50.0})
    assert "GOAL MISSED" in lines[-1]
