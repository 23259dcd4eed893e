"""``hv plugins``: the installed backends, sequence sources and demo-server providers, and plugins that failed."""

from __future__ import annotations

import argparse
from typing import TextIO

from hvcore._plugins import default_registry
from hvcore.cli._output import emit_json, table

__all__ = ["cmd_plugins"]


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    """List what the installed plugins provide; exit 1 if a plugin failed to load (each named, with why)."""
    info = default_registry().describe()
    code = 1 if info["broken"] else 0
    if args.json:
        emit_json(info, out)
        return code
    table(
        [(b["name"], b["plugin"], "yes" if b["asyncio"] else "no") for b in info["backends"]],
        ["backend", "plugin", "asyncio"],
        out,
    )
    print(file=out)
    if info["sequences"]:
        table([(s["scheme"] + "://", s["plugin"]) for s in info["sequences"]], ["sequence URLs", "plugin"], out)
    else:
        print("sequence sources: none (pip install 'hypervault[redis]' for redis://)", file=out)
    print(f"\ndemo servers (hv demo): {', '.join(info['demo_servers']) or 'none'}", file=out)
    if info["broken"]:
        print("\nplugins that failed to load:", file=out)
        for name, why in info["broken"].items():
            print(f"  {name}: {why}", file=out)
    return code
