"""``hv init``, ``hv status`` and ``hv config``: provision a config's shards, show its servers, show the config."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from hvcore._config import DatastoreConfig, load_config
from hvcore._datastore import Datastore
from hvcore._distributed import cluster_status
from hvcore._facade import check_config_servers
from hvcore._generator import check_layout_now
from hvcore._key import KeyLayout
from hvcore._placement import shared_databases_text
from hvcore._shardmap import ShardMap
from hvcore.cli._cmd_citus import print_cluster_status
from hvcore.cli._cmd_metrics import check_watch, watch
from hvcore.cli._output import Progress, emit_json, masked, settings_text, table
from hvcore.errors import HypervaultError

__all__ = ["cmd_config_show", "cmd_init", "cmd_status", "config_document", "open_from_config", "status_document"]


def open_from_config(path: str) -> Datastore:
    """A `Datastore` (not yet used) from a TOML config file, for commands that make no keys (no worker lease)."""
    return Datastore.from_config(load_config(path), worker=None)


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    """Create schemas, tables and indexes for every shard of the config."""
    started = time.perf_counter()
    with open_from_config(args.config) as store:
        progress = Progress("provision", len(store.shard_map.shard_ids), enabled=None if not args.json else False)
        reports = store.provision(progress.advance)
        progress.close()
    seconds = time.perf_counter() - started
    if args.json:
        emit_json({"seconds": round(seconds, 3), "servers": [dataclasses.asdict(r) for r in reports]}, out)
        return 0
    rows = [(r.server, r.shards, r.created, f"{r.seconds:.2f}") for r in reports]
    table(rows, ["server", "shards", "created", "seconds"], out)
    for report in reports:  # what else was done: an extension created, a body index recorded
        for note in report.notes:
            print(f"  {report.server}: {note}", file=out)
    print(f"provisioned {sum(r.shards for r in reports)} shards in {seconds:.2f} s", file=out)
    return 0


def status_document(status: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``Datastore.status()`` as ``hv status --json`` prints it: per server, ``rows_per_shard`` in shard order."""
    out = []
    for entry in status:
        doc = dict(entry)
        if isinstance(doc.get("rows_per_shard"), Mapping):
            doc["rows_per_shard"] = {shard: doc["rows_per_shard"][shard] for shard in sorted(doc["rows_per_shard"])}
        out.append(doc)
    return out


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show servers, their shards, pools and rows; exit 1 if a server is unreachable or two server entries reach one
    database (under two names). ``--watch N``: again every N
    seconds on the same datastore (pools and standby lag as they change), until Ctrl-C."""
    check_watch(args.watch, args.count)
    with open_from_config(args.config) as store:
        return watch(
            args.watch,
            args.count,
            f"hv status {args.config}",
            lambda: _show_status(store, args, out),
            out,
            clear=not args.json,
        )


def _show_status(store: Datastore, args: argparse.Namespace, out: TextIO) -> int:
    """One round of `cmd_status`."""
    with contextlib.suppress(HypervaultError):
        store.reload_placement()  # shards moved by `hv shard move` are counted where they are now
    rows_mode = getattr(args, "rows", None) or ("estimated" if args.watch else "exact")
    status = status_document(store.status(rows=rows_mode))
    clusters = _clusters(store, status)
    if args.json:
        emit_json(status, out, lines=bool(args.watch))  # exit 0: the JSON says which servers are unreachable
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
    rows_header = "rows (estimated)" if any(e.get("rows_estimated") for e in status) else "rows"
    table(rows, ["server", "reachable", "shards", "provisioned", rows_header, "pool"], out)
    for entry in status:
        if not entry["reachable"]:
            print(f"  {entry['server']}: {entry['error']}", file=out)
    print_replica_status(status, store.max_replica_lag, out)
    print_cluster_status(clusters, out)
    shared = store.shared_databases()
    if shared:
        print(f"\nWARNING: {shared_databases_text(shared)}", file=out)
    return 0 if all(e["reachable"] for e in status) and not shared else 1


def print_replica_status(status: list[dict[str, Any]], max_lag: float, out: TextIO) -> None:
    """The standbys of each server that has some: state (in use, lagging, down), lag, reads served."""
    rows = []
    for entry in status:
        for replica in entry.get("replicas") or ():
            lag = replica["lag_seconds"]
            lag_bytes = replica["lag_bytes"]
            rows.append(
                (
                    entry["server"],
                    replica["server"],
                    replica["state"],
                    "-" if lag is None else f"{lag:.3f} s",
                    "-" if lag_bytes is None else f"{lag_bytes:,}",
                    f"{replica['reads']:,}",
                )
            )
    if not rows:
        return
    print(f"\nread replicas (max lag {max_lag:g} s):", file=out)
    table(rows, ["server", "replica", "state", "lag", "lag bytes", "reads"], out)
    for entry in status:
        for replica in entry.get("replicas") or ():
            if replica.get("error"):
                print(f"  {replica['server']}: {replica['error']}", file=out)
        on_primary = entry.get("replica_reads_on_primary")
        if on_primary:
            print(f"  {entry['server']}: {on_primary:,} replica reads served by the primary", file=out)


def _clusters(store: Datastore, status: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes of the servers that front a distributed database (Citus), also added to their ``status`` entries."""
    reachable = {e["server"] for e in status if e["reachable"]}
    if not reachable:
        return []
    try:
        clusters = cluster_status(store)
    except HypervaultError as exc:
        return [{"server": "?", "engine": "?", "nodes": [], "error": str(exc)}]
    for entry in status:
        for cluster in clusters:
            if cluster["server"] == entry["server"]:
                entry["cluster"] = {k: v for k, v in cluster.items() if k != "server"}
    return clusters


def _layout_name(layout: KeyLayout) -> str:
    for name, preset in (("default", KeyLayout.DEFAULT), ("hypervault", KeyLayout.HYPERVAULT)):
        if layout == preset:
            return name
    return "custom"


def config_document(cfg: DatastoreConfig) -> dict[str, Any]:
    """A config as hypervault read it, as plain data with passwords masked (``hv config --json``)."""
    return {
        "backend": cfg.backend,
        "pool_max": cfg.pool_max,
        "pool_block_timeout": cfg.pool_block_timeout,
        "operation_timeout": cfg.operation_timeout,
        "layout": _layout_name(cfg.layout),
        "layout_epoch_ms": cfg.layout.epoch_ms,
        "sequence": masked({"conninfo": cfg.sequence})["conninfo"] if cfg.sequence else None,
        "allow_gaps": cfg.allow_gaps,
        "row_factory": cfg.row_factory,
        "values": cfg.values,
        "log_values": cfg.log_values,
        "servers": [masked(s) for s in cfg.servers],
    }


_ROWS = {"row": "Row (row[0] and row['name'])", "dict": "dicts", "tuple": "tuples"}


def _check_plugins(cfg: DatastoreConfig) -> None:
    """What `Datastore.from_config` would refuse beyond the file itself: the backend name and the sequence URL
    (read by their plugins, no connection made). A file `hv config` shows without complaint opens."""
    from hvcore._generator import _sequence_source
    from hvcore._plugins import default_registry

    default_registry().backend(cfg.backend)
    source, _ = _sequence_source(cfg.sequence, cfg.layout, asyncio=False)  # as Datastore(sequence=...) reads it
    if source is not None:
        source.close()


def cmd_config_show(args: argparse.Namespace, out: TextIO) -> int:
    """Print a config file as hypervault reads it (passwords masked): a summary, or JSON with ``--json``.

    Refuses (exit 2) what `Datastore.from_config` would refuse, the backend and the sequence URL included."""
    cfg = load_config(args.config)
    shard_map, _ = ShardMap.from_connections(cfg.servers, layout=cfg.layout, allow_gaps=cfg.allow_gaps)
    _check_plugins(cfg)
    check_config_servers(cfg)  # each server entry as Datastore checks it (its backend's own check, no I/O)
    check_layout_now(cfg.layout, time.time_ns() // 1_000_000)  # as the Datastore's key generator checks it
    doc = config_document(cfg)
    if args.json:
        emit_json(doc, out)
        return 0
    epoch = KeyLayout(epoch_ms=cfg.layout.epoch_ms).key(0).as_dict()["created"]
    timeout = "none (waits forever)" if cfg.operation_timeout is None else f"{cfg.operation_timeout:g} s"
    settings = [
        ("config file", args.config),
        ("backend", cfg.backend),
        ("pool", f"{cfg.pool_max} connections per server, wait up to {cfg.pool_block_timeout:g} s for one"),
        ("operation timeout", timeout),
        ("key layout", f"{doc['layout']} (epoch {epoch}, {cfg.layout.epoch_ms} ms)"),
        ("sequence", doc["sequence"] or "in-process"),
        ("rows from cursor()", _ROWS[cfg.row_factory]),
    ]
    if cfg.allow_gaps:
        settings.append(("gaps in the shard map", "allowed"))
    standbys = sum(len(s.get("replicas") or ()) for s in cfg.servers)
    if standbys or cfg.read_from != "primary":
        rule = "read-your-writes" if cfg.read_your_writes else "no read-your-writes"
        settings.append(
            ("reads from", f"{cfg.read_from} ({standbys} standby(s), max lag {cfg.max_replica_lag:g} s, {rule})")
        )
    width = max(len(name) for name, _ in settings)
    for name, value in settings:
        print(f"{name:<{width}}  {value}", file=out)
    print(file=out)
    rows = [
        (index, server.get("shards", ""), len(shard_map.shards_of(index)), settings_text(server) or "(defaults)")
        for index, server in enumerate(cfg.servers)
    ]
    table(rows, ["server", "shards", "count", "connection settings (passwords masked)"], out)
    return 0
