"""``hv demo``: the main job on two servers (embedded ones from a plugin, in-memory, or a config's real ones)."""

from __future__ import annotations

import argparse
import contextlib
import random
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from hvcore._config import load_config
from hvcore._datastore import Datastore
from hvcore._key import Key
from hvcore._plugins import PluginRegistry, default_registry, install_hint
from hvcore.cli._output import Progress, emit_json, table
from hvcore.errors import ConfigError, PluginError

__all__ = ["DEMO_SERVERS", "SHARDS_PER_SERVER", "cmd_demo", "demo_setup"]

DEMO_SERVERS = 2
SHARDS_PER_SERVER = 16


def _with_shards(settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(s, shards=f"{i * SHARDS_PER_SERVER}-{(i + 1) * SHARDS_PER_SERVER}") for i, s in enumerate(settings)]


@contextlib.contextmanager
def demo_setup(args: argparse.Namespace, registry: PluginRegistry) -> Iterator[tuple[list[dict[str, Any]], str, str]]:
    """Yield (connection dicts with shards, backend name, description) for the demo; stop what it started after.

    ``--config``: the config's servers; ``--backend memory``: two in-memory servers; otherwise the servers of the
    first plugin implementing `hypervault_demo_servers` (the PostgreSQL backend's embedded pgserver), or a
    `PluginError` saying which extra to install.
    """
    if args.config:
        if args.backend is not None:
            raise ConfigError(
                f"hv demo: --backend {args.backend} picks the demo's own servers; with --config the file's servers "
                "and backend are used: give one of the two"
            )
        cfg = load_config(args.config)
        yield [dict(s) for s in cfg.servers], cfg.backend, f"servers from {args.config}"
        return
    if args.backend == "memory":
        servers = [dict(name=f"demo-{chr(ord('a') + i)}") for i in range(DEMO_SERVERS)]
        yield _with_shards(servers), "memory", "in-memory backend"
        return
    provider = registry.demo_servers(DEMO_SERVERS)
    if provider is None:
        raise PluginError(
            f"hv demo runs on embedded PostgreSQL servers: {install_hint('embedded')} "
            f"(or: hv demo --backend memory; hv demo --config FILE for your own servers){registry.broken_note()}"
        )
    print(f"starting {DEMO_SERVERS} demo servers (initdb and start of each: seconds to a minute)…", file=sys.stderr)
    started = time.perf_counter()
    with provider as demo:
        print(f"demo servers up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        yield _with_shards([dict(s) for s in demo.settings]), demo.backend, demo.description


def _delete_after_interruption(store: Datastore, mark: dict[str, str]) -> None:
    """Delete an interrupted demo's rows from the configured servers (each holds the run's ``mark``); if that is
    interrupted or fails too, say how to delete them later."""
    print(f"hv demo: stopped: deleting the rows it wrote (hv_demo={mark['hv_demo']!r})…", file=sys.stderr)
    try:
        removed = store.delete_where(where=mark)
    except BaseException:
        print(
            f"hv demo: rows marked hv_demo={mark['hv_demo']!r} are left in the configured servers: delete them with "
            f"Datastore.from_config(...).delete_where(where={mark!r})",
            file=sys.stderr,
        )
        raise
    print(f"hv demo: {removed:,} rows deleted", file=sys.stderr)


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Provision shards on two servers, write and read entities one by one and in batches, show where they went."""
    rng = random.Random(42)
    cities = ["Oslo", "Lima", "Pune"]
    with (
        demo_setup(args, default_registry()) as (conns, backend, description),
        Datastore(conns, backend=backend) as store,
    ):
        shard_ids = store.shard_map.shard_ids
        if not args.json:
            print(f"provisioning {len(shard_ids)} shards…", file=sys.stderr)
        t0 = time.perf_counter()
        store.provision()
        provision_s = time.perf_counter() - t0
        # On a config's real servers the demo's rows carry a run mark and are deleted at the end (--keep keeps them):
        # only rows holding this run's mark are ever deleted, whatever else the databases hold.
        mark: dict[str, str] = {"hv_demo": secrets.token_hex(8)} if args.config else {}
        try:
            singles = args.rows // 2
            progress = Progress("put", singles, enabled=None if not args.json else False)
            keys: list[Key] = []
            t0 = time.perf_counter()
            for i in range(singles):
                keys.append(store.put(rng.choice(shard_ids), i % 3, user=f"user{i}", city=rng.choice(cities), **mark))
                progress.advance()
            put_s = time.perf_counter() - t0
            progress.close()
            batches: dict[int, list[dict[str, str]]] = {}
            for i in range(singles, args.rows):
                batches.setdefault(rng.choice(shard_ids), []).append(
                    {"user": f"user{i}", "city": rng.choice(cities), **mark}
                )
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
            oslo_first = [r.key.as_dict() for r in store.query(where={"city": "Oslo", **mark}, limit=3)]
            status = store.status()
            removed = store.delete_where(where=mark) if mark and not args.keep else 0
        except BaseException:  # Ctrl-C or a failure half-way: the rows written so far go too, as promised
            if mark and not args.keep:
                _delete_after_interruption(store, mark)
            raise
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
        "demo_rows_deleted": removed,
    }
    if args.json:
        emit_json(result, out)
        return 0 if ok else 1
    _print_demo(result, len(shard_ids), provision_s, singles, batched, out)
    if mark:
        print(
            f"the demo's {removed:,} rows were deleted again (they held hv_demo={mark['hv_demo']!r})"
            if not args.keep
            else f"the demo's rows were kept: delete them with delete_where(where={mark!r})",
            file=out,
        )
    return 0 if ok else 1


def _print_demo(
    result: dict[str, Any], shards: int, provision_s: float, singles: int, batched: int, out: TextIO
) -> None:
    print(f"hypervault demo: {result['setup']}\n", file=out)
    table([(s["server"], s["shards"], f"{s['rows']:,}") for s in result["servers"]], ["server", "shards", "rows"], out)
    print("\nkeys decode to their time, shard and sequence:", file=out)
    table(
        [(d["id"], d["created"], d["shard_id"], d["added_id"]) for d in result["sample_keys"]],
        ["id", "created (UTC)", "shard_id", "added_id"],
        out,
    )
    print(f"\nprovisioned {shards} shards in {provision_s:.2f} s; throughput on this machine:", file=out)
    written = result["written"]
    table(
        [
            ("put (one entity)", f"{singles:,}", f"{result['puts_per_second'] or 0:,}/s"),
            ("put_many (a batch per shard)", f"{batched:,}", f"{result['put_many_rows_per_second'] or 0:,}/s"),
            ("get (one key)", f"{singles:,}", f"{result['gets_per_second'] or 0:,}/s"),
            ("get_many (one trip per server)", f"{written:,}", f"{result['get_many_keys_per_second'] or 0:,}/s"),
        ],
        ["operation", "entities", "rate"],
        out,
    )
    print(
        f"\nread back {result['read_back']:,} of {written:,}; first entities in Oslo (query, key order): "
        + ", ".join(d["id"] for d in result["first_three_in_oslo"]),
        file=out,
    )
