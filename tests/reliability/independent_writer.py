"""One independent writer process (started with subprocess by test_write_outcomes.py): puts and put_many on one shard.

Usage: ``python independent_writer.py SETTINGS_JSON WRITER PUTS BATCHES BATCH_SIZE START_AT_NS OUT_PATH [--async]``.
Default configuration (jsonb, no sequence, no worker). Every body is ``{"w": WRITER, "n": i}``; the acknowledged
keys (one ``key n`` line each) go to OUT_PATH, failures are counted; a JSON summary goes to stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import hvcore

SHARD = 3


def _plan(puts: int, batches: int) -> list[int]:
    """Where the batches fall among the puts: evenly spread."""
    step = max(puts // max(batches, 1), 1)
    return [step * (i + 1) - 1 for i in range(batches)]


def run_sync(settings: dict[str, Any], writer: int, puts: int, batches: int, size: int, out: list[str]) -> int:
    """The sync writer: ``puts`` puts with ``batches`` put_many of ``size`` spread among them; failures."""
    failed = 0
    at = set(_plan(puts, batches))
    with hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb") as db:
        n = 0
        for i in range(puts):
            try:
                out.append(f"{int(db.put(SHARD, 1, w=writer, n=n))} {n}")
            except hvcore.HypervaultError as exc:
                failed += 1
                print(f"put failed: {exc!r}", file=sys.stderr)
            n += 1
            if i in at:
                bodies = [{"w": writer, "n": n + j} for j in range(size)]
                try:
                    keys = db.put_many(SHARD, 1, bodies)
                except hvcore.HypervaultError as exc:
                    failed += 1
                    print(f"put_many failed: {exc!r}", file=sys.stderr)
                else:
                    out.extend(f"{int(k)} {n + j}" for j, k in enumerate(keys))
                n += size
        out.append(f"# collisions {db.key_collisions}")
    return failed


async def run_async(settings: dict[str, Any], writer: int, puts: int, batches: int, size: int, out: list[str]) -> int:
    """The same on `AsyncDatastore`, four tasks at a time."""
    failed = 0
    at = set(_plan(puts, batches))
    async with hvcore.AsyncDatastore([dict(shards="0-16", **settings)], backend="jsonb") as db:

        async def put(n: int) -> None:
            nonlocal failed
            try:
                out.append(f"{int(await db.put(SHARD, 1, w=writer, n=n))} {n}")
            except hvcore.HypervaultError as exc:
                failed += 1
                print(f"put failed: {exc!r}", file=sys.stderr)

        n = 0
        for i in range(0, puts, 4):
            await asyncio.gather(*(put(n + j) for j in range(min(4, puts - i))))
            n += min(4, puts - i)
            if any(i <= p < i + 4 for p in at):
                bodies = [{"w": writer, "n": n + j} for j in range(size)]
                try:
                    keys = await db.put_many(SHARD, 1, bodies)
                except hvcore.HypervaultError as exc:
                    failed += 1
                    print(f"put_many failed: {exc!r}", file=sys.stderr)
                else:
                    out.extend(f"{int(k)} {n + j}" for j, k in enumerate(keys))
                n += size
        out.append(f"# collisions {db.key_collisions}")
    return failed


def main(argv: list[str]) -> int:
    """Wait for the common start, write, report."""
    settings = json.loads(argv[0])
    writer, puts, batches, size, start_at = (int(x) for x in argv[1:6])
    path = argv[6]
    use_async = "--async" in argv
    out: list[str] = []
    while time.time_ns() < start_at:
        time.sleep(0.0005)
    started = time.perf_counter()
    if use_async:
        failed = asyncio.run(run_async(settings, writer, puts, batches, size, out))
    else:
        failed = run_sync(settings, writer, puts, batches, size, out)
    seconds = time.perf_counter() - started
    with open(path, "w") as handle:
        handle.write("\n".join(out) + "\n")
    print(json.dumps({"writer": writer, "failed": failed, "acknowledged": len(out) - 1, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
