"""``hv citus adopt``: hand a config's shards over to a Citus coordinator without copying; its part of ``hv status``."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from hvcore._config import DatastoreConfig, load_config, redact_conninfo
from hvcore._datastore import Datastore
from hvcore._distributed import adopt_shards
from hvcore._key import KeyLayout
from hvcore._shardmap import format_ranges
from hvcore.cli._output import Progress, emit_json, table
from hvcore.errors import ConfigError

__all__ = ["cmd_citus_adopt", "coordinator_config", "print_cluster_status"]


def _coordinator_store(cfg: DatastoreConfig, dsn: str, shards: str) -> Datastore:
    return Datastore(
        [{"shards": shards, "conninfo": dsn}],
        pool_max=2,
        pool_block_timeout=cfg.pool_block_timeout,
        backend=cfg.backend,
        layout=cfg.layout,
        allow_gaps=cfg.allow_gaps,
        operation_timeout=cfg.operation_timeout,
        worker=None,  # adoption makes no keys: no worker number leased
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


def coordinator_config(cfg: DatastoreConfig, dsn: str, shards: str) -> str:
    """The config after adoption, as TOML: the same options, one server (the coordinator) owning ``shards``.

    Passwords in ``dsn`` are masked (``***``): put the real one back, or use a ``~/.pgpass`` file.
    """
    lines = [f"backend = {_toml(cfg.backend)}", f"pool_max = {cfg.pool_max}"]
    lines.append(f"pool_block_timeout = {_toml(cfg.pool_block_timeout)}")
    if cfg.operation_timeout is not None and cfg.operation_timeout != 60.0:
        lines.append(f"operation_timeout = {_toml(cfg.operation_timeout)}")
    if cfg.layout != KeyLayout.DEFAULT:
        lines.append(f"layout = {cfg.layout.epoch_ms}")
    if cfg.sequence:
        lines.append(f"sequence = {_toml(redact_conninfo(cfg.sequence))}")
    if cfg.allow_gaps:
        lines.append("allow_gaps = true")
    if cfg.row_factory != "dict":
        lines.append(f"row_factory = {_toml(cfg.row_factory)}")
    lines += ["", "[[servers]]", f"shards = {_toml(shards)}", f"conninfo = {_toml(redact_conninfo(dsn))}"]
    return "\n".join(lines) + "\n"


def cmd_citus_adopt(args: argparse.Namespace, out: TextIO) -> int:
    """Hand every shard of the config to the Citus coordinator: each stays on the server that holds it."""
    cfg = load_config(args.config)
    dsn = str(args.coordinator)
    if not dsn.strip():
        raise ConfigError("--coordinator needs the coordinator's connection string (conninfo or URL)")
    with Datastore.from_config(cfg, pool_max=2, worker=None) as source:
        shards = format_ranges(source.shard_map.shard_ids)
        with _coordinator_store(cfg, dsn, shards) as coordinator:
            bar = Progress("adopt", len(source.shard_map.shard_ids), enabled=None if not args.json else False)

            def progress(phase: str, done: int, total: int) -> None:
                bar.total = max(total, 1)
                bar.advance(done - bar.done)

            try:
                report = adopt_shards(source, coordinator, progress=progress, batch=args.batch)
            finally:
                bar.close()
    config = coordinator_config(cfg, dsn, shards)
    if args.json:
        emit_json({**report.as_dict(), "config": config}, out)
        return 0
    copied = "no rows copied"
    print(
        f"# adopted {report.adopted} shard(s) into {report.engine} at {report.coordinator} in {report.seconds:.2f} s "
        f"({copied}; {report.already} adopted before, {report.empty} created empty, {report.relocated} empty "
        f"placement(s) relocated, {report.merged_rows} row(s) merged; {report.rows:,} rows in {report.verified} "
        "shard(s) verified through the coordinator)",
        file=out,
    )
    for label, node in report.nodes.items():
        print(f"#   {label} is worker node {node}", file=out)
    for note in report.notes:
        print(f"#   {note}", file=out)
    phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in report.phases.items())
    print(f"#   phases: {phases}", file=out)
    print("# The shards live in Citus now. Point every process at the coordinator with this config", file=out)
    print("# (keys do not change; hv shard move N --to HOST:PORT moves a shard between workers):", file=out)
    print(file=out)
    out.write(config)
    return 0


def print_cluster_status(entries: list[dict[str, Any]], out: TextIO) -> None:
    """Below ``hv status``'s table: per server fronting a cluster, the shards and bytes on each node."""
    for entry in entries:
        print(file=out)
        if entry.get("error"):
            print(f"distributed databases: {entry['error']}", file=out)
            continue
        print(f"{entry['server']} is a {entry['engine']} coordinator; its shards live on these nodes:", file=out)
        rows = [(n["node"], n["shard_count"], n["shards"] or "-", f"{n['bytes']:,}") for n in entry["nodes"]]
        table(rows, ["node", "shards", "shard ids", "bytes"], out)
        if entry.get("not_distributed"):
            print(f"  not distributed (run hv init): {entry['not_distributed']}", file=out)
