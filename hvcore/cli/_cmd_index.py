"""``hv index create|drop|list``: secondary indexes on body fields, in every shard of every server."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from hvcore._schemadefs import IndexReport
from hvcore._shardmap import format_ranges
from hvcore.cli._cmd_store import open_from_config
from hvcore.cli._output import Progress, emit_json, table

__all__ = ["cmd_index_create", "cmd_index_drop", "cmd_index_list", "step_progress"]


@contextmanager
def step_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(label, done, total)`` callback drawing one stderr bar per step (an index, a migration file)."""
    bars: dict[str, Progress] = {}

    def progress(label: str, done: int, total: int) -> None:
        bar = bars.get(label)
        if bar is None:
            for previous in bars.values():
                previous.close()
            bars.clear()
            bar = bars[label] = Progress(label, total, enabled=None if enabled else False)
        bar.total = max(total, 1)
        bar.advance(done - bar.done)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def _describe(report: IndexReport) -> str:
    spec = report.index
    unique = ", unique in each shard" if spec.unique else ""
    return f"index {spec.name} (kind {spec.kind}, field {spec.field!r}, {spec.type}{unique})"


def cmd_index_create(args: argparse.Namespace, out: TextIO) -> int:
    """Build a secondary index in every shard (online, resumable), then report what was done."""
    with open_from_config(args.config) as store, step_progress(not args.json) as progress:
        report = store.create_index(args.kind, args.field, type=args.type, unique=args.unique, progress=progress)
    if args.json:
        emit_json(report.as_dict(), out)
        return 0
    print(
        f"{_describe(report)}: {report.shards} shards, {report.built} built, {report.rebuilt} rebuilt, "
        f"{report.present} already there, in {report.seconds:.2f} s",
        file=out,
    )
    for note in report.notes:
        print(f"  {note}", file=out)
    return 0


def cmd_index_drop(args: argparse.Namespace, out: TextIO) -> int:
    """Drop a secondary index from every shard (online, resumable) and forget its definition."""
    with open_from_config(args.config) as store, step_progress(not args.json) as progress:
        report = store.drop_index(args.kind, args.field, progress=progress)
    if args.json:
        emit_json(report.as_dict(), out)
        return 0
    print(f"dropped {_describe(report)} from {report.dropped} shards in {report.seconds:.2f} s", file=out)
    return 0


def cmd_index_list(args: argparse.Namespace, out: TextIO) -> int:
    """List the recorded indexes and the shards that have each (valid, INVALID, missing); exit 1 if one is not
    everywhere (0 with --json)."""
    with open_from_config(args.config) as store:
        infos = store.list_indexes()
    if args.json:
        emit_json([info.as_dict() for info in infos], out)
        return 0
    if not infos:
        print("no secondary indexes recorded", file=out)
        return 0
    rows = [
        (
            info.index.name,
            info.index.kind,
            info.index.field,
            info.index.type + (" unique" if info.index.unique else ""),
            info.index.state,
            info.valid,
            format_ranges(info.invalid) or "-",
            format_ranges(info.missing) or "-",
        )
        for info in infos
    ]
    table(rows, ["name", "kind", "field", "type", "state", "valid", "invalid", "missing"], out)
    incomplete = [info for info in infos if info.invalid or info.missing or info.index.state != "active"]
    for info in incomplete:
        print(
            f"  {info.index.name} is not complete: run hv index "
            f"{'drop' if info.index.state == 'dropping' else 'create'} --kind {info.index.kind} "
            f"--field {info.index.field!r} again",
            file=out,
        )
    return 1 if incomplete else 0
