"""``hv migrate``: apply numbered SQL files to every shard, show what would run, or which shards are behind."""

from __future__ import annotations

import argparse
from typing import TextIO

from hvcore._shardmap import format_ranges
from hvcore.cli._cmd_index import step_progress
from hvcore.cli._cmd_store import open_from_config
from hvcore.cli._output import emit_json, table
from hvcore.errors import MigrationError

__all__ = ["cmd_migrate"]


def cmd_migrate(args: argparse.Namespace, out: TextIO) -> int:
    """Run, dry-run (``--dry-run``) or show (``--status``) the migrations of a directory over every shard."""
    if args.status:
        return _status(args, out)
    if args.directory is None:
        raise MigrationError("give the migrations directory: hv migrate --config FILE DIR")
    with open_from_config(args.config) as store, step_progress(not args.json and not args.dry_run) as progress:
        report = store.migrate(args.directory, dry_run=args.dry_run, progress=progress, wait=args.wait)
    if args.json:
        emit_json(report.as_dict(), out)
        return 0
    if args.dry_run:
        for run in report.runs:
            how = (
                "in one transaction per shard" if run.transactional else "outside a transaction, statement by statement"
            )
            print(f"{run.name}: {run.applied} shard(s) to apply, {run.already} already have it; runs {how}:", file=out)
            for statement in run.statements:
                print(f"    {' '.join(statement.split())};", file=out)
        print(f"dry run: {report.applied} shard transaction(s) would run over {report.shards} shards", file=out)
        return 0
    rows = [(run.version, run.name, run.applied, run.already, f"{run.seconds:.2f}") for run in report.runs]
    table(rows, ["version", "file", "applied", "already", "seconds"], out)
    print(
        f"{report.applied} shard migration(s) applied over {report.shards} shards in {report.seconds:.2f} s", file=out
    )
    return 0


def _status(args: argparse.Namespace, out: TextIO) -> int:
    with open_from_config(args.config) as store:
        status = store.migration_status(args.directory)
    if args.json:
        emit_json(status.as_dict(), out)
        return 0
    if not status.versions:
        print(f"no migrations recorded ({status.shards} shards)", file=out)
        return 0
    rows = [
        (v.version, v.name, "yes" if v.recorded else "no", v.applied, len(v.behind), format_ranges(v.behind) or "-")
        for v in status.versions
    ]
    table(rows, ["version", "file", "recorded", "applied", "behind", "shards behind"], out)
    behind = status.shards_behind
    print(
        f"{status.shards - len(behind)} of {status.shards} shards up to date"
        + (f"; behind: {format_ranges(behind)} (run hv migrate --config FILE DIR)" if behind else ""),
        file=out,
    )
    return 1 if behind else 0
