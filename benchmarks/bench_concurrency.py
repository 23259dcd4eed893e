"""Benchmark throughput under concurrency: `AsyncDatastore` with overlapping calls vs raw asyncpg and raw psycopg.

Usage: ``python benchmarks/bench_concurrency.py [--quick] [--json PATH]``. Starts two throwaway PostgreSQL servers
(system binaries, fsync on, ``synchronous_commit = off`` so the figures show client CPU and round trips rather than
the disk), provisions 64 logical shards (32 per server, jsonb bodies) and measures, in one run, candidates in
rotating order per round (medians of the rounds):

- **64 concurrent gets** (one shard, the issue's ``shard0003.entities``), pool size 8 everywhere: `AsyncDatastore`
  (reads coalesced, the default), `AsyncDatastore(coalesce_reads=False)`, raw asyncpg (``asyncpg.create_pool`` with
  ``reset`` off, as users run it, jsonb decoded by ``json.loads`` as we do) and a raw psycopg ``AsyncConnectionPool``,
  each running the same single-key SQL;
- **64 concurrent puts**: `AsyncDatastore.put` vs the same INSERT by hand on asyncpg and psycopg pools;
- **one task at a time**: p50 and p99 latency of ``get`` coalesced vs uncoalesced (coalescing must cost a lone call
  nothing);
- **sync get_many** of 1000 keys over 64 shards on 2 servers vs the raw psycopg floor (the same per-server
  ``UNION ALL`` statements by hand on the Datastore's pools, servers read one after the other);
- **sync gets and puts from 64 threads**, pool 8: `Datastore` (coalesced) vs coalescing off vs a raw psycopg
  ``ConnectionPool`` with the same SQL; and one thread's get and put, coalescing on vs off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure
from fixtures.localpg import local_servers

import hvcore
from hvbackend_postgres._schema import ShardSQL

BODY = {"name": "benchmark", "colour": "red", "size": 3}
SHARD = 3  # on the first server
SHARDS = 64  # 0-32 on the first server, 32-64 on the second
POOL = 8
TASKS = 64
ROWS = 2000  # rows of SHARD the gets read


def _ops_per_s(count: int, seconds: float) -> float:
    return count / seconds


async def _concurrently(op: Callable[[int], Awaitable[object]], tasks: int, per_task: int) -> float:
    """Seconds for ``tasks`` tasks each awaiting ``op(i)`` ``per_task`` times."""

    async def worker(first: int) -> None:
        for i in range(first, first + per_task):
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker(t * per_task) for t in range(tasks)))
    return time.perf_counter() - started


async def _rounds(
    candidates: dict[str, Callable[[int], Awaitable[object]]], tasks: int, per_task: int, rounds: int
) -> dict[str, float]:
    """Median ops/s of each candidate over ``rounds`` rounds in rotating order (one warm-up block each)."""
    names = list(candidates)
    for name in names:
        await _concurrently(candidates[name], tasks, max(per_task // 4, 1))
    rates: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            seconds = await _concurrently(candidates[name], tasks, per_task)
            rates[name].append(_ops_per_s(tasks * per_task, seconds))
    return {name: statistics.median(values) for name, values in rates.items()}


async def _latencies(
    candidates: dict[str, Callable[[int], Awaitable[object]]], ops: int, rounds: int
) -> dict[str, dict[str, float]]:
    """p50/p99 µs of one call at a time; the candidates take turns call by call, so load swings hit them alike."""
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for i in range(ops // 4):
            await candidates[name](i)
    for i in range(ops * rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            await candidates[name](i)
            samples[name].append(time.perf_counter() - started)
    return _percentiles(samples)


def _percentiles(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    result = {}
    for name, values in samples.items():
        values.sort()
        result[name] = {
            "p50_us": values[len(values) // 2] * 1e6,
            "p99_us": values[min(len(values) - 1, int(len(values) * 0.99))] * 1e6,
        }
    return result


def _sync_latencies(candidates: dict[str, Callable[[int], object]], ops: int) -> dict[str, dict[str, float]]:
    """`_latencies` for plain calls."""
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        for i in range(ops // 20):
            candidates[name](i)
    for i in range(ops):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            candidates[name](i)
            samples[name].append(time.perf_counter() - started)
    return _percentiles(samples)


class RawGroups:
    """Overlapping raw-psycopg INSERTs sent together: the two designs measured for coalescing puts.

    ``mode="pipeline"``: the queued INSERTs go back to back on one connection in pipeline mode, a Sync after each
    (each its own transaction; psycopg's public ``Pipeline.sync()`` waits for results, so the private
    ``_enqueue_sync`` is used). ``mode="multirow"``: one ``INSERT ... VALUES (...), ... ON CONFLICT DO NOTHING
    RETURNING id``. A lone call goes straight through in both, as in `hvcore._coalesce`.
    """

    def __init__(self, pool: Any, insert: str, mode: str) -> None:
        self.pool, self.insert, self.mode = pool, insert, mode
        head, row = insert.split(" VALUES ", 1)
        self.head, self.row = head, row
        self.busy = 0
        self.pending: list[tuple[int, Any, asyncio.Future[None]]] = []
        self.scheduled = False

    async def put(self, key: int, body: Any) -> None:
        """Insert one row (straight through when nothing else is in flight)."""
        if not self.busy:
            self.busy = 1
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(self.insert, (key, 1, body))
            finally:
                self.busy -= 1
                self._flush()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((key, body, future))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        await future

    def _turn(self) -> None:
        self.scheduled = False
        self._flush()

    def _flush(self) -> None:
        if self.pending and self.busy < POOL:
            batch, self.pending = self.pending, []
            self.busy += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[int, Any, asyncio.Future[None]]]) -> None:
        try:
            async with self.pool.connection() as conn:
                if self.mode == "pipeline":
                    async with conn.pipeline() as pipeline:
                        for key, body, _ in batch:
                            await conn.execute(self.insert, (key, 1, body))
                            pipeline._enqueue_sync()
                else:
                    query = (
                        f"{self.head} VALUES {', '.join([self.row] * len(batch))} ON CONFLICT DO NOTHING RETURNING id"
                    )
                    cur = await conn.execute(query, [v for key, body, _ in batch for v in (key, 1, body)])
                    assert len(await cur.fetchall()) == len(batch)
            for _, _, future in batch:
                future.set_result(None)
        finally:
            self.busy -= 1
            self._flush()


async def bench_async(servers: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """64 concurrent gets and puts, and lone-call latency, against asyncpg and psycopg pools of the same size."""
    import asyncpg

    per_task, rounds = (5, 3) if quick else (30, 7)
    connections = [{**servers[0], "shards": f"0-{SHARDS // 2}"}, {**servers[1], "shards": f"{SHARDS // 2}-{SHARDS}"}]
    statements = ShardSQL.build(SHARD, "jsonb", None)
    out: dict[str, Any] = {"tasks": TASKS, "pool": POOL, "per_task": per_task, "rounds": rounds}
    settings = dict(servers[0])

    async def init(conn: Any) -> None:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")

    async def no_reset(conn: Any) -> None:
        return None

    apg = await asyncpg.create_pool(
        host=settings["host"],
        port=settings["port"],
        user=settings.get("user"),
        database=settings["dbname"],
        min_size=POOL,
        max_size=POOL,
        init=init,
        reset=no_reset,
    )
    conninfo = psycopg.conninfo.make_conninfo(**settings)
    pgpool = psycopg_pool.AsyncConnectionPool(
        conninfo, min_size=POOL, max_size=POOL, open=False, kwargs={"autocommit": True}
    )
    await pgpool.open(wait=True)
    pg_fetch = statements.fetch
    pg_insert = statements.insert
    apg_fetch = f"SELECT kind, body FROM shard{SHARD:04d}.entities WHERE id = $1"
    apg_insert = f"INSERT INTO shard{SHARD:04d}.entities (id, kind, body) VALUES ($1, $2, $3)"
    async with (
        hvcore.AsyncDatastore(connections, pool_max=POOL, backend="jsonb") as hv,
        hvcore.AsyncDatastore(
            connections, pool_max=POOL, backend="jsonb", coalesce_reads=False, coalesce_writes=False
        ) as plain,
    ):
        await hv.provision()
        keys = await hv.put_many(SHARD, 1, [dict(BODY, n=i) for i in range(ROWS)])
        ints = [int(k) for k in keys]
        rng = random.Random(7)
        order = [rng.randrange(ROWS) for _ in range(TASKS * per_task * 2)]
        size = len(order)
        next_key = hv.generator.next_key

        async def hv_get(i: int) -> object:
            record = await hv.get(keys[order[i % size]])
            assert record is not None
            return record

        async def plain_get(i: int) -> object:
            record = await plain.get(keys[order[i % size]])
            assert record is not None
            return record

        async def apg_get(i: int) -> object:
            async with apg.acquire() as conn:
                row = await conn.fetchrow(apg_fetch, ints[order[i % size]])
            assert row is not None
            return row

        async def pg_get(i: int) -> object:
            async with pgpool.connection() as conn:
                row = await (await conn.execute(pg_fetch, (ints[order[i % size]],))).fetchone()
            assert row is not None
            return row

        gets = await _rounds(
            {"hypervault": hv_get, "uncoalesced": plain_get, "asyncpg": apg_get, "psycopg": pg_get},
            TASKS,
            per_task,
            rounds,
        )
        out["get_ops_per_s"] = gets

        async def hv_put(i: int) -> object:
            return await hv.put(SHARD, 1, **BODY)

        async def plain_put(i: int) -> object:
            return await plain.put(SHARD, 1, **BODY)

        async def apg_put(i: int) -> object:
            async with apg.acquire() as conn:
                return await conn.execute(apg_insert, int(next_key(SHARD)), 1, BODY)

        async def pg_put(i: int) -> object:
            from psycopg.types.json import Jsonb

            async with pgpool.connection() as conn:
                return await conn.execute(pg_insert, (int(next_key(SHARD)), 1, Jsonb(BODY)))

        from psycopg.types.json import Jsonb

        pipelined = RawGroups(pgpool, pg_insert, "pipeline")
        multirow = RawGroups(pgpool, pg_insert, "multirow")

        async def pipeline_put(i: int) -> None:
            await pipelined.put(int(next_key(SHARD)), Jsonb(BODY))

        async def multirow_put(i: int) -> None:
            await multirow.put(int(next_key(SHARD)), Jsonb(BODY))

        puts = await _rounds(
            {
                "hypervault": hv_put,
                "uncoalesced": plain_put,
                "asyncpg": apg_put,
                "psycopg": pg_put,
                "psycopg_pipeline": pipeline_put,
                "psycopg_multirow": multirow_put,
            },
            TASKS,
            per_task,
            rounds,
        )
        out["put_ops_per_s"] = puts

    # One call at a time: one datastore, coalescing switched on and off call by call, so both sides use the same
    # pool, sessions and server processes (two datastores measured alike differ by up to 1.5× on this machine,
    # depending only on which was opened first).
    async with hvcore.AsyncDatastore(connections, pool_max=POOL, backend="jsonb") as one:

        def switched(op: Callable[[int], Awaitable[object]], on: bool) -> Callable[[int], Awaitable[object]]:
            async def call(i: int) -> object:
                one._coalesce_reads = one._coalesce_writes = on
                return await op(i)

            return call

        async def one_get(i: int) -> object:
            return await one.get(keys[order[i % size]])

        async def one_put(i: int) -> object:
            return await one.put(SHARD, 1, **BODY)

        lone_rounds = 1 if quick else 30
        lone = await _latencies(
            {"hypervault": switched(one_get, True), "uncoalesced": switched(one_get, False)}, 100, lone_rounds
        )
        out["lone_get"] = lone
        lone_put = await _latencies(
            {"hypervault": switched(one_put, True), "uncoalesced": switched(one_put, False)}, 100, lone_rounds
        )
        out["lone_put"] = lone_put
    await apg.close()
    await pgpool.close()
    out["get_vs_asyncpg"] = gets["hypervault"] / gets["asyncpg"]
    out["get_vs_psycopg"] = gets["hypervault"] / gets["psycopg"]
    out["get_vs_uncoalesced"] = gets["hypervault"] / gets["uncoalesced"]
    out["put_vs_asyncpg"] = puts["hypervault"] / puts["asyncpg"]
    out["put_vs_psycopg"] = puts["hypervault"] / puts["psycopg"]
    out["put_vs_uncoalesced"] = puts["hypervault"] / puts["uncoalesced"]
    out["lone_put_p50_ratio"] = lone_put["hypervault"]["p50_us"] / lone_put["uncoalesced"]["p50_us"]
    out["lone_put_p99_ratio"] = lone_put["hypervault"]["p99_us"] / lone_put["uncoalesced"]["p99_us"]
    out["lone_p50_ratio"] = lone["hypervault"]["p50_us"] / lone["uncoalesced"]["p50_us"]
    out["lone_p99_ratio"] = lone["hypervault"]["p99_us"] / lone["uncoalesced"]["p99_us"]
    return out


def _threads(op: Callable[[int], object], threads: int, per_thread: int) -> float:
    """Seconds for ``threads`` threads each calling ``op(i)`` ``per_thread`` times (started together)."""
    start = threading.Barrier(threads + 1)

    def worker(first: int) -> None:
        start.wait()
        for i in range(first, first + per_thread):
            op(i)

    workers = [threading.Thread(target=worker, args=(t * per_thread,)) for t in range(threads)]
    for thread in workers:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    return time.perf_counter() - started


def bench_threads(servers: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Sync `Datastore.get`/`put` from 64 threads, coalesced vs not, vs raw psycopg (same SQL, pool of 8)."""
    per_thread, rounds = (5, 3) if quick else (20, 7)
    connections = [{**servers[0], "shards": f"0-{SHARDS // 2}"}, {**servers[1], "shards": f"{SHARDS // 2}-{SHARDS}"}]
    statements = ShardSQL.build(SHARD, "jsonb", None)
    with (
        hvcore.Datastore(connections, pool_max=POOL, backend="jsonb") as hv,
        hvcore.Datastore(
            connections, pool_max=POOL, backend="jsonb", coalesce_reads=False, coalesce_writes=False
        ) as plain,
        psycopg_pool.ConnectionPool(
            psycopg.conninfo.make_conninfo(**servers[0]),
            min_size=POOL,
            max_size=POOL,
            kwargs={"autocommit": True},
        ) as pool,
    ):
        keys = hv.put_many(SHARD, 3, [dict(BODY, n=i) for i in range(ROWS)])
        ints = [int(k) for k in keys]
        rng = random.Random(11)
        order = [rng.randrange(ROWS) for _ in range(TASKS * per_thread * 2)]
        size = len(order)

        def hv_get(i: int) -> object:
            return hv.get(keys[order[i % size]])

        def plain_get(i: int) -> object:
            return plain.get(keys[order[i % size]])

        def pg_get(i: int) -> object:
            with pool.connection() as conn:
                return conn.execute(statements.fetch, (ints[order[i % size]],)).fetchone()

        next_key = hv.generator.next_key

        def hv_put(i: int) -> object:
            return hv.put(SHARD, 1, **BODY)

        def plain_put(i: int) -> object:
            return plain.put(SHARD, 1, **BODY)

        def pg_put(i: int) -> object:
            from psycopg.types.json import Jsonb

            with pool.connection() as conn:
                return conn.execute(statements.insert, (int(next_key(SHARD)), 1, Jsonb(BODY)))

        def rounds_of(candidates: dict[str, Callable[[int], object]]) -> dict[str, float]:
            names = list(candidates)
            for name in names:
                _threads(candidates[name], TASKS, 2)
            rates: dict[str, list[float]] = {name: [] for name in names}
            for index in range(rounds):
                for name in names[index % len(names) :] + names[: index % len(names)]:
                    rates[name].append(TASKS * per_thread / _threads(candidates[name], TASKS, per_thread))
            return {name: statistics.median(values) for name, values in rates.items()}

        medians = rounds_of({"hypervault": hv_get, "uncoalesced": plain_get, "psycopg": pg_get})
        puts = rounds_of({"hypervault": hv_put, "uncoalesced": plain_put, "psycopg": pg_put})
    with hvcore.Datastore(connections, pool_max=POOL, backend="jsonb") as one:  # one thread: see bench_async

        def one_get(on: bool) -> Callable[[int], object]:
            def call(i: int) -> object:
                one._coalesce_reads = on
                return one.get(keys[order[i % size]])

            return call

        lone = _sync_latencies({"hypervault": one_get(True), "uncoalesced": one_get(False)}, 150 if quick else 3000)

        def one_put(on: bool) -> Callable[[int], object]:
            def call(i: int) -> object:
                one._coalesce_writes = on
                return one.put(SHARD, 1, **BODY)

            return call

        lone_put = _sync_latencies({"hypervault": one_put(True), "uncoalesced": one_put(False)}, 100 if quick else 2000)
    return {
        "threads": TASKS,
        "pool": POOL,
        "get_ops_per_s": medians,
        "put_ops_per_s": puts,
        "put_vs_uncoalesced": puts["hypervault"] / puts["uncoalesced"],
        "put_vs_psycopg": puts["hypervault"] / puts["psycopg"],
        "lone_put": lone_put,
        "vs_uncoalesced": medians["hypervault"] / medians["uncoalesced"],
        "vs_psycopg": medians["hypervault"] / medians["psycopg"],
        "lone": lone,
        "lone_p50_ratio": lone["hypervault"]["p50_us"] / lone["uncoalesced"]["p50_us"],
        "lone_p99_ratio": lone["hypervault"]["p99_us"] / lone["uncoalesced"]["p99_us"],
    }


def bench_get_many(servers: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Sync get_many of 1000 keys (64 shards, 2 servers) vs the raw psycopg floor on the same pools."""
    rounds = 5 if quick else 121
    connections = [{**servers[0], "shards": f"0-{SHARDS // 2}"}, {**servers[1], "shards": f"{SHARDS // 2}-{SHARDS}"}]
    with hvcore.Datastore(connections, pool_max=POOL, backend="jsonb") as db:
        keys = [k for shard in range(SHARDS) for k in db.put_many(shard, 2, [dict(BODY, n=i) for i in range(16)])]
        random.Random(3).shuffle(keys)
        many = keys[:1000]
        stores = db._live()
        by_server: dict[int, list[tuple[int, hvcore.Key]]] = {}
        for key in many:
            by_server.setdefault(db.shard_map.server_for(key.shard_id), []).append((key.shard_id, key))
        fetch_sql = {}
        for index, items in by_server.items():
            shards = list(dict.fromkeys(s for s, _ in items))
            text = " UNION ALL ".join(
                f"(SELECT id, kind, body FROM shard{shard:04d}.entities WHERE id = ANY(%s::bigint[]))"
                for shard in shards
            )
            fetch_sql[index] = (text, [[int(k) for s, k in items if s == shard] for shard in shards])

        def hv_get_many() -> None:
            assert len(db.get_many(many)) == len(many)

        def pg_get_many() -> None:
            found = 0
            for index, (query, params) in fetch_sql.items():
                with stores[index]._pool.connection() as conn:
                    found += len(conn.execute(query, params).fetchall())
            assert found == len(many)

        per_call = measure({"hypervault": hv_get_many, "psycopg": pg_get_many}, 1, rounds)
    return {
        "keys": len(many),
        "hypervault_us_per_key": per_call["hypervault"] / len(many) * 1e6,
        "psycopg_us_per_key": per_call["psycopg"] / len(many) * 1e6,
        "ratio": per_call["psycopg"] / per_call["hypervault"],
    }


def run(quick: bool) -> dict[str, Any]:
    """Run every measurement on two fresh local servers; the figures and ratios."""
    with local_servers(2, fsync=True) as local:
        settings = [s.settings for s in local]
        for server in settings:
            with psycopg.connect(**server, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_commit = off")
                conn.execute("SELECT pg_reload_conf()")
        results: dict[str, Any] = {"quick": quick}
        results["async"] = asyncio.run(bench_async(settings, quick))
        results["get_many"] = bench_get_many(settings, quick)
        results["threads"] = bench_threads(settings, quick)
    return results


def main() -> None:
    """Command-line entry: print the figures and ratios (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    a, g = r["async"], r["get_many"]
    gets, puts, lone = a["get_ops_per_s"], a["put_ops_per_s"], a["lone_get"]
    print(
        f"{a['tasks']} concurrent gets, pool {a['pool']}: hypervault {gets['hypervault']:,.0f} ops/s | uncoalesced "
        f"{gets['uncoalesced']:,.0f} | asyncpg {gets['asyncpg']:,.0f} | psycopg {gets['psycopg']:,.0f} | "
        f"vs asyncpg {a['get_vs_asyncpg']:.2f}× (target ≥ 1.0), vs psycopg {a['get_vs_psycopg']:.2f}×, "
        f"vs uncoalesced {a['get_vs_uncoalesced']:.2f}×"
    )
    print(
        f"{a['tasks']} concurrent puts, pool {a['pool']}: hypervault {puts['hypervault']:,.0f} ops/s | asyncpg "
        f"{puts['asyncpg']:,.0f} | uncoalesced {puts['uncoalesced']:,.0f} | psycopg {puts['psycopg']:,.0f} | "
        f"vs asyncpg {a['put_vs_asyncpg']:.2f}× (target ≥ 0.9), vs psycopg {a['put_vs_psycopg']:.2f}×, "
        f"vs uncoalesced {a['put_vs_uncoalesced']:.2f}×; raw psycopg with overlapping puts grouped: pipeline "
        f"(a Sync each) {puts['psycopg_pipeline']:,.0f}, multi-row INSERT {puts['psycopg_multirow']:,.0f}"
    )
    print(
        f"lone get p50/p99: coalescing on {lone['hypervault']['p50_us']:.0f}/{lone['hypervault']['p99_us']:.0f} µs | "
        f"off {lone['uncoalesced']['p50_us']:.0f}/{lone['uncoalesced']['p99_us']:.0f} µs | ratio "
        f"{a['lone_p50_ratio']:.3f}/{a['lone_p99_ratio']:.3f} (target ≤ 1.05)"
    )
    lp = a["lone_put"]
    print(
        f"lone put p50/p99: coalescing on {lp['hypervault']['p50_us']:.0f}/{lp['hypervault']['p99_us']:.0f} µs | "
        f"off {lp['uncoalesced']['p50_us']:.0f}/{lp['uncoalesced']['p99_us']:.0f} µs | ratio "
        f"{a['lone_put_p50_ratio']:.3f}/{a['lone_put_p99_ratio']:.3f} (target ≤ 1.05)"
    )
    print(
        f"sync get_many {g['keys']} keys, {SHARDS} shards, 2 servers: hypervault "
        f"{g['hypervault_us_per_key']:.2f} µs/key | raw psycopg floor {g['psycopg_us_per_key']:.2f} µs/key | "
        f"ratio {g['ratio']:.2f}× (target ≥ 1.0)"
    )
    t = r["threads"]
    tg = t["get_ops_per_s"]
    print(
        f"sync get from {t['threads']} threads, pool {t['pool']}: hypervault {tg['hypervault']:,.0f} ops/s | "
        f"uncoalesced {tg['uncoalesced']:,.0f} | psycopg {tg['psycopg']:,.0f} | vs uncoalesced "
        f"{t['vs_uncoalesced']:.2f}×, vs psycopg {t['vs_psycopg']:.2f}×; one thread p50/p99: "
        f"{t['lone']['hypervault']['p50_us']:.0f}/{t['lone']['hypervault']['p99_us']:.0f} vs "
        f"{t['lone']['uncoalesced']['p50_us']:.0f}/{t['lone']['uncoalesced']['p99_us']:.0f} µs (ratio "
        f"{t['lone_p50_ratio']:.3f}/{t['lone_p99_ratio']:.3f})"
    )
    tp, lp1 = t["put_ops_per_s"], t["lone_put"]
    print(
        f"sync put from {t['threads']} threads, pool {t['pool']}: hypervault {tp['hypervault']:,.0f} ops/s | "
        f"uncoalesced {tp['uncoalesced']:,.0f} | psycopg {tp['psycopg']:,.0f} | vs uncoalesced "
        f"{t['put_vs_uncoalesced']:.2f}×, vs psycopg {t['put_vs_psycopg']:.2f}×; one thread p50/p99: "
        f"{lp1['hypervault']['p50_us']:.0f}/{lp1['hypervault']['p99_us']:.0f} vs "
        f"{lp1['uncoalesced']['p50_us']:.0f}/{lp1['uncoalesced']['p99_us']:.0f} µs"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
