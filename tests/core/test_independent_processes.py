"""Independent processes (started with subprocess, sharing nothing) making keys for one shard at a put's pace.

The figures of benchmarks/bench_key_collisions.py, asserted: with the old scheme (every millisecond from 0) the
processes repeat each other's keys in step; the default (a random start per millisecond) repeats only by
chance, within the bound for independent random choices; leased worker numbers (tests/backends/test_lease.py)
never.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bench_module() -> ModuleType:
    """benchmarks/bench_key_collisions.py, imported by path (it is a script, not a package module)."""
    path = ROOT / "benchmarks" / "bench_key_collisions.py"
    spec = importlib.util.spec_from_file_location("hv_bench_key_collisions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def options(**overrides: object) -> argparse.Namespace:
    base = {"processes": 4, "seconds": 1.0, "gap_us": "100:300", "bits": 4, "pg": "", "repeat": 1}
    return argparse.Namespace(**{**base, **overrides})


@pytest.mark.slow
def test_independent_processes_repeat_keys_in_step_with_the_old_scheme_and_by_chance_with_the_default() -> None:
    bench = bench_module()
    old = bench.repeats(bench.run_processes("old", options())["keys"])
    done = bench.run_processes("default", options())
    default = bench.repeats(done["keys"])
    lines = bench.timelines(done["keys"])
    pairs = 0
    for ms in set().union(*lines):
        counts = [line.get(ms, 0) for line in lines]
        pairs += (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
    bound = 1000 * pairs / 1024 / default["keys"]  # expected repeats per 1,000 keys of independent random starts
    assert default["keys"] > 4 * 1500 and old["keys"] > 4 * 1500  # about 5,000 keys/s each, for 1 s
    assert old["repeats_per_1000"] > 100  # in step: most keys of one process are another's too
    assert default["repeats_per_1000"] < 2 * bound + 1, (default, bound)
    assert old["repeats_per_1000"] > 10 * default["repeats_per_1000"]
