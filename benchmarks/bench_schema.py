"""Benchmark secondary indexes and migrations (issue 17) on two throwaway PostgreSQL servers (fsync on).

Usage: ``python benchmarks/bench_schema.py [--quick] [--json PATH]``. Measures, each against a baseline in the same run:

- ``query(kind=1, where={"user_id": x})`` over 100,000 rows on 16 shards (2 servers; 10 rows per user id) with a
  bigint index on ``user_id`` vs the same call on a copy of the data without it, which the GIN ``where`` path
  answers (``body @> {"user_id": x}``, the jsonb_path_ops body index, built in both databases with
  ``create_body_index``: shards have none by default): two databases, same rows, calls in rotating order;
- a range filter ``where={"age": {">=": a, "<": a + 1}}`` (1 % of the rows) with the index vs the same SQL on the
  copy without it (a scan of the kind's rows: the GIN index cannot answer ranges);
- what the index costs writes: ``put_many`` of 1000 rows and single ``put`` into the indexed database vs the copy;
- ``hv migrate`` (the command, a new process) of a one-statement migration over 8192 shards on 2 servers, then
  its re-run, against provisioning the same 8192 shards (``Datastore.provision``) in the same run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure
from fixtures.localpg import local_servers

import hvcore

USERS_PER_ROWS = 10  # rows per user id


def _servers(settings: list[dict[str, Any]], dbname: str, shards: int) -> list[dict[str, Any]]:
    half = shards // 2
    return [
        {**settings[0], "dbname": dbname, "shards": f"0-{half}"},
        {**settings[1], "dbname": dbname, "shards": f"{half}-{shards}"},
    ]


def _create(settings: list[dict[str, Any]], dbname: str) -> None:
    for server in settings:
        with psycopg.connect(**server, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {dbname}")


def bench_queries(settings: list[dict[str, Any]], rows: int, ops: int, rounds: int) -> dict[str, Any]:
    """Indexed vs GIN-path equality, indexed vs unindexed range, and what the index costs writes."""
    users = rows // USERS_PER_ROWS
    rng = random.Random(17)
    bodies = [{"user_id": rng.randrange(users), "age": rng.randrange(100), "name": f"user {i}"} for i in range(rows)]
    stores: dict[str, hvcore.Datastore] = {}
    for name in ("indexed", "plain"):
        _create(settings, f"bench_{name}")
        db = stores[name] = hvcore.Datastore(_servers(settings, f"bench_{name}", 16), backend="jsonb")
        db.provision()
        db.create_body_index()  # the GIN `where` path the equality figure compares with (opt-in since issue 14)
        for start in range(0, rows, 5000):
            part = bodies[start : start + 5000]
            db.put_many(start // 5000 % 16, 1, part)
    started = time.perf_counter()
    stores["indexed"].create_index(1, "user_id", type="bigint")
    stores["indexed"].create_index(1, "age", type="bigint")
    build_s = time.perf_counter() - started
    for name in stores:
        for server in _servers(settings, f"bench_{name}", 16):
            with psycopg.connect(**{k: v for k, v in server.items() if k != "shards"}, autocommit=True) as conn:
                conn.execute("ANALYZE")
    probes = [rng.randrange(users) for _ in range(4096)]
    state = {"i": 0}

    def equality(db: hvcore.Datastore) -> Any:
        def run() -> None:
            state["i"] = (state["i"] + 1) & 4095
            list(db.query(kind=1, where={"user_id": probes[state["i"]]}))

        return run

    eq = measure({"indexed": equality(stores["indexed"]), "gin": equality(stores["plain"])}, ops, rounds)
    # the same rows come back either way
    for probe in probes[:20]:
        a = [r.key for r in stores["indexed"].query(kind=1, where={"user_id": probe})]
        b = [r.key for r in stores["plain"].query(kind=1, where={"user_id": probe})]
        assert len(a) == len(b)

    definitions = stores["indexed"]._index_catalog.load(stores["indexed"].servers)

    def ranged(indexed: bool) -> Any:
        from hvcore._backend import QuerySpec
        from hvcore._schemadefs import bind_filters, split_ranges

        db = stores["indexed" if indexed else "plain"]

        def run() -> None:
            age = rng.randrange(99)
            if indexed:
                list(db.query(kind=1, where={"age": {">=": age, "<": age + 1}}))
                return
            # the same statement on the copy without the index (the façade refuses ranges there)
            equal, ranges = split_ranges({"age": {">=": age, "<": age + 1}}, 1)
            spec = QuerySpec(kind=1, filters=bind_filters(1, equal, ranges, definitions))
            for index, store in enumerate(db.servers):
                query, params = store._query_sql(db.shard_map.shards_of(index), spec, None)  # type: ignore[attr-defined]
                with store.cursor(db.shard_map.shards_of(index)[0]) as cur:
                    cur.execute(query, params)
                    cur.fetchall()

        return run

    rg = measure({"indexed": ranged(True), "scan": ranged(False)}, max(ops // 10, 3), rounds)
    batch = [{"user_id": rng.randrange(users), "age": rng.randrange(100), "name": "x"} for _ in range(1000)]
    many = measure(
        {
            "indexed": lambda: stores["indexed"].put_many(rng.randrange(16), 1, batch),
            "plain": lambda: stores["plain"].put_many(rng.randrange(16), 1, batch),
        },
        2,
        rounds,
    )
    one = measure(
        {
            "indexed": lambda: stores["indexed"].put(rng.randrange(16), 1, **batch[0]),
            "plain": lambda: stores["plain"].put(rng.randrange(16), 1, **batch[0]),
        },
        ops,
        rounds,
    )
    for db in stores.values():
        db.close()
    return {
        "rows": rows,
        "index_build_s": build_s,
        "eq_indexed_ms": eq["indexed"] * 1e3,
        "eq_gin_ms": eq["gin"] * 1e3,
        "range_indexed_ms": rg["indexed"] * 1e3,
        "range_scan_ms": rg["scan"] * 1e3,
        "put_many_indexed_us_per_row": many["indexed"] * 1e6 / 1000,
        "put_many_plain_us_per_row": many["plain"] * 1e6 / 1000,
        "put_indexed_us": one["indexed"] * 1e6,
        "put_plain_us": one["plain"] * 1e6,
    }


def bench_migrate(settings: list[dict[str, Any]], shards: int) -> dict[str, Any]:
    """Provision ``shards`` shards, then ``hv migrate`` a one-statement file over them, then again."""
    _create(settings, "bench_migrate")
    servers = _servers(settings, "bench_migrate", shards)
    started = time.perf_counter()
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
    provision_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        migrations = root / "migrations"
        migrations.mkdir()
        (migrations / "0001_notes.sql").write_text("CREATE TABLE notes (id bigint PRIMARY KEY, note text NOT NULL);")
        lines = ['backend = "jsonb"']
        for server in servers:
            lines.append("[[servers]]")
            lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in server.items()]
        config = root / "hv.toml"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "hvcore.cli", "migrate", "--config", str(config), str(migrations), "--json"]
        times = []
        reports = []
        for _ in range(2):
            started = time.perf_counter()
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - started)
            reports.append(json.loads(done.stdout))
    assert reports[0]["applied"] == shards and reports[1]["applied"] == 0
    return {"shards": shards, "provision_s": provision_s, "migrate_s": times[0], "rerun_s": times[1]}


def run(quick: bool) -> dict[str, Any]:
    """Queries and writes on 100,000 rows (20,000 quick), then migrations over 8192 shards (1024 quick)."""
    rows, ops, rounds = (20_000, 50, 3) if quick else (100_000, 200, 7)
    shards = 1024 if quick else 8192
    results: dict[str, Any] = {"quick": quick}
    with local_servers(2, fsync=True) as local:
        settings = [s.settings for s in local]
        results["queries"] = bench_queries(settings, rows, ops, rounds)
        results["migrate"] = bench_migrate(settings, shards)
    return results


def main() -> None:
    """Command-line entry: print the figures (and write them as JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 rows and 1024 shards")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    r = run(args.quick)
    q, m = r["queries"], r["migrate"]
    print(f"{q['rows']:,} rows; two indexes built in {q['index_build_s']:.2f} s (16 shards, CONCURRENTLY)")
    print(
        f"query by user_id: {q['eq_indexed_ms']:.2f} ms indexed | {q['eq_gin_ms']:.2f} ms GIN where path "
        f"({q['eq_gin_ms'] / q['eq_indexed_ms']:.2f}×)"
    )
    print(
        f"range on age (1 %): {q['range_indexed_ms']:.2f} ms indexed | {q['range_scan_ms']:.2f} ms without the index "
        f"({q['range_scan_ms'] / q['range_indexed_ms']:.2f}×)"
    )
    print(
        f"put_many: {q['put_many_indexed_us_per_row']:.2f} µs/row indexed | "
        f"{q['put_many_plain_us_per_row']:.2f} plain; "
        f"put: {q['put_indexed_us']:.0f} µs indexed | {q['put_plain_us']:.0f} µs plain"
    )
    print(
        f"hv migrate over {m['shards']} shards: {m['migrate_s']:.2f} s, re-run {m['rerun_s']:.2f} s "
        f"(provisioning them: {m['provision_s']:.2f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
