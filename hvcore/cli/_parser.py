"""The CLI's argument parsing: every command, its flags and help; shared options come from parent parsers.

``--config``, ``--json`` and the key-layout options are each declared once, in a parent parser that the commands
using them inherit, so their spelling and help cannot drift apart between commands.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import TextIO

from hvcore.cli._cmd_citus import cmd_citus_adopt
from hvcore.cli._cmd_demo import cmd_demo
from hvcore.cli._cmd_index import cmd_index_create, cmd_index_drop, cmd_index_list
from hvcore.cli._cmd_keys import cmd_key_decode, cmd_key_new
from hvcore.cli._cmd_metrics import cmd_metrics
from hvcore.cli._cmd_migrate import cmd_migrate
from hvcore.cli._cmd_plugins import cmd_plugins
from hvcore.cli._cmd_shards import cmd_shard_export, cmd_shard_move, cmd_shard_plan
from hvcore.cli._cmd_store import cmd_config_show, cmd_init, cmd_status

__all__ = ["Command", "build_parser"]

Command = Callable[[argparse.Namespace, TextIO], int]
"""A command: ``func(args, out) -> exit code``, set as the ``func`` default of its sub-parser."""


def _seconds(text: str) -> float:
    """``--watch``'s value: a number of seconds above 0 (argparse reports anything else as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0, e.g. 2")
    return value


def _count(text: str) -> int:
    """``--count``'s value: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number above 0")
    return value


def _config_parent(*, required: bool) -> argparse.ArgumentParser:
    """``--config FILE`` (the one declaration of it); optional only for ``hv demo``."""
    parent = argparse.ArgumentParser(add_help=False)
    help_text = "TOML config file" if required else "TOML config of real servers (default: two embedded servers)"
    parent.add_argument("--config", metavar="FILE", required=required, help=help_text)
    return parent


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


def _layout_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    chosen = parent.add_mutually_exclusive_group()
    chosen.add_argument(
        "--layout", default="default", help="'default', 'hypervault' (the 2015 library's) or an epoch in Unix ms"
    )
    chosen.add_argument("--epoch", type=int, help="the layout's epoch in Unix ms (the same as --layout EPOCH)")
    return parent


def _version_text() -> str:
    from hvcore import __version__
    from hvcore._keymaker import ACCELERATED

    keys = "keys made by the C accelerator" if ACCELERATED else "keys made in pure Python, without the C accelerator"
    return f"hypervault {__version__} ({keys})"


def build_parser() -> argparse.ArgumentParser:
    """The ``hv`` argument parser: each leaf sub-parser sets ``func`` to its `Command`."""
    parser = argparse.ArgumentParser(prog="hv", description="hypervault: sharded PostgreSQL with client-side keys")
    parser.add_argument("--version", action="version", version=_version_text())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config, demo_config, json_out, layout = (
        _config_parent(required=True),
        _config_parent(required=False),
        _json_parent(),
        _layout_parent(),
    )

    def add(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        func: Command,
        help_text: str,
        parents: Sequence[argparse.ArgumentParser] = (),
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help_text, description=description or help_text, parents=list(parents))
        p.set_defaults(func=func)
        return p

    key = sub.add_parser("key", help="make and decode keys", description="Make and decode 64-bit keys.")
    key_sub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    decode = add(
        key_sub, "decode", cmd_key_decode, "decode ids into created, shard_id and added_id", [json_out, layout]
    )
    decode.add_argument("ids", nargs="+", metavar="ID", help="decimal id(s)")
    new = add(key_sub, "new", cmd_key_new, "print new ids, one per line", [json_out, layout])
    new.add_argument("--shard", type=int, required=True, help="shard id (0..8191)")
    new.add_argument("--count", type=_count, default=1, help="how many ids (default 1)")
    new.add_argument("--sequence", help="shared sequence URL, e.g. redis://127.0.0.1:6379/0")

    demo = add(
        sub,
        "demo",
        cmd_demo,
        "run the main job: provision, write and read on two servers",
        [json_out, demo_config],
        "Provision shards on two servers, write entities one by one and in batches, read them back, query them, "
        "and show where they went and how fast. Without --config the servers are embedded PostgreSQL servers "
        "(pip install 'hypervault[embedded]'), started and deleted by the demo; with --config the rows it writes "
        "into your servers carry a run mark and are deleted again at the end (unless --keep).",
    )
    demo.add_argument(
        "--backend", choices=["embedded", "memory"], help="the demo's own servers (default embedded); not with --config"
    )
    demo.add_argument("--rows", type=_count, default=3000, help="entities to write (default 3000)")
    demo.add_argument(
        "--keep",
        action="store_true",
        help="with --config: keep the demo's rows (by default they are deleted at the end)",
    )

    add(
        sub,
        "init",
        cmd_init,
        "create extensions, schemas, tables and indexes for every shard (idempotent)",
        [json_out, config],
    )
    status_cmd = add(
        sub,
        "status",
        cmd_status,
        "servers, shards, pools and rows",
        [json_out, config],
        "Show each server of a config: reachable or not, its shards (where they are now, after moves), how many are "
        "provisioned, rows, and pool use; read replicas with their state and lag. Exits 1 when a server is "
        "unreachable (0 with --json). --watch N shows it again every N seconds. Rows are counted exactly (a scan of "
        "every shard table) once, and estimated from the server's statistics (no table read) with --watch or "
        "--estimate.",
    )
    status_cmd.add_argument("--watch", type=_seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    status_cmd.add_argument("--count", type=_count, metavar="N", help="with --watch: stop after N refreshes")
    rows_mode = status_cmd.add_mutually_exclusive_group()
    rows_mode.add_argument(
        "--estimate",
        dest="rows",
        action="store_const",
        const="estimated",
        help="rows from the server's statistics: no shard table is read (the default with --watch)",
    )
    rows_mode.add_argument(
        "--exact",
        dest="rows",
        action="store_const",
        const="exact",
        help="count every shard's rows, also with --watch (a scan of every shard table each round)",
    )
    metrics_cmd = add(
        sub,
        "metrics",
        cmd_metrics,
        "an application's hypervault metrics, read from its Prometheus endpoint",
        [json_out],
        'Read an application\'s Prometheus endpoint (OpenTelemetry SDK + Prometheus exporter, README "Metrics") and '
        "print hypervault's figures: operation counts and durations per operation and server, pool use "
        "(used/idle/max/pending, timeouts, mean wait), and hypervault's counters (key collisions, ShardMoved "
        "refusals followed, replica fall-backs, moves). --watch N refreshes every N seconds.",
    )
    metrics_cmd.add_argument("url", metavar="URL", help="the endpoint, e.g. http://127.0.0.1:9464/metrics")
    metrics_cmd.add_argument("--watch", type=_seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    metrics_cmd.add_argument("--count", type=_count, metavar="N", help="with --watch: stop after N refreshes")
    add(
        sub,
        "config",
        cmd_config_show,
        "show a config file as read (passwords masked)",
        [json_out, config],
        "Show a config file as hypervault reads it: options with their defaults filled in, and each server's shards "
        "and connection settings, passwords masked. --json for the same as data.",
    )
    add(
        sub,
        "plugins",
        cmd_plugins,
        "installed backends, sequence sources and plugins that failed to load",
        [json_out],
        "List the backends and sequence sources the installed plugins register, which plugin provides the demo's "
        "servers, and every plugin that failed to load with the reason (a missing extra, a misspelled hook). "
        "Exits 1 when a plugin failed.",
    )

    shard = sub.add_parser(
        "shard",
        help="move shards between servers, plan moves, export the map",
        description="Move shards between servers while writes continue, plan moves, export the shard map.",
    )
    shard_sub = shard.add_subparsers(dest="shard_command", required=True, metavar="ACTION")
    move = add(
        shard_sub,
        "move",
        cmd_shard_move,
        "move one shard to another server while writes continue",
        [json_out, config],
        "Move one shard to another server online: copy while writes continue, catch up, fence writes to that shard "
        "for a short pause, verify row counts and checksums on both servers, switch. Resume or roll back an "
        "interrupted move with --resume or --rollback.",
    )
    move.add_argument("shard", type=int, help="the shard id")
    move.add_argument("--to", help="target server: index in the config (0-based) or host:port/dbname")
    move.add_argument("--drop-source", action="store_true", help="drop the old rows once the move is switched")
    how = move.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="resume an interrupted move (target from its record)")
    how.add_argument("--rollback", action="store_true", help="undo an interrupted move; the shard stays put")
    plan = add(
        shard_sub,
        "plan",
        cmd_shard_plan,
        "suggest moves that balance rows over N servers",
        [json_out, config],
        "Count the rows of every shard (every server must be reachable) and suggest the fewest shard moves that "
        "balance rows over N servers; N may exceed the servers in the config (add the new ones before moving). "
        "Prints the hv shard move commands to run; nothing is moved.",
    )
    plan.add_argument("--servers", type=_count, required=True, help="how many servers to balance over")
    export = add(
        shard_sub,
        "export",
        cmd_shard_export,
        "print the shard map for Citus, PgDog or as JSON",
        [config],
        "Print where every shard lives now (after moves), as SQL for Citus schema-based sharding (citus_add_node, "
        "citus_schema_distribute, citus_schema_move), as pgdog.toml sections, or as JSON. Each server's host, "
        "port and dbname are read as libpq reads them (separate keys, a conninfo string or URL); never a password.",
    )
    export.add_argument("--format", choices=["citus", "pgdog", "json"], default="json", help="output format")

    citus = sub.add_parser(
        "citus",
        help="hand the shards over to Citus schema-based sharding",
        description="Outgrow client-side sharding: the shard schemas become Citus distributed schemas.",
    )
    citus_sub = citus.add_subparsers(dest="citus_command", required=True, metavar="ACTION")
    adopt = add(
        citus_sub,
        "adopt",
        cmd_citus_adopt,
        "hand every shard to a Citus coordinator, each staying on the server that holds it (no rows copied)",
        [json_out, config],
        "Hand every shard of the config over to a Citus coordinator (Citus 12.0-13.x): the config's servers "
        "become (or already are) its workers, each shard schema becomes a distributed schema on the server "
        "that holds its rows, without copying them, verified through the coordinator (row count and checksum). "
        "The servers must preload Citus and have CREATE EXTENSION citus in their database; servers not yet worker "
        "nodes are added. Writes to a shard are refused (NotProvisioned) while it is handed over. Resumable: run "
        "it again after an interruption. Prints the new config (one server: the coordinator) as TOML, the report "
        "as comments, so that the output can be saved as the new config file.",
    )
    adopt.add_argument(
        "--coordinator", required=True, metavar="DSN", help="the coordinator's connection string (conninfo or URL)"
    )
    adopt.add_argument("--batch", type=_count, default=64, help="shards handed over together (default 64)")
    _add_schema_commands(sub, add, config, json_out)
    return parser


def _add_schema_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add: Callable[..., argparse.ArgumentParser],
    config: argparse.ArgumentParser,
    json_out: argparse.ArgumentParser,
) -> None:
    """``hv index create|drop|list`` and ``hv migrate``."""
    from hvcore._schemadefs import INDEX_TYPES

    index = sub.add_parser(
        "index",
        help="secondary indexes on body fields",
        description="Index a body field of one kind (or whole bodies: --body) in every shard of every server, drop or "
        "list such indexes.",
    )
    index_sub = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    create = add(
        index_sub,
        "create",
        cmd_index_create,
        "index a body field of one kind in every shard (online, resumable)",
        [json_out, config],
        "Build a partial expression index (WHERE kind = K) on the body field in every shard of every server, with "
        "CREATE INDEX CONCURRENTLY one shard at a time (writes go on). The definition is recorded on every server "
        "first, so shards provisioned or moved later get it. Run it again after an interruption: valid indexes are "
        "kept, INVALID ones (an interrupted build) rebuilt. query(kind=K, where={F: {'>=': a}}) then uses it. "
        "With --body instead of --kind/--field: the body index (GIN over whole bodies, every kind), which equality "
        "where filters use; shards have none unless it is built (every write then pays for it).",
    )
    create.add_argument("--kind", type=int, help="the kind (0..32767)")
    create.add_argument("--field", help="the top-level body field")
    create.add_argument("--type", choices=INDEX_TYPES, default="text", help="how values compare (default text)")
    create.add_argument("--unique", action="store_true", help="unique among the kind's records of each shard")
    create.add_argument(
        "--body", action="store_true", help="the body index, for equality where filters (not with --kind/--field)"
    )
    drop = add(
        index_sub,
        "drop",
        cmd_index_drop,
        "drop a secondary index from every shard (online, resumable)",
        [json_out, config],
    )
    drop.add_argument("--kind", type=int, help="the kind (0..32767)")
    drop.add_argument("--field", help="the indexed body field")
    drop.add_argument("--body", action="store_true", help="the body index (not with --kind/--field)")
    add(
        index_sub,
        "list",
        cmd_index_list,
        "recorded indexes and the shards that have them",
        [json_out, config],
        "List the recorded secondary indexes with the shards that have each one valid, INVALID (an interrupted "
        "build) or not at all. Exits 1 when an index is not complete (0 with --json).",
    )
    migrate = add(
        sub,
        "migrate",
        cmd_migrate,
        "apply numbered SQL migration files to every shard",
        [json_out, config],
        "Apply the files NNNN_name.sql of DIR, in version order, to every shard of every server that lacks them: "
        "each file in its own transaction per shard, with the shard's schema first on the search path, recorded in "
        "that shard's version table. Idempotent and resumable; --dry-run shows what would run; --status shows the "
        "versions and the shards behind (exit 1 when some are, 0 with --json).",
    )
    migrate.add_argument("directory", nargs="?", metavar="DIR", help="the migrations directory")
    migrate.add_argument("--dry-run", action="store_true", help="show what would run; change nothing")
    migrate.add_argument("--status", action="store_true", help="show versions and the shards behind")
    migrate.add_argument(
        "--wait", type=float, default=0.0, help="seconds to wait for another migrator to finish (default 0: refuse)"
    )
