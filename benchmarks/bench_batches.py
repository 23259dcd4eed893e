"""Benchmark batches and queries on real PostgreSQL: put_many vs puts, get_many vs gets, a streamed time range.

Usage: ``python benchmarks/bench_batches.py [--quick] [--json PATH]``. Starts two throwaway PostgreSQL servers (system
binaries, fsync on, default durable commits, pg_stat_statements loaded to count the statements each server runs)
and prints every ratio measured in this one run, for `Datastore` and `AsyncDatastore`:

- put_many of 1000 rows vs 1000 single puts (jsonb and hstore), plus the two batch methods side by side on the same
  pool (binary COPY, what ``insert_many`` uses, vs executemany in one transaction) and the put ratio again with
  ``synchronous_commit=off`` sessions, where a single commit no longer waits for the WAL flush;
- get_many of 1000 keys over 64 shards on 2 servers vs 1000 single gets, with the statements counted on the servers;
- a time-range query over 100,000 rows: the EXPLAIN of the cursor the backend declares, first record vs whole range.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures.localpg import LocalServer, find_bin_dir

import hvcore
from hvbackend_postgres._schema import ShardSQL

BODY = {"name": "benchmark", "colour": "red", "size": "3"}  # text values: valid on hstore and jsonb
BATCH = 1000
SHARDS = 64  # 0-32 on the first server, 32-64 on the second
PUT_SHARD = 3
QUERY_SHARDS = (0, 1, 2, 3, 32, 33, 34, 35)  # the time range spans both servers


@contextlib.contextmanager
def servers(count: int = 2) -> Iterator[list[dict[str, Any]]]:
    """Start ``count`` durable local servers with pg_stat_statements; yield their settings."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL binaries (initdb, pg_ctl): set HV_PG_BIN")
    top = Path(tempfile.mkdtemp(prefix="hv-bench-"))
    top.chmod(0o755)
    local = [
        LocalServer(
            top / f"s{i}",
            bin_dir=bin_dir,
            fsync=True,
            settings=["shared_preload_libraries = 'pg_stat_statements'", "pg_stat_statements.track = 'all'"],
        )
        for i in range(count)
    ]
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda s: (s.init(), s.start()), local))
        settings = [s.settings for s in local]
        for server_settings in settings:
            with psycopg.connect(**server_settings, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("CREATE DATABASE bench_hstore")  # the other benchmarks use jsonb in ``postgres``
        yield settings
    finally:
        for server in local:
            server.stop("immediate")
        shutil.rmtree(top, ignore_errors=True)


def connections(settings: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    """The Datastore configuration: shards 0-32 on the first server, 32-64 on the second."""
    half = SHARDS // 2
    return [{**settings[0], **extra, "shards": f"0-{half}"}, {**settings[1], **extra, "shards": f"{half}-{SHARDS}"}]


class StatementCounter:
    """Statements each server ran between `reset` and `read` (pg_stat_statements, the counter's own left out)."""

    def __init__(self, settings: list[dict[str, Any]]) -> None:
        self.conns = [psycopg.connect(**s, autocommit=True) for s in settings]

    def reset(self) -> None:
        """Zero the counts on every server."""
        for conn in self.conns:
            conn.execute("SELECT pg_stat_statements_reset()")

    def read(self) -> list[int]:
        """Statements run per server since `reset` (calls, excluding pg_stat_statements' own queries)."""
        counts = []
        for conn in self.conns:
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_statements "
                "WHERE query NOT LIKE '%pg_stat_statements%'"
            ).fetchone()
            counts.append(int(row[0]) if row else 0)
        return counts

    def close(self) -> None:
        """Close the counting sessions."""
        for conn in self.conns:
            conn.close()


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _alternate(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, measured alternately so drift hits both alike (one warm-up each)."""
    a()
    b()
    times_a, times_b = [], []
    for index in range(rounds):
        if index % 2 == 0:
            times_a.append(_time(a))
            times_b.append(_time(b))
        else:
            times_b.append(_time(b))
            times_a.append(_time(a))
    return statistics.median(times_a), statistics.median(times_b)


def bench_puts(settings: list[dict[str, Any]], backend: str, rounds: int, **extra: Any) -> dict[str, Any]:
    """1000 single puts vs one put_many of 1000 rows, same shard, same Datastore."""
    if backend == "hstore":
        extra = {**extra, "dbname": "bench_hstore"}
    with hvcore.Datastore(connections(settings, **extra), backend=backend) as db:
        db.provision()
        rows = [BODY] * BATCH

        def singles() -> None:
            for _ in range(BATCH):
                db.put(PUT_SHARD, 1, **BODY)

        def batch() -> None:
            db.put_many(PUT_SHARD, 1, rows)

        t_single, t_batch = _alternate(singles, batch, rounds)
    return {
        "singles_s": t_single,
        "put_many_s": t_batch,
        "single_us": t_single / BATCH * 1e6,
        "put_many_us_per_row": t_batch / BATCH * 1e6,
        "ratio": t_single / t_batch,
    }


def bench_batch_methods(settings: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """insert_many's binary COPY vs executemany in one transaction: same pool, same shard, same rows (jsonb)."""
    with hvcore.Datastore(connections(settings), backend="jsonb") as db:
        db.provision()
        store = db.store_for(PUT_SHARD)
        next_keys = db.generator.next_keys
        statement = ShardSQL.build(PUT_SHARD, "jsonb", None).insert
        db.put(PUT_SHARD, 1, **BODY)  # opens the pool
        pool = store._pool  # type: ignore[attr-defined]

        def copy() -> None:
            store.insert_many(PUT_SHARD, [(k, 1, BODY) for k in next_keys(PUT_SHARD, BATCH)])

        def executemany() -> None:
            params = [(k, 1, Jsonb(BODY)) for k in next_keys(PUT_SHARD, BATCH)]
            with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(statement, params)

        t_copy, t_many = _alternate(copy, executemany, rounds)
    return {
        "copy_us_per_row": t_copy / BATCH * 1e6,
        "executemany_us_per_row": t_many / BATCH * 1e6,
        "executemany_vs_copy": t_many / t_copy,
    }


def _rows_of(shard: int) -> int:
    """Rows put in ``shard`` so that exactly `BATCH` keys spread over all `SHARDS` shards."""
    return BATCH // SHARDS + (1 if shard < BATCH % SHARDS else 0)


def _spread_keys(db: hvcore.Datastore) -> list[hvcore.Key]:
    keys: list[hvcore.Key] = []
    for shard in range(SHARDS):
        keys += db.put_many(shard, 1, [BODY] * _rows_of(shard))
    return keys


def bench_gets(settings: list[dict[str, Any]], rounds: int, counter: StatementCounter) -> dict[str, Any]:
    """1000 single gets vs one get_many of the same 1000 keys (64 shards, 2 servers); statements counted."""
    with hvcore.Datastore(connections(settings), backend="jsonb") as db:
        db.provision()
        keys = _spread_keys(db)

        def singles() -> None:
            for key in keys:
                db.get(key)

        def batch() -> None:
            assert len(db.get_many(keys)) == len(keys)

        t_single, t_batch = _alternate(singles, batch, rounds)
        counter.reset()
        batch()
        batch_statements = counter.read()
        counter.reset()
        singles()
        single_statements = counter.read()
    return {
        "keys": len(keys),
        "shards": len({k.shard_id for k in keys}),
        "singles_s": t_single,
        "get_many_s": t_batch,
        "single_us": t_single / len(keys) * 1e6,
        "ratio": t_single / t_batch,
        "get_many_statements_per_server": batch_statements,
        "single_gets_statements_per_server": single_statements,
    }


def _arun(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro())  # type: ignore[arg-type]


def bench_async(settings: list[dict[str, Any]], rounds: int, counter: StatementCounter) -> dict[str, Any]:
    """The same put_many and get_many comparisons through `AsyncDatastore` (awaited one after another)."""

    async def main() -> dict[str, Any]:
        async with hvcore.AsyncDatastore(connections(settings), backend="jsonb") as db:
            await db.provision()
            rows = [BODY] * BATCH

            async def singles_put() -> None:
                for _ in range(BATCH):
                    await db.put(PUT_SHARD, 1, **BODY)

            async def batch_put() -> None:
                await db.put_many(PUT_SHARD, 1, rows)

            keys: list[hvcore.Key] = []
            for shard in range(SHARDS):
                keys += await db.put_many(shard, 1, [BODY] * _rows_of(shard))

            async def singles_get() -> None:
                for key in keys:
                    await db.get(key)

            async def batch_get() -> None:
                assert len(await db.get_many(keys)) == len(keys)

            async def gathered_gets() -> None:  # the async way to issue single gets: all at once
                await asyncio.gather(*(db.get(k) for k in keys))

            put_single, put_batch = await _aalternate(singles_put, batch_put, rounds)
            get_single, get_batch = await _aalternate(singles_get, batch_get, rounds)
            get_gathered, _ = await _aalternate(gathered_gets, batch_get, rounds)
            counter.reset()
            await batch_get()
            statements = counter.read()
        return {
            "put_single_us": put_single / BATCH * 1e6,
            "put_many_us_per_row": put_batch / BATCH * 1e6,
            "put_ratio": put_single / put_batch,
            "get_single_us": get_single / BATCH * 1e6,
            "get_many_s": get_batch,
            "get_ratio": get_single / get_batch,
            "get_gathered_s": get_gathered,
            "get_gathered_ratio": get_gathered / get_batch,
            "get_many_statements_per_server": statements,
        }

    result: dict[str, Any] = _arun(main)
    return result


async def _aalternate(
    a: Callable[[], Awaitable[None]], b: Callable[[], Awaitable[None]], rounds: int
) -> tuple[float, float]:
    async def timed(fn: Callable[[], Awaitable[None]]) -> float:
        started = time.perf_counter()
        await fn()
        return time.perf_counter() - started

    await a()
    await b()
    times_a, times_b = [], []
    for index in range(rounds):
        if index % 2 == 0:
            times_a.append(await timed(a))
            times_b.append(await timed(b))
        else:
            times_b.append(await timed(b))
            times_a.append(await timed(a))
    return statistics.median(times_a), statistics.median(times_b)


def bench_query(settings: list[dict[str, Any]], total: int, rounds: int) -> dict[str, Any]:
    """A time range over ``total`` rows on 8 shards of 2 servers: plan of the declared cursor, first vs all."""
    with hvcore.Datastore(connections(settings), backend="jsonb") as db:
        db.provision()
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        per_shard = total // len(QUERY_SHARDS)
        for shard in QUERY_SHARDS:
            for start in range(0, per_shard, 5000):
                db.put_many(shard, 1, [{"n": str(start + i)} for i in range(min(5000, per_shard - start))])
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        for server in settings:
            with psycopg.connect(**server, autocommit=True) as conn:
                conn.execute("ANALYZE")

        by_server, spec = db._plan_query(None, None, since, until, list(QUERY_SHARDS), None)
        store = db.servers[0]
        query, params = store._query_sql(by_server[0], spec, None)  # type: ignore[attr-defined]
        with psycopg.connect(**settings[0]) as conn:
            rendered = query.as_string(conn)
            plan = [
                str(r[0])
                for r in conn.execute(
                    psycopg.sql.SQL("EXPLAIN DECLARE hv_query CURSOR FOR {}").format(query), params
                ).fetchall()
            ]
            full_plan = [str(r[0]) for r in conn.execute(psycopg.sql.SQL("EXPLAIN {}").format(query), params)]
            conn.rollback()

        def first() -> None:
            stream = db.query(since=since, until=until, shards=QUERY_SHARDS)
            next(iter(stream))
            stream.close()  # type: ignore[attr-defined]

        counted = [0]

        def whole() -> None:
            counted[0] = sum(1 for _ in db.query(since=since, until=until, shards=QUERY_SHARDS))

        t_first, t_whole = _alternate(first, whole, rounds)
    return {
        "rows": counted[0],
        "shards": len(QUERY_SHARDS),
        "sql_server0": rendered,
        "cursor_plan_server0": plan,
        "plain_select_plan_server0": full_plan,
        "sort_in_cursor_plan": any(re.match(r"\s*(->\s+)?(Incremental )?Sort\s+\(", line) for line in plan),
        "first_record_ms": t_first * 1e3,
        "whole_range_ms": t_whole * 1e3,
        "ratio": t_whole / t_first,
    }


def run(quick: bool) -> dict[str, Any]:
    """Run every benchmark on two fresh durable local servers; the measured figures."""
    rounds = 3 if quick else 7
    total = 20_000 if quick else 100_000
    results: dict[str, Any] = {"quick": quick, "rounds": rounds, "batch": BATCH}
    with servers(2) as settings:
        counter = StatementCounter(settings)
        try:
            results["put_jsonb"] = bench_puts(settings, "jsonb", rounds)
            results["put_hstore"] = bench_puts(settings, "hstore", rounds)
            results["put_jsonb_sync_commit_off"] = bench_puts(
                settings, "jsonb", rounds, options="-c synchronous_commit=off"
            )
            results["batch_methods"] = bench_batch_methods(settings, rounds)
            results["get"] = bench_gets(settings, rounds, counter)
            results["async"] = bench_async(settings, rounds, counter)
            results["query"] = bench_query(settings, total, rounds)
        finally:
            counter.close()
    return results


def main() -> None:
    """Command-line entry: print the figures and ratios (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds and 20,000 rows in the range query")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    for name in ("put_jsonb", "put_hstore", "put_jsonb_sync_commit_off"):
        p = r[name]
        print(
            f"{name:26s} 1000 puts {p['singles_s'] * 1e3:7.1f} ms ({p['single_us']:.0f} µs each) | put_many(1000) "
            f"{p['put_many_s'] * 1e3:6.1f} ms ({p['put_many_us_per_row']:.1f} µs/row) | ratio {p['ratio']:5.1f}× "
            "(target ≥ 30× with durable commits)"
        )
    m = r["batch_methods"]
    print(
        f"batch method (jsonb, same pool): binary COPY {m['copy_us_per_row']:.1f} µs/row | executemany in one "
        f"transaction {m['executemany_us_per_row']:.1f} µs/row | COPY is {m['executemany_vs_copy']:.1f}× faster"
    )
    g = r["get"]
    print(
        f"get  {g['keys']} keys on {g['shards']} shards, 2 servers: 1000 gets {g['singles_s'] * 1e3:7.1f} ms "
        f"({g['single_us']:.0f} µs each) | get_many {g['get_many_s'] * 1e3:6.1f} ms | ratio {g['ratio']:5.1f}× "
        "(target ≥ 10×)"
    )
    print(
        f"     statements run per server: get_many {g['get_many_statements_per_server']} (target ≤ 1 each), "
        f"1000 gets {g['single_gets_statements_per_server']}"
    )
    a = r["async"]
    print(
        f"async put: {a['put_single_us']:.0f} µs each | put_many {a['put_many_us_per_row']:.1f} µs/row | "
        f"ratio {a['put_ratio']:.1f}× (target ≥ 30×)"
    )
    print(
        f"async get: {a['get_single_us']:.0f} µs each | get_many {a['get_many_s'] * 1e3:.1f} ms | ratio "
        f"{a['get_ratio']:.1f}× (target ≥ 10×) | 1000 gets gathered at once {a['get_gathered_s'] * 1e3:.1f} ms "
        f"({a['get_gathered_ratio']:.1f}× get_many) | statements per server {a['get_many_statements_per_server']}"
    )
    q = r["query"]
    print(f"query: a time range over {q['rows']} rows on {q['shards']} shards of 2 servers; server 0 runs:")
    print(f"  {q['sql_server0']}")
    print("  EXPLAIN DECLARE hv_query CURSOR FOR <that> (the plan the streamed query uses):")
    for line in q["cursor_plan_server0"]:
        print(f"    {line}")
    print(
        f"  sort over the range: {'YES' if q['sort_in_cursor_plan'] else 'no'} | first record "
        f"{q['first_record_ms']:.1f} ms | whole range {q['whole_range_ms']:.1f} ms | ratio {q['ratio']:.0f}×"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
