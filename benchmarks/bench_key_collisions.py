"""Independent processes making keys for one shard: how many keys two of them make alike, per 1,000 keys.

Usage: ``python benchmarks/bench_key_collisions.py [--quick] [--processes 4] [--seconds 3] [--gap-us 100:300]
[--pg CONNINFO] [--json PATH]``.

Each run starts ``--processes`` Python processes with `subprocess` (fresh interpreters, nothing shared: what
separately started workers or separate hosts are), each making one key for shard 1 every 100-300 µs (uniform;
the pace of a process doing puts), all in the same seconds. The parent counts **repeats**: keys made more than
once (total minus distinct), which is what a datastore sees as collision retries, per 1,000 keys made:

- ``old``: ``KeyGenerator(random_start=False)``, every millisecond's sequence starting at 0 (the scheme before);
- ``default``: ``KeyGenerator()``, each millisecond starting at a random number in 0..959 (a lone generator's
  default, and a Datastore's with ``worker=None`` or when no start can be leased);
- ``auto``: what ``Datastore(worker="auto")``, the library's default, does: ``KeyGenerator()`` starting each
  millisecond at the home of a number leased per process (8 bits, `hvcore._worker.home_start`), whole sequence;
- ``leased``: ``KeyGenerator(worker=lease_worker(...))``, a worker number per process (4 bits) leased from
  PostgreSQL (``--pg``; skipped when no server answers): 0 by construction.

Candidate schemes are also replayed on the real timelines of the ``default`` run (each process's keys per
millisecond), 200 random draws each (mean and 95th percentile): start at 0 (old); random start in 0..1023;
random start in 0..959 (chosen, leaving room for 64 more ids in the millisecond); one random start per process
for its lifetime; one random slice of 16 per process. Independent random starts cannot beat ``k_i * k_j / 1024``
expected repeats per millisecond for two processes making k_i and k_j keys in it (any scheme without coordination:
Cauchy-Schwarz); the replay shows how close each candidate comes, and how widely the fixed choices vary.

Then keys/s of one process on one shard, the default against leased workers (2 and 4 bits): the default may
take all 1,024 ids of a millisecond, a worker ``1024 >> bits``.

Last, the same through the library (``--pg``, a database of its own, dropped after): ``--processes`` independent
processes each doing ``Datastore.put`` on one shard for ``--seconds`` with a ``put_many`` of 100 rows every 400
puts, per ``worker`` option: ``None`` (random start per millisecond, the default before), ``"auto"`` (the default:
a start leased per process, `hvcore._worker.home_start`) and ``"lease"`` (a slice per process); the collision
retries each process counted (``key_collisions``) per 1,000 keys stored, and the mean put time (µs) per process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hvcore import Key, KeyGenerator, KeyLayout, WorkerSlice, _keymaker
from hvcore._worker import home_start

LAYOUT = KeyLayout.DEFAULT
SHARD = 1
SIZE = LAYOUT.sequence_size
DEFAULT_PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
LEASE_SCHEMA = "hv_bench_leases"


# -- the worker process ----------------------------------------------------------------------------------------------


def _generator(mode: str, pg: str, namespace: str, bits: int) -> tuple[KeyGenerator, Any]:
    if mode == "old":
        return KeyGenerator(random_start=False), None
    if mode == "default":
        return KeyGenerator(), None
    if mode == "auto":  # what Datastore(worker="auto") does: a leased start, the whole sequence
        from hvbackend_postgres._lease import lease_worker

        lease = lease_worker(pg, bits=8, namespace=namespace, schema=LEASE_SCHEMA, ttl=10.0)
        gen = KeyGenerator()
        gen.start_each_ms_at(home_start(lease.worker))
        return gen, lease
    from hvbackend_postgres._lease import lease_worker

    lease = lease_worker(pg, bits=bits, namespace=namespace, schema=LEASE_SCHEMA, ttl=10.0)
    return KeyGenerator(worker=lease), lease


def datastore_main(args: argparse.Namespace) -> int:
    """Puts (and a put_many of 100 every 400 puts) on one shard from ``--start-at`` for ``--seconds``: a summary."""
    import hvcore

    worker: Any = {"none": None, "auto": "auto", "lease": {"namespace": args.namespace}}[args.mode]
    settings = json.loads(args.pg_settings)
    with hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", worker=worker) as db:
        db.put(SHARD + 1, 1, warm=True)
        while time.time_ns() < args.start_at:
            time.sleep(0.0005)
        puts = stored = 0
        put_ns = 0
        stop = time.perf_counter_ns() + int(args.seconds * 1e9)
        while time.perf_counter_ns() < stop:
            began = time.perf_counter_ns()
            db.put(SHARD, 1, n=puts)
            put_ns += time.perf_counter_ns() - began
            puts += 1
            stored += 1
            if puts % 400 == 0:
                db.put_many(SHARD, 1, [{"n": puts, "i": i} for i in range(100)])
                stored += 100
        result: dict[str, Any] = {"puts": puts, "stored": stored, "collisions": db.key_collisions}
        result["put_us"] = put_ns / puts / 1000
        result["worker_status"] = db.worker_status
    print(json.dumps(result))
    return 0


def run_datastores(args: argparse.Namespace) -> dict[str, Any]:
    """Independent processes putting through the library on one shard, per worker option: collisions, put µs."""
    import psycopg

    import hvcore

    dbname = f"hv_bench_collisions_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    base = psycopg.conninfo.conninfo_to_dict(args.pg)
    settings = {**{k: v for k, v in base.items() if k != "dbname"}, "dbname": dbname}
    out: dict[str, Any] = {}
    try:
        with hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", worker=None) as db:
            db.provision()
        for mode in ("none", "auto", "lease"):
            start_at = time.time_ns() + int(2.5e9)
            command = [sys.executable, __file__, "--datastore-worker", "--mode", mode, "--start-at", str(start_at)]
            command += ["--seconds", str(args.seconds), "--pg-settings", json.dumps(settings)]
            command += ["--namespace", f"bench-{uuid.uuid4().hex[:12]}"]
            procs = [
                subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(args.processes)
            ]
            summaries = []
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=args.seconds * 4 + 60)
                if proc.returncode != 0:
                    raise RuntimeError(f"a {mode} datastore worker failed ({proc.returncode}): {stderr[-2000:]}")
                summaries.append(json.loads(stdout.strip().splitlines()[-1]))
            stored = sum(s["stored"] for s in summaries)
            collisions = sum(s["collisions"] for s in summaries)
            out[mode] = {
                "stored": stored,
                "collisions": collisions,
                "collisions_per_1000": 1000 * collisions / max(stored, 1),
                "put_us": statistics.mean(s["put_us"] for s in summaries),
                "puts_per_s_per_process": statistics.mean(s["puts"] for s in summaries) / args.seconds,
                "worker_status": [s["worker_status"] for s in summaries],
            }
        out["put_cost_one_process"] = put_cost(settings, args)
    finally:
        with psycopg.connect(args.pg, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    return out


def put_cost(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """One process, one shard: µs per put and per put_many(100) with the default (auto) vs worker=None, the two
    datastores used in alternating blocks (drift and load hit both alike); medians."""
    import hvcore

    server = [dict(shards="0-16", **settings)]
    with (
        hvcore.Datastore(server, backend="jsonb", worker=None) as plain,
        hvcore.Datastore(server, backend="jsonb") as auto,
    ):
        rows = [{"i": i} for i in range(100)]
        blocks = 5 if args.seconds <= 1 else 15
        out: dict[str, Any] = {}

        def put(db: Any) -> object:
            return db.put(SHARD + 2, 1, x=1)

        def put_many(db: Any) -> object:
            return db.put_many(SHARD + 2, 1, rows)

        operations: list[tuple[str, Callable[[Any], object], int]] = [("put", put, 100), ("put_many_100", put_many, 10)]
        for name, op, n in operations:
            times: dict[str, list[float]] = {"auto": [], "none": []}
            for index in range(blocks + 1):
                order = (("auto", auto), ("none", plain)) if index % 2 else (("none", plain), ("auto", auto))
                for mode, db in order:
                    began = time.perf_counter()
                    for _ in range(n):
                        op(db)
                    if index:  # the first block warms both
                        times[mode].append((time.perf_counter() - began) / n * 1e6)
            auto_us, none_us = statistics.median(times["auto"]), statistics.median(times["none"])
            out[name] = {"auto_us": auto_us, "none_us": none_us, "ratio": auto_us / none_us}
        out["auto_status"] = auto.worker_status
    return out


def worker_main(args: argparse.Namespace) -> int:
    """Make keys at the pace asked from ``--start-at`` for ``--seconds``: keys to ``--out``, a summary to stdout."""
    gen, lease = _generator(args.mode, args.pg, args.namespace, args.bits)
    low, high = (int(x) * 1000 for x in args.gap_us.split(":"))
    rng = random.Random()
    gen.next_key(SHARD + 1)  # warm: the generator and the C paths are loaded
    if args.throughput:
        result = _throughput(gen, args.seconds)
    else:
        while time.time_ns() < args.start_at:
            time.sleep(0.0005)
        keys: list[int] = []
        deadline = time.perf_counter_ns()
        stop = deadline + int(args.seconds * 1e9)
        while (now := time.perf_counter_ns()) < stop:
            keys.append(gen.next_key(SHARD))
            deadline += rng.randint(low, high)
            if deadline > now:
                time.sleep((deadline - now) / 1e9)
        with open(args.out, "wb") as out:
            out.write(struct.pack(f"<{len(keys)}q", *keys))
        result = {"keys": len(keys), "keys_per_s": len(keys) / args.seconds}
    if lease is not None:
        result["worker"] = lease.worker.id
        gen.close()
        lease.close()
    print(json.dumps(result))
    return 0


def _throughput(gen: KeyGenerator, seconds: float) -> dict[str, Any]:
    made = 0
    started = time.perf_counter_ns()
    stop = started + int(seconds * 1e9)
    next_key = gen.next_key
    while time.perf_counter_ns() < stop:
        for _ in range(1000):
            next_key(SHARD)
        made += 1000
    elapsed = (time.perf_counter_ns() - started) / 1e9
    batches = 0
    started = time.perf_counter_ns()
    while time.perf_counter_ns() - started < seconds * 1e9:
        gen.next_keys(SHARD, 64)
        batches += 1
    batch_elapsed = (time.perf_counter_ns() - started) / 1e9
    return {"next_key_per_s": made / elapsed, "next_keys64_per_s": 64 * batches / batch_elapsed}


# -- the parent ------------------------------------------------------------------------------------------------------


def _spawn(mode: str, args: argparse.Namespace, start_at: int, namespace: str, out: str, *, throughput: bool) -> Any:
    command = [sys.executable, __file__, "--worker", "--mode", mode, "--start-at", str(start_at)]
    command += ["--seconds", str(args.seconds), "--gap-us", args.gap_us, "--out", out, "--pg", args.pg]
    command += ["--namespace", namespace, "--bits", str(args.bits)]
    if throughput:
        command.append("--throughput")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_processes(mode: str, args: argparse.Namespace, *, throughput: bool = False) -> dict[str, Any]:
    """Start ``args.processes`` independent processes in ``mode``; their keys and summaries."""
    namespace = f"bench-{uuid.uuid4().hex[:12]}"
    start_at = time.time_ns() + int(1.5e9)  # every interpreter is up and warm by then
    count = 1 if throughput else args.processes
    with tempfile.TemporaryDirectory(prefix="hv-collisions-") as tmp:
        outs = [os.path.join(tmp, f"{i}.keys") for i in range(count)]
        procs = [_spawn(mode, args, start_at, namespace, out, throughput=throughput) for out in outs]
        summaries = []
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=args.seconds * 4 + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"a {mode} worker failed ({proc.returncode}): {stderr[-2000:]}")
            summaries.append(json.loads(stdout.strip().splitlines()[-1]))
        keys: list[list[int]] = []
        if not throughput:
            for out in outs:
                data = Path(out).read_bytes()
                keys.append(list(struct.unpack(f"<{len(data) // 8}q", data)))
    if mode in ("leased", "auto"):
        _drop_namespace(args.pg, namespace)
    return {"summaries": summaries, "keys": keys}


def _drop_namespace(pg: str, namespace: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg, autocommit=True) as conn:
        table = sql.Identifier(LEASE_SCHEMA, "worker_leases")
        conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(table), [namespace])


def repeats(keys: list[list[int]]) -> dict[str, Any]:
    """Total, distinct, repeats (= collision retries a store would see) and repeats per 1,000 keys."""
    everything = [k for mine in keys for k in mine]
    for mine in keys:
        assert len(set(mine)) == len(mine), "a process repeated its own key"
    distinct = len(set(everything))
    total = len(everything)
    return {
        "keys": total,
        "distinct": distinct,
        "repeats": total - distinct,
        "repeats_per_1000": 1000 * (total - distinct) / max(total, 1),
    }


def timelines(keys: list[list[int]]) -> list[dict[int, int]]:
    """Per process: how many keys it made in each millisecond."""
    return [dict(Counter(Key(k).timestamp_ms for k in mine)) for mine in keys]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def replay(lines: list[dict[int, int]], scheme: str, rng: random.Random) -> int:
    """Repeats of ``scheme`` on these timelines, with fresh random draws (per millisecond, or per process)."""
    fixed = [rng.randint(0, SIZE - SIZE // 16 - 1) for _ in lines]
    slices = [rng.randrange(16) for _ in lines]
    spans: dict[int, list[tuple[int, int]]] = {}
    for index, line in enumerate(lines):
        for ms, k in line.items():
            if scheme == "0 each ms (old)":
                lo = 0
            elif scheme == "random start per ms, 0..1023":
                lo = min(rng.randint(0, SIZE - 1), SIZE - k)
            elif scheme == "random start per ms, 0..959 (chosen)":
                lo = min(rng.randint(0, SIZE - SIZE // 16 - 1), SIZE - k)
            elif scheme == "random start per process":
                lo = min(fixed[index], SIZE - k)
            elif scheme == "leased start per process (auto)":
                lo = min(home_start(WorkerSlice(id=index, bits=8)), SIZE - k)
            elif scheme == "random slice of 16 per process":
                lo = slices[index] * (SIZE // 16)
            else:
                raise ValueError(scheme)
            spans.setdefault(ms, []).append((lo, lo + k))
    total = 0
    for group in spans.values():  # repeats: keys minus distinct keys of the millisecond
        if len(group) > 1:
            covered: set[int] = set()
            for lo, hi in group:
                covered.update(range(lo, hi))
            total += sum(hi - lo for lo, hi in group) - len(covered)
    return total


SCHEMES = [
    "0 each ms (old)",
    "random start per ms, 0..1023",
    "random start per ms, 0..959 (chosen)",
    "random start per process",
    "random slice of 16 per process",
    "leased start per process (auto)",
]


def pg_reachable(pg: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(pg, connect_timeout=2):
            return True
    except Exception:
        return False


def run(quick: bool = False) -> dict[str, Any]:
    """For benchmarks/suite.py: every measurement on a throwaway PostgreSQL server (system binaries)."""
    import psycopg
    from fixtures.localpg import local_servers

    args = main_parser().parse_args(["--quick"] if quick else [])
    if quick:
        args.seconds = 1.0
    with local_servers(1) as servers:
        args.pg = psycopg.conninfo.make_conninfo(**{**servers[0].settings, "dbname": "postgres"})
        result = measure(args)
    result["text"] = report(result)
    return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement; a JSON-ready dict."""
    result: dict[str, Any] = {
        "processes": args.processes,
        "seconds": args.seconds,
        "gap_us": args.gap_us,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "accelerated": _keymaker.ACCELERATED,
        "runs": {},
    }
    modes = ["old", "default"] + (["auto", "leased"] if pg_reachable(args.pg) else [])
    if "leased" not in modes:
        result["skipped"] = f"leased: no PostgreSQL at {args.pg!r}"
    default_keys: list[list[int]] = []
    for mode in modes:
        figures: list[dict[str, Any]] = []
        for _ in range(args.repeat):
            done = run_processes(mode, args)
            counted = repeats(done["keys"])
            counted["keys_per_s_per_process"] = statistics.mean(s["keys_per_s"] for s in done["summaries"])
            lines = timelines(done["keys"])
            per_ms = [k for line in lines for k in line.values()]
            counted["keys_per_ms_per_process"] = statistics.mean(per_ms)
            # The bound for independent random choices: sum over ms of k_i * k_j / 1024 for every pair.
            pairs = 0
            for ms in set().union(*lines):
                counts = [line.get(ms, 0) for line in lines]
                pairs += (sum(counts) ** 2 - sum(c * c for c in counts)) // 2
            counted["random_bound_per_1000"] = 1000 * pairs / SIZE / max(counted["keys"], 1)
            if mode in ("leased", "auto"):
                counted["workers"] = sorted(s["worker"] for s in done["summaries"])
            figures.append(counted)
            if mode == "default":
                default_keys = done["keys"]
        result["runs"][mode] = figures
    rng = random.Random(12345)
    lines = timelines(default_keys)
    total = sum(len(k) for k in default_keys)
    replays: dict[str, Any] = {}
    for scheme in SCHEMES:
        draws = sorted(1000 * replay(lines, scheme, rng) / total for _ in range(200))
        replays[scheme] = {"mean_per_1000": statistics.mean(draws), "p95_per_1000": draws[int(0.95 * len(draws))]}
    result["replayed on the default run's timelines"] = replays
    result["throughput, one process, one shard"] = throughput(args, "leased" in modes)
    if "leased" in modes:
        result["datastore"] = run_datastores(args)
    return result


def throughput(args: argparse.Namespace, with_lease: bool) -> dict[str, Any]:
    """keys/s of one process on one shard: next_key in a loop and next_keys(shard, 64), default vs leased."""
    out: dict[str, Any] = {}
    quick = argparse.Namespace(**{**vars(args), "seconds": min(args.seconds, 1.0)})
    out["default"] = run_processes("default", quick, throughput=True)["summaries"][0]
    if with_lease:
        for bits in (2, 4):
            leased = argparse.Namespace(**{**vars(quick), "bits": bits})
            out[f"leased, {bits} bits"] = run_processes("leased", leased, throughput=True)["summaries"][0]
    return out


def report(result: dict[str, Any]) -> str:
    """The figures as text."""
    lines = [
        f"{result['processes']} independent processes, one shard, one key per {result['gap_us']} µs each, "
        f"{result['seconds']} s (Python {result['machine']['python']}, {result['machine']['cores']} cores, load "
        f"{' '.join(f'{x:.1f}' for x in result['machine']['load'])}; "
        f"{'C accelerator' if result['accelerated'] else 'pure Python'})",
        "repeats (keys made more than once = a store's collision retries) per 1,000 keys:",
    ]
    for mode, runs in result["runs"].items():
        for r in runs:
            extra = f"  workers {r['workers']}" if "workers" in r else ""
            lines.append(
                f"  {mode:<8} {r['repeats_per_1000']:8.2f}   ({r['repeats']} of {r['keys']:,} keys; "
                f"{r['keys_per_s_per_process']:,.0f} keys/s and {r['keys_per_ms_per_process']:.2f} keys per busy ms "
                f"per process; random-choice bound {r['random_bound_per_1000']:.2f}){extra}"
            )
    if "skipped" in result:
        lines.append(f"  skipped: {result['skipped']}")
    lines.append("replayed on the default run's timelines (200 draws): mean [95th percentile] per 1,000 keys")
    for scheme, f in result["replayed on the default run's timelines"].items():
        lines.append(f"  {scheme:<38} {f['mean_per_1000']:8.2f}  [{f['p95_per_1000']:.2f}]")
    lines.append("one process, one shard: keys/s (next_key loop; next_keys(shard, 64) loop)")
    for name, f in result["throughput, one process, one shard"].items():
        lines.append(f"  {name:<16} {f['next_key_per_s']:>12,.0f}   {f['next_keys64_per_s']:>12,.0f}")
    if "datastore" in result:
        lines.append(
            f"through the library: {result['processes']} processes, Datastore.put on one shard (+ put_many(100) every "
            "400 puts): collision retries per 1,000 keys stored; mean put µs and puts/s per process"
        )
        base = result["datastore"]["none"]["put_us"]
        for mode in ("none", "auto", "lease"):
            f = result["datastore"][mode]
            name = {"none": "worker=None", "auto": "auto (default)", "lease": "worker='lease'"}[mode]
            lines.append(
                f"  {name:<16} {f['collisions_per_1000']:8.2f}   ({f['collisions']} of {f['stored']:,}; put "
                f"{f['put_us']:.0f} µs = {f['put_us'] / base:.3f}x worker=None; "
                f"{f['puts_per_s_per_process']:,.0f} puts/s per process)"
            )
        cost = result["datastore"]["put_cost_one_process"]
        lines.append("one process alone, alternating blocks (medians): default (auto) vs worker=None")
        for name in ("put", "put_many_100"):
            f = cost[name]
            lines.append(f"  {name:<16} {f['auto_us']:8.0f} µs vs {f['none_us']:.0f} µs: {f['ratio']:.3f}x")
    return "\n".join(lines)


def main_parser() -> argparse.ArgumentParser:
    """The command line's options (the suite's `run` uses their defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--gap-us", default="100:300", help="pause between two keys of a process, µs: LOW:HIGH")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode")
    parser.add_argument("--bits", type=int, default=4, help="worker bits of the leased mode")
    parser.add_argument("--pg", default=os.environ.get("HV_BENCH_PG", DEFAULT_PG), help="libpq conninfo for leases")
    parser.add_argument("--quick", action="store_true", help="1 s per run")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--throughput", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--datastore-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pg-settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default="default", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: the parent (measure, report), or ``--worker`` (one process's keys)."""
    args = main_parser().parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.datastore_worker:
        return datastore_main(args)
    if args.quick:
        args.seconds = 1.0
    result = measure(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
