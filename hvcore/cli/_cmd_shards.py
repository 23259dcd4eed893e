"""``hv shard move|plan|export``: move one shard online, suggest balancing moves, export the map for Citus/PgDog."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from hvcore._attempts import earlier_failure
from hvcore._config import load_config, server_endpoint
from hvcore._datastore import Datastore
from hvcore._placement import export_map, plan_moves, shared_databases_text
from hvcore.cli._cmd_store import open_from_config
from hvcore.cli._output import Progress, emit_json, table
from hvcore.errors import HypervaultError, MoveError

__all__ = ["cmd_shard_export", "cmd_shard_move", "cmd_shard_plan"]


def cmd_shard_move(args: argparse.Namespace, out: TextIO) -> int:
    """Move one shard to another server online (or resume / roll back an interrupted move)."""
    with open_from_config(args.config) as store:
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
    if report.engine:  # moved between the nodes of a distributed database: the config does not change
        print(
            f"shard {report.shard_id}: node {report.source} → {report.target} by {report.engine}, "
            f"{report.rows:,} rows, total {report.seconds:.2f} s",
            file=out,
        )
        for note in report.notes:
            print(f"  {note}", file=out)
        return 0
    if report.source == report.target:  # nothing moved: say so, without a report of a copy that did not happen
        print(f"shard {report.shard_id} is already on {report.target}: nothing to move", file=out)
        for note in report.notes[1:]:
            print(f"  {note}", file=out)
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
    with open_from_config(args.config) as store:
        shared = store.shared_databases()
        if shared:
            raise MoveError(f"cannot plan moves: {shared_databases_text(shared)}")
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
    """Print the shard map for Citus schema-based sharding, PgDog, or as JSON (hosts, ports, dbnames; no passwords).

    Servers whose placement could not be read are named on stderr (exit 0: the map is printed as configured)."""
    cfg = load_config(args.config)
    endpoints = [dict(zip(("host", "port", "dbname"), server_endpoint(s), strict=True)) for s in cfg.servers]
    with Datastore.from_config(cfg, worker=None) as store:  # a move copies rows, makes no keys
        shard_map = store.reload_placement()
        labels = [s.label for s in store.servers]
        version = max((store.placement_version(s) for s in shard_map.shard_ids), default=0)
    out.write(export_map(shard_map, endpoints, labels, args.format, version=version))
    for label in labels:  # exported all the same (a map made before the servers exist): said on stderr
        error = earlier_failure(label)
        if error is not None:
            print(
                f"hv: warning: placement not read from {label} ({error}): shards moved to or from it since the "
                "config was written are shown where the config puts them",
                file=sys.stderr,
            )
    return 0
