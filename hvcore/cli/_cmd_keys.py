"""``hv key decode`` and ``hv key new``: decode ids, make ids (optionally from a shared sequence)."""

from __future__ import annotations

import argparse
from typing import TextIO

from hvcore._config import parse_layout
from hvcore._generator import KeyGenerator
from hvcore._key import Key, KeyLayout
from hvcore._plugins import default_registry
from hvcore._sequence import SequenceSource
from hvcore.cli._output import emit_json, table
from hvcore.errors import PluginError

__all__ = ["cmd_key_decode", "cmd_key_new", "layout_from_args"]


def layout_from_args(args: argparse.Namespace) -> KeyLayout:
    """The layout chosen by ``--layout`` (a name or an epoch in Unix ms) or ``--epoch`` (one of the two)."""
    if getattr(args, "epoch", None) is not None:
        return KeyLayout(epoch_ms=args.epoch)
    layout: str = args.layout
    return parse_layout(int(layout) if layout.isdigit() else layout)


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
    """Print new ids, one per line (or as JSON)."""
    layout = layout_from_args(args)
    source: SequenceSource | None = None
    if args.sequence:
        made = default_registry().sequence(args.sequence.split("://", 1)[0])(args.sequence, layout=layout)
        if not isinstance(made, SequenceSource):
            raise PluginError(
                f"the sequence source for {args.sequence.split('://', 1)[0]!r} URLs is not a SequenceSource"
            )
        source = made
    generator = KeyGenerator(layout, sequence=source)
    try:
        keys: list[Key] = []  # kept for --json only: text is written batch by batch (a pipe sees ids at once)
        remaining = args.count
        while remaining:
            batch = generator.next_keys(args.shard, min(remaining, layout.sequence_size))
            if args.json:
                keys.extend(batch)
            else:
                out.write("".join(f"{k}\n" for k in batch))
            remaining -= len(batch)
    finally:
        if source is not None:
            source.close()
    if args.json:
        emit_json([k.as_dict() for k in keys], out)
    return 0
