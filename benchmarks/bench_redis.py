"""Benchmark of the Redis sequence source: one process and four processes on one shard, against the layout's
ceiling (1,024,000 ids/s per shard) and against one ``INCR`` per id measured in the same run.

Usage: ``python benchmarks/bench_redis.py [--quick] [--json PATH] [--url redis://127.0.0.1:6379/0]``.
Ids come from ``KeyGenerator(sequence=RedisSequence(...))`` when the generator draws from its sequence source,
otherwise from a reserve-level loop doing a generator's work (reserve a block for the current millisecond,
compose the ids, wait for the next millisecond when the block comes back empty); the output says which.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from hvcore._key import KeyLayout
from hvplugin_redis import RedisSequence

LAYOUT = KeyLayout.DEFAULT
CEILING = LAYOUT.sequence_size * 1000  # ids per second per shard
SHARD = 11
TARGETS = {"single_pct_ceiling": 90.0, "ratio_vs_incr": 90.0, "four_pct_ceiling": 70.0}
DEFAULT_URL = os.environ.get("HV_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def generator_draws_from_sequence() -> bool:
    """True once `KeyGenerator` asks its sequence source for blocks (the fast generator has landed)."""
    try:
        from hvcore._generator import KeyGenerator
    except Exception:
        return False

    class Spy:
        calls = 0

        def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
            Spy.calls += 1
            return range(LAYOUT.sequence_size)

        def after_fork_in_child(self) -> None:
            pass

        def close(self) -> None:
            pass

    try:
        gen = KeyGenerator(LAYOUT, sequence=Spy())  # type: ignore[arg-type, unused-ignore]
        gen.next_keys(0, 10)
    except Exception:
        return False
    return Spy.calls > 0


def _ids_from_reserve(seq: RedisSequence, shard: int, deadline: float) -> array.array[int]:
    """A generator's work on the source, until ``deadline`` (time.monotonic)."""
    out: array.array[int] = array.array("q")
    shard_bits = shard << LAYOUT.shard_shift
    shift, epoch = LAYOUT.time_shift, LAYOUT.epoch_ms
    while time.monotonic() < deadline:
        t = _now_ms() - epoch
        block = seq.reserve(shard, t, LAYOUT.sequence_size)
        if block:
            base = (t << shift) | shard_bits
            out.extend([base | s for s in block])
        else:  # the millisecond is used up: yield the CPU until the next one
            wait = (t + epoch + 1) / 1000 - time.time()
            if wait > 0:
                time.sleep(wait)
    return out


def _ids_from_generator(seq: RedisSequence, shard: int, deadline: float) -> array.array[int]:
    from hvcore._generator import KeyGenerator

    gen = KeyGenerator(LAYOUT, sequence=seq)
    out: array.array[int] = array.array("q")
    while time.monotonic() < deadline:
        out.extend(gen.next_keys(shard, LAYOUT.sequence_size))
    return out


def _make_ids(url: str, prefix: str, use_generator: bool, start_at: float, seconds: float) -> tuple[bytes, float]:
    """Make ids for ``seconds`` from wall time ``start_at``; returns them packed and the seconds measured."""
    seq = RedisSequence(url, key_prefix=prefix)
    try:
        seq.reserve(0, _now_ms() - LAYOUT.epoch_ms, 1)  # connect and load the script before timing
        while time.time() < start_at:
            time.sleep(0.0005)
        t0 = time.monotonic()
        make = _ids_from_generator if use_generator else _ids_from_reserve
        ids = make(seq, SHARD, t0 + seconds)
        return ids.tobytes(), time.monotonic() - t0
    finally:
        seq.close()


class _MemorySource:
    """A sequence source without I/O: the generator's own ceiling on this machine, for reference."""

    def __init__(self) -> None:
        self.used: dict[tuple[int, int], int] = {}

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        start = self.used.get((shard_id, time_part), 0)
        stop = min(LAYOUT.sequence_size, start + wanted)
        self.used[shard_id, time_part] = stop
        return range(start, stop)

    def after_fork_in_child(self) -> None:
        self.used.clear()

    def close(self) -> None:
        pass


def generator_in_memory(seconds: float) -> float:
    """Ids per second of `KeyGenerator` over `_MemorySource` (same loop as with Redis)."""
    from hvcore._generator import KeyGenerator

    gen = KeyGenerator(LAYOUT, sequence=_MemorySource())
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        n += len(gen.next_keys(SHARD, LAYOUT.sequence_size))
    return n / (time.monotonic() - t0)


def incr_baseline(url: str, prefix: str, seconds: float) -> float:
    """Ids per second with one ``INCR`` round trip per id (the slow design the issue rules out)."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    key = f"{prefix}:incr"
    shard_bits = SHARD << LAYOUT.shard_shift
    ids: list[int] = []
    try:
        client.ping()
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            n = int(client.incr(key))  # type: ignore[arg-type, unused-ignore]
            ids.append(((_now_ms() - LAYOUT.epoch_ms) << LAYOUT.time_shift) | shard_bits | (n % LAYOUT.sequence_size))
        return len(ids) / (time.monotonic() - t0)
    finally:
        client.delete(key)
        client.close()


def _warm(url: str, prefixes: list[str]) -> None:
    """Skip the fresh-prefix wait (``max_skew_ms``): the benchmark measures a sequence in steady use."""
    client = redis.Redis.from_url(url)
    try:
        for prefix in prefixes:
            client.set(f"{prefix}:born", _now_ms() - 3_600_000)
    finally:
        client.close()


def _cleanup(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
    finally:
        client.close()


def _unpack(raw: bytes) -> array.array[int]:
    ids: array.array[int] = array.array("q")
    ids.frombytes(raw)
    return ids


def run(quick: bool = False, url: str = DEFAULT_URL, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement once and return the figures (ratios all come from this one run)."""
    seconds = 1.0 if quick else 3.0
    use_generator = generator_draws_from_sequence()
    prefix = f"hvbench:{uuid.uuid4().hex[:10]}"
    mode = "KeyGenerator(sequence=RedisSequence)" if use_generator else "reserve-level loop (generator not ready)"
    log(f"Redis sequence benchmark: {url}, {seconds:g} s per measurement, ids from {mode}")
    log(f"layout ceiling: {CEILING:,} ids/s per shard")
    try:
        _warm(url, [f"{prefix}:one", f"{prefix}:four"])
        raw, took = _make_ids(url, f"{prefix}:one", use_generator, time.time(), seconds)
        single = _unpack(raw)
        single_rate = len(single) / took
        single_dupes = len(single) - len(set(single))
        log(
            f"1 process : {single_rate:12,.0f} ids/s = {100 * single_rate / CEILING:5.1f} % of ceiling, "
            f"{single_dupes} duplicates"
        )

        extra: dict[str, float] = {}
        if use_generator:  # where the time goes: the source alone, and the generator without Redis
            raw, took = _make_ids(url, f"{prefix}:one", False, time.time(), seconds / 2)
            extra["reserve_loop_ids_per_s"] = len(_unpack(raw)) / took
            extra["generator_memory_source_ids_per_s"] = generator_in_memory(seconds / 2)
            log(
                f"  for reference: the source in a plain reserve loop {extra['reserve_loop_ids_per_s']:,.0f} ids/s; "
                f"the generator over an in-memory source {extra['generator_memory_source_ids_per_s']:,.0f} ids/s"
            )

        incr_rate = incr_baseline(url, prefix, seconds / 2)
        ratio = single_rate / incr_rate
        log(f"INCR/id   : {incr_rate:12,.0f} ids/s ({1e6 / incr_rate:.0f} µs per id) -> Redis sequence is {ratio:.0f}x")

        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        start_at = time.time() + 1.0
        with ctx.Pool(4) as pool:
            parts = pool.starmap(_make_ids, [(url, f"{prefix}:four", use_generator, start_at, seconds)] * 4)
        per_proc = [len(_unpack(raw)) / took for raw, took in parts]
        every = [i for raw, _ in parts for i in _unpack(raw)]
        four_dupes = len(every) - len(set(every))
        window = max(took for _, took in parts)
        four_rate = len(every) / window
        log(
            f"4 processes, one shard: {four_rate:12,.0f} ids/s combined = {100 * four_rate / CEILING:5.1f} % of "
            f"ceiling (per process {', '.join(f'{r:,.0f}' for r in per_proc)}), {len(every):,} ids, "
            f"{four_dupes} duplicates"
        )
    finally:
        _cleanup(url, prefix)

    result: dict[str, Any] = {
        "mode": mode,
        "seconds": seconds,
        "ceiling_ids_per_s": CEILING,
        "single": {
            "ids_per_s": round(single_rate),
            "pct_ceiling": round(100 * single_rate / CEILING, 1),
            "ids": len(single),
            "duplicates": single_dupes,
        },
        "reference": {k: round(v) for k, v in extra.items()},
        "incr_baseline": {"ids_per_s": round(incr_rate), "us_per_id": round(1e6 / incr_rate, 1)},
        "ratio_vs_incr": round(ratio, 1),
        "four_processes": {
            "ids_per_s": round(four_rate),
            "pct_ceiling": round(100 * four_rate / CEILING, 1),
            "per_process_ids_per_s": [round(r) for r in per_proc],
            "ids": len(every),
            "duplicates": four_dupes,
        },
        "targets": TARGETS,
    }
    result["met"] = {
        "single_pct_ceiling": result["single"]["pct_ceiling"] >= TARGETS["single_pct_ceiling"],
        "ratio_vs_incr": result["ratio_vs_incr"] >= TARGETS["ratio_vs_incr"],
        "four_pct_ceiling": result["four_processes"]["pct_ceiling"] >= TARGETS["four_pct_ceiling"],
        "no_duplicates": single_dupes == 0 and four_dupes == 0,
    }
    log("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["met"].items()))
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures, optionally write them as JSON; exit 1 on duplicates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s per measurement instead of 3 s")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Redis URL (default {DEFAULT_URL})")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, url=args.url)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    return 0 if result["met"]["no_duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
