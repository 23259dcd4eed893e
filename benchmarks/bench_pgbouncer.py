"""Benchmark PgBouncer in front (issue 13): put/get through transaction pooling vs direct, and the reset's cost.

Usage: ``python benchmarks/bench_pgbouncer.py [--quick] [--json PATH]``. Starts one throwaway PostgreSQL server and
one PgBouncer 1.18 in ``pool_mode = transaction`` in front of it (``default_pool_size`` = the datastore's
``pool_max``, so both paths have the same number of server sessions), and prints every ratio measured in this one
run (blocks of calls in rotating order, medians):

- put and get direct (prepared statements), direct with ``pgbouncer="transaction"`` (the same statements never
  prepared: what the mode costs without the extra hop), and through the pooler;
- one user-code checkout (``get_connection`` + a ``SELECT 1`` + ``put_connection``, and a ``cursor()`` block)
  with the session reset (``_bouncer.RESET_SQL``) and with it skipped: the reset's cost per checkout;
- a lent connection's transaction through the pooler (``SELECT 1`` + ``commit()``) with the reset its ``COMMIT``
  carries (``_bouncer.end_gen``: ``<reset>; COMMIT`` in one round trip) and with it off: the reset's cost per
  commit of user code behind a transaction pooler.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _shared import measure
from fixtures.localpg import local_servers
from fixtures.pgbouncer import PgBouncerFactory, find_pgbouncer

import hvcore
from hvbackend_postgres._lent import lent_target
from hvbackend_postgres._store import PostgresServerStore

POOL = 4
SHARD = 3


def _datastore(settings: dict[str, Any], pgbouncer: str) -> hvcore.Datastore:
    return hvcore.Datastore([{**settings, "shards": "0-8", "pgbouncer": pgbouncer}], pool_max=POOL, backend="jsonb")


def _putter(db: hvcore.Datastore) -> Callable[[], object]:
    return lambda: db.put(SHARD, 1, n="1")


def _getter(db: hvcore.Datastore, key: hvcore.Key) -> Callable[[], object]:
    return lambda: db.get(key)


def bench_put_get(direct: dict[str, Any], pooled: dict[str, Any], ops: int, rounds: int) -> dict[str, float]:
    """µs per put and per get on each path, single thread."""
    stores = {
        "direct": _datastore(direct, "off"),
        "direct, unprepared": _datastore(direct, "transaction"),
        "pgbouncer transaction": _datastore(pooled, "auto"),
    }
    try:
        keys = {name: db.put(SHARD, 1, seed="1") for name, db in stores.items()}
        puts = measure({name: _putter(db) for name, db in stores.items()}, ops, rounds)
        gets = measure({name: _getter(db, keys[name]) for name, db in stores.items()}, ops, rounds)
        assert stores["pgbouncer transaction"].servers[0].stats()["pooling"] == "transaction"
    finally:
        for db in stores.values():
            db.close()
    out = {f"put {name}": seconds * 1e6 for name, seconds in puts.items()}
    out |= {f"get {name}": seconds * 1e6 for name, seconds in gets.items()}
    return out


def bench_reset(direct: dict[str, Any], ops: int, rounds: int) -> dict[str, float]:
    """µs per user-code checkout with the session reset and with it skipped (direct connection)."""
    original = PostgresServerStore._reset

    def without_session_reset(self: PostgresServerStore, conn: Any, session: bool) -> None:
        original(self, conn, False)

    db = _datastore(direct, "off")

    def borrow() -> None:
        conn = db.get_connection(SHARD)
        conn.execute("SELECT 1")
        db.put_connection(conn)

    def block() -> None:
        with db.cursor(SHARD) as cur:
            cur.execute("SELECT 1")

    def skipping(fn: Any) -> Any:
        def run() -> None:
            PostgresServerStore._reset = without_session_reset  # type: ignore[method-assign]
            try:
                fn()
            finally:
                PostgresServerStore._reset = original  # type: ignore[method-assign]

        return run

    try:
        times = measure(
            {
                "borrow with reset": borrow,
                "borrow without reset": skipping(borrow),
                "cursor with reset": block,
                "cursor without reset": skipping(block),
            },
            ops,
            rounds,
        )
    finally:
        db.close()
    return {name: seconds * 1e6 for name, seconds in times.items()}


def bench_lent_commit(pooled: dict[str, Any], ops: int, rounds: int) -> dict[str, float]:
    """µs per lent-connection transaction (``SELECT 1`` + ``commit()``) through the pooler, with the reset its
    ``COMMIT`` carries behind a transaction pooler and with it off (``hv_end_reset`` cleared for the call)."""
    db = _datastore(pooled, "transaction")
    conn = db.get_connection(SHARD)
    target = lent_target(conn)

    def commit() -> None:
        conn.execute("SELECT 1")
        conn.commit()

    def without_reset() -> None:
        target.hv_end_reset = False
        try:
            commit()
        finally:
            target.hv_end_reset = True

    try:
        assert target.hv_end_reset
        times = measure({"lent commit with reset": commit, "lent commit without reset": without_reset}, ops, rounds)
    finally:
        db.put_connection(conn)
        db.close()
    return {name: seconds * 1e6 for name, seconds in times.items()}


def main() -> None:
    """Run the measurements and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    ops, rounds = (50, 3) if args.quick else (400, 7)
    binary = find_pgbouncer()
    if binary is None:
        sys.exit("pgbouncer is not installed (apt-get install -y pgbouncer)")
    with local_servers(1) as servers:
        direct = dict(servers[0].settings)
        with hvcore.Datastore([{**direct, "shards": "0-8"}], backend="jsonb") as db:
            db.provision()
        factory = PgBouncerFactory(binary, None)
        try:
            bouncer = factory(servers[0], pool_mode="transaction", default_pool_size=POOL)
            figures = bench_put_get(direct, bouncer.settings, ops, rounds)
            figures |= bench_reset(direct, ops, rounds)
            figures |= bench_lent_commit(bouncer.settings, ops, rounds)
        finally:
            factory.close()
    print(f"pool_max {POOL}, PgBouncer pool_mode=transaction default_pool_size={POOL}; µs per call (median)")
    for name, value in figures.items():
        print(f"  {name:<48} {value:8.1f}")
    ratios = {
        "put: pgbouncer / direct": figures["put pgbouncer transaction"] / figures["put direct"],
        "get: pgbouncer / direct": figures["get pgbouncer transaction"] / figures["get direct"],
        "put: direct unprepared / direct": figures["put direct, unprepared"] / figures["put direct"],
        "get: direct unprepared / direct": figures["get direct, unprepared"] / figures["get direct"],
        "borrow: with reset / without": figures["borrow with reset"] / figures["borrow without reset"],
        "cursor: with reset / without": figures["cursor with reset"] / figures["cursor without reset"],
        "lent commit via pgbouncer: with reset / without": (
            figures["lent commit with reset"] / figures["lent commit without reset"]
        ),
    }
    print("ratios (same run):")
    for name, value in ratios.items():
        print(f"  {name:<48} {value:8.2f}")
    reset_us = figures["borrow with reset"] - figures["borrow without reset"]
    print(f"  {'reset per user-code checkout (µs)':<48} {reset_us:8.1f}")
    commit_us = figures["lent commit with reset"] - figures["lent commit without reset"]
    print(f"  {'reset per lent commit via pgbouncer (µs)':<48} {commit_us:8.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"figures": figures, "ratios": ratios}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
