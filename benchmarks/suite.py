"""The hypervault benchmark suite: every part in one run, on one machine and one set of servers, as ratios.

Usage: ``python benchmarks/suite.py [--quick] [--parts keys,redis,datastore,batches,peers,scaling,citus,schema,
commit_status,key_collisions,concurrency,fanout,metrics,replicas] [--output DIR] [--json PATH] [--png PATH]``, from
a source checkout (the benchmarks are not installed with the package; there is no ``hv bench``).
A full run writes ``benchmarks/results/latest.{json,md,png}`` (the
committed results the README shows); a ``--quick`` run writes ``bench-results/quick/`` (ignored by git) unless
``--output``, ``--json`` or ``--png`` say otherwise. Each part is a ``benchmarks/bench_<part>.py`` script with a
``run(quick) -> dict``; the suite normalises their figures into rows

    part, measure, hypervault, comparison, ratio, unit, explanation

where **ratio is how many times better hypervault does than the comparison** (above 1 we win, below 1 we lose: time
per operation divided the comparison's way, rates hypervault's way), prints them as a table (rich), writes them with
the raw figures, the machine and the versions to a JSON file, and plots the ratios (matplotlib, PNG). A part that
fails is reported (and makes the exit code 1) without stopping the others. No thresholds: targets live in the parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for extra in (str(ROOT / "backends"), str(ROOT / "plugins"), str(ROOT / "tests"), str(HERE)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

PARTS = (
    "keys",
    "redis",
    "datastore",
    "batches",
    "peers",
    "scaling",
    "citus",
    "schema",
    "commit_status",
    "key_collisions",
    "transactions",
    "concurrency",
    "fanout",
    "metrics",
    "replicas",
)
RESULTS = HERE / "results"  # the committed results: written by full runs only, unless asked
QUICK_RESULTS = ROOT / "bench-results" / "quick"  # where --quick writes by default (git ignores bench-results/)
LIBRARIES = (
    "hypervault",
    "asyncpg",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "redis",
    "SQLAlchemy",
    "snowflake-id",
    "sonyflake",
    "python-ulid",
    "uuid6",
    "uuid-utils",
    "matplotlib",
    "rich",
)
PEER_LABELS = {
    "psycopg": "raw psycopg, same SQL (floor)",
    "sqlalchemy": "SQLAlchemy ShardedSession",
    "next_id": "server next_id() (2015 design)",
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One comparison: hypervault's figure, the comparison's, and how many times better hypervault does."""

    part: str
    measure: str
    hypervault: float | None
    comparison: str
    comparison_value: float | None
    unit: str
    ratio: float | None
    explanation: str


def row(
    part: str,
    measure: str,
    hv: float | None,
    comparison: str,
    other: float | None,
    unit: str,
    explanation: str,
    *,
    lower_is_better: bool,
) -> Row:
    """A row whose ratio is ``other / hv`` for times and ``hv / other`` for rates (above 1: hypervault better)."""
    ratio = None
    if hv is not None and other is not None and hv > 0 and other > 0:
        ratio = other / hv if lower_is_better else hv / other
    return Row(
        part=part,
        measure=measure,
        hypervault=hv,
        comparison=comparison,
        comparison_value=other,
        unit=unit,
        ratio=ratio,
        explanation=explanation,
    )


def info(part: str, measure: str, value: float, unit: str, explanation: str) -> Row:
    """A figure with nothing to compare it to (shown in the table, not plotted)."""
    return Row(
        part=part,
        measure=measure,
        hypervault=value,
        comparison="—",
        comparison_value=None,
        unit=unit,
        ratio=None,
        explanation=explanation,
    )


# -- normalisers: one per part, from its run() dict to rows ------------------------------------------------------


def rows_keys(r: dict[str, Any]) -> list[Row]:
    """bench_keys.py: ids/s on one shard (1 and 4 threads) vs the ceiling and a locked generator; CPU ns per id
    over 8192 shards vs the peer libraries; next_keys() vs creating the Key objects alone."""
    out: list[Row] = []
    for scenario, label in (
        ("one shard, one thread", "ids/s, 1 shard, 1 thread"),
        ("one shard, four threads", "ids/s, 1 shard, 4 threads"),
    ):
        figures = r.get(scenario)
        if not figures:
            continue
        hv = figures["hypervault"]["ids_per_s"]
        ceiling = figures.get("ceiling", {}).get("ids_per_s", r.get("ceiling_ids_per_s"))
        out.append(
            row("keys", label, hv, "layout ceiling", ceiling, "ids/s", _KEY_NOTES["ceiling"], lower_is_better=False)
        )
        if "locked baseline" in figures:
            out.append(
                row(
                    "keys",
                    label,
                    hv,
                    "locked baseline",
                    figures["locked baseline"]["ids_per_s"],
                    "ids/s",
                    _KEY_NOTES["locked"],
                    lower_is_better=False,
                )
            )
    cpu = r.get("cpu ns per id, 8192 shards (peers: no shards)")
    forked = r.get("cpu ns per id, 8192 shards, in a forked child", {}).get("hypervault")
    if cpu and forked and "locked baseline" in cpu:
        out.append(
            row(
                "keys",
                "CPU per id, 8192 shards, after fork()",
                forked["ns_per_id"],
                "locked baseline",
                cpu["locked baseline"]["ns_per_id"],
                "ns/id",
                _KEY_NOTES["forked"],
                lower_is_better=True,
            )
        )
    if cpu and "hypervault" in cpu:
        hv = cpu["hypervault"]["ns_per_id"]
        for name, figures in cpu.items():
            if name != "hypervault":
                out.append(
                    row(
                        "keys",
                        "CPU per id, 8192 shards",
                        hv,
                        name,
                        figures["ns_per_id"],
                        "ns/id",
                        str(_KEY_NOTES.get(_peer_key(name)) or name),
                        lower_is_better=True,
                    )
                )
    for scenario, figures in r.items():
        if scenario.startswith("next_keys(") and isinstance(figures, dict) and "hypervault" in figures:
            hv = figures["hypervault"]["ns_per_id"]
            n = scenario.split(",", 1)[1].split(")", 1)[0].strip()
            for name, note in (
                ("locked baseline", "locked"),
                ("Key creation alone", "floor"),
                ("int.__new__ alone", "pure"),
            ):
                if name in figures:
                    out.append(
                        row(
                            "keys",
                            f"next_keys(shard, {n}) CPU per id",
                            hv,
                            name,
                            figures[name]["ns_per_id"],
                            "ns/id",
                            _KEY_NOTES[note],
                            lower_is_better=True,
                        )
                    )
    return out


_KEY_NOTES = {
    "ceiling": "1,024 ids per ms per shard is the layout's limit: 1.0 is the most possible",
    "locked": "a straightforward generator: one lock around a (ms, sequence) dict per shard",
    "forked": "in a forked child: ids from the sequence table shared with the parent (the baseline is not fork-safe)",
    "floor": "creating the Key int objects alone (same maker), no generator: the floor for a batch",
    "pure": "int.__new__ per Key, as a build without the C accelerator makes them",
    "snowflake": "snowflake-id: pure Python, no lock, not thread-safe, no fork handling, None on overflow",
    "sonyflake": "sonyflake: 10 ms ticks, a lock per id (it sleeps past 25,600 ids/s)",
    "ulid": "python-ulid: 128-bit ids (not a bigint), random part from os.urandom",
    "uuid6": "uuid6.uuid7: pure-Python 128-bit UUIDv7",
    "uuid_utils": "uuid_utils.uuid7: Rust extension, 128-bit, no shard in the id",
    "uuid4": "stdlib uuid4: os.urandom per id, 128-bit, no time order",
}


def _peer_key(name: str) -> str:
    low = name.lower()
    return next((key for key in _KEY_NOTES if key in low), low)


def rows_redis(r: dict[str, Any]) -> list[Row]:
    """bench_redis.py: the Redis sequence vs one INCR per id, and vs the layout ceiling, 1 and 4 processes."""
    ceiling = float(r["ceiling_ids_per_s"])
    single, four = r["single"], r["four_processes"]
    dupes = single["duplicates"] + four["duplicates"]
    return [
        row(
            "redis",
            "ids/s, 1 process, 1 shard",
            single["ids_per_s"],
            "one INCR per id",
            r["incr_baseline"]["ids_per_s"],
            "ids/s",
            "a Lua INCRBY+PEXPIRE reserves a (shard, ms) block per round trip; INCR pays a round trip per id",
            lower_is_better=False,
        ),
        row(
            "redis",
            "ids/s, 1 process, 1 shard",
            single["ids_per_s"],
            "layout ceiling",
            ceiling,
            "ids/s",
            f"share of 1,024 ids/ms per shard reached ({dupes} duplicates over both runs); 1.0 is the most possible",
            lower_is_better=False,
        ),
        row(
            "redis",
            "ids/s, 4 processes, 1 shard",
            four["ids_per_s"],
            "layout ceiling",
            ceiling,
            "ids/s",
            "four processes share one shard's millisecond blocks through Redis; 1.0 is the most possible",
            lower_is_better=False,
        ),
    ]


def rows_datastore(r: dict[str, Any]) -> list[Row]:
    """bench_datastore.py: façade vs the same SQL by hand, client-side ids vs server next_id(), provisioning."""
    out = [
        row(
            "datastore",
            "put",
            r["put_datastore_us"],
            "same SQL by hand, same pool",
            r["put_by_hand_us"],
            "µs/op",
            "what the façade costs over a hand-written INSERT on its own pool (1.0 = free)",
            lower_is_better=True,
        ),
        row(
            "datastore",
            "get",
            r["get_datastore_us"],
            "same SQL by hand, same pool",
            r["get_by_hand_us"],
            "µs/op",
            "what the façade costs over a hand-written SELECT on its own pool (1.0 = free)",
            lower_is_better=True,
        ),
        row(
            "datastore",
            "put",
            r["put_client_ids_us"],
            "server next_id() default",
            r["put_server_next_id_us"],
            "µs/op",
            "client-side keys skip the PL/pgSQL call, the sequence and RETURNING",
            lower_is_better=True,
        ),
    ]
    p = r.get("provisioning")
    if p:
        out.append(
            info(
                "datastore",
                f"provision {p['shards']} shards, 2 servers",
                p["first_run_s"],
                "s",
                f"schemas, tables, indexes; an idempotent re-run took {p['rerun_s']:.2f} s",
            )
        )
    return out


def rows_batches(r: dict[str, Any]) -> list[Row]:
    """bench_batches.py: put_many vs single puts, COPY vs executemany, get_many vs single gets, async, query."""
    out: list[Row] = []
    labels = {
        "put_jsonb": "put_many 1000 rows, jsonb",
        "put_hstore": "put_many 1000 rows, hstore",
        "put_jsonb_sync_commit_off": "put_many 1000 rows, async commit",
    }
    for name, label in labels.items():
        if name in r:
            p = r[name]
            out.append(
                row(
                    "batches",
                    label,
                    p["put_many_us_per_row"],
                    "1000 single puts",
                    p["single_us"],
                    "µs/row",
                    "one binary COPY in one transaction instead of a round trip and a commit per row",
                    lower_is_better=True,
                )
            )
    if "batch_methods" in r:
        m = r["batch_methods"]
        out.append(
            row(
                "batches",
                "insert_many method",
                m["copy_us_per_row"],
                "executemany, 1 transaction",
                m["executemany_us_per_row"],
                "µs/row",
                "why put_many uses binary COPY: fewer bytes and no per-row statement",
                lower_is_better=True,
            )
        )
    if "get" in r:
        g = r["get"]
        out.append(
            row(
                "batches",
                f"get_many {g['keys']} keys, {g['shards']} shards",
                g["get_many_s"] / g["keys"] * 1e6,
                "single gets",
                g["single_us"],
                "µs/key",
                f"one statement per server, servers in parallel (statements per server: "
                f"{g['get_many_statements_per_server']})",
                lower_is_better=True,
            )
        )
    if "async" in r:
        a = r["async"]
        out.append(
            row(
                "batches",
                "async put_many 1000 rows",
                a["put_many_us_per_row"],
                "awaited single puts",
                a["put_single_us"],
                "µs/row",
                "AsyncDatastore: the same COPY against a round trip per row",
                lower_is_better=True,
            )
        )
        out.append(
            row(
                "batches",
                "async get_many 1000 keys",
                a["get_many_s"] * 1e3,
                "1000 gets gathered at once",
                a["get_gathered_s"] * 1e3,
                "ms",
                "asyncio.gather of single gets is capped by the pool; get_many sends one statement per server",
                lower_is_better=True,
            )
        )
    if "query" in r:
        q = r["query"]
        out.append(
            row(
                "batches",
                f"range query, first of {q['rows']:,} rows",
                q["first_record_ms"],
                "whole range",
                q["whole_range_ms"],
                "ms",
                "a streamed Merge Append of key-ordered index scans: the first record comes without reading the range"
                + (" (the plan sorts: FIX)" if q.get("sort_in_cursor_plan") else ""),
                lower_is_better=True,
            )
        )
    return out


_PEER_MEASURES = {
    "put": ("put", "µs/op"),
    "get": ("get", "µs/op"),
    "put_many": ("put_many", "µs/row"),
    "get_many": ("get_many, 16 shards", "µs/key"),
    "range_query": ("time-range query, 16 shards", "µs/row"),
}
_PEER_NOTES = {
    ("put", "psycopg"): "the façade's routing, checks and key generation over a hand-written INSERT on its pool",
    ("put", "sqlalchemy"): "a Session, unit of work and ORM object per put, against one prepared INSERT",
    ("put", "next_id"): "the 2015 design: PL/pgSQL next_id() + sequence + RETURNING on the server",
    (
        "get",
        "psycopg",
    ): "the façade over a hand-written SELECT on its pool (its checkout is lighter than pool.connection)",
    ("get", "sqlalchemy"): "Session.get() with the shard as identity token: session, transaction and ORM load per get",
    ("put_many", "psycopg"): "the façade over the same binary COPY by hand",
    (
        "put_many",
        "sqlalchemy",
    ): "add_all + commit (ShardedSession refuses ORM bulk INSERT): ORM objects, multi-row INSERT",
    ("put_many", "next_id"): "executemany INSERT ... RETURNING id in one transaction: server ids need the ids back",
    (
        "get_many",
        "psycopg",
    ): "the same per-server UNION ALL by hand, servers in turn (we run them in parallel)",
    ("get_many", "sqlalchemy"): "one SELECT ... IN per shard (16 round trips) against one statement per server",
    (
        "range_query",
        "psycopg",
    ): "the same SQL by hand, fetchall per server + heapq.merge (we stream: server cursor)",
    (
        "range_query",
        "sqlalchemy",
    ): "every shard in turn, ORM objects, sorted in Python (the extension concatenates)",
}


def rows_peers(r: dict[str, Any]) -> list[Row]:
    """bench_peers.py: each operation, hypervault vs the floor, SQLAlchemy's sharding and server next_id()."""
    out: list[Row] = []
    for name, (label, unit) in _PEER_MEASURES.items():
        figures = r.get(name)
        if not figures:
            continue
        hv = figures["hypervault"] * 1e6
        for peer in ("psycopg", "sqlalchemy", "next_id"):
            if peer in figures:
                out.append(
                    row(
                        "peers",
                        label,
                        hv,
                        PEER_LABELS[peer],
                        figures[peer] * 1e6,
                        unit,
                        _PEER_NOTES.get((name, peer), ""),
                        lower_is_better=True,
                    )
                )
    return out


def rows_scaling(r: dict[str, Any]) -> list[Row]:
    """bench_scaling.py: routing and puts at the most shards vs 16 (1.0 = flat), threads vs one thread."""
    out: list[Row] = []
    routing = r["routing"]
    top = max(routing, key=int)
    for field, label in (("server_for_ns", "ShardMap.server_for"), ("store_for_ns", "Datastore.store_for")):
        out.append(
            row(
                "scaling",
                f"{label}, {top} shards",
                routing[top][field],
                "same at 16 shards",
                routing["16"][field],
                "ns",
                "one list index whatever the map's size: 1.0 = flat",
                lower_is_better=True,
            )
        )
    top = max(r["put_us"], key=int)
    out.append(
        row(
            "scaling",
            f"put, {top}-shard map, 16 hot shards",
            r["put_us"][top],
            "same at 16 shards",
            r["put_us"]["16"],
            "µs/op",
            "what the map's size costs a put once sessions know the shard: 1.0 = flat",
            lower_is_better=True,
        )
    )
    out.append(
        row(
            "scaling",
            f"put, {top}-shard map, any shard",
            r["put_cold_us"][top],
            "same at 16 shards",
            r["put_cold_us"]["16"],
            "µs/op",
            "first touch of a shard by a pooled session: PostgreSQL loads its relations, psycopg re-prepares",
            lower_is_better=True,
        )
    )
    rates = r["threads_puts_per_s"]
    for threads in sorted(rates, key=int):
        if threads == "1":
            continue
        out.append(
            row(
                "scaling",
                f"puts/s, {threads} threads",
                rates[threads],
                "1 thread",
                rates["1"],
                "puts/s",
                f"one Datastore shared by {threads} threads; client and servers share {os.cpu_count()} cores",
                lower_is_better=False,
            )
        )
    return out


def rows_schema(r: dict[str, Any]) -> list[Row]:
    """bench_schema.py: a query on an indexed field vs the GIN where path; a range with vs without the index; what
    the index costs writes; hv migrate over thousands of shards vs provisioning them, and its re-run."""
    q, m = r["queries"], r["migrate"]
    rows = f"{q['rows']:,} rows"
    out = [
        row(
            "schema",
            f"query by an indexed field, {rows}",
            q["eq_indexed_ms"],
            "same query, GIN where path",
            q["eq_gin_ms"],
            "ms",
            "where={'user_id': x}, 10 rows per id, 16 shards on 2 servers: a bigint index vs body @> (jsonb_path_ops)",
            lower_is_better=True,
        ),
        row(
            "schema",
            f"range on an indexed field, {rows}",
            q["range_indexed_ms"],
            "same SQL without the index",
            q["range_scan_ms"],
            "ms",
            "where={'age': {'>=': a, '<': a + 1}} (1 % of rows); the GIN index cannot answer ranges",
            lower_is_better=True,
        ),
        row(
            "schema",
            "put_many 1000 rows, 2 indexes",
            q["put_many_indexed_us_per_row"],
            "same without them",
            q["put_many_plain_us_per_row"],
            "µs/row",
            "what two secondary btree indexes cost each written row (index upkeep, like any index)",
            lower_is_better=True,
        ),
        row(
            "schema",
            "put, 2 indexes",
            q["put_indexed_us"],
            "same without them",
            q["put_plain_us"],
            "µs/op",
            "one autocommitted insert: index upkeep is small next to the round trip and commit",
            lower_is_better=True,
        ),
        row(
            "schema",
            f"hv migrate, {m['shards']} shards, 2 servers",
            m["migrate_s"],
            "provisioning them",
            m["provision_s"],
            "s",
            "one-statement file, one transaction per shard, the command in a new process (goal ≤ 30 s)",
            lower_is_better=True,
        ),
        row(
            "schema",
            f"hv migrate re-run, {m['shards']} shards",
            m["rerun_s"],
            "the first run",
            m["migrate_s"],
            "s",
            "nothing left to apply: one catalog read per server, plus process start (goal ≤ 2 s)",
            lower_is_better=True,
        ),
    ]
    return out


def rows_citus(r: dict[str, Any]) -> list[Row]:
    """bench_citus.py: put/get through a Citus coordinator vs straight to the worker holding the shard and vs a
    plain server; hv citus adopt vs the copying path Citus documents (dump/restore + the exported statements)."""
    out: list[Row] = []
    routing = r["routing"]
    for op in ("put", "get"):
        times = routing[f"{op}_us"]
        out.append(
            row(
                "citus",
                f"{op} via the coordinator",
                times["coordinator"],
                "straight to the worker holding the shard",
                times["worker"],
                "µs/op",
                "the routing cost of one endpoint: a second hop through the coordinator (below 1: we pay it)",
                lower_is_better=True,
            )
        )
        out.append(
            row(
                "citus",
                f"{op} after the hand-off",
                times["coordinator"],
                "plain PostgreSQL, before the hand-off",
                times["plain"],
                "µs/op",
                "what a put/get costs after adoption compared with hypervault's own routing before it",
                lower_is_better=True,
            )
        )
    fanout = [
        ("get_many_1000_ms", "get_many 1000 keys, 64 shards"),
        ("query_limit_10_ms", "query(limit=10), 64 shards"),
        ("query_all_ms", "query, all rows of 64 shards"),
    ]
    for key, what in fanout:
        times = routing.get(key)
        if not times:
            continue
        if "coordinator_16" in times:
            out.append(
                row(
                    "citus",
                    f"{what}, via the coordinator",
                    times["coordinator"],
                    "16 schemas per statement (before)",
                    times["coordinator_16"],
                    "ms",
                    "one schema per statement, each router-planned, vs a UNION ALL Citus plans as a subplan per schema",
                    lower_is_better=True,
                )
            )
        if "workers" in times:
            out.append(
                row(
                    "citus",
                    f"{what}, via the coordinator",
                    times["coordinator"],
                    "straight to the workers holding them",
                    times["workers"],
                    "ms",
                    "the routing cost of one endpoint for a fan-out (below 1: we pay it)",
                    lower_is_better=True,
                )
            )
        out.append(
            row(
                "citus",
                f"{what}, after the hand-off",
                times["coordinator"],
                "plain PostgreSQL, before the hand-off",
                times["plain"],
                "ms",
                "a fan-out through the coordinator compared with hypervault's own routing before the hand-off",
                lower_is_better=True,
            )
        )
    for name in ("adoption", "adoption_big"):
        a = r[name]
        label = f"{a['shards']} shards × {a['rows_per_shard']:,} rows"
        out.append(
            row(
                "citus",
                f"hv citus adopt, {label}",
                a["adopt_s"],
                "pg_dump/restore + exported citus SQL",
                a["copy_s"],
                "s",
                "no row copied vs every row copied twice (restore, distribute), again where Citus placed it elsewhere",
                lower_is_better=True,
            )
        )
    return out


def rows_transactions(r: dict[str, Any]) -> list[Row]:
    """bench_transactions.py: a transaction of 10 puts vs 10 autocommit puts (sync and async), and one put alone in
    a transaction vs a plain put (where a transaction costs)."""
    out = []
    for api, label in (("sync", "Datastore"), ("async", "AsyncDatastore")):
        times = {entry["name"]: entry["seconds"] for entry in r.get(api, [])}
        if "transaction of 10 puts" in times:
            out.append(
                row(
                    "transactions",
                    f"transaction of 10 puts ({label})",
                    times["transaction of 10 puts"] * 1e3,
                    "10 autocommit puts",
                    times["10 autocommit puts"] * 1e3,
                    "ms",
                    "one durable commit instead of ten; BEGIN and SET LOCAL search_path in one round trip (fsync on)",
                    lower_is_better=True,
                )
            )
        if "transaction of 1 put" in times:
            out.append(
                row(
                    "transactions",
                    f"transaction of 1 put ({label})",
                    times["transaction of 1 put"] * 1e3,
                    "1 autocommit put",
                    times["1 autocommit put"] * 1e3,
                    "ms",
                    "a transaction around a single write: two more round trips (BEGIN, COMMIT), the same one commit",
                    lower_is_better=True,
                )
            )
    return out


def rows_commit_status(r: dict[str, Any]) -> list[Row]:
    """bench_commit_status.py: a healthy put and update as shipped (the commit-status check: nothing more
    than the statement) vs the same write through psycopg's execute, on durable and on CPU-bound servers."""
    out = []
    for label, title in (("durable", "fsync on"), ("no_fsync", "fsync off")):
        f = r[label]
        for op in ("put", "update"):
            out.append(
                row(
                    "commit_status",
                    f"{op} with the commit-status check, {title}",
                    f[f"{op}_with_check_us"],
                    "the same write without it",
                    f[f"{op}_without_check_us"],
                    "µs",
                    "goal ≤ 3 % slower (ratio ≥ 0.97): a healthy write sends nothing more than the statement",
                    lower_is_better=True,
                )
            )
    return out


def rows_key_collisions(r: dict[str, Any]) -> list[Row]:
    """bench_key_collisions.py: independent processes on one shard: collision retries per 1,000 keys with the
    default (a start leased per process) vs worker=None (random start), and what the default costs a put."""
    out = []
    library = r.get("datastore")
    if library:
        auto, none = library["auto"], library["none"]
        out.append(
            row(
                "key_collisions",
                f"collision retries per 1,000 keys, {r['processes']} processes on one shard, default (auto)",
                auto["collisions_per_1000"],
                "worker=None (random start per ms)",
                none["collisions_per_1000"],
                "per 1,000",
                "goal < 1 with the default; no ratio when the default had none",
                lower_is_better=True,
            )
        )
        cost = library["put_cost_one_process"]
        for name in ("put", "put_many_100"):
            out.append(
                row(
                    "key_collisions",
                    f"{name}, default (auto: a leased start)",
                    cost[name]["auto_us"],
                    "worker=None, same process, alternating blocks",
                    cost[name]["none_us"],
                    "µs",
                    "the lease is taken once at open: a put costs the same",
                    lower_is_better=True,
                )
            )
    speed = r["throughput, one process, one shard"]
    if "leased, 4 bits" in speed:
        out.append(
            row(
                "key_collisions",
                "keys/s, one process, one shard, default generator (auto uses it)",
                speed["default"]["next_key_per_s"],
                "worker='lease' (4 bits: 64 ids per shard per ms)",
                speed["leased, 4 bits"]["next_key_per_s"],
                "keys/s",
                "a leased slice owns 1/16 of the sequence; a leased start keeps all of it",
                lower_is_better=False,
            )
        )
    return out


def rows_concurrency(r: dict[str, Any]) -> list[Row]:
    """bench_concurrency.py: 64 overlapping calls on AsyncDatastore vs raw asyncpg/psycopg; lone calls; get_many."""
    a, g = r["async"], r["get_many"]
    gets, puts = a["get_ops_per_s"], a["put_ops_per_s"]
    pool = f"pool {a['pool']}"
    out = [
        row(
            "concurrency",
            f"{a['tasks']} concurrent gets, {pool}",
            gets["hypervault"],
            "raw asyncpg, same SQL (reset off)",
            gets["asyncpg"],
            "ops/s",
            "overlapping gets coalesced into one = ANY statement per server (hvcore._coalesce) vs asyncpg's pool",
            lower_is_better=False,
        ),
        row(
            "concurrency",
            f"{a['tasks']} concurrent gets, {pool}",
            gets["hypervault"],
            "coalesce_reads=False",
            gets["uncoalesced"],
            "ops/s",
            "the same calls one statement each (what coalescing buys)",
            lower_is_better=False,
        ),
        row(
            "concurrency",
            f"{a['tasks']} concurrent puts, {pool}",
            puts["hypervault"],
            "raw asyncpg, same SQL (reset off)",
            puts["asyncpg"],
            "ops/s",
            "overlapping puts of a shard as one multi-row INSERT, each put its own outcome, vs one INSERT each",
            lower_is_better=False,
        ),
        row(
            "concurrency",
            f"{a['tasks']} concurrent puts, {pool}",
            puts["hypervault"],
            "coalesce_writes=False",
            puts["uncoalesced"],
            "ops/s",
            "the same calls one INSERT each (what coalescing buys)",
            lower_is_better=False,
        ),
    ]
    for name, label in (("lone_get", "get"), ("lone_put", "put")):
        lone = a.get(name)
        if lone:
            for pct in ("p50", "p99"):
                out.append(
                    row(
                        "concurrency",
                        f"one {label} at a time, {pct}",
                        lone["hypervault"][f"{pct}_us"],
                        "coalescing off",
                        lone["uncoalesced"][f"{pct}_us"],
                        "µs",
                        "a lone call goes straight through: coalescing must cost it nothing (1.0)",
                        lower_is_better=True,
                    )
                )
    t = r.get("threads")
    if t:
        out.append(
            row(
                "concurrency",
                f"sync gets from {t['threads']} threads, {pool}",
                t["get_ops_per_s"]["hypervault"],
                "coalesce_reads=False",
                t["get_ops_per_s"]["uncoalesced"],
                "ops/s",
                "threads that would wait for a pooled connection share one batch read (ThreadReadCoalescer)",
                lower_is_better=False,
            )
        )
        out.append(
            row(
                "concurrency",
                f"sync gets from {t['threads']} threads, {pool}",
                t["get_ops_per_s"]["hypervault"],
                PEER_LABELS["psycopg"],
                t["get_ops_per_s"]["psycopg"],
                "ops/s",
                "the same single-key SELECT on a psycopg ConnectionPool of the same size, one statement per call",
                lower_is_better=False,
            )
        )
        if "put_ops_per_s" in t:
            out.append(
                row(
                    "concurrency",
                    f"sync puts from {t['threads']} threads, {pool}",
                    t["put_ops_per_s"]["hypervault"],
                    "coalesce_writes=False",
                    t["put_ops_per_s"]["uncoalesced"],
                    "ops/s",
                    "threads that would wait for a pooled connection share multi-row INSERTs (ThreadWriteCoalescer)",
                    lower_is_better=False,
                )
            )
            out.append(
                row(
                    "concurrency",
                    f"sync puts from {t['threads']} threads, {pool}",
                    t["put_ops_per_s"]["hypervault"],
                    PEER_LABELS["psycopg"],
                    t["put_ops_per_s"]["psycopg"],
                    "ops/s",
                    "the same single-row INSERT on a psycopg ConnectionPool of the same size",
                    lower_is_better=False,
                )
            )
            out.append(
                row(
                    "concurrency",
                    "sync put, one thread, p50",
                    t["lone_put"]["hypervault"]["p50_us"],
                    "coalescing off",
                    t["lone_put"]["uncoalesced"]["p50_us"],
                    "µs",
                    "a lone call goes straight through: coalescing must cost it nothing (1.0)",
                    lower_is_better=True,
                )
            )
        for pct in ("p50", "p99"):
            out.append(
                row(
                    "concurrency",
                    f"sync get, one thread, {pct}",
                    t["lone"]["hypervault"][f"{pct}_us"],
                    "coalescing off",
                    t["lone"]["uncoalesced"][f"{pct}_us"],
                    "µs",
                    "a lone call goes straight through: coalescing must cost it nothing (1.0)",
                    lower_is_better=True,
                )
            )
    out.append(
        row(
            "concurrency",
            f"sync get_many {g['keys']} keys, 64 shards, 2 servers",
            g["hypervault_us_per_key"],
            PEER_LABELS["psycopg"],
            g["psycopg_us_per_key"],
            "µs/key",
            "the first server read by the calling thread, the other in a spawned one (the floor reads them in turn)",
            lower_is_better=True,
        )
    )
    return out


def rows_fanout(r: dict[str, Any]) -> list[Row]:
    """bench_fanout.py: 8192 shards on two servers at default settings. put/get to a random one of 8192 shards vs
    one of 16 after every pooled session touched every shard (ratio = how flat the cost is: 1.0 flat, goal put
    ≥ 0.8, get ≥ 0.6), the library's statement preparation vs psycopg's defaults, plan cache per session; a
    full-fleet query(limit=10) and get_many over 8192 shards vs over 16 / 64."""
    out: list[Row] = []
    point = r.get("point", {})
    lib = point.get("library")
    if lib:
        us = lib["us"]
        for op in ("put", "get"):
            out.append(
                row(
                    "fanout",
                    f"{op}, random of 8192 shards",
                    us[f"{op}_8192"],
                    "random of 16 shards",
                    us[f"{op}_16"],
                    "µs/op",
                    f"after warm-up, servers at default settings; goal ≥ {0.8 if op == 'put' else 0.6} (server CPU "
                    f"ratio {lib[f'{op}_cpu_ratio']:.2f})",
                    lower_is_better=True,
                )
            )
        out.append(
            info(
                "fanout",
                "plan cache per pooled session",
                lib["plan_mib_per_session"],
                "MiB",
                "each shard's insert and fetch prepared on first use, generic plans (pg_backend_memory_contexts, "
                "CachedPlan*)",
            )
        )
        for name, label in (
            ("spread", "without shard-affine sessions"),
            ("auto", "without generic plans for point statements"),
            ("psycopg", "psycopg's defaults"),
            ("generic", "force_generic_plan for everything"),
        ):
            other = point.get(name)
            if other:
                for op in ("put", "get"):
                    out.append(
                        row(
                            "fanout",
                            f"{op}, random of 8192 shards",
                            us[f"{op}_8192"],
                            label,
                            other["us"][f"{op}_8192"],
                            "µs/op",
                            f"the stores' point statements as shipped vs {label} (same warm-up)",
                            lower_is_better=True,
                        )
                    )
    if "query" in r:
        q = r["query"]["ms"]
        out.append(
            row(
                "fanout",
                "query(limit=10), first record, 8192 shards",
                q["first_8192"],
                "over 16 shards",
                q["first_16"],
                "ms",
                "512 pieces of 16 shards, pipelined per server: planning thousands of tables is the cost",
                lower_is_better=True,
            )
        )
    if "get_many" in r:
        g = r["get_many"]["us_per_key"]
        out.append(
            row(
                "fanout",
                "get_many 8192 keys, one per shard",
                g["8192"],
                "8192 keys in 64 shards",
                g["64"],
                "µs/key",
                "pieces of 16 shards in one pipeline per server",
                lower_is_better=True,
            )
        )
    if "filter_write" in r:
        w = r["filter_write"]["ms"]
        out.append(
            row(
                "fanout",
                "update_where over 8192 shards",
                w["update_8192"],
                "over 16 shards",
                w["update_16"],
                "ms",
                "one statement per shard, a transaction per 16 shards, pipelined per server",
                lower_is_better=True,
            )
        )
    return out


def rows_metrics(r: dict[str, Any]) -> list[Row]:
    """bench_metrics.py: put+get (and a durable put) with an OpenTelemetry SDK meter provider vs none configured."""
    out = []
    for key, measure, unit in (
        ("jsonb_ir", "put+get, jsonb, client instructions", "instr."),
        ("memory_ir", "put+get, memory backend, instructions", "instr."),
        ("jsonb_wall_us", "put+get, jsonb (fsync off)", "µs/op"),
        ("jsonb_cpu_us", "put+get, jsonb (fsync off), client CPU time", "µs/op"),
        ("put_fsync_wall_us", "put, jsonb (fsync on)", "µs/op"),
        ("put_fsync_cpu_us", "put, jsonb (fsync on), client CPU time", "µs/op"),
    ):
        figures = r.get(key)
        if not figures:
            continue
        out.append(
            row(
                "metrics",
                f"metrics on: {measure}",
                figures["on"],
                "no meter provider (metrics off)",
                figures["off"],
                unit,
                "OpenTelemetry SDK provider, in-memory reader: one SDK histogram measurement per operation, handed "
                "over on the caller's thread (all costs; goal ≤ 1.05×); instructions by callgrind, times noisy on "
                "shared cores",
                lower_is_better=True,
            )
        )
    return out


def rows_replicas(r: dict[str, Any]) -> list[Row]:
    """bench_replicas.py: reads on a standby (or spread over primary and standby) vs the primary only; what a
    standby and read-your-writes cost a put."""
    out = []
    reads = r["reads"]
    for name, unit in (("get_many", "calls/s (100 keys)"), ("query", "queries/s (100 rows)")):
        base = reads[name]["primary only"]["per_s"]
        for setup in ("replica only", "primary + replica"):
            out.append(
                row(
                    "replicas",
                    f"{name}, {r['threads']} threads, reads on {setup}",
                    reads[name][setup]["per_s"],
                    "primary only",
                    base,
                    unit,
                    "primary and standby share this machine's cores with the client: a standby adds no CPU here",
                    lower_is_better=False,
                )
            )
    puts = r["put"]
    base = puts["put, no standby"]["us"]
    for name, why in (
        ("put, standby (read-your-writes)", "the WAL position rides in the write's own exchange"),
        ("put, standby, read_your_writes=False", "no position asked for"),
    ):
        out.append(row("replicas", name, puts[name]["us"], "put, no standby", base, "µs/op", why, lower_is_better=True))
    return out


NORMALISERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "keys": rows_keys,
    "redis": rows_redis,
    "datastore": rows_datastore,
    "batches": rows_batches,
    "peers": rows_peers,
    "scaling": rows_scaling,
    "citus": rows_citus,
    "schema": rows_schema,
    "commit_status": rows_commit_status,
    "key_collisions": rows_key_collisions,
    "transactions": rows_transactions,
    "concurrency": rows_concurrency,
    "fanout": rows_fanout,
    "metrics": rows_metrics,
    "replicas": rows_replicas,
}


# -- running the parts ----------------------------------------------------------------------------------------


def load_part(name: str) -> ModuleType:
    """Import ``benchmarks/bench_<name>.py`` by path."""
    path = HERE / f"bench_{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    spec = importlib.util.spec_from_file_location(f"hv_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_part(name: str, quick: bool, redis_url: str | None) -> dict[str, Any]:
    """Run one part's ``run(quick)`` (the Redis part with the URL, its log lines on stderr)."""
    module = load_part(name)
    if name == "redis":
        kwargs: dict[str, Any] = {"log": lambda line: print(f"  {line}", file=sys.stderr)}
        if redis_url:
            kwargs["url"] = redis_url
        result: dict[str, Any] = module.run(quick, **kwargs)
        return result
    result = module.run(quick)
    return result


# -- machine and versions -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, RAM, CPU model (/proc), OS, Python, and the load average when asked."""
    info_: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        info_["cpu_model"] = models[0] if models else platform.processor() or "unknown"
    except OSError:
        info_["cpu_model"] = platform.processor() or "unknown"
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                info_["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info_


def versions(redis_url: str | None) -> dict[str, Any]:
    """Python, PostgreSQL (server binaries the parts start), Redis (server at the URL) and library versions."""
    out: dict[str, Any] = {"python": platform.python_version(), "implementation": platform.python_implementation()}
    try:
        from fixtures.localpg import find_bin_dir

        bin_dir = find_bin_dir()
        if bin_dir is not None:
            text = subprocess.run(
                [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=10, check=True
            ).stdout
            found = re.search(r"\(PostgreSQL\)\s+(\S+)", text)
            out["postgresql"] = found.group(1) if found else text.strip()
    except Exception as exc:  # reported, not fatal
        out["postgresql"] = f"unknown ({type(exc).__name__})"
    try:
        import redis

        client = redis.Redis.from_url(redis_url or "redis://127.0.0.1:6379/0", socket_connect_timeout=1)
        try:
            out["redis"] = client.info("server")["redis_version"]
        finally:
            client.close()
    except Exception as exc:  # reported, not fatal
        out["redis"] = f"unreachable ({type(exc).__name__})"
    libs: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = None
    out["libraries"] = libs
    return out


# -- output ---------------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    """Three significant digits, thousands separated; ``—`` for nothing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 3:
        return f"{value:,.0f}"
    decimals = max(0, 2 - magnitude)
    return f"{value:,.{decimals}f}"


def fmt_ratio(ratio: float | None) -> str:
    """``2.31×``, or ``—``."""
    return "—" if ratio is None else f"{fmt(ratio)}×"


def print_table(rows: list[Row], errors: dict[str, str]) -> None:
    """The rows as a rich table on the terminal (ratios below 1, where we lose, in red)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="hypervault benchmarks (ratio = times better than the comparison; < 1: we lose)")
    for name, justify in (
        ("part", "left"),
        ("measure", "left"),
        ("hypervault", "right"),
        ("comparison", "left"),
        ("theirs", "right"),
        ("ratio", "right"),
        ("unit", "left"),
        ("why", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        style = "" if r.ratio is None else ("green" if r.ratio >= 1 else "red")
        table.add_row(
            r.part,
            r.measure,
            fmt(r.hypervault),
            r.comparison,
            fmt(r.comparison_value),
            f"[{style}]{fmt_ratio(r.ratio)}[/]" if style else fmt_ratio(r.ratio),
            r.unit,
            r.explanation,
        )
    console = Console(width=max(Console().width, 200))
    console.print(table)
    for part, error in errors.items():
        console.print(f"[red]part {part} failed:[/] {error.strip().splitlines()[-1]}")


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (for docs/benchmarks.md)."""
    lines = [
        "| part | measure | hypervault | comparison | theirs | ratio | unit | why |",
        "|---|---|--:|---|--:|--:|---|---|",
    ]
    for r in rows:
        ratio = fmt_ratio(r.ratio)
        if r.ratio is not None and r.ratio < 1:
            ratio = f"**{ratio}**"
        lines.append(
            f"| {r.part} | {r.measure} | {fmt(r.hypervault)} | {r.comparison} | {fmt(r.comparison_value)} | "
            f"{ratio} | {r.unit} | {r.explanation.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def markdown_report(document: dict[str, Any], rows: list[Row]) -> str:
    """Date, machine, versions and the table, in Markdown (written next to the JSON for the docs to quote)."""
    host, ver = document["machine"], document["versions"]
    libs = ", ".join(f"{name} {v}" for name, v in ver["libraries"].items() if v)
    lines = [
        f"Run {document['date']}{' (QUICK: tiny sizes, figures are noise)' if document['quick'] else ''}; "
        f"parts: {', '.join(document['parts'])}.",
        "",
        f"- Machine: {host['cores']} cores, {host.get('cpu_model', '?')}, {host.get('ram_gib', '?')} GiB RAM, "
        f"{host['platform']}; load average {host['load_average_before'][0]} before, "
        f"{host['load_average_after'][0]} after.",
        f"- Python {ver['python']}, PostgreSQL {ver['postgresql']}, Redis {ver['redis']}.",
        f"- Libraries: {libs}.",
        "",
        markdown_table(rows),
    ]
    for part, error in document["errors"].items():
        lines.append(f"- part **{part}** failed: `{error.strip().splitlines()[-1]}`")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Horizontal bars of every ratio, grouped and coloured by part, log scale, a line at 1 (parity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    plotted = [r for r in rows if r.ratio is not None]
    parts = list(dict.fromkeys(r.part for r in plotted))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    colour = {part: palette[i % len(palette)] for i, part in enumerate(parts)}
    fig, ax = plt.subplots(figsize=(11, max(3.0, 0.28 * len(plotted) + 1.5)))
    labels = [f"{r.part}: {r.measure} vs {r.comparison}" for r in plotted]
    values = [r.ratio or 1.0 for r in plotted]
    ys = list(range(len(plotted)))[::-1]
    # bars grow from parity (1×): right, hypervault wins; left (hatched), it loses
    ax.barh(
        ys,
        [v - 1.0 for v in values],
        left=1.0,
        color=[colour[r.part] for r in plotted],
        hatch=["////" if v < 1 else "" for v in values],
        edgecolor="white",
    )
    for y, value in zip(ys, values, strict=True):
        ax.text(
            value * (1.06 if value >= 1 else 0.94),
            y,
            f"{fmt(value)}×",
            va="center",
            ha="left" if value >= 1 else "right",
            fontsize=7,
        )
    ax.set_yticks(ys, labels, fontsize=7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    low, high = min([*values, 1.0]), max([*values, 1.0])
    ax.set_xscale("log")
    ax.set_xlim(low / 2.5, high * 3)
    ax.set_xlabel("times better than the comparison, log scale (right of 1: hypervault wins; left, hatched: it loses)")
    ax.set_title(title, fontsize=10)
    ax.legend([Patch(color=colour[p]) for p in parts], parts, loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------------------


def parse_parts(text: str) -> list[str]:
    """``keys,peers`` → ['keys', 'peers'], checked against the known parts."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}: choose from {PARTS}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The suite's options."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/suite.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CI smoke run; figures are noise)")
    parser.add_argument(
        "--parts", type=parse_parts, default=list(PARTS), help=f"comma-separated, default all: {','.join(PARTS)}"
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help=f"write latest.json, latest.md and latest.png here (default {RESULTS.relative_to(ROOT)}, "
        f"or {QUICK_RESULTS.relative_to(ROOT)} with --quick: a quick run never overwrites the committed results "
        "unless asked with --output benchmarks/results)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="results file (overrides --output; .md beside it)")
    parser.add_argument("--png", type=Path, metavar="PATH", help="plot file (overrides --output)")
    parser.add_argument("--redis-url", help="Redis for the redis part (default redis://127.0.0.1:6379/0)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument(
        "--from-json", type=Path, metavar="PATH", help="run nothing: redraw table, Markdown and PNG from a results file"
    )
    return parser


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results JSON, plot PNG) for a run: ``--json``/``--png``, else in ``--output``, else the default directory
    (`RESULTS` for a full run, `QUICK_RESULTS` for ``--quick``). The Markdown report goes beside the JSON."""
    directory = args.output if args.output is not None else QUICK_RESULTS if args.quick else RESULTS
    return args.json or directory / "latest.json", args.png or directory / "latest.png"


def rerender(source: Path, png: Path, markdown: bool) -> int:
    """Table, Markdown report (next to ``source``) and plot again from a results file."""
    document = json.loads(source.read_text(encoding="utf-8"))
    rows = [Row(**r) for r in document["rows"]]
    print_table(rows, document["errors"])
    if markdown:
        print(markdown_table(rows))
    source.with_suffix(".md").write_text(markdown_report(document, rows), encoding="utf-8")
    plot(rows, png, _title(document))
    return 1 if document["errors"] else 0


def _title(document: dict[str, Any]) -> str:
    host = document["machine"]
    return (
        f"hypervault {document['versions']['libraries'].get('hypervault')} · {document['date'][:10]} · "
        f"{host['cores']} cores, {host.get('cpu_model', '?')}" + (" · QUICK (noise)" if document["quick"] else "")
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts; print, write JSON and PNG; 1 if a part failed."""
    args = build_parser().parse_args(argv)
    if args.from_json:
        return rerender(args.from_json, args.png or args.from_json.with_suffix(".png"), args.markdown)
    json_path, png_path = output_paths(args)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    raw: dict[str, Any] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    rows: list[Row] = []
    for name in args.parts:
        print(f"running {name}…", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            raw[name] = run_part(name, args.quick, args.redis_url)
        except Exception:
            errors[name] = traceback.format_exc()
            print(errors[name], file=sys.stderr)
            continue
        finally:
            seconds[name] = round(time.perf_counter() - t0, 2)
        try:
            rows += NORMALISERS[name](raw[name])
        except Exception:  # the part's output changed shape: keep its raw figures, say so
            errors[name] = "normalising its figures failed:\n" + traceback.format_exc()
            print(errors[name], file=sys.stderr)
    host = machine()
    host["load_average_before"] = [round(x, 2) for x in load_before]
    host["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    document = {
        "date": started.isoformat(timespec="seconds"),
        "quick": args.quick,
        "parts": args.parts,
        "ratio": "times better than the comparison: comparison/hypervault for times, hypervault/comparison for rates",
        "machine": host,
        "versions": versions(args.redis_url),
        "seconds": seconds,
        "rows": [dataclasses.asdict(r) for r in rows],
        "errors": errors,
        "results": raw,
    }
    print_table(rows, errors)
    if args.markdown:
        print(markdown_table(rows))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    plot(rows, png_path, _title(document))
    json_path.with_suffix(".md").write_text(markdown_report(document, rows), encoding="utf-8")
    print(f"wrote {json_path}, {json_path.with_suffix('.md')} and {png_path}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
