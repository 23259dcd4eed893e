"""Benchmark what metrics cost: put + get with metrics off and on, against the same calls without instrumentation.

Usage: ``python benchmarks/bench_metrics.py [--quick] [--json PATH] [--no-callgrind]``.

Three variants, on the memory backend and on a throwaway PostgreSQL server (jsonb, one started by the script):

- ``bare``: a `Datastore` whose ``put`` and ``_on_shard`` are the code before instrumentation (no check at all);
- ``off``: hypervault as shipped with no meter provider configured (one attribute check per call);
- ``on``: an OpenTelemetry SDK ``MeterProvider`` with an ``InMemoryMetricReader`` (every call records its duration);
- ``on_no_wait``: the same with ``hvcore.metrics.wait_time = False`` (no wait-time measurement per checkout).

For scale, the SDK's own cost of one histogram measurement with the 5 attributes of an operation is measured too.

Two measures, both printed as ratios to ``bare`` from this one run: wall-clock medians of interleaved blocks
(``_shared.measure``), and instructions per put+get counted by valgrind's callgrind (each variant runs N and 5N
times in a fresh process; the difference over 4N is the per-call count, free of start-up and of the noise of a
shared machine). Goals (issue 18): off ≤ 1 % over bare, on ≤ 5 %.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import measure

import hvcore
from hvcore._facade import PUT_ATTEMPTS, check_kind, too_many_duplicates
from hvcore._placement import MAX_HOPS
from hvcore.errors import DuplicateKey, ShardMoved

VARIANTS = ("bare", "off", "on", "on_no_wait")
SHARD = 3
BODY = {"name": "benchmark", "colour": "red", "size": 3}


class BareDatastore(hvcore.Datastore):
    """`Datastore` with ``put`` and ``_on_shard`` (which ``get`` uses) as they are, less the instrumentation.

    Keep in step with ``hvcore/_datastore.py``: the two must differ only by the ``metrics.on`` branches.
    """

    def put(self, shard_id: int, kind: int, /, **data: Any) -> hvcore.Key:
        """The pre-metrics ``put``."""
        store = self.store_for(shard_id)
        kind = check_kind(kind)
        store.check_data(data)
        for _ in range(PUT_ATTEMPTS):
            key = self._next_key(shard_id)
            try:
                if self._coalesce_writes and hasattr(store, "insert_group"):
                    insert = self._writer(store).insert
                else:
                    insert = store.insert
                insert(shard_id, key, kind, data)
            except DuplicateKey:
                self._count_collisions(shard_id, 1)
                self._log_duplicate(shard_id, key)
                continue
            except ShardMoved as moved:
                self._follow(moved)
                store = self.store_for(shard_id)
                continue
            if self._router is not None:
                self._note_write(shard_id)
            return key
        raise too_many_duplicates(shard_id)

    def _on_shard(self, shard_id: int, op: Callable[[Any], Any], name: str = "") -> Any:
        """The pre-metrics ``_on_shard``."""
        for _ in range(MAX_HOPS):
            store = self._live()[self.shard_map.server_for(shard_id)]
            try:
                return op(store)
            except ShardMoved as moved:
                self._follow(moved)
        raise self._too_many_hops(shard_id)


def make(variant: str, backend: str, settings: Mapping[str, Any] | None) -> tuple[hvcore.Datastore, Any]:
    """A provisioned datastore of ``variant`` (and the meter provider of ``on``, else None)."""
    provider = None
    if variant.startswith("on"):
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    hvcore.metrics.use(provider)
    hvcore.metrics.wait_time = variant != "on_no_wait"
    cls = BareDatastore if variant == "bare" else hvcore.Datastore
    if backend == "memory":
        servers: list[dict[str, Any]] = [dict(shards="0-16", name=f"bench-{variant}")]
    else:
        assert settings is not None
        servers = [dict(settings, shards="0-16")]
    ds = cls(servers, backend=backend)
    ds.provision()
    assert hvcore.metrics.on is variant.startswith("on")
    return ds, provider


def round_trip(ds: hvcore.Datastore) -> Callable[[], None]:
    """One put and one get of what it wrote."""

    def call() -> None:
        ds.get(ds.put(SHARD, 1, **BODY))

    return call


def wall(backend: str, settings: Mapping[str, Any] | None, ops: int, rounds: int) -> dict[str, float]:
    """Median µs per put+get of each variant, interleaved blocks; ``on`` keeps its provider while it runs."""
    made = {variant: make(variant, backend, settings) for variant in VARIANTS}
    # hvcore.metrics is one per process: "on" must record and the others not, so each call points it first
    calls = {v: _switching(round_trip(ds), provider, v != "on_no_wait") for v, (ds, provider) in made.items()}
    medians = measure(calls, ops, rounds)
    for ds, provider in made.values():
        ds.close()
        if provider is not None:
            provider.shutdown()
    hvcore.metrics.use(None)
    return {variant: seconds * 1e6 for variant, seconds in medians.items()}


def _switching(call: Callable[[], None], provider: Any, wait_time: bool) -> Callable[[], None]:
    """``call`` with hvcore.metrics pointed at ``provider`` (None: off) first, when it is not already."""
    state = hvcore.metrics

    def run() -> None:
        if state._explicit is not provider:
            state.use(provider)
        state.wait_time = wait_time
        call()

    return run


def sdk_record_us(ops: int, rounds: int) -> float:
    """Median µs of one SDK histogram measurement with an operation's 5 attributes (what ``on`` adds per record)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = provider.get_meter("bench").create_histogram("h", unit="s")
    attrs: dict[str, Any] = {
        "db.system.name": "postgresql",
        "db.operation.name": "get",
        "server.address": "127.0.0.1",
        "server.port": 5432,
        "db.namespace": "app",
    }
    seconds = measure({"record": lambda: histogram.record(0.0002, attrs)}, ops, rounds)["record"]
    provider.shutdown()
    return seconds * 1e6


def worker(variant: str, backend: str, settings: Mapping[str, Any] | None, count: int) -> None:
    """The callgrind subject: ``count`` put+get calls of one variant after a warm-up of 50."""
    ds, _provider = make(variant, backend, settings)
    call = round_trip(ds)
    for _ in range(50):
        call()
    gc.collect()
    gc.disable()  # collections triggered at different moments are the main noise between two counts
    for _ in range(count):
        call()
    gc.enable()
    ds.close()


def instructions(variant: str, backend: str, settings: Mapping[str, Any] | None, count: int) -> int:
    """Instructions callgrind counts for a worker process making ``count`` put+get calls."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--worker",
        variant,
        backend,
        json.dumps(settings),
        str(count),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"callgrind worker failed: {done.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {done.stderr[-2000:]}")
    return int(found.group(1))


def per_call(
    backend: str, settings: Mapping[str, Any] | None, count: int, variants: tuple[str, ...] = VARIANTS
) -> dict[str, float]:
    """Instructions per put+get of each variant: (Ir(5·count) - Ir(count)) / (4·count)."""
    return {
        variant: (instructions(variant, backend, settings, 5 * count) - instructions(variant, backend, settings, count))
        / (4 * count)
        for variant in variants
    }


def run(quick: bool, callgrind: bool, variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Every measure on memory and on a fresh local PostgreSQL; the figures."""
    from fixtures.localpg import local_servers

    ops, rounds = (300, 7) if quick else (1000, 21)
    results: dict[str, Any] = {"quick": quick, "ops_per_block": ops, "rounds": rounds}
    results["sdk_record_us"] = sdk_record_us(ops * 5, rounds)
    results["memory_wall_us"] = wall("memory", None, ops * 5, rounds)
    if callgrind and shutil.which("valgrind"):
        results["memory_ir"] = per_call("memory", None, 200 if quick else 1000, variants)
    with local_servers(1, fsync=False) as local:
        settings = dict(local[0].settings)
        results["jsonb_wall_us"] = wall("jsonb", settings, ops // 3, rounds)
        if callgrind and shutil.which("valgrind"):
            results["jsonb_ir"] = per_call("jsonb", settings, 100 if quick else 300, variants)
    return results


def _ratios(figures: Mapping[str, float]) -> str:
    bare = figures["bare"]
    return " | ".join(
        f"{v} {figures[v]:,.1f} ({figures[v] / bare:.4f}× bare, {100 * (figures[v] / bare - 1):+.2f} %)"
        for v in VARIANTS
        if v in figures
    )


def main() -> None:
    """Command-line entry: print each measure with its ratios to ``bare`` (and write them as JSON if asked)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, variant, backend, settings, count = sys.argv
        worker(variant, backend, json.loads(settings), int(count))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--no-callgrind", action="store_true", help="wall-clock only")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--callgrind-variants", default=",".join(VARIANTS), help="variants counted by callgrind")
    args = parser.parse_args()
    variants = tuple(v for v in VARIANTS if v in args.callgrind_variants.split(","))
    if "bare" not in variants:
        parser.error("--callgrind-variants must include bare (the ratios' baseline)")
    r = run(args.quick, callgrind=not args.no_callgrind, variants=variants)
    print("put+get, µs per call (wall-clock medians) and instructions per call (callgrind); goals: off ≤ 1 %, on ≤ 5 %")
    print(f"one SDK histogram measurement (5 attributes): {r['sdk_record_us']:.2f} µs")
    for backend in ("memory", "jsonb"):
        print(f"{backend:6} wall µs   {_ratios(r[f'{backend}_wall_us'])}")
        if f"{backend}_ir" in r:
            print(f"{backend:6} instr.    {_ratios(r[f'{backend}_ir'])}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
