"""Benchmark how routing and puts scale with the number of logical shards, and puts with threads.

Usage: ``python benchmarks/bench_scaling.py [--quick] [--json PATH]``. Measures:

- routing: ``ShardMap.server_for`` and ``Datastore.store_for`` at 16, 1024 and 8192 logical shards (no I/O: one list
  index, so it should stay flat);
- put cost at 16, 1024 and 8192 logical shards on two throwaway PostgreSQL servers (fsync on,
  ``synchronous_commit = off``), one database per shard count: puts to 16 hot shards of the map (what routing and
  the map's size cost) and puts to any shard of the map (mostly the first touch of a shard by a pooled session:
  PostgreSQL loads the shard's relations into that session's cache, and psycopg prepares its statements);
- put throughput with 1, 2, 4 and 8 threads sharing one `Datastore` (16 shards, ``pool_max`` 10 per server).

Every figure is a median over rounds in which the shard counts run in rotating order, so drift hits all alike.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure
from fixtures.localpg import local_servers

import hvcore

BODY = {"name": "benchmark", "colour": "red", "size": "3"}
SHARD_COUNTS = (16, 1024, 8192)
THREADS = (1, 2, 4, 8)


def _halves(
    count: int, extra: Mapping[str, Any] | None = None, settings: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    half = count // 2
    first = {**(settings[0] if settings else {}), **(extra or {}), "shards": f"0-{half}"}
    second = {**(settings[1] if settings else {}), **(extra or {}), "shards": f"{half}-{count}"}
    return [first, second]


def bench_routing(lookups: int, rounds: int) -> dict[str, dict[str, float]]:
    """ns per ``ShardMap.server_for`` and per ``Datastore.store_for`` (memory backend: no I/O), random mapped shards."""
    out: dict[str, dict[str, float]] = {}
    stores = {count: hvcore.Datastore(_halves(count), backend="memory") for count in SHARD_COUNTS}
    try:
        rng = random.Random(7)
        shard_lists = {count: [rng.randrange(count) for _ in range(lookups)] for count in SHARD_COUNTS}

        def block(fn: Callable[[int], object], shards: list[int]) -> Callable[[], None]:
            def run() -> None:
                for shard in shards:
                    fn(shard)

            return run

        server_for = measure(
            {str(c): block(stores[c].shard_map.server_for, shard_lists[c]) for c in SHARD_COUNTS}, 1, rounds
        )
        store_for = measure({str(c): block(stores[c].store_for, shard_lists[c]) for c in SHARD_COUNTS}, 1, rounds)
        for count in SHARD_COUNTS:
            key = str(count)
            out[key] = {
                "server_for_ns": server_for[key] / lookups * 1e9,
                "store_for_ns": store_for[key] / lookups * 1e9,
            }
    finally:
        for store in stores.values():
            store.close()
    return out


def bench_puts(settings: list[dict[str, Any]], counts: tuple[int, ...], ops: int, rounds: int) -> dict[str, Any]:
    """µs per put to a random shard, one database per shard count (provisioned first, seconds reported)."""
    for server in settings:
        with psycopg.connect(**server, autocommit=True) as conn:
            for count in counts:
                conn.execute(f"CREATE DATABASE scale{count}")
    stores: dict[int, hvcore.Datastore] = {}
    provision_s: dict[str, float] = {}
    try:
        for count in counts:
            db = stores[count] = hvcore.Datastore(
                _halves(count, {"dbname": f"scale{count}"}, settings), backend="jsonb"
            )
            started = time.perf_counter()
            db.provision()
            provision_s[str(count)] = time.perf_counter() - started
        rng = random.Random(11)

        def putter(count: int, spread: int) -> Callable[[], None]:
            db = stores[count]
            pool = rng.sample(range(count), spread)
            shards = [rng.choice(pool) for _ in range(4096)]
            state = [0]

            def put() -> None:
                state[0] = (state[0] + 1) & 4095
                db.put(shards[state[0]], 1, **BODY)

            return put

        # hot: 16 shards of the map, so every pooled session has their relations and statements cached (the cost
        # hypervault adds per shard of the map); cold: any shard of the map, mostly first touches per session
        hot = measure({str(c): putter(c, 16) for c in counts}, ops, rounds)
        cold = measure({str(c): putter(c, c) for c in counts}, ops, rounds)
    finally:
        for db in stores.values():
            db.close()
    return {
        "put_us": {k: v * 1e6 for k, v in hot.items()},
        "put_cold_us": {k: v * 1e6 for k, v in cold.items()},
        "provision_s": provision_s,
    }


def bench_threads(settings: list[dict[str, Any]], seconds: float) -> dict[str, float]:
    """Puts per second with 1, 2, 4, 8 threads sharing one Datastore (16 shards on 2 servers, random shards)."""
    out: dict[str, float] = {}
    with hvcore.Datastore(_halves(16, None, settings), backend="jsonb", pool_max=10) as db:
        db.provision()
        for _ in range(200):  # warm every pooled connection's caches a little
            db.put(random.randrange(16), 1, **BODY)
        for threads in THREADS:
            out[str(threads)] = _put_rate(db, threads, seconds)
    return out


def _put_rate(db: hvcore.Datastore, threads: int, seconds: float) -> float:
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def work(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        done = 0
        while not stop.is_set():
            db.put(rng.randrange(16), 1, **BODY)
            done += 1
        counts[index] = done

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def run(quick: bool) -> dict[str, Any]:
    """Routing without I/O, then puts per shard count and per thread count on two fresh local servers."""
    lookups, routing_rounds = (20_000, 3) if quick else (200_000, 9)
    ops, rounds = (40, 3) if quick else (300, 9)
    counts = (16, 256) if quick else SHARD_COUNTS
    seconds = 0.3 if quick else 2.0
    results: dict[str, Any] = {"quick": quick, "put_shard_counts": list(counts), "thread_seconds": seconds}
    results["routing"] = bench_routing(lookups, routing_rounds)
    with local_servers(2, fsync=True) as local:
        settings = [s.settings for s in local]
        for server in settings:
            with psycopg.connect(**server, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("SELECT pg_reload_conf()")
        results.update(bench_puts(settings, counts, ops, rounds))
        results["threads_puts_per_s"] = bench_threads(settings, seconds)
    return results


def main() -> None:
    """Command-line entry: print the figures (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer operations; puts at 16 and 256 shards only")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    for count, figures in r["routing"].items():
        print(
            f"routing at {int(count):5d} shards: ShardMap.server_for {figures['server_for_ns']:6.1f} ns | "
            f"Datastore.store_for {figures['store_for_ns']:6.1f} ns"
        )
    for count, us in r["put_us"].items():
        print(
            f"put at {int(count):5d} shards: {us:7.1f} µs on 16 hot shards | {r['put_cold_us'][count]:7.1f} µs on any "
            f"shard (mostly first touches per session) | provisioned in {r['provision_s'][count]:.2f} s"
        )
    one = r["threads_puts_per_s"]["1"]
    for threads, rate in r["threads_puts_per_s"].items():
        print(f"{int(threads)} thread(s): {rate:9,.0f} puts/s ({rate / one:.2f}× one thread)")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
