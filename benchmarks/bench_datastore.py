"""Benchmark the PostgreSQL backends: façade overhead, client-side vs server-side ids, provisioning 8192 shards.

Usage: ``python benchmarks/bench_datastore.py [--quick] [--json PATH]``. Starts two throwaway PostgreSQL servers
(system binaries, fsync on, synchronous_commit off so the figures show CPU and round trips rather than the disk),
and prints every ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import NEXT_ID_SQL
from fixtures.localpg import local_servers

import hvcore
from hvbackend_postgres._schema import ShardSQL

BODY = {"name": "benchmark", "colour": "red", "size": 3}
SHARD = 3  # on the first server


def _per_op_us(fn: Callable[[], None], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _compare(a: Callable[[], None], b: Callable[[], None], n: int, rounds: int) -> tuple[float, float]:
    """Median per-op µs of ``a`` and ``b``, measured in alternating blocks so drift hits both alike."""
    _per_op_us(a, max(n // 5, 50))
    _per_op_us(b, max(n // 5, 50))
    times_a, times_b = [], []
    for index in range(rounds):
        first, second = (a, b) if index % 2 == 0 else (b, a)
        t1 = _per_op_us(first, n)
        t2 = _per_op_us(second, n)
        if index % 2 == 0:
            times_a.append(t1)
            times_b.append(t2)
        else:
            times_a.append(t2)
            times_b.append(t1)
    return statistics.median(times_a), statistics.median(times_b)


def bench_overhead(servers: list[dict[str, Any]], n: int, rounds: int) -> dict[str, Any]:
    """put/get through the Datastore vs the same SQL on the same pool by hand; client ids vs server next_id()."""
    connections = [{**servers[0], "shards": "0-8"}, {**servers[1], "shards": "8-16"}]
    out: dict[str, Any] = {}
    with hvcore.Datastore(connections, backend="jsonb") as db:
        db.provision()
        store = db.store_for(SHARD)
        statements = ShardSQL.build(SHARD, "jsonb", None)
        db.put(SHARD, 1, **BODY)  # opens the pool
        pool = store._pool  # type: ignore[attr-defined]
        next_key = db.generator.next_key

        def ds_put() -> None:
            db.put(SHARD, 1, **BODY)

        def hand_put() -> None:
            with pool.connection() as conn:
                conn.execute(statements.insert, (next_key(SHARD), 1, Jsonb(BODY)))

        put_ds, put_hand = _compare(ds_put, hand_put, n, rounds)
        key = db.put(SHARD, 1, **BODY)

        def ds_get() -> None:
            db.get(key)

        def hand_get() -> None:
            with pool.connection() as conn:
                conn.execute(statements.fetch, (key,)).fetchone()

        get_ds, get_hand = _compare(ds_get, hand_get, n, rounds)

        schema = f"shard{SHARD:04d}"
        with pool.connection() as conn:
            conn.execute(NEXT_ID_SQL.format(schema=schema, shard=SHARD))
        old_insert = f"INSERT INTO {schema}.entities_old (kind, body) VALUES (%s, %s) RETURNING id"

        def server_ids() -> None:
            with pool.connection() as conn:
                conn.execute(old_insert, (1, Jsonb(BODY))).fetchone()

        put_client, put_server = _compare(ds_put, server_ids, n, rounds)
        hand_client, hand_server = _compare(hand_put, server_ids, n, rounds)
        with pool.connection() as conn:
            row = conn.execute(old_insert, (1, Jsonb(BODY))).fetchone()
        assert row is not None
        old_key = hvcore.KeyLayout.HYPERVAULT.key(row[0])
        out.update(
            put_datastore_us=put_ds,
            put_by_hand_us=put_hand,
            put_ratio=put_ds / put_hand,
            get_datastore_us=get_ds,
            get_by_hand_us=get_hand,
            get_ratio=get_ds / get_hand,
            put_client_ids_us=put_client,
            put_server_next_id_us=put_server,
            client_vs_server_ratio=put_client / put_server,
            put_by_hand_client_ids_us=hand_client,
            put_by_hand_server_next_id_us=hand_server,
            by_hand_client_vs_server_ratio=hand_client / hand_server,
            server_id_decodes_to_shard=old_key.shard_id,
            server_id_age_s=abs(time.time() - old_key.timestamp_ms / 1000),
        )
    return out


def bench_provisioning(servers: list[dict[str, Any]], shards: int) -> dict[str, Any]:
    """Provision ``shards`` shards over the two servers (fresh databases), then again."""
    half = shards // 2
    connections = []
    for index, settings in enumerate(servers):
        with psycopg.connect(**settings, autocommit=True) as conn:
            conn.execute("CREATE DATABASE hv_bench_provision")
        lo, hi = (0, half) if index == 0 else (half, shards)
        connections.append({**settings, "dbname": "hv_bench_provision", "shards": f"{lo}-{hi}"})
    out: dict[str, Any] = {"shards": shards}
    with hvcore.Datastore(connections, backend="jsonb") as db:
        started = time.perf_counter()
        reports = db.provision()
        out["first_run_s"] = time.perf_counter() - started
        out["created"] = sum(r.created for r in reports)
        started = time.perf_counter()
        reports = db.provision()
        out["rerun_s"] = time.perf_counter() - started
        out["rerun_created"] = sum(r.created for r in reports)
    return out


def run(quick: bool) -> dict[str, Any]:
    """Run every benchmark on two fresh local servers; the measured figures."""
    n, rounds = (200, 9) if quick else (500, 31)
    shards = 1024 if quick else 8192
    with local_servers(2, fsync=True) as local:
        settings = [s.settings for s in local]
        for server in settings:
            with psycopg.connect(**server, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("SELECT pg_reload_conf()")
        results: dict[str, Any] = {"quick": quick, "ops_per_block": n, "rounds": rounds}
        results.update(bench_overhead(settings, n, rounds))
        results["provisioning"] = bench_provisioning(settings, shards)
    return results


def main() -> None:
    """Command-line entry: print the figures and ratios (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer operations and 1024 shards")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    p = r["provisioning"]
    print(
        f"put  Datastore {r['put_datastore_us']:7.1f} µs | by hand, same pool+SQL {r['put_by_hand_us']:7.1f} µs "
        f"| ratio {r['put_ratio']:.3f} (target ≤ 1.10)"
    )
    print(
        f"get  Datastore {r['get_datastore_us']:7.1f} µs | by hand, same pool+SQL {r['get_by_hand_us']:7.1f} µs "
        f"| ratio {r['get_ratio']:.3f} (target ≤ 1.10)"
    )
    print(
        f"ids  Datastore.put (client-side id) {r['put_client_ids_us']:7.1f} µs | server next_id() default "
        f"{r['put_server_next_id_us']:7.1f} µs | ratio {r['client_vs_server_ratio']:.3f} (target ≤ 1.00); "
        f"server id decodes to shard {r['server_id_decodes_to_shard']} ({r['server_id_age_s']:.1f} s old)"
    )
    print(
        f"ids  same SQL by hand: client-side id {r['put_by_hand_client_ids_us']:7.1f} µs | server next_id() "
        f"{r['put_by_hand_server_next_id_us']:7.1f} µs | ratio {r['by_hand_client_vs_server_ratio']:.3f} "
        "(target ≤ 1.00)"
    )
    print(
        f"provision {p['shards']} shards on 2 servers: {p['first_run_s']:.2f} s (target ≤ 15), "
        f"re-run {p['rerun_s']:.2f} s (target ≤ 5), re-run created {p['rerun_created']}"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
