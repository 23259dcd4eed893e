"""Benchmark transactions on real PostgreSQL: a transaction of 10 puts vs 10 autocommit puts, in one run.

Usage: ``python benchmarks/bench_transactions.py [--quick] [--json PATH]``, or part ``transactions`` of
``benchmarks/suite.py``. Starts one throwaway PostgreSQL server
(system binaries, fsync on, durable commits: every autocommit put waits for its WAL flush) and prints, for
`Datastore` and `AsyncDatastore`, the time of each candidate and every ratio against the 10 autocommit puts
measured in the same run:

- 10 ``db.put`` (10 commits) vs ``with db.transaction(s) as tx:`` and 10 ``tx.put`` (one commit, plus ``BEGIN;
  SET LOCAL search_path`` in one round trip);
- the same 10 rows as one ``tx.put_many`` inside a transaction, and ``db.put_many`` alone (one COPY);
- what a transaction costs around a single put: 1 ``tx.put`` in a transaction vs 1 ``db.put``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shared import measure
from fixtures.localpg import LocalServer, find_bin_dir

import hvcore

BODY = {"name": "benchmark", "colour": "red", "size": "3"}
SHARD = 3
ROWS = 10


def sync_candidates(db: hvcore.Datastore) -> dict[str, Callable[[], object]]:
    """The candidates on a sync `Datastore`; the first is the baseline."""

    def autocommit() -> None:
        for _ in range(ROWS):
            db.put(SHARD, 1, **BODY)

    def transaction() -> None:
        with db.transaction(SHARD) as tx:
            for _ in range(ROWS):
                tx.put(1, **BODY)

    def transaction_put_many() -> None:
        with db.transaction(SHARD) as tx:
            tx.put_many(1, [BODY] * ROWS)

    def put_many() -> None:
        db.put_many(SHARD, 1, [BODY] * ROWS)

    def one_put() -> None:
        db.put(SHARD, 1, **BODY)

    def one_put_in_transaction() -> None:
        with db.transaction(SHARD) as tx:
            tx.put(1, **BODY)

    return {
        f"{ROWS} autocommit puts": autocommit,
        f"transaction of {ROWS} puts": transaction,
        f"transaction of put_many({ROWS})": transaction_put_many,
        f"put_many({ROWS}) alone": put_many,
        "1 autocommit put": one_put,
        "transaction of 1 put": one_put_in_transaction,
    }


def async_candidates(db: hvcore.AsyncDatastore, loop: asyncio.AbstractEventLoop) -> dict[str, Callable[[], object]]:
    """The same candidates on an `AsyncDatastore`, each run to completion on ``loop``."""

    async def autocommit() -> None:
        for _ in range(ROWS):
            await db.put(SHARD, 1, **BODY)

    async def transaction() -> None:
        async with db.transaction(SHARD) as tx:
            for _ in range(ROWS):
                await tx.put(1, **BODY)

    def run(fn: Callable[[], Any]) -> Callable[[], object]:
        return lambda: loop.run_until_complete(fn())

    return {f"{ROWS} autocommit puts": run(autocommit), f"transaction of {ROWS} puts": run(transaction)}


def report(title: str, times: dict[str, float]) -> list[dict[str, Any]]:
    """Print each candidate's time and its ratio to the baseline (the first); return the rows."""
    names = list(times)
    print(f"\n{title}")
    rows = []
    for name in names:
        baseline = "1 autocommit put" if name in ("1 autocommit put", "transaction of 1 put") else names[0]
        ratio = times[baseline] / times[name]
        print(f"  {name:<32} {times[name] * 1e3:8.2f} ms   {ratio:5.2f}x faster than {baseline}")
        rows.append({"name": name, "seconds": times[name], "baseline": baseline, "speedup": ratio})
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    """Start a server, measure every candidate (sync and async), print the ratios; the figures by API and name
    (``{"sync": [{"name", "seconds", "baseline", "speedup"}, ...], "async": [...]}``), as ``suite.py`` reads them."""
    ops, rounds = (5, 3) if quick else (20, 15)
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL binaries (initdb, pg_ctl): set HV_PG_BIN")
    top = Path(tempfile.mkdtemp(prefix="hv-bench-tx-"))
    top.chmod(0o755)
    server = LocalServer(top / "s0", bin_dir=bin_dir, fsync=True)
    results: dict[str, Any] = {}
    try:
        server.init()
        server.start()
        servers = [{**server.settings, "shards": "0-16"}]
        with hvcore.Datastore(servers, backend="jsonb") as db:
            db.provision()
            results["sync"] = report("Datastore (sync), jsonb, fsync on", measure(sync_candidates(db), ops, rounds))
        loop = asyncio.new_event_loop()
        try:
            adb = hvcore.AsyncDatastore(servers, backend="jsonb")
            loop.run_until_complete(adb.open())
            try:
                times = measure(async_candidates(adb, loop), ops, rounds)
                results["async"] = report("AsyncDatastore, jsonb, fsync on", times)
            finally:
                loop.run_until_complete(adb.close())
        finally:
            loop.close()
    finally:
        server.stop("immediate")
        shutil.rmtree(top, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the ratios (and write them as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    results = run(args.quick)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
