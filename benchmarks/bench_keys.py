"""Benchmark the key generator against the layout ceiling, a straightforward locked generator and peer id libraries.

Usage: ``python benchmarks/bench_keys.py [--quick] [--json PATH]``. Measured in one run, candidates interleaved round
by round so machine noise hits all alike; every figure is given as the best round and the spread (median, worst):

- one shard, one thread: ids/s against the ceiling (1,024 ids per ms per shard = 1,024,000 ids/s);
- one shard, four threads: the same, threads sharing one generator;
- 8,192 shards (each call a different shard, so nearly every call starts a new millisecond for its shard): CPU ns
  per id, next to the CPU ns per id of the peer libraries (which have no shards: each call just makes an id);
- ``next_keys(shard, n)``: CPU ns per id, spread over the shards so the ceiling never makes it wait.

Candidates: hypervault's `KeyGenerator`; `LockedGenerator` (below: one lock around a dict of (ms, sequence) per
shard, which waits for the next millisecond outside the lock); and, when importable, snowflake-id, sonyflake,
python-ulid, uuid6.uuid7, uuid_utils.uuid7 and the stdlib uuid4. ``run(quick)`` returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hvcore
from hvcore import Key, KeyGenerator, KeyLayout, _keymaker

LAYOUT = KeyLayout.DEFAULT
SHARDS = LAYOUT.max_shard_id + 1
CEILING = LAYOUT.sequence_size * 1000  # ids per second per shard

OURS = "hypervault"
BASELINE = "locked baseline"
FLOOR = "Key creation alone"
PURE_FLOOR = "int.__new__ alone"


class LockedGenerator:
    """A straightforward generator: one lock around a dict of (ms, sequence) per shard, the wait outside the lock."""

    def __init__(self, layout: KeyLayout = LAYOUT) -> None:
        self._lock = threading.Lock()
        self._last: dict[int, tuple[int, int]] = {}
        self._epoch = layout.epoch_ms
        self._size = layout.sequence_size
        self._time_shift = layout.time_shift
        self._shard_shift = layout.shard_shift
        self._key_type = layout.key_type

    def next_key(self, shard_id: int) -> Key:
        """One key, waiting (without the lock) when the shard's millisecond is used up."""
        while True:
            with self._lock:
                ms = time.time_ns() // 1_000_000 - self._epoch
                last, seq = self._last.get(shard_id, (-1, 0))
                if ms > last:
                    last, seq = ms, 0
                if seq < self._size:
                    self._last[shard_id] = (last, seq + 1)
                    value = (last << self._time_shift) | (shard_id << self._shard_shift) | seq
                    return int.__new__(self._key_type, value)
            time.sleep(0)

    def next_keys(self, shard_id: int, n: int) -> list[Key]:
        """``n`` keys, as many per lock acquisition as the millisecond has left."""
        out: list[Key] = []
        while len(out) < n:
            with self._lock:
                ms = time.time_ns() // 1_000_000 - self._epoch
                last, seq = self._last.get(shard_id, (-1, 0))
                if ms > last:
                    last, seq = ms, 0
                take = min(n - len(out), self._size - seq)
                if take > 0:
                    self._last[shard_id] = (last, seq + take)
                    base = (last << self._time_shift) | (shard_id << self._shard_shift)
                    out.extend(int.__new__(self._key_type, base | s) for s in range(seq, seq + take))
                    continue
            time.sleep(0)
        return out


# -- peers: (name, factory of a zero-argument id maker) ------------------------------------------------------------


def _peers() -> list[tuple[str, Callable[[], Callable[[], object]]]]:
    peers: list[tuple[str, Callable[[], Callable[[], object]]]] = []
    try:
        from snowflake import SnowflakeGenerator

        def snowflake_maker() -> Callable[[], object]:
            gen = SnowflakeGenerator(42)
            return lambda: next(gen)

        peers.append(("snowflake-id", snowflake_maker))
    except ImportError:
        pass
    try:
        from sonyflake import Sonyflake

        def sonyflake_maker() -> Callable[[], object]:
            flake = Sonyflake(start_time=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), machine_id=1)
            return flake.next_id

        peers.append(("sonyflake", sonyflake_maker))
    except ImportError:
        pass
    try:
        import ulid

        peers.append(("python-ulid", lambda: ulid.ULID))
    except ImportError:
        pass
    try:
        import uuid6

        peers.append(("uuid6.uuid7", lambda: uuid6.uuid7))
    except ImportError:
        pass
    try:
        import uuid_utils

        peers.append(("uuid_utils.uuid7", lambda: uuid_utils.uuid7))
    except ImportError:
        pass
    peers.append(("stdlib uuid4", lambda: uuid.uuid4))
    return peers


# -- measurements ----------------------------------------------------------------------------------------------------


def _ids_per_s_one_thread(next_key: Callable[[int], Key], seconds: float) -> float:
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    made = 0
    start = time.perf_counter_ns()
    while time.perf_counter_ns() < deadline:
        for _ in range(1000):
            next_key(3)
        made += 1000
    return made / ((time.perf_counter_ns() - start) / 1e9)


def _ids_per_s_threads(next_key: Callable[[int], Key], seconds: float, threads: int = 4) -> float:
    counts = [0] * threads
    stop = threading.Event()
    ready = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        ready.wait()
        made = 0
        while not stop.is_set():
            for _ in range(1000):
                next_key(5)
            made += 1000
        counts[index] = made

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()
    start = time.perf_counter_ns()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / ((time.perf_counter_ns() - start) / 1e9)


def _cpu_ns_spread(next_key: Callable[[int], Key], rounds: int) -> float:
    shards = range(SHARDS)
    start = time.process_time_ns()
    for _ in range(rounds):
        for shard in shards:
            next_key(shard)
    return (time.process_time_ns() - start) / (rounds * SHARDS)


def _cpu_ns_spread_after_fork(rounds: int) -> float:
    """The spread case in a forked child, where parent and children share the sequence table."""
    gen = KeyGenerator()
    gen.next_key(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            _cpu_ns_spread(gen.next_key, 1)
            figure = _cpu_ns_spread(gen.next_key, rounds)
            os.write(write, repr(figure).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return float(text)


def _cpu_ns_next_keys(next_keys: Callable[[int, int], list[Key]], n: int, ids: int) -> float:
    calls = max(1, ids // n)
    start = time.process_time_ns()
    for i in range(calls):
        next_keys(i % SHARDS, n)
    return (time.process_time_ns() - start) / (calls * n)


def _pure_make_keys(key_type: type[Key], base: int, n: int) -> list[Key]:
    """Keys made with int.__new__, as a build without the C extension makes them."""
    return list(map(int.__new__, repeat(key_type, n), range(base, base + n)))


def _cpu_ns_key_floor(n: int, ids: int, make_keys: Callable[[type[Key], int, int], list[Key]]) -> float:
    """Only creating ``n`` Key objects per call with ``make_keys``: the floor under any next_keys."""
    calls = max(1, ids // n)
    key_type, base = LAYOUT.key_type, 1 << 50
    start = time.process_time_ns()
    for _ in range(calls):
        make_keys(key_type, base, n)
    return (time.process_time_ns() - start) / (calls * n)


def _cpu_ns_peer(make: Callable[[], object], count: int) -> float:
    start = time.process_time_ns()
    for _ in range(count):
        make()
    return (time.process_time_ns() - start) / count


def _summary(values: list[float], *, higher_is_better: bool) -> dict[str, Any]:
    best = max(values) if higher_is_better else min(values)
    worst = min(values) if higher_is_better else max(values)
    return {"best": best, "median": statistics.median(values), "worst": worst, "runs": values}


def _rotate(names: list[str], round_index: int) -> list[str]:
    k = round_index % len(names)
    return names[k:] + names[:k]


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every scenario; returns ``{scenario: {candidate: {figure: value, ...}}}`` plus context."""
    rounds = 3 if quick else 7
    seconds = 0.3 if quick else 1.0
    spread_rounds = 4 if quick else 12  # passes over the 8192 shards per measurement
    batch_ids = 200_000 if quick else 1_000_000
    peer_count = 20_000 if quick else 100_000
    sonyflake_count = 1_000 if quick else 4_000  # sonyflake makes 25,600 ids/s at most: it sleeps

    makers: dict[str, Callable[[], Any]] = {OURS: KeyGenerator, BASELINE: LockedGenerator}
    one: dict[str, list[float]] = {name: [] for name in makers}
    four: dict[str, list[float]] = {name: [] for name in makers}
    spread: dict[str, list[float]] = {name: [] for name in makers}
    after_fork: list[float] = []
    batches: dict[int, dict[str, list[float]]] = {n: {name: [] for name in makers} for n in (1024, 64)}
    for runs in batches.values():
        runs[FLOOR] = []
        runs[PURE_FLOOR] = []
    peers = _peers()
    peer_runs: dict[str, list[float]] = {name: [] for name, _ in peers}
    peer_makers: dict[str, Callable[[], object]] = {}
    skipped: dict[str, str] = {}
    for name, factory in peers:
        try:
            peer_makers[name] = factory()
            peer_makers[name]()
        except Exception as exc:  # a peer that cannot run here is reported, not fatal
            skipped[name] = repr(exc)
            peer_makers.pop(name, None)
    peer_runs = {name: runs for name, runs in peer_runs.items() if name in peer_makers}

    for r in range(rounds):
        for name in _rotate(list(makers), r):
            one[name].append(_ids_per_s_one_thread(makers[name]().next_key, seconds))
            four[name].append(_ids_per_s_threads(makers[name]().next_key, seconds))
            gen = makers[name]()
            _cpu_ns_spread(gen.next_key, 1)  # warm: every shard has a state
            spread[name].append(_cpu_ns_spread(gen.next_key, spread_rounds))
            for n, runs in batches.items():
                runs[name].append(_cpu_ns_next_keys(gen.next_keys, n, batch_ids))
            if name == OURS and hasattr(os, "fork"):
                after_fork.append(_cpu_ns_spread_after_fork(max(1, spread_rounds // 3)))
        for n, runs in batches.items():
            runs[FLOOR].append(_cpu_ns_key_floor(n, batch_ids, _keymaker.make_keys))
            runs[PURE_FLOOR].append(_cpu_ns_key_floor(n, batch_ids, _pure_make_keys))
        for name in _rotate(list(peer_makers), r):
            count = sonyflake_count if name == "sonyflake" else peer_count
            peer_runs[name].append(_cpu_ns_peer(peer_makers[name], count))

    result: dict[str, Any] = {
        "ceiling_ids_per_s": CEILING,
        "quick": quick,
        "rounds": rounds,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "versions": {"hypervault": hvcore.__version__},
        "accelerated": _keymaker.ACCELERATED,
        "skipped_peers": skipped,
    }
    for title, runs in (("one shard, one thread", one), ("one shard, four threads", four)):
        scenario: dict[str, Any] = {"ceiling": {"ids_per_s": CEILING}}
        for name, values in runs.items():
            summary = _summary(values, higher_is_better=True)
            scenario[name] = {
                "ids_per_s": summary["best"],
                "pct_of_ceiling": 100 * summary["best"] / CEILING,
                "median_ids_per_s": summary["median"],
                "worst_ids_per_s": summary["worst"],
                "runs": values,
            }
        result[title] = scenario
    cpu: dict[str, Any] = {}
    for name, values in [*spread.items(), *peer_runs.items()]:
        summary = _summary(values, higher_is_better=False)
        cpu[name] = {"ns_per_id": summary["best"], "median_ns": summary["median"], "worst_ns": summary["worst"]}
        cpu[name]["runs"] = values
    result["cpu ns per id, 8192 shards (peers: no shards)"] = cpu
    if after_fork:
        summary = _summary(after_fork, higher_is_better=False)
        result["cpu ns per id, 8192 shards, in a forked child"] = {
            OURS: {"ns_per_id": summary["best"], "median_ns": summary["median"], "worst_ns": summary["worst"]}
        }
    for n, runs in batches.items():
        figures: dict[str, Any] = {}
        for name, values in runs.items():
            summary = _summary(values, higher_is_better=False)
            figures[name] = {"ns_per_id": summary["best"], "median_ns": summary["median"], "worst_ns": summary["worst"]}
            figures[name]["runs"] = values
        result[f"next_keys(shard, {n}) cpu ns per id"] = figures
    result["versions"].update(_peer_versions())
    return result


def _peer_versions() -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("snowflake-id", "sonyflake", "python-ulid", "uuid6", "uuid_utils"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


# -- report ----------------------------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    """The figures as text: each next to the ceiling, the locked baseline and the peers."""
    lines = [
        f"hypervault key generator benchmark ({'quick' if result['quick'] else 'full'}, {result['rounds']} rounds; "
        f"Python {result['machine']['python']}, {result['machine']['cores']} cores, "
        f"load {' '.join(f'{x:.1f}' for x in result['machine']['load'])})",
        f"ceiling: {CEILING:,} ids/s per shard (1,024 per ms)",
        "best of the rounds [median, worst]",
        "keys made by: "
        + (
            "the C accelerator (hvcore._speedups)" if result.get("accelerated") else "pure Python (no hvcore._speedups)"
        ),
    ]
    for title in ("one shard, one thread", "one shard, four threads"):
        lines.append(f"\n{title}: ids/s")
        scenario = result[title]
        for name in (OURS, BASELINE):
            f = scenario[name]
            lines.append(
                f"  {name:<18} {f['ids_per_s']:>12,.0f}  {f['pct_of_ceiling']:6.2f} % of ceiling"
                f"  [{f['median_ids_per_s']:,.0f}, {f['worst_ids_per_s']:,.0f}]"
            )
        ratio = scenario[OURS]["ids_per_s"] / scenario[BASELINE]["ids_per_s"]
        lines.append(f"  ours / baseline: {ratio:.2f}x")
    cpu = result["cpu ns per id, 8192 shards (peers: no shards)"]
    lines.append("\nCPU ns per id: ours and baseline spread over 8,192 shards (a new millisecond per call); peers")
    ours = cpu[OURS]["ns_per_id"]
    for name, f in cpu.items():
        versus = "" if name == OURS else f"  ({f['ns_per_id'] / ours:5.2f}x ours)"
        lines.append(f"  {name:<18} {f['ns_per_id']:8.1f} ns  [{f['median_ns']:.1f}, {f['worst_ns']:.1f}]{versus}")
    forked = result.get("cpu ns per id, 8192 shards, in a forked child", {}).get(OURS)
    if forked:
        lines.append(
            f"  {'ours after fork()':<18} {forked['ns_per_id']:8.1f} ns  [{forked['median_ns']:.1f}, "
            f"{forked['worst_ns']:.1f}]  (a child sharing the sequence table with its parent)"
        )
    lines.append(f"  ceiling pace: {1e9 / CEILING:.0f} ns per id on one shard")
    for name, why in result["skipped_peers"].items():
        lines.append(f"  {name:<18} skipped: {why}")
    for n in (1024, 64):
        figures = result[f"next_keys(shard, {n}) cpu ns per id"]
        lines.append(f"\nnext_keys(shard, {n}): CPU ns per id")
        for name, f in figures.items():
            lines.append(f"  {name:<18} {f['ns_per_id']:8.1f} ns  [{f['median_ns']:.1f}, {f['worst_ns']:.1f}]")
        lines.append(f"  ours / baseline: {figures[OURS]['ns_per_id'] / figures[BASELINE]['ns_per_id']:.2f}x")
    tracking = "untracked by the cycle collector" if result.get("accelerated") else "GC-tracked int subclasses"
    lines.append(f"\nGC: {'enabled' if gc.isenabled() else 'disabled'} (keys are {tracking})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: run, print the report, optionally write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds (about 15 s)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
