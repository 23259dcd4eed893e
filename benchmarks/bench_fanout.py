"""Benchmark thousands of shards per server on PostgreSQL's default settings (issue 14).

Usage: ``python benchmarks/bench_fanout.py [--quick] [--json PATH] [--servers FILE] [--variants a,b]``, or as a part of
the suite: ``python benchmarks/suite.py --parts fanout``. Two throwaway
servers (``fixtures.localpg``, default settings but fsync off) hold 8192 shards (4096 each), 2 rows per shard. Measures,
each figure a median over interleaved blocks (so the machine's drift hits both sides alike):

- put / get to a random one of all 8192 shards vs to a random one of 16 of them, after a warm-up in which every
  pooled session touched every shard, with the plan-cache memory of each pooled session (``pg_backend_memory_contexts``:
  the ``CachedPlan*`` contexts) beside it. Per variant of statement preparation (``--variants``):
  ``library`` (what the stores do: each shard's insert and fetch prepared on first use, up to
  `hvbackend_postgres._fanout.PREPARED_MAX` per session, planned once per session (generic plans:
  `hvbackend_postgres._fanout.GENERIC_POINT_PLANS`) and run on the shard's own session when it is idle:
  `hvbackend_postgres._fanout.SHARD_AFFINITY`), ``spread`` (the same without shard-affine sessions: every session
  serves every shard, psycopg_pool's first-in-first-out order), ``auto`` (the same without generic plans:
  PostgreSQL plans each statement's first five runs per session), ``psycopg`` (psycopg's defaults: prepare after 5
  runs, ``prepared_max`` 100, neither of the above: the state before issue 14), ``generic`` (library +
  ``plan_cache_mode = force_generic_plan`` for everything, set at connection: the earlier experiment);
- a full-fleet ``query(limit=10)``: time to the first record and to the end, 8192 shards vs 16 shards;
- ``get_many`` of 8192 keys, one per shard, per key vs ``get_many`` of 8192 keys over 64 shards;
- ``update_where`` (one matching row per shard) over all 8192 shards vs over 16.

``--layout`` sets every shard's layout after provisioning (`LAYOUT_SQL`): ``shipped`` (the default) has no body
index, as shards are provisioned now; ``body_index`` has the one ``create_body_index`` builds (GIN, ``fastupdate =
off``: what every shard had until it was made optional); ``fastupdate_on`` that index with its pending list (the
layout before issue 14's fifth session); ``no_gin`` is ``shipped`` under its earlier name. The counts per relation
behind these are ``bench_put_blocks.py``'s.

``--recommended`` then restarts the two servers with the settings docs/fanout.md recommends and measures put/get
again. ``--servers FILE`` reuses servers already provisioned (a JSON list of two settings dicts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure, syscalls_per_call
from fixtures.localpg import local_servers

import hvcore
from hvbackend_postgres import _fanout
from hvbackend_postgres._indexes import record_body_index

SHARDS = 8192
POOL = 4  # sessions per server (each one warmed on every shard)
VARIANTS = ("library", "spread", "auto", "psycopg", "generic")
PLAN_MEMORY_SQL = "SELECT coalesce(sum(total_bytes), 0) FROM pg_backend_memory_contexts WHERE name LIKE 'CachedPlan%%'"


def _config(servers: list[dict[str, Any]], dbname: str = "hv_fanout_bench") -> list[dict[str, Any]]:
    half = SHARDS // 2
    return [
        {**servers[0], "dbname": dbname, "shards": f"0-{half}"},
        {**servers[1], "dbname": dbname, "shards": f"{half}-{SHARDS}"},
    ]


BODY_GIN = "CREATE INDEX IF NOT EXISTS entities_body_idx ON {schema}.entities USING gin (body jsonb_path_ops) "
LAYOUT_SQL = {  # --layout: what every shard is made to have after provisioning, to compare per-shard layouts
    "shipped": "DROP INDEX IF EXISTS {schema}.entities_body_idx;",  # no body index: the layout shards get now
    "no_gin": "DROP INDEX IF EXISTS {schema}.entities_body_idx;",  # the same (its name in earlier measurements)
    # create_body_index's GIN (fastupdate = off): every shard's layout until the body index was made optional
    "body_index": BODY_GIN + "WITH (fastupdate = off);ALTER INDEX {schema}.entities_body_idx SET (fastupdate = off);",
    # the same with its pending list (fastupdate = on, PostgreSQL's default): the layout before issue 14's fifth session
    "fastupdate_on": BODY_GIN + ";ALTER INDEX {schema}.entities_body_idx RESET (fastupdate);",
}
"""Each layout is applied to every shard whatever an earlier run left (the database is reused), and the body index
recorded (``hypervault.body_index``) only where the shards have it, as ``create_body_index`` would."""


def _apply_layout(config: list[dict[str, Any]], layout: str) -> None:
    """Make every shard's relations what `LAYOUT_SQL` says (after provisioning), in statements of 16 shards."""
    for server in config:
        first, _, last = str(server["shards"]).partition("-")
        settings = {k: v for k, v in server.items() if k != "shards"}
        with psycopg.connect(**settings, autocommit=True) as conn:
            for start in range(int(first), int(last), 16):
                statements = "".join(
                    LAYOUT_SQL[layout].format(schema=f"shard{s:04d}") for s in range(start, min(int(last), start + 16))
                )
                conn.execute(statements)
            if layout in ("body_index", "fastupdate_on"):
                record_body_index(conn, "active", replace=True)
            elif conn.execute("SELECT to_regclass('hypervault.body_index') IS NOT NULL").fetchone() == (True,):
                conn.execute("DELETE FROM hypervault.body_index")


def prepare(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create and provision the 8192-shard database (once), 2 rows per shard; the datastore config."""
    config = _config(servers)
    for server in servers:
        with psycopg.connect(**server, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = 'hv_fanout_bench'").fetchone() is None:
                conn.execute("CREATE DATABASE hv_fanout_bench")
    with hvcore.Datastore([dict(c) for c in config], backend="jsonb") as db:
        db.provision()
        if sum(s["rows"] for s in db.status()) == 0:
            for shard in range(SHARDS):
                db.put_many(shard, 1, [{"n": 0, "city": "Oslo"}, {"n": 1, "city": "Rome"}])
    return config


@contextmanager
def variant(name: str) -> Iterator[None]:
    """Statement preparation of the pools made inside (see the module docstring)."""
    saved = (_fanout.PREPARE_HOT, _fanout.GENERIC_PLANS, _fanout.SHARD_AFFINITY, _fanout.GENERIC_POINT_PLANS)
    if name in ("psycopg", "spread"):
        _fanout.SHARD_AFFINITY = False
    if name in ("psycopg", "auto"):
        _fanout.GENERIC_POINT_PLANS = False
    if name == "psycopg":
        _fanout.PREPARE_HOT = False
    elif name == "generic":
        _fanout.GENERIC_PLANS = True
    try:
        yield
    finally:
        _fanout.PREPARE_HOT, _fanout.GENERIC_PLANS, _fanout.SHARD_AFFINITY, _fanout.GENERIC_POINT_PLANS = saved


WARM_THREADS = POOL * 2  # callers of the warm-up, all at once (POOL per server: every session busy)


def _warm(db: hvcore.Datastore, keys: dict[int, hvcore.Key], threads_count: int = WARM_THREADS) -> float:
    """Every shard gets a put and a get from each of ``threads_count`` callers, each walking all shards in its own
    random order. With `WARM_THREADS` (POOL per server: the pool's sessions busy most of the time) every pooled
    session touches nearly every shard, shard-affine or not; fewer callers leave sessions idle, so shard-affine
    sessions each keep to their own shards."""
    started = time.perf_counter()

    def work(index: int) -> None:
        order = list(range(SHARDS))
        random.Random(index).shuffle(order)
        for shard in order:
            key = db.put(shard, 2, w=index)
            db.get(key)
            keys.setdefault(shard, key)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _plan_memory(db: hvcore.Datastore) -> list[float]:
    """MiB of plan cache in each pooled session (every connection borrowed at once, so each is asked)."""
    out: list[float] = []
    for index in range(2):
        shard = index * SHARDS // 2
        conns = [db.get_connection(shard) for _ in range(POOL)]
        try:
            for conn in conns:
                row = conn.execute(PLAN_MEMORY_SQL).fetchone()
                out.append(float(row[0]) / 2**20 if row else 0.0)
        finally:
            for conn in conns:
                db.put_connection(conn)
    return out


def bench_point(
    config: list[dict[str, Any]],
    name: str,
    ops: int,
    rounds: int,
    counters: bool = False,
    warm_rounds: int = 1,
    warm_threads: int = WARM_THREADS,
) -> dict[str, Any]:
    """µs per put and per get, random of 8192 vs random of 16 shards, after warm-up; plan cache per session.

    ``counters``: then the server's work per operation as well (`_counters`), each candidate run again for it.
    ``warm_rounds``: warm-ups in a row; one runs each shard's statements about twice per session, three about six
    times: past PostgreSQL's five custom plans per prepared statement, so the sessions' steady state.
    ``warm_threads``: callers of the warm-up (`_warm`).
    """
    with variant(name), hvcore.Datastore([dict(c) for c in config], backend="jsonb", pool_max=POOL) as db:
        keys: dict[int, hvcore.Key] = {}
        warm_s = sum(_warm(db, keys, warm_threads) for _ in range(warm_rounds))
        rng = random.Random(3)
        few = [s * (SHARDS // 16) + 7 for s in range(16)]  # 16 shards, 8 on each server

        def ops_of(kind: str, shards: list[int]) -> Callable[[], None]:
            picks = [rng.choice(shards) for _ in range(4096)]
            state = [0]

            def run() -> None:
                state[0] = (state[0] + 1) & 4095
                shard = picks[state[0]]
                if kind == "put":
                    db.put(shard, 3, n=1)
                else:
                    db.get(keys[shard])

            return run

        everything = list(range(SHARDS))
        candidates = {
            "put_8192": ops_of("put", everything),
            "put_16": ops_of("put", few),
            "get_8192": ops_of("get", everything),
            "get_16": ops_of("get", few),
        }
        pids = _backend_pids(config)
        wall, cpu = _measure_with_server_cpu(candidates, pids, ops, rounds)
        per_op = {k: _counters(config, pids, fn, max(ops * 3, 600)) for k, fn in candidates.items()} if counters else {}
        memory = _plan_memory(db)
    us = {k: v * 1e6 for k, v in wall.items()}
    cpu_us = {k: v * 1e6 for k, v in cpu.items()}
    return {
        "us": us,
        "server_cpu_us": cpu_us,
        "put_ratio": us["put_16"] / us["put_8192"],  # throughput of 8192 relative to 16 (1.0 = flat)
        "get_ratio": us["get_16"] / us["get_8192"],
        "put_cpu_ratio": cpu_us["put_16"] / cpu_us["put_8192"],  # the same in server CPU per operation
        "get_cpu_ratio": cpu_us["get_16"] / cpu_us["get_8192"],
        "plan_mib_per_session": statistics.median(memory),
        "plan_mib_max": max(memory),
        "warm_s": warm_s,
        "counters": per_op,
    }


COUNTERS_SQL = (
    "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8, w.wal_fpi, d.blks_read, d.blks_hit, d.xact_commit, "
    "(SELECT coalesce(sum(autoanalyze_count + autovacuum_count), 0) FROM pg_stat_user_tables)::int8 "
    "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()"
)
COUNTER_NAMES = ("wal_bytes", "wal_fpi", "blks_read", "blks_hit", "commits", "auto_vacuum_analyze")
STATS_FLUSH_S = 11.0  # an idle backend has flushed its statistics by then (PostgreSQL 15: after 10 s idle)


def _server_totals(config: list[dict[str, Any]]) -> dict[str, int]:
    """`COUNTERS_SQL` summed over the servers (WAL position, FPIs, blocks read/hit, commits, autovacuum runs)."""
    out = dict.fromkeys(COUNTER_NAMES, 0)
    for server in config:
        with psycopg.connect(**{k: v for k, v in server.items() if k != "shards"}, autocommit=True) as conn:
            row = conn.execute(COUNTERS_SQL).fetchone()
            for name, value in zip(COUNTER_NAMES, row or (), strict=True):
                out[name] += int(value)
    return out


def _counters(config: list[dict[str, Any]], pids: list[int], fn: Callable[[], None], ops: int) -> dict[str, float]:
    """The server's work per call of ``fn``: WAL bytes and full-page images, shared-buffer blocks read (from the
    OS) and hit, transactions, autovacuum/autoanalyze runs (`COUNTERS_SQL`, statistics flushed by waiting
    `STATS_FLUSH_S`), and the sessions' `SYSCALLS` per call (``strace -c`` on them, a second run of ``ops``
    calls; left out if strace is missing or not allowed). Load does not move these, unlike times."""
    time.sleep(STATS_FLUSH_S)
    before = _server_totals(config)
    for _ in range(ops):
        fn()
    time.sleep(STATS_FLUSH_S)
    after = _server_totals(config)
    out = {name: (after[name] - before[name]) / ops for name in COUNTER_NAMES}
    with suppress(OSError, subprocess.SubprocessError, ValueError):
        out.update(syscalls_per_call(pids, fn, ops))
    return out


def _backend_pids(config: list[dict[str, Any]]) -> list[int]:
    """Process ids of the datastore's server sessions (the servers run on this machine)."""
    pids: list[int] = []
    for server in config:
        settings = {k: v for k, v in server.items() if k != "shards"}
        with psycopg.connect(**settings, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'hypervault' AND pid <> pg_backend_pid()"
            ).fetchall()
            pids += [int(r[0]) for r in rows]
    return pids


def _cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU of these processes so far (/proc/PID/schedstat; gone processes count 0)."""
    total = 0
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def _measure_with_server_cpu(
    candidates: dict[str, Callable[[], None]], pids: list[int], ops: int, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds per call and server CPU seconds per call (summed over the rounds) of each candidate.

    Blocks of ``ops`` calls in rotating order, one warm-up block each. Server CPU is what the machine's load disturbs
    least: the sessions' own time on CPU, whoever else runs.
    """
    names = list(candidates)
    for name in names:
        for _ in range(max(ops // 5, 1)):
            candidates[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, int] = dict.fromkeys(names, 0)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            fn = candidates[name]
            cpu_before = _cpu_ns(pids)
            started = time.perf_counter()
            for _ in range(ops):
                fn()
            wall[name].append((time.perf_counter() - started) / ops)
            cpu[name] += _cpu_ns(pids) - cpu_before
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: cpu[name] / 1e9 / (ops * rounds) for name in names},
    )


def bench_query(config: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """Full-fleet ``query(limit=10)``: first record and whole call, over 8192 shards vs over 16."""
    out: dict[str, list[float]] = {"first_8192": [], "total_8192": [], "first_16": [], "total_16": []}
    few = [s * (SHARDS // 16) + 7 for s in range(16)]
    with hvcore.Datastore([dict(c) for c in config], backend="jsonb", pool_max=POOL) as db:
        for index in range(rounds + 1):
            for label, shards in (("8192", None), ("16", few))[:: 1 if index % 2 else -1]:
                started = time.perf_counter()
                stream = db.query(kind=1, limit=10, shards=shards)
                next(stream)
                first = time.perf_counter() - started
                rest = list(stream)
                total = time.perf_counter() - started
                assert len(rest) == 9
                if index:  # the first round warms
                    out[f"first_{label}"].append(first * 1e3)
                    out[f"total_{label}"].append(total * 1e3)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {
        "ms": med,
        "first_ratio": med["first_8192"] / med["first_16"],
        "total_ratio": med["total_8192"] / med["total_16"],
    }


def bench_get_many(config: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """get_many of 8192 keys: one in each of 8192 shards vs 128 in each of 64 shards (µs per key)."""
    with hvcore.Datastore([dict(c) for c in config], backend="jsonb", pool_max=POOL) as db:
        everywhere = [r.key for r in db.query(kind=1) if r.data["n"] == 0]
        assert len(everywhere) == SHARDS
        shards64 = [s * (SHARDS // 64) for s in range(64)]
        for shard in shards64:  # 128 keys in each of 64 shards
            db.put_many(shard, 4, [{"n": i} for i in range(128)])
        few = [r.key for r in db.query(kind=4, shards=shards64)]
        assert len(few) == SHARDS
        timed = measure({"8192": lambda: db.get_many(everywhere), "64": lambda: db.get_many(few)}, 1, rounds)
    us = {k: v / SHARDS * 1e6 for k, v in timed.items()}
    return {"us_per_key": us, "ratio": us["8192"] / us["64"]}


def bench_filter_write(config: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """``update_where`` over all 8192 shards vs over 16 of them (ms per call; 1 matching row per shard)."""
    few = [s * (SHARDS // 16) + 7 for s in range(16)]
    out: dict[str, list[float]] = {"update_8192": [], "update_16": []}
    with hvcore.Datastore([dict(c) for c in config], backend="jsonb", pool_max=POOL) as db:
        for index in range(rounds + 1):
            for label, shards in (("8192", None), ("16", few))[:: 1 if index % 2 else -1]:
                started = time.perf_counter()
                changed = db.update_where(kind=1, where={"city": "Oslo"}, shards=shards, set={"w": index})
                took = time.perf_counter() - started
                assert changed == (SHARDS if shards is None else len(few))
                if index:  # the first round warms
                    out[f"update_{label}"].append(took * 1e3)
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"ms": med, "ratio": med["update_8192"] / med["update_16"]}


def run(
    quick: bool,
    servers: list[dict[str, Any]] | None = None,
    variants: list[str] | None = None,
    point_only: bool = False,
    recommended: bool = False,
    counters: bool = False,
    warm_rounds: int = 1,
    warm_threads: int = WARM_THREADS,
    layout: str = "shipped",
) -> dict[str, Any]:
    """Every measure on the given servers, or on two fresh local servers at default settings.

    ``variants``: the statement preparations compared (default: all of `VARIANTS`; ``library`` only if ``quick``);
    ``counters``: the server's work per put and get too (`_counters`); ``warm_rounds``: as for `bench_point`.
    This is the suite's entry (``python benchmarks/suite.py --parts fanout``).
    """
    ops, rounds = (100, 3) if quick else (300, 7)
    if variants is None:
        variants = ["library"] if quick else list(VARIANTS)

    def measure_all(settings: list[dict[str, Any]]) -> dict[str, Any]:
        config = prepare(settings)
        _apply_layout(config, layout)
        results: dict[str, Any] = {"quick": quick, "layout": layout, "point": {}}
        for name in variants:
            results["point"][name] = bench_point(config, name, ops, rounds, counters, warm_rounds, warm_threads)
        if not point_only:
            results["query"] = bench_query(config, rounds)
            results["get_many"] = bench_get_many(config, 3 if quick else 5)
            results["filter_write"] = bench_filter_write(config, 2 if quick else 5)
        return results

    if servers is not None:
        return measure_all(servers)
    with local_servers(2) as local:
        results = measure_all([s.settings for s in local])
        if recommended:  # the same servers restarted with the settings docs/fanout.md recommends
            for server in local:
                _recommend(server)
            config = _config([s.settings for s in local])
            results["recommended"] = {
                "settings": RECOMMENDED,
                "point": bench_point(config, "library", ops, rounds, counters, warm_rounds, warm_threads),
            }
        return results


RECOMMENDED = {
    "max_files_per_process": "20000",  # every relation file of 4096 shards stays open (needs `ulimit -n` above it)
    "autovacuum_analyze_scale_factor": "0.5",  # fewer autoanalyze runs (each resets sessions' relation caches)
    "autovacuum_analyze_threshold": "1000",
    "shared_buffers": "512MB",  # 8192 shards x 4 relations of hot pages: ~256 MB, over the default 128 MB
}


def _recommend(server: Any) -> None:
    """Apply `RECOMMENDED` with ALTER SYSTEM and restart ``server`` with an open-files limit above them."""
    with psycopg.connect(**server.settings, autocommit=True) as conn:
        for name, value in RECOMMENDED.items():
            conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(psycopg.sql.Identifier(name), value))
    server.stop()
    pg_ctl = f"{server.bin_dir / 'pg_ctl'} -D {server.data} -l {server.log} -w -t 60 start"
    command = ["bash", "-c", f"ulimit -n 20000 && {pg_ctl}"]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=90)
    server.running = True


def _print_counters(name: str, counters: dict[str, dict[str, float]]) -> None:
    """One line per measured operation: the server's work per call (`_counters`)."""
    for op, values in counters.items():
        print(f"  {name} {op:9s} per call: " + " ".join(f"{k} {v:.2f}" for k, v in values.items()))


GOALS = {"put": 0.8, "get": 0.6}  # issue 14: throughput at 8192 shards over 16, after warm-up, default settings


def _print_goals(r: dict[str, Any]) -> None:
    """One line: issue 14's goals against what the shipped stores (``library``) measured, wall and server CPU."""
    figures = r["point"].get("library")
    if figures is None:
        return
    parts = []
    for op, goal in GOALS.items():
        wall, cpu = figures[f"{op}_ratio"], figures[f"{op}_cpu_ratio"]
        verdict = "met" if min(wall, cpu) >= goal else "met by wall time only" if wall >= goal else "NOT met"
        parts.append(f"{op} >= {goal}x: {wall:.2f}x (server CPU {cpu:.2f}x) {verdict}")
    print(
        f"goals, library on default settings: {'; '.join(parts)}; "
        f"plan cache {figures['plan_mib_per_session']:.1f} MiB per session"
    )


def main() -> None:
    """Command-line entry: print the figures (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--servers", type=Path, help="a JSON list of two servers' settings to reuse")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {','.join(VARIANTS)}")
    parser.add_argument("--point-only", action="store_true", help="only the put/get measures")
    parser.add_argument("--recommended", action="store_true", help="then put/get again with the recommended settings")
    parser.add_argument("--counters", action="store_true", help="the server's work per put/get too (uses strace)")
    parser.add_argument("--warm-rounds", type=int, default=1, help="warm-ups before put/get (3: steady state)")
    parser.add_argument("--layout", default="shipped", choices=sorted(LAYOUT_SQL), help="change every shard first")
    parser.add_argument("--warm-threads", type=int, default=WARM_THREADS, help="callers of the warm-up, at once")
    args = parser.parse_args()
    servers = json.loads(args.servers.read_text()) if args.servers else None
    variants = [v for v in args.variants.split(",") if v]
    r = run(
        args.quick,
        servers,
        variants,
        args.point_only,
        args.recommended,
        args.counters,
        args.warm_rounds,
        args.warm_threads,
        args.layout,
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    print(f"layout: {r['layout']}")
    for name, figures in r["point"].items():
        us = figures["us"]
        print(
            f"{name:10s} put {us['put_8192']:6.1f} µs (8192) vs {us['put_16']:6.1f} µs (16): "
            f"{figures['put_ratio']:.2f}x (server CPU {figures['put_cpu_ratio']:.2f}x) | "
            f"get {us['get_8192']:6.1f} vs {us['get_16']:6.1f} µs: {figures['get_ratio']:.2f}x (server CPU "
            f"{figures['get_cpu_ratio']:.2f}x) | plan cache "
            f"{figures['plan_mib_per_session']:.1f} MiB per session (max {figures['plan_mib_max']:.1f}) | "
            f"warm-up {figures['warm_s']:.0f} s"
        )
        _print_counters(name, figures["counters"])
    _print_goals(r)
    if "recommended" in r:
        figures = r["recommended"]["point"]
        print(
            f"recommended settings ({', '.join(f'{k}={v}' for k, v in RECOMMENDED.items())}): put "
            f"{figures['put_ratio']:.2f}x (server CPU {figures['put_cpu_ratio']:.2f}x), get "
            f"{figures['get_ratio']:.2f}x "
            f"(server CPU {figures['get_cpu_ratio']:.2f}x), plan cache "
            f"{figures['plan_mib_per_session']:.1f} MiB per session"
        )
        _print_counters("recommended", figures["counters"])
    if "query" not in r:
        return
    q = r["query"]["ms"]
    print(
        f"query(limit=10): first record {q['first_8192']:.1f} ms (8192 shards) vs {q['first_16']:.1f} ms (16): "
        f"{r['query']['first_ratio']:.1f}x | whole call {q['total_8192']:.1f} vs {q['total_16']:.1f} ms: "
        f"{r['query']['total_ratio']:.1f}x"
    )
    g = r["get_many"]["us_per_key"]
    print(
        f"get_many(8192): {g['8192']:.1f} µs/key over 8192 shards vs {g['64']:.1f} over 64: "
        f"{r['get_many']['ratio']:.2f}x"
    )
    w = r["filter_write"]["ms"]
    print(
        f"update_where: {w['update_8192']:.0f} ms over 8192 shards vs {w['update_16']:.1f} ms over 16: "
        f"{r['filter_write']['ratio']:.1f}x"
    )


if __name__ == "__main__":
    main()
