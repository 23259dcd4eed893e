"""The ``hv`` command line: keys, the demo, provisioning and status."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from hvcore._config import DatastoreConfig, load_config, parse_layout, redact
from hvcore._datastore import Datastore
from hvcore._generator import KeyGenerator
from hvcore._key import Key, KeyLayout
from hvcore._plugins import default_registry
from hvcore.errors import HypervaultError

__all__ = ["main"]


# -- output helpers -------------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[object]], headers: Sequence[str], out: TextIO) -> None:
    """Print an aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))

    print(line(cells[0]).rstrip(), file=out)
    print("  ".join("─" * w for w in widths), file=out)
    for row in cells[1:]:
        print(line(row).rstrip(), file=out)


def _is_number(text: str) -> bool:
    return text.removesuffix("/s").replace(",", "").replace(".", "", 1).replace("%", "").lstrip("-").isdigit()


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or when forced)."""

    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.started = time.perf_counter()
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last_draw = 0.0

    def advance(self, count: int = 1) -> None:
        """Count finished units and redraw at most 20 times a second."""
        self.done += count
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw > 0.05 or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(self.done / self.total, 1.0)
        bar = "█" * int(frac * 30) + "░" * (30 - int(frac * 30))
        rate = self.done / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.label:<12} {bar} {self.done:>6}/{self.total} {frac:6.1%} {rate:,.0f}/s")
        sys.stderr.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self._draw(time.perf_counter())
            sys.stderr.write("\n")


def emit_json(data: object, out: TextIO) -> None:
    """Print JSON (keys as strings, datetimes ISO)."""
    json.dump(data, out, indent=2, default=str)
    out.write("\n")


def layout_from_args(args: argparse.Namespace) -> KeyLayout:
    """The layout chosen by ``--layout``/``--epoch``."""
    if getattr(args, "epoch", None) is not None:
        return KeyLayout(epoch_ms=args.epoch)
    return parse_layout(args.layout)


# -- commands ---------------------------------------------------------------------------------------------------


def cmd_key_decode(args: argparse.Namespace, out: TextIO) -> int:
    """Decode ids into created / shard_id / added_id."""
    layout = layout_from_args(args)
    keys = [layout.key_type.parse(text) for text in args.ids]
    if args.json:
        emit_json([k.as_dict() for k in keys] if len(keys) > 1 else keys[0].as_dict(), out)
        return 0
    rows = [(k.to_json(), k.as_dict()["created"], k.shard_id, k.added_id) for k in keys]
    table(rows, ["id", "created (UTC)", "shard_id", "added_id"], out)
    return 0


def cmd_key_new(args: argparse.Namespace, out: TextIO) -> int:
    """Print new ids, one per line."""
    layout = layout_from_args(args)
    if args.count < 1:
        raise HypervaultError(f"--count must be ≥ 1, got {args.count}")
    source = None
    if args.sequence:
        source = default_registry().sequence(args.sequence.split("://", 1)[0])(args.sequence, layout=layout)
    generator = KeyGenerator(layout, sequence=source)
    try:
        keys: list[Key] = []
        remaining = args.count
        while remaining:
            batch = generator.next_keys(args.shard, min(remaining, layout.sequence_size))
            keys.extend(batch)
            remaining -= len(batch)
    finally:
        if source is not None:
            source.close()
    if args.json:
        emit_json([k.as_dict() for k in keys], out)
    else:
        out.write("".join(f"{k}\n" for k in keys))
    return 0


def _open_from_config(path: str) -> Datastore:
    return Datastore.from_config(load_config(path))


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    """Create schemas, tables and indexes for every shard of the config."""
    started = time.perf_counter()
    with _open_from_config(args.config) as store:
        progress = Progress("provision", len(store.shard_map.shard_ids), enabled=None if not args.json else False)
        reports = store.provision(progress.advance)
        progress.close()
    seconds = time.perf_counter() - started
    if args.json:
        emit_json({"seconds": round(seconds, 3), "servers": [dataclasses.asdict(r) for r in reports]}, out)
        return 0
    rows = [(r.server, r.shards, r.created, f"{r.seconds:.2f}") for r in reports]
    table(rows, ["server", "shards", "created", "seconds"], out)
    print(f"provisioned {sum(r.shards for r in reports)} shards in {seconds:.2f} s", file=out)
    return 0


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show servers, their shards, pools and rows."""
    with _open_from_config(args.config) as store:
        with contextlib.suppress(HypervaultError):
            store.reload_placement()  # shards moved by `hv shard move` are counted where they are now
        status = store.status()
    if args.json:
        emit_json(status, out)
        return 0
    rows = []
    for entry in status:
        pool = entry["pool"]
        pool_text = f"{pool.get('borrowed', 0)}/{pool.get('pool_max', '?')} borrowed"
        if entry["reachable"]:
            rows.append(
                (entry["server"], "yes", entry["shards"], entry["provisioned_shards"], f"{entry['rows']:,}", pool_text)
            )
        else:
            rows.append((entry["server"], "NO", entry["shards"], "-", "-", pool_text))
    table(rows, ["server", "reachable", "shards", "provisioned", "rows", "pool"], out)
    for entry in status:
        if not entry["reachable"]:
            print(f"  {entry['server']}: {entry['error']}", file=out)
    return 0 if all(e["reachable"] for e in status) else 1


@contextlib.contextmanager
def _demo_servers(args: argparse.Namespace) -> Iterator[tuple[list[dict[str, Any]], str, str]]:
    """Yield (connection dicts with shards, backend, description) for the demo."""
    if args.config:
        cfg = load_config(args.config)
        yield [dict(s) for s in cfg.servers], cfg.backend, f"servers from {args.config}"
        return
    if args.backend == "memory":
        yield [dict(shards="0-16", name="demo-a"), dict(shards="16-32", name="demo-b")], "memory", "in-memory backend"
        return
    try:
        from hvbackend_postgres._embedded import EMBEDDED_BACKEND, embedded_servers
    except ImportError as exc:
        raise HypervaultError(
            f"the embedded demo needs PostgreSQL support: pip install 'hypervault[embedded]' ({exc})"
        ) from None
    print("starting 2 embedded PostgreSQL servers (pgserver)…", file=sys.stderr)
    with embedded_servers(2) as servers:
        conns = [dict(servers[0], shards="0-16"), dict(servers[1], shards="16-32")]
        yield conns, EMBEDDED_BACKEND, f"2 embedded PostgreSQL servers (pgserver), {EMBEDDED_BACKEND} backend"


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Provision shards on two servers, write and read entities one by one and in batches, show where they went."""
    rng = random.Random(42)
    cities = ["Oslo", "Lima", "Pune"]
    with _demo_servers(args) as (conns, backend, description), Datastore(conns, backend=backend) as store:
        shard_ids = store.shard_map.shard_ids
        t0 = time.perf_counter()
        store.provision()
        provision_s = time.perf_counter() - t0
        singles = args.rows // 2
        progress = Progress("put", singles, enabled=None if not args.json else False)
        keys: list[Key] = []
        t0 = time.perf_counter()
        for i in range(singles):
            keys.append(store.put(rng.choice(shard_ids), i % 3, user=f"user{i}", city=rng.choice(cities)))
            progress.advance()
        put_s = time.perf_counter() - t0
        progress.close()
        batches: dict[int, list[dict[str, str]]] = {}
        for i in range(singles, args.rows):
            batches.setdefault(rng.choice(shard_ids), []).append({"user": f"user{i}", "city": rng.choice(cities)})
        t0 = time.perf_counter()
        for shard, rows in batches.items():
            keys.extend(store.put_many(shard, 1, rows))
        put_many_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        found_one_by_one = sum(1 for k in keys[:singles] if store.get(k) is not None)
        get_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = store.get_many(keys)
        get_many_s = time.perf_counter() - t0
        oslo_first = [r.key.as_dict() for r in store.query(where={"city": "Oslo"}, limit=3)]
        status = store.status()
    batched = args.rows - singles
    ok = len(found) == len(keys) and found_one_by_one == singles
    result: dict[str, Any] = {
        "setup": description,
        "servers": [
            {"server": s["server"], "shards": s["shards"], "rows": s.get("rows"), "reachable": s["reachable"]}
            for s in status
        ],
        "written": len(keys),
        "read_back": len(found),
        "provision_seconds": round(provision_s, 3),
        "puts_per_second": round(singles / put_s) if singles else None,
        "put_many_rows_per_second": round(batched / put_many_s) if batched else None,
        "gets_per_second": round(singles / get_s) if singles else None,
        "get_many_keys_per_second": round(len(keys) / get_many_s) if keys else None,
        "sample_keys": [k.as_dict() for k in keys[:3]],
        "first_three_in_oslo": oslo_first,
    }
    if args.json:
        emit_json(result, out)
        return 0 if ok else 1
    print(f"hypervault demo: {description}\n", file=out)
    table([(s["server"], s["shards"], f"{s['rows']:,}") for s in result["servers"]], ["server", "shards", "rows"], out)
    print("\nkeys decode to their time, shard and sequence:", file=out)
    table(
        [(d["id"], d["created"], d["shard_id"], d["added_id"]) for d in result["sample_keys"]],
        ["id", "created (UTC)", "shard_id", "added_id"],
        out,
    )
    print(f"\nprovisioned {len(shard_ids)} shards in {provision_s:.2f} s; throughput on this machine:", file=out)
    table(
        [
            ("put (one entity)", f"{singles:,}", f"{result['puts_per_second'] or 0:,}/s"),
            ("put_many (a batch per shard)", f"{batched:,}", f"{result['put_many_rows_per_second'] or 0:,}/s"),
            ("get (one key)", f"{singles:,}", f"{result['gets_per_second'] or 0:,}/s"),
            ("get_many (one trip per server)", f"{len(keys):,}", f"{result['get_many_keys_per_second'] or 0:,}/s"),
        ],
        ["operation", "entities", "rate"],
        out,
    )
    print(
        f"\nread back {len(found):,} of {len(keys):,}; first entities in Oslo (query, key order): "
        + ", ".join(d["id"] for d in oslo_first),
        file=out,
    )
    return 0 if ok else 1


def cmd_shard_move(args: argparse.Namespace, out: TextIO) -> int:
    """Move one shard to another server online (or resume / roll back an interrupted move)."""
    with _open_from_config(args.config) as store:
        if args.rollback:
            print(store.rollback_move(args.shard), file=out)
            return 0
        target = args.to
        if args.resume:
            state = store.move_state(args.shard)
            if state is None:
                raise HypervaultError(f"no unfinished move of shard {args.shard} to resume")
            target = target if target is not None else str(state["target"])
        if target is None:
            raise HypervaultError("give the target server: --to INDEX or --to host:port/dbname")
        bars: dict[str, Progress] = {}

        def progress(phase: str, done: int, total: int) -> None:
            bar = bars.get(phase)
            if bar is None:
                for previous in bars.values():
                    previous.close()
                bars.clear()
                bar = bars[phase] = Progress(phase, total, enabled=None if not args.json else False)
            bar.total = max(total, 1)
            bar.advance(done - bar.done)

        try:
            report = store.move_shard(args.shard, target, drop_source=args.drop_source, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
        specs = store.shard_map.to_specs()
    if args.json:
        emit_json({**report.as_dict(), "shards_per_server": specs}, out)
        return 0
    print(
        f"shard {report.shard_id}: {report.source} → {report.target} (placement version {report.version}), "
        f"{report.rows:,} rows copied in {report.copy_seconds:.2f} s, {report.catchup_rounds} catch-up round(s), "
        f"writes paused {report.pause_seconds * 1000:.0f} ms, verified {report.checksum or '-'}, "
        f"total {report.seconds:.2f} s",
        file=out,
    )
    for note in report.notes:
        print(f"  {note}", file=out)
    print("every process follows the move; to start new ones without a redirect, set in the config:", file=out)
    for index, spec in enumerate(specs):
        print(f'  servers[{index}]: shards = "{spec}"', file=out)
    return 0


def _rows_per_shard(store: Datastore) -> dict[int, int]:
    store.reload_placement()
    rows: dict[int, int] = {}
    for entry in store.status():
        if not entry["reachable"]:
            raise HypervaultError(f"{entry['server']} is unreachable: {entry['error']}")
        rows.update(entry["rows_per_shard"])
    return rows


def cmd_shard_plan(args: argparse.Namespace, out: TextIO) -> int:
    """Suggest shard moves that balance rows over N servers."""
    from hvcore._placement import plan_moves

    with _open_from_config(args.config) as store:
        rows = _rows_per_shard(store)
        owner = dict(iter(store.shard_map))
        labels = [s.label for s in store.servers]
    moves = plan_moves(rows, owner, args.servers)

    def name(index: int) -> str:
        return labels[index] if index < len(labels) else f"new server #{index} (add it to the config)"

    load = [0] * max(args.servers, len(labels))
    for shard, server in owner.items():
        load[server] += rows.get(shard, 0)
    for _, count, source, target in moves:
        load[source] -= count
        load[target] += count
    if args.json:
        emit_json(
            {
                "moves": [{"shard": s, "rows": r, "from": name(a), "to": name(b)} for s, r, a, b in moves],
                "rows_per_server": {name(i): n for i, n in enumerate(load)},
            },
            out,
        )
        return 0
    if not moves:
        print(f"already balanced over {args.servers} server(s): nothing to move", file=out)
    else:
        table([(s, f"{r:,}", name(a), name(b)) for s, r, a, b in moves], ["shard", "rows", "from", "to"], out)
        print(file=out)
        for shard, _, _, target in moves:
            print(f"hv shard move {shard} --to {target} --config {args.config}", file=out)
    print(file=out)
    table([(name(i), f"{n:,}") for i, n in enumerate(load)], ["server", "rows after"], out)
    return 0


def cmd_shard_export(args: argparse.Namespace, out: TextIO) -> int:
    """Print the shard map for Citus schema-based sharding, PgDog, or as JSON."""
    from hvcore._placement import export_map

    cfg = load_config(args.config)
    with Datastore.from_config(cfg) as store:
        shard_map = store.reload_placement()
        labels = [s.label for s in store.servers]
        version = max((store.placement_version(s) for s in shard_map.shard_ids), default=0)
    servers = [redact(s) for s in cfg.servers]
    out.write(export_map(shard_map, servers, labels, args.format, version=version))
    return 0


def cmd_config_show(args: argparse.Namespace, out: TextIO) -> int:
    """Print a config file as hypervault reads it (passwords masked)."""
    cfg: DatastoreConfig = load_config(args.config)
    data = {
        "backend": cfg.backend,
        "pool_max": cfg.pool_max,
        "pool_block_timeout": cfg.pool_block_timeout,
        "layout_epoch_ms": cfg.layout.epoch_ms,
        "servers": [redact(s) for s in cfg.servers],
    }
    emit_json(data, out)
    return 0


def bench_suite() -> Path:
    """``benchmarks/suite.py`` of the source checkout this ``hvcore`` was imported from."""
    import hvcore

    suite = Path(hvcore.__file__).resolve().parent.parent / "benchmarks" / "suite.py"
    if not suite.is_file():
        raise HypervaultError(
            f"hv bench runs from a source checkout: no benchmarks/suite.py next to {Path(hvcore.__file__).parent} "
            "(clone the repository and pip install -e '.[bench]')"
        )
    return suite


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    """Run the benchmark suite of the source checkout with the given options."""
    suite = bench_suite()
    argv = [sys.executable, str(suite)]
    if args.quick:
        argv.append("--quick")
    for option in ("parts", "json", "png", "redis_url"):
        value = getattr(args, option)
        if value is not None:
            argv += [f"--{option.replace('_', '-')}", str(value)]
    if args.markdown:
        argv.append("--markdown")
    out.flush()
    return subprocess.run(argv, check=False).returncode


# -- parser -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``hv`` argument parser."""
    from hvcore import __version__
    from hvcore._keymaker import ACCELERATED

    keys = "keys made by the C accelerator" if ACCELERATED else "keys made in pure Python, without the C accelerator"
    parser = argparse.ArgumentParser(prog="hv", description="hypervault: sharded PostgreSQL with client-side keys")
    parser.add_argument("--version", action="version", version=f"hypervault {__version__} ({keys})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace, TextIO], int], help_text: str, **kw: Any) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text, **kw)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    key = sub.add_parser("key", help="make and decode keys")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    for name, func, help_text in (
        ("decode", cmd_key_decode, "decode ids into created, shard_id and added_id"),
        ("new", cmd_key_new, "print new ids, one per line"),
    ):
        p = key_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--layout", default="default", help="'default', 'hypervault' (the 2015 library's) or epoch ms")
        p.add_argument("--epoch", type=int, help="layout epoch in Unix ms (overrides --layout)")
        if name == "decode":
            p.add_argument("ids", nargs="+", metavar="ID", help="decimal id(s)")
        else:
            p.add_argument("--shard", type=int, required=True, help="shard id (0..8191)")
            p.add_argument("--count", type=int, default=1, help="how many ids (default 1)")
            p.add_argument("--sequence", help="shared sequence URL, e.g. redis://127.0.0.1:6379/0")

    demo = add("demo", cmd_demo, "run the main job: provision, write and read on two servers")
    demo.add_argument("--config", help="TOML config of real servers (default: two embedded servers)")
    demo.add_argument("--backend", choices=["embedded", "memory"], default="embedded", help="without --config")
    demo.add_argument("--rows", type=int, default=3000, help="entities to write (default 3000)")

    init = add("init", cmd_init, "create extensions, schemas, tables and indexes for every shard (idempotent)")
    init.add_argument("--config", required=True, help="TOML config file")
    status = add("status", cmd_status, "servers, shards, pools and rows")
    status.add_argument("--config", required=True, help="TOML config file")
    show = add("config", cmd_config_show, "show a config file as read (passwords masked)")
    show.add_argument("--config", required=True, help="TOML config file")
    shard = sub.add_parser("shard", help="move shards between servers, plan moves, export the map")
    shard_sub = shard.add_subparsers(dest="shard_command", required=True, metavar="ACTION")
    move = shard_sub.add_parser("move", help="move one shard to another server while writes continue")
    move.set_defaults(func=cmd_shard_move)
    move.add_argument("shard", type=int, help="the shard id")
    move.add_argument("--to", help="target server: index in the config (0-based) or host:port/dbname")
    move.add_argument("--config", required=True, help="TOML config file")
    move.add_argument("--drop-source", action="store_true", help="drop the old rows once the move is switched")
    how = move.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="resume an interrupted move (target from its record)")
    how.add_argument("--rollback", action="store_true", help="undo an interrupted move; the shard stays put")
    move.add_argument("--json", action="store_true", help="machine-readable output")
    plan = shard_sub.add_parser("plan", help="suggest moves that balance rows over N servers")
    plan.set_defaults(func=cmd_shard_plan)
    plan.add_argument("--servers", type=int, required=True, help="how many servers to balance over")
    plan.add_argument("--config", required=True, help="TOML config file")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    export = shard_sub.add_parser("export", help="print the shard map for Citus, PgDog or as JSON")
    export.set_defaults(func=cmd_shard_export)
    export.add_argument("--format", choices=["citus", "pgdog", "json"], default="json", help="output format")
    export.add_argument("--config", required=True, help="TOML config file")
    bench = sub.add_parser(
        "bench",
        help="run the benchmark suite against peers (from a source checkout)",
        description="Run benchmarks/suite.py: table on the terminal, JSON and PNG (needs the 'bench' extra).",
    )
    bench.set_defaults(func=cmd_bench)
    bench.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    bench.add_argument("--parts", help="comma-separated: keys,redis,datastore,batches,peers,scaling (default all)")
    bench.add_argument("--json", metavar="PATH", help="results file (default benchmarks/results/latest.json)")
    bench.add_argument("--png", metavar="PATH", help="plot file (default benchmarks/results/latest.png)")
    bench.add_argument("--redis-url", help="Redis for the redis part (default redis://127.0.0.1:6379/0)")
    bench.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of ``hv``; returns the exit code."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args, out)
    except HypervaultError as exc:
        print(f"hv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
