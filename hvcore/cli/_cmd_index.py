"""``hv index create|drop|list``: secondary indexes on body fields (and the body index), in every shard of every
server."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from hvcore._schemadefs import IndexReport
from hvcore._shardmap import format_ranges
from hvcore.cli._cmd_store import open_from_config
from hvcore.cli._output import Progress, emit_json, table
from hvcore.errors import InvalidArgument

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
    if spec.is_body:
        return f"the body index {spec.name} (GIN over whole bodies, every kind)"
    unique = ", unique in each shard" if spec.unique else ""
    return f"index {spec.name} (kind {spec.kind}, field {spec.field!r}, {spec.type}{unique})"


def _which(args: argparse.Namespace, action: str) -> bool:
    """True for ``--body``; `InvalidArgument` unless exactly one of ``--body`` and ``--kind`` with ``--field``."""
    named = args.kind is not None or args.field is not None
    if args.body and (named or getattr(args, "unique", False) or getattr(args, "type", "text") != "text"):
        raise InvalidArgument(
            f"hv index {action} --body takes no --kind, --field, --type or --unique: the body index covers every "
            "kind and field"
        )
    if not args.body and (args.kind is None or args.field is None):
        raise InvalidArgument(f"hv index {action} needs --kind K and --field F (or --body for the body index)")
    return bool(args.body)


def cmd_index_create(args: argparse.Namespace, out: TextIO) -> int:
    """Build a secondary index (or the body index: ``--body``) in every shard (online, resumable), then report what
    was done."""
    body = _which(args, "create")
    with open_from_config(args.config) as store, step_progress(not args.json) as progress:
        if body:
            report = store.create_body_index(progress=progress)
        else:
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
    """Drop a secondary index (or the body index: ``--body``) from every shard (online, resumable) and forget its
    definition."""
    body = _which(args, "drop")
    with open_from_config(args.config) as store, step_progress(not args.json) as progress:
        if body:
            report = store.drop_body_index(progress=progress)
        else:
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
            "*" if info.index.kind is None else info.index.kind,
            "*" if info.index.field is None else info.index.field,
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
        which = "--body" if info.index.is_body else f"--kind {info.index.kind} --field {info.index.field!r}"
        print(
            f"  {info.index.name} is not complete: run hv index "
            f"{'drop' if info.index.state == 'dropping' else 'create'} {which} again",
            file=out,
        )
    return 1 if incomplete else 0
