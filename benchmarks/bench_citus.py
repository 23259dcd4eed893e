"""Benchmark the hand-off to Citus: what routing through the coordinator costs, and how long adoption takes.

Usage: ``python benchmarks/bench_citus.py [--quick] [--json PATH]``. Starts its own Citus clusters (Citus built by
``.ci/install-citus.sh`` when missing; nodes are `fixtures.localpg` servers, fsync off) and measures, in one run:

- ``put`` / ``get`` with `Datastore` through the coordinator vs the same `Datastore` calls sent straight to the
  worker that holds the shard (Citus routes them there locally), and vs a plain PostgreSQL server without Citus
  (hypervault before the hand-off): the routing cost users pay. ``get_many`` of 1,000 keys over 64 shards, and
  ``query`` over all 64 shards (``limit=10``, and whole), through the coordinator (one schema per statement, each
  router-planned by Citus; and, for comparison, the 16-schema statements used before, which Citus plans as one
  subplan per schema), straight to the two workers (a config giving each worker the shards it holds), and on the
  plain server. Blocks in rotating order, medians.
- ``hv citus adopt`` of 512 shards of 100 rows (64 of 50 with ``--quick``) held by two plain servers, against the
  path Citus documents for the same fleet: ``pg_dump`` of the shard schemas restored on the coordinator, then the
  statements of ``hv shard export --format citus`` run by psql (``citus_schema_distribute`` copies each schema to a
  worker, ``citus_schema_move`` puts it back on its server when Citus chose another); and the same for 8 shards of
  50,000 rows (4 of 10,000), where the copies, not Citus's per-schema work, dominate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure
from citus.citus_helpers import connect, dsn, prepare_for_citus, run_hv, write_config
from fixtures.citus import CitusCluster, ensure_citus
from fixtures.localpg import find_bin_dir

import hvcore
from hvcore._distributed import adopt_shards

BODY = {"name": "benchmark", "colour": "red", "size": 3}


def bench_routing(ops: int, rounds: int) -> dict[str, Any]:
    """µs per put and get: via the coordinator, straight to the holding worker, on a plain server; ms per get_many
    over 64 shards and per query over all of them: via the coordinator (one schema per statement, and the 16-schema
    statements used before), straight to the workers (each its own schemas), on a plain server."""
    cluster = CitusCluster(2)
    try:
        coordinator = [{"shards": "0-64", **cluster.coordinator}]
        with hvcore.Datastore(coordinator, backend="jsonb") as db:
            db.provision()  # 64 distributed schemas on the two workers
        shard = 3
        ((host, port),) = cluster.schema_nodes(f"shard{shard:04d}")
        worker = [{"shards": "0-64", **next(w for w in cluster.workers if w["port"] == port)}]
        held: dict[int, list[int]] = {}  # worker port → the shards whose schema it holds
        for s in range(64):
            ((_, node_port),) = cluster.schema_nodes(f"shard{s:04d}")
            held.setdefault(node_port, []).append(s)
        workers = [{"shards": held[w["port"]], **w} for w in cluster.workers if w["port"] in held]
        plain_server = cluster.new_plain_server()
        plain = [{"shards": "0-64", **plain_server.settings, "dbname": cluster.dbname}]
        with hvcore.Datastore(plain, backend="jsonb") as db:
            db.provision()
        stores = {
            "coordinator": hvcore.Datastore(coordinator, backend="jsonb"),
            "worker": hvcore.Datastore(worker, backend="jsonb"),
            "plain": hvcore.Datastore(plain, backend="jsonb"),
        }
        fanout = {
            "coordinator": stores["coordinator"],
            "coordinator_16": hvcore.Datastore(coordinator, backend="jsonb"),  # 16 schemas per statement (before)
            "workers": hvcore.Datastore(workers, backend="jsonb"),
            "plain": stores["plain"],
        }
        try:
            # the fan-out first, on the same rows everywhere: 16 per shard (the puts measured below add to shard 3)
            spread: dict[str, list[hvcore.Key]] = {}  # 1000 keys over all 64 shards
            for name in ("coordinator", "plain"):
                spread[name] = [k for s in range(64) for k in stores[name].put_many(s, 1, [BODY] * 16)][:1000]
            spread["coordinator_16"] = spread["workers"] = spread["coordinator"]
            for name, store in fanout.items():
                assert len(store.get_many(spread[name])) == 1000  # the store has looked at its server (Citus?)
            fanout["coordinator_16"]._stores[0].shards_per_statement = None  # type: ignore[attr-defined]
            pieces = {name: getattr(store._stores[0], "shards_per_statement", None) for name, store in fanout.items()}
            rows = {name: len(list(store.query())) for name, store in fanout.items()}
            assert set(rows.values()) == {64 * 16}, rows

            def fetch(name: str) -> Any:
                return lambda: fanout[name].get_many(spread[name])

            def first(name: str, limit: int | None) -> Any:
                return lambda: list(fanout[name].query(limit=limit))

            slow = max(ops // 40, 3)
            many = measure({name: fetch(name) for name in fanout}, slow, rounds)
            limited = measure({name: first(name, 10) for name in fanout}, slow, rounds)
            whole = measure({name: first(name, None) for name in fanout}, max(slow // 2, 2), rounds)

            keys = {name: [store.put(shard, 1, **BODY) for _ in range(200)] for name, store in stores.items()}

            def putter(store: hvcore.Datastore) -> Any:
                return lambda: store.put(shard, 1, **BODY)

            def getter(store: hvcore.Datastore, ids: list[hvcore.Key]) -> Any:
                position = [0]

                def get() -> None:
                    position[0] = (position[0] + 1) % len(ids)
                    store.get(ids[position[0]])

                return get

            put = measure({name: putter(store) for name, store in stores.items()}, ops, rounds)
            get = measure({name: getter(store, keys[name]) for name, store in stores.items()}, ops, rounds)
        finally:
            for store in {id(s): s for s in (*stores.values(), *fanout.values())}.values():
                store.close()
        return {
            "put_us": {name: seconds * 1e6 for name, seconds in put.items()},
            "get_us": {name: seconds * 1e6 for name, seconds in get.items()},
            "get_many_1000_ms": {name: seconds * 1e3 for name, seconds in many.items()},
            "query_limit_10_ms": {name: seconds * 1e3 for name, seconds in limited.items()},
            "query_all_ms": {name: seconds * 1e3 for name, seconds in whole.items()},
            "query_rows": rows,
            "shards_per_statement": pieces,
            "shard_node": f"{host}:{port}",
        }
    finally:
        cluster.stop()


def _fleet(shards: int, rows: int, top: Path) -> tuple[CitusCluster, Path, list[dict[str, Any]]]:
    """A coordinator alone, and two plain servers holding ``shards`` shards of ``rows`` rows, ready for Citus."""
    cluster = CitusCluster(0)
    plain = [cluster.new_plain_server() for _ in range(2)]
    servers = [{**server.settings, "dbname": cluster.dbname} for server in plain]
    half = shards // 2
    config = write_config(
        top / f"hv-{cluster.coordinator_server.port}.toml",
        [{"shards": f"0-{half}", **servers[0]}, {"shards": f"{half}-{shards}", **servers[1]}],
    )
    with hvcore.Datastore.from_config(config) as db:
        db.provision()
        for shard in range(shards):
            db.put_many(shard, 1, [{"shard": shard, "i": i, **BODY} for i in range(rows)])
    for server in plain:
        prepare_for_citus(cluster, server)
    return cluster, config, servers


def bench_adoption(shards: int, rows: int, top: Path) -> dict[str, Any]:
    """Seconds to hand ``shards`` shards over: ``adopt_shards`` vs dump/restore plus the exported statements."""
    out: dict[str, Any] = {"shards": shards, "rows_per_shard": rows}
    cluster, config, _ = _fleet(shards, rows, top)
    try:
        with (
            hvcore.Datastore.from_config(config, pool_max=2) as source,
            hvcore.Datastore([{"shards": f"0-{shards}", **cluster.coordinator}], backend="jsonb", pool_max=2) as target,
        ):
            started = time.perf_counter()
            report = adopt_shards(source, target)
            out["adopt_s"] = time.perf_counter() - started
        out["adopt_phases_s"] = report.phases
        out["adopt_relocated"] = report.relocated
        out["adopt_rows_verified"] = report.rows
    finally:
        cluster.stop()

    bin_dir = find_bin_dir()
    assert bin_dir is not None
    cluster, config, servers = _fleet(shards, rows, top)
    try:
        started = time.perf_counter()
        for settings in servers:
            dump = subprocess.run(
                [str(bin_dir / "pg_dump"), "--schema=shard*", "--no-owner", dsn(settings)],
                capture_output=True,
                check=True,
                timeout=3600,
            )
            subprocess.run(
                [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn(cluster.coordinator)],
                input=dump.stdout,
                capture_output=True,
                check=True,
                timeout=3600,
            )
            with connect(settings) as conn:
                names = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shard%'").fetchall()
                conn.execute("".join(f"ALTER SCHEMA {n} RENAME TO copied_{n};" for (n,) in names))
        out["copy_restore_s"] = time.perf_counter() - started
        code, text = run_hv("shard", "export", "--format", "citus", "--config", str(config))
        assert code == 0
        script = top / "citus.sql"
        script.write_text(text, encoding="utf-8")
        export_started = time.perf_counter()
        subprocess.run(
            [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), dsn(cluster.coordinator)],
            capture_output=True,
            check=True,
            timeout=3600,
        )
        out["copy_export_s"] = time.perf_counter() - export_started
        out["copy_s"] = time.perf_counter() - started
        with cluster.connect() as conn:
            row = conn.execute("SELECT count(*) FROM pg_dist_schema").fetchone()
            out["copy_distributed"] = int(row[0]) if row else 0
    finally:
        cluster.stop()
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Every measure of this part, as plain data."""
    problem = ensure_citus()
    if problem is not None:
        raise RuntimeError(problem)
    import tempfile

    ops, rounds = (100, 5) if quick else (400, 9)
    many = (64, 50) if quick else (512, 100)  # shards, rows per shard: Citus's per-schema work dominates
    big = (4, 10_000) if quick else (8, 50_000)  # few big shards: copying rows dominates the documented path
    result: dict[str, Any] = {"routing": bench_routing(ops, rounds)}
    with tempfile.TemporaryDirectory(prefix="hv-bench-citus-") as top:
        result["adoption"] = bench_adoption(*many, Path(top))
        result["adoption_big"] = bench_adoption(*big, Path(top))
    return result


def main() -> None:
    """Run the part and print (or write) its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.quick)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
