"""Benchmark read replicas: read throughput with reads on the primary only, on its standby, and on both.

Usage: ``python benchmarks/bench_replicas.py [--quick] [--json PATH]``. Starts its own primary and streaming standby
(`fixtures.pgreplica.ReplicaPair`: ``pg_basebackup -R``, own ports, fsync off), writes 20,000 jsonb rows over 8
shards, then runs ``THREADS`` reader threads for a fixed time per block, blocks in rotating order, and reports the
median reads per second of each setup and its ratio to "primary only" measured in the same run:

- ``get_many`` of 100 keys per call, and ``query(kind, shards=[s], limit=100)``;
- setups: every thread reads the primary (``read_from="primary"``); every thread reads the standby
  (``read_from="replica"``); half the threads each (``primary + replica``: the read capacity of both servers).

Not quick: client instructions per put counted by callgrind on a plain server (`put_worker`): a put, a put that
brings back the WAL position in its own exchange (read-your-writes now), a put followed by a position read (before).

Also: ``put`` with a standby configured (read-your-writes: each write brings back the primary's WAL position after
its commit, in the same exchange), with a standby and ``read_your_writes=False``, and without a standby, µs per call.

What to expect depends on the cores: both servers and the client share this machine, so a standby adds no CPU
here; on separate machines it adds a server's worth of read capacity.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import callgrind_instructions, measure
from fixtures.pgreplica import ReplicaPair

import hvcore

THREADS = 4
SHARDS = 8
ROWS = 20_000


def _servers(pair: ReplicaPair, *, replicas: bool = True) -> list[dict[str, Any]]:
    standby = pair.standby_settings
    server: dict[str, Any] = dict(shards=f"0-{SHARDS}", **pair.primary_settings)
    if replicas:
        server["replicas"] = [dict(host=standby["host"], port=standby["port"])]
    return [server]


def _throughput(work: Callable[[int], None], threads: int, seconds: float) -> float:
    """Calls per second of ``work(thread_number)`` run by ``threads`` threads for ``seconds``."""
    stop = threading.Event()
    counts = [0] * threads

    def loop(number: int) -> None:
        while not stop.is_set():
            work(number)
            counts[number] += 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


def bench_reads(pair: ReplicaPair, keys: list[hvcore.Key], rounds: int, seconds: float) -> dict[str, Any]:
    """Median reads per second (get_many of 100 keys; query of 100 rows) of each setup, rotating order."""
    db = hvcore.Datastore(_servers(pair), backend="jsonb", pool_max=THREADS + 2, max_replica_lag=5.0)
    try:
        db.refresh_replicas()
        time.sleep(0.3)
        db.refresh_replicas()
        setups: dict[str, Callable[[int], str]] = {
            "primary only": lambda n: "primary",
            "replica only": lambda n: "replica",
            "primary + replica": lambda n: "replica" if n % 2 else "primary",
        }
        batches = [random.sample(keys, 100) for _ in range(64)]

        def get_many(where: Callable[[int], str]) -> Callable[[int], None]:
            def work(n: int) -> None:
                with db.timeline():
                    found = db.get_many(random.choice(batches), read_from=where(n))
                assert len(found) == 100

            return work

        def query(where: Callable[[int], str]) -> Callable[[int], None]:
            def work(n: int) -> None:
                with db.timeline():
                    got = sum(1 for _ in db.query(1, shards=[random.randrange(SHARDS)], limit=100, read_from=where(n)))
                assert got == 100

            return work

        results: dict[str, Any] = {}
        for name, make in (("get_many", get_many), ("query", query)):
            per: dict[str, list[float]] = {setup: [] for setup in setups}
            names = list(setups)
            for index in range(rounds):
                for setup in names[index % len(names) :] + names[: index % len(names)]:
                    per[setup].append(_throughput(make(setups[setup]), THREADS, seconds))
            medians = {setup: statistics.median(values) for setup, values in per.items()}
            base = medians["primary only"]
            results[name] = {setup: {"per_s": value, "ratio": value / base} for setup, value in medians.items()}
        status = db.status()[0]["replicas"][0]
        results["standby_reads"] = status["reads"]
        results["standby_fallbacks"] = status["fallbacks"]
        return results
    finally:
        db.close()


def bench_put(pair: ReplicaPair, ops: int, rounds: int) -> dict[str, Any]:
    """µs per put with a standby configured (the WAL position read after each write) vs without."""
    with (
        hvcore.Datastore(_servers(pair), backend="jsonb") as with_replica,
        hvcore.Datastore(_servers(pair), backend="jsonb", read_your_writes=False) as untracked,
        hvcore.Datastore(_servers(pair, replicas=False), backend="jsonb") as without,
    ):
        medians = measure(
            {
                "put, no standby": lambda: without.put(1, 2, a="b"),
                "put, standby (read-your-writes)": lambda: with_replica.put(1, 2, a="b"),
                "put, standby, read_your_writes=False": lambda: untracked.put(1, 2, a="b"),
            },
            ops,
            rounds,
        )
    base = medians["put, no standby"]
    return {name: {"us": value * 1e6, "ratio": value / base} for name, value in medians.items()}


PUT_MODES = ("put", "position in the same exchange", "position read after")


def put_worker(mode: str, settings: dict[str, Any], count: int) -> None:
    """The callgrind subject: ``count`` puts on a plain server, as a write to a server with standbys does them.

    ``position in the same exchange`` is what read-your-writes does now (the store's ``track_wal``, set for
    primaries with standbys); ``position read after`` is what it did before (``wal_position()``, a round trip).
    """
    with hvcore.Datastore([dict(settings, shards="0-16")], backend="jsonb") as db:
        db.provision()
        store: Any = db._stores[0]
        store.track_wal = mode == "position in the same exchange"
        after = mode == "position read after"
        for n in range(50 + count):
            if n == 50:
                gc.collect()
                gc.disable()  # collections at different moments are the main noise between two counts
            db.put(1, 2, a="b")
            if after:
                store.wal_position()
        gc.enable()


def put_instructions(settings: dict[str, Any], count: int) -> dict[str, float]:
    """Client instructions per put of each `PUT_MODES` mode, by callgrind: (Ir(5·count) - Ir(count)) / (4·count)."""

    def collected(mode: str, n: int) -> int:
        return callgrind_instructions(__file__, "--worker", mode, json.dumps(settings), str(n))

    return {mode: (collected(mode, 5 * count) - collected(mode, count)) / (4 * count) for mode in PUT_MODES}


def run(quick: bool) -> dict[str, Any]:
    """Every measurement of this script, on one primary + standby pair started for it."""
    rounds, seconds, ops = (3, 1.0, 200) if quick else (5, 2.0, 500)
    pair = ReplicaPair()
    try:
        with hvcore.Datastore(_servers(pair), backend="jsonb") as db:
            db.provision()
            keys: list[hvcore.Key] = []
            for shard in range(SHARDS):
                keys += db.put_many(shard, 1, [{"n": i, "name": f"row {i}"} for i in range(ROWS // SHARDS)])
        pair.wait_replayed()
        with pair.connect("primary") as conn:
            conn.execute("ANALYZE")
        pair.wait_replayed()
        results: dict[str, Any] = {}
        if not quick and shutil.which("valgrind"):
            from fixtures.localpg import local_servers

            with local_servers(1, fsync=False) as local:
                results["put_instructions"] = put_instructions(dict(local[0].settings), 100)
        return results | {
            "quick": quick,
            "threads": THREADS,
            "cpus": os.cpu_count(),
            "seconds_per_block": seconds,
            "rounds": rounds,
            "reads": bench_reads(pair, keys, rounds, seconds),
            "put": bench_put(pair, ops, rounds * 3),
        }
    finally:
        pair.stop()


def main() -> None:
    """Run and print the figures (and write them as JSON with ``--json``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, mode, settings, count = sys.argv
        put_worker(mode, json.loads(settings), int(count))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter blocks")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    r = run(args.quick)
    print(f"read replicas: {r['threads']} reader threads, {r['cpus']} CPUs, medians of {r['rounds']} blocks")
    for name in ("get_many", "query"):
        unit = "calls of 100 keys" if name == "get_many" else "queries of 100 rows"
        for setup, figures in r["reads"][name].items():
            print(f"  {name:9s} {setup:18s} {figures['per_s']:8.0f} {unit}/s  x{figures['ratio']:.2f}")
    print(f"  standby served {r['reads']['standby_reads']:,} reads ({r['reads']['standby_fallbacks']} fall-backs)")
    for name, figures in r["put"].items():
        print(f"  {name:38s} {figures['us']:7.1f} µs  x{figures['ratio']:.2f}")
    if "put_instructions" in r:
        base = r["put_instructions"]["put"]
        for mode, count in r["put_instructions"].items():
            print(f"  client instructions per {mode:30s} {count:10,.0f}  x{count / base:.3f}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
