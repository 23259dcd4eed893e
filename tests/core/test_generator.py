"""KeyGenerator and its asyncio twin: uniqueness across threads and fork(), clock faults, layout end, sources."""

from __future__ import annotations

import ast
import asyncio
import enum
import inspect
import os
import struct
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from hvcore import (
    ClockMovedBackwards,
    ConfigError,
    HypervaultError,
    InvalidArgument,
    InvalidShard,
    Key,
    KeyGenerator,
    KeyLayout,
    LayoutExhausted,
    PluginError,
    SequenceSource,
    WorkerGrant,
    WorkerSlice,
    _keymaker,
)
from hvcore._agenerator import AsyncKeyGenerator
from hvcore._generator import _GeneratorBase

LAYOUT = KeyLayout.DEFAULT
SHIFT = LAYOUT.time_shift
T0 = 1_760_000_000_000  # Unix ms, 2025-10-09


class FakeClock:
    """Unix ms that only move when a test says so, or by one every ``tick_every`` reads (thread-safe)."""

    def __init__(self, ms: int = T0, tick_every: int = 0) -> None:
        self.ms = ms
        self.tick_every = tick_every
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.reads += 1
            if self.tick_every and self.reads % self.tick_every == 0:
                self.ms += 1
            return self.ms


class MemorySequence:
    """An in-memory `SequenceSource`: numbers per (shard, ms) handed out in blocks of at most ``block``."""

    def __init__(self, block: int | None = None, size: int = LAYOUT.sequence_size) -> None:
        self.block = block
        self.size = size
        self.used: dict[tuple[int, int], int] = {}
        self.calls: list[tuple[int, int, int]] = []
        self.forked = 0
        self.closed = False
        self._lock = threading.Lock()

    def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        with self._lock:
            self.calls.append((shard_id, time_part, wanted))
            start = self.used.get((shard_id, time_part), 0)
            stop = min(self.size, start + (self.block or wanted))
            self.used[(shard_id, time_part)] = max(start, stop)
            return range(start, stop)

    def after_fork_in_child(self) -> None:
        self.forked += 1

    def close(self) -> None:
        self.closed = True


class AsyncMemorySequence:
    """The asyncio form of `MemorySequence`."""

    def __init__(self, block: int | None = None) -> None:
        self.sync = MemorySequence(block)

    async def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
        await asyncio.sleep(0)
        return self.sync.reserve(shard_id, time_part, wanted)

    def after_fork_in_child(self) -> None:
        self.sync.after_fork_in_child()

    async def close(self) -> None:
        self.sync.close()


def time_part(key: int) -> int:
    return key >> SHIFT


def assert_unique(keys: list[Key]) -> None:
    assert len(set(keys)) == len(keys), f"{len(keys) - len(set(keys))} duplicate keys"


# -- basics ---------------------------------------------------------------------------------------------------------


def test_keys_decode_to_shard_time_and_sequence() -> None:
    gen = KeyGenerator(clock=FakeClock())
    keys = [gen.next_key(12) for _ in range(3)]
    assert [k.added_id for k in keys] == [0, 1, 2]
    assert all(type(k) is Key and k.shard_id == 12 and k.timestamp_ms == T0 for k in keys)
    assert keys == sorted(keys)


def test_other_layouts_give_their_own_key_class() -> None:
    layout = KeyLayout.HYPERVAULT
    gen = KeyGenerator(layout, clock=FakeClock())
    key = gen.next_key(8191)
    assert type(key) is layout.key_type
    assert (key.shard_id, key.timestamp_ms, key.added_id) == (8191, T0, 0)


def test_real_clock_keys_are_recent_and_increasing() -> None:
    import time

    gen = KeyGenerator()
    before = time.time_ns() // 1_000_000
    keys = [gen.next_key(3) for _ in range(5000)] + gen.next_keys(3, 3000)
    after = time.time_ns() // 1_000_000
    assert_unique(keys)
    assert keys == sorted(keys)
    assert before <= keys[0].timestamp_ms <= keys[-1].timestamp_ms <= after
    per_ms: dict[int, int] = {}
    for k in keys:
        per_ms[k.timestamp_ms] = per_ms.get(k.timestamp_ms, 0) + 1
    assert max(per_ms.values()) <= LAYOUT.sequence_size


def test_public_classes_report_the_package() -> None:
    assert KeyGenerator.__module__ == AsyncKeyGenerator.__module__ == "hvcore"
    assert "ClockMovedBackwards" in (KeyGenerator.__doc__ or "")  # the clock behaviour is documented
    assert "fork()" in (KeyGenerator.__doc__ or "")


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_backwards_ms"):
        KeyGenerator(max_backwards_ms=-1)
    with pytest.raises(ConfigError, match="block_size"):
        KeyGenerator(block_size=0)
    assert KeyGenerator(block_size=LAYOUT.sequence_size + 1).block_size == LAYOUT.sequence_size  # at most all
    assert KeyGenerator("hypervault").layout is KeyLayout.HYPERVAULT  # the names Datastore takes
    with pytest.raises(ConfigError, match="unknown layout 'defualt'"):
        KeyGenerator("defualt")
    with pytest.raises(ConfigError, match="KeyLayout"):
        KeyGenerator(1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="AsyncKeyGenerator"):
        KeyGenerator(sequence=AsyncMemorySequence())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clock"):
        KeyGenerator(clock=12)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="random_start"):
        KeyGenerator(random_start=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, -8192, -8193, 8192, 16384, 10**30, -(10**30), 1.0, 12.9, True, "3", None])
def test_bad_shards_raise_invalid_shard(bad: Any) -> None:
    gen = KeyGenerator(clock=FakeClock())
    gen.next_key(1)  # the fast path is warm
    with pytest.raises(InvalidShard):
        gen.next_key(bad)
    with pytest.raises(InvalidShard):
        gen.next_keys(bad, 5)
    with pytest.raises(InvalidShard):
        KeyGenerator(sequence=MemorySequence()).next_key(bad)


def test_int_subclass_shards_share_the_int_shards_sequence() -> None:
    class Shard(enum.IntEnum):
        ORDERS = 5

    gen = KeyGenerator(clock=FakeClock())
    keys = [gen.next_key(5), gen.next_key(Shard.ORDERS), gen.next_key(5), *gen.next_keys(Shard.ORDERS, 3)]
    assert [k.added_id for k in keys] == [0, 1, 2, 3, 4, 5]
    assert all(type(k) is Key and k.shard_id == 5 for k in keys)


def test_next_keys_counts() -> None:
    gen = KeyGenerator(clock=FakeClock())
    assert gen.next_keys(1, 0) == []
    assert [k.added_id for k in gen.next_keys(1, 1)] == [0]
    assert [k.added_id for k in gen.next_keys(1, 3)] == [1, 2, 3]
    for bad in (-1, -(10**20), 1.5, True, "2", None):
        with pytest.raises(InvalidArgument, match=r"n \(how many keys\) must be an int >= 0") as raised:
            gen.next_keys(1, bad)  # type: ignore[arg-type]
        assert isinstance(raised.value, ValueError) and isinstance(raised.value, TypeError)  # builtin kinds too

    async def async_counts() -> None:
        agen = AsyncKeyGenerator(clock=FakeClock())
        for bad in (-1, 2.0):
            with pytest.raises(InvalidArgument, match="how many keys"):
                await agen.next_keys(1, bad)  # type: ignore[arg-type]

    asyncio.run(async_counts())


def test_next_keys_fills_a_millisecond_then_moves_on() -> None:
    clock = FakeClock()
    gen = KeyGenerator(clock=clock)
    keys = gen.next_keys(2, 1024)
    assert [k.added_id for k in keys] == list(range(1024))
    assert {k.timestamp_ms for k in keys} == {T0}
    clock.tick_every = 5
    more = gen.next_keys(2, 3000)  # spans several milliseconds
    assert_unique(keys + more)
    assert more == sorted(more) and more[0] > keys[-1]
    assert min(k.timestamp_ms for k in more) > T0


def test_next_key_and_next_keys_interleave_without_repeats() -> None:
    clock = FakeClock(tick_every=97)
    gen = KeyGenerator(clock=clock)
    keys: list[Key] = []
    for i in range(400):
        keys += gen.next_keys(4, i % 7) if i % 2 else [gen.next_key(4)]
    assert_unique(keys)
    assert keys == sorted(keys)


# -- a full millisecond: wait without holding a lock ---------------------------------------------------------------


def test_1025th_key_waits_for_the_next_millisecond_while_others_go_on() -> None:
    clock = FakeClock()
    gen = KeyGenerator(clock=clock)
    keys = [gen.next_key(9) for _ in range(1024)]
    extra: list[Key] = []
    waiter = threading.Thread(target=lambda: extra.append(gen.next_key(9)))
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive() and not extra  # shard 9 has no number left in T0
    assert not gen._lock.locked()  # nothing is held while it waits
    others = [gen.next_key(10) for _ in range(100)] + gen.next_keys(11, 50)  # other shards keep going
    assert {k.timestamp_ms for k in others} == {T0}
    clock.ms += 1
    waiter.join(5)
    assert not waiter.is_alive()
    assert extra[0].timestamp_ms == T0 + 1 and extra[0].added_id == 0
    assert_unique(keys + extra)


def test_threads_on_one_shard_never_repeat() -> None:
    gen = KeyGenerator()
    results: list[list[Key]] = [[] for _ in range(4)]

    def work(out: list[Key]) -> None:
        for i in range(6000):
            if i % 10:
                out.append(gen.next_key(3))
            else:
                out.extend(gen.next_keys(3, 20))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for out in results for k in out]
    assert_unique(keys)
    for out in results:
        assert out == sorted(out)  # each thread sees its keys increase


def test_threads_racing_over_millisecond_boundaries_never_repeat() -> None:
    # A clock ticking every few reads makes nearly every call race a move to a new millisecond.
    clock = FakeClock(tick_every=3)
    gen = KeyGenerator(clock=clock)
    results: list[list[Key]] = [[] for _ in range(4)]

    def work(index: int, out: list[Key]) -> None:
        for i in range(4000):
            shard = (i + index) % 3
            out.extend(gen.next_keys(shard, 3) if i % 5 == 0 else [gen.next_key(shard)])

    threads = [threading.Thread(target=work, args=(i, out)) for i, out in enumerate(results)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for out in results for k in out]
    assert_unique(keys)
    for out in results:
        for shard in range(3):
            mine = [k for k in out if k.shard_id == shard]
            assert mine == sorted(mine)


# -- the clock going backwards -------------------------------------------------------------------------------------


def test_clock_back_keeps_the_last_millisecond_then_waits_for_it_to_pass() -> None:
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, max_backwards_ms=20)
    before = [gen.next_key(1) for _ in range(1000)]
    clock.ms = T0 - 10
    kept = [gen.next_key(1) for _ in range(24)]  # T0's sequence lasts 24 more
    assert {k.timestamp_ms for k in kept} == {T0}
    clock.tick_every = 10  # the clock runs on, 10 ms behind
    after = [gen.next_key(1) for _ in range(50)]
    assert clock.ms > T0  # it waited for the clock to pass T0
    keys = before + kept + after
    assert_unique(keys)
    assert keys == sorted(keys)
    assert all(k.timestamp_ms > T0 for k in after)


def test_clock_back_beyond_the_skew_raises_and_never_reuses_a_millisecond() -> None:
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, max_backwards_ms=20)
    keys = [gen.next_key(7) for _ in range(10)]
    clock.ms = T0 - 10_000
    with pytest.raises(ClockMovedBackwards, match="max_backwards_ms=20") as info:
        for _ in range(2000):
            keys.append(gen.next_key(7))
    assert isinstance(info.value, HypervaultError) and isinstance(info.value, RuntimeError)
    assert len(keys) == 1024  # all of T0, not one more
    with pytest.raises(ClockMovedBackwards):
        gen.next_keys(7, 5)
    clock.ms = T0 + 1  # the clock is fixed
    keys += [gen.next_key(7) for _ in range(100)] + gen.next_keys(7, 100)
    assert_unique(keys)
    assert keys == sorted(keys)


def test_clock_back_with_zero_skew_allowed_raises_at_once_when_used_up() -> None:
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, max_backwards_ms=0)
    gen.next_keys(2, 1024)
    clock.ms -= 1
    with pytest.raises(ClockMovedBackwards):
        gen.next_key(2)


def test_clock_back_with_a_sequence_source() -> None:
    clock = FakeClock()
    source = MemorySequence(block=16)
    gen = KeyGenerator(sequence=source, clock=clock, max_backwards_ms=20)
    keys = [gen.next_key(4) for _ in range(40)]
    clock.ms = T0 - 5
    keys += [gen.next_key(4) for _ in range(984)]  # the rest of T0, reserved for T0
    assert {time_part(k) for k in keys} == {T0 - LAYOUT.epoch_ms}
    clock.ms = T0 - 1_000
    with pytest.raises(ClockMovedBackwards):
        gen.next_key(4)
    assert_unique(keys)


# -- the end of the layout -----------------------------------------------------------------------------------------


def test_last_millisecond_of_the_layout_then_layout_exhausted() -> None:
    clock = FakeClock(LAYOUT.last_timestamp_ms)
    gen = KeyGenerator(clock=clock)
    last = gen.next_keys(LAYOUT.max_shard_id, 1024)
    assert last[-1] == 2**63 - 1  # the largest positive bigint, never past it
    clock.ms += 1
    with pytest.raises(LayoutExhausted, match="negative"):
        gen.next_key(0)
    with pytest.raises(LayoutExhausted):
        gen.next_keys(0, 10)
    with pytest.raises(LayoutExhausted):
        KeyGenerator(sequence=MemorySequence(), clock=clock).next_key(0)


def test_a_clock_before_the_epoch_is_refused() -> None:
    gen = KeyGenerator(clock=FakeClock(LAYOUT.epoch_ms - 1))
    with pytest.raises(ClockMovedBackwards, match="epoch"):
        gen.next_key(0)


# -- sequence sources ----------------------------------------------------------------------------------------------


def test_sequence_source_blocks_are_cached_per_shard() -> None:
    source = MemorySequence()
    gen = KeyGenerator(sequence=source, clock=FakeClock(), block_size=64)
    assert isinstance(source, SequenceSource)
    keys = [gen.next_key(6) for _ in range(64)]
    assert [k.added_id for k in keys] == list(range(64))
    assert source.calls == [(6, T0 - LAYOUT.epoch_ms, 64)]
    keys += [gen.next_key(6) for _ in range(64)]  # one more block, twice as large
    assert len(source.calls) == 2 and source.calls[1][2] == 128
    keys += gen.next_keys(7, 300)
    assert source.calls[-1] == (7, T0 - LAYOUT.epoch_ms, 300)
    assert_unique(keys)


def test_an_empty_range_means_the_millisecond_is_used_up() -> None:
    clock = FakeClock()
    source = MemorySequence()
    source.used[(3, T0 - LAYOUT.epoch_ms)] = 1020  # another process took most of T0
    gen = KeyGenerator(sequence=source, clock=clock)
    keys = [gen.next_key(3) for _ in range(4)]
    assert [k.added_id for k in keys] == [1020, 1021, 1022, 1023]
    clock.tick_every = 50
    nxt = gen.next_key(3)
    assert nxt.timestamp_ms > T0 and nxt.added_id == 0


def test_two_generators_sharing_a_source_never_repeat() -> None:
    # Two "processes" whose clocks read the same milliseconds share one source, as they would share Redis.
    clock = FakeClock(tick_every=40)
    source = MemorySequence(block=10)
    one, two = KeyGenerator(sequence=source, clock=clock), KeyGenerator(sequence=source, clock=clock)
    keys: list[Key] = []
    for i in range(3000):
        keys.append((one if i % 3 else two).next_key(i % 2))
        if i % 100 == 0:
            keys += one.next_keys(0, 50) + two.next_keys(1, 30)
    assert_unique(keys)


def test_threads_sharing_a_sequence_source_never_repeat() -> None:
    source = MemorySequence(block=7)
    gen = KeyGenerator(sequence=source)
    results: list[list[Key]] = [[] for _ in range(4)]

    def work(out: list[Key]) -> None:
        for i in range(3000):
            out.extend(gen.next_keys(1, 5) if i % 4 == 0 else [gen.next_key(1)])

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for out in results for k in out]
    assert_unique(keys)
    for out in results:
        assert out == sorted(out)


@pytest.mark.parametrize("bad", [range(2000), range(0, 10, 2), range(-1, 3), [1, 2]])
def test_a_source_returning_a_bad_range_is_reported(bad: Any) -> None:
    class Broken(MemorySequence):
        def reserve(self, shard_id: int, time_part: int, wanted: int) -> range:
            return bad  # type: ignore[no-any-return]

    with pytest.raises(HypervaultError, match="reserve"):
        KeyGenerator(sequence=Broken(), clock=FakeClock()).next_key(0)


# -- fork() ---------------------------------------------------------------------------------------------------------

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")


def _in_child(work: Callable[[], list[Key]]) -> tuple[int, str]:
    """Fork; the child runs ``work`` and writes the keys to a file; returns (pid, path) for `_collect`."""
    fd, path = tempfile.mkstemp(prefix="hv-fork-")
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            keys = work()
            with open(path, "wb") as f:
                f.write(struct.pack(f"<{len(keys)}q", *keys))
        except BaseException as exc:  # report, never return into pytest in the child
            with open(path, "wb") as f:
                f.write(repr(exc).encode())
            code = 1
        os._exit(code)
    return pid, path


def _collect(pid: int, path: str) -> list[int]:
    _, status = os.waitpid(pid, 0)
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    assert os.waitstatus_to_exitcode(status) == 0, data.decode(errors="replace")
    return list(struct.unpack(f"<{len(data) // 8}q", data))


def _fork_ok() -> None:
    if sys.version_info >= (3, 12) and threading.active_count() > 1:  # pragma: no cover
        pytest.skip("fork() in a process with threads warns on 3.12+")


@needs_fork
def test_fork_parent_and_child_generating_together_never_repeat() -> None:
    _fork_ok()
    gen = KeyGenerator()
    before = [gen.next_key(3) for _ in range(300)]  # the parent is in the middle of a millisecond
    pid, path = _in_child(lambda: [gen.next_key(3) for _ in range(30_000)] + gen.next_keys(3, 5000))
    parent = [gen.next_key(3) for _ in range(30_000)] + gen.next_keys(3, 5000)
    child = _collect(pid, path)
    assert len(child) == 35_000
    everything = before + parent + child
    assert len(set(everything)) == len(everything), "parent and child handed out the same id"
    assert parent == sorted(parent) and child == sorted(child)


@needs_fork
def test_fork_a_child_with_a_worker_number_never_repeats_its_parents_plain_ids() -> None:
    """A child takes a worker number (a fixed slice, a leased one of other bits) while its parent's plain
    generators go on: the slices' numbers come from the parent's table too (tests/newcomer/
    test_findings6_keygen_workers.py, across fork)."""
    _fork_ok()
    gen, gen0 = KeyGenerator(), KeyGenerator(random_start=False)  # from 0: where a slice starts too
    before = [g.next_key(3) for _ in range(200) for g in (gen, gen0)]

    def child_work() -> list[Key]:
        fixed = KeyGenerator(worker=WorkerSlice(id=0, bits=2))
        leased = KeyGenerator(worker=WorkerGrant(WorkerSlice(id=1, bits=4), floor_ms=-1, horizon_ms=2**45))
        return [g.next_key(3) for _ in range(6000) for g in (fixed, leased, gen0)]

    pid, path = _in_child(child_work)
    parent = [g.next_key(3) for _ in range(6000) for g in (gen, gen0)]
    child = _collect(pid, path)
    assert len(child) == 18_000
    everything = before + parent + child
    assert len(set(everything)) == len(everything), f"{len(everything) - len(set(everything))} ids repeated"


@needs_fork
def test_fork_children_and_grandchildren_never_repeat() -> None:
    _fork_ok()
    gen = KeyGenerator()
    gen.next_keys(0, 10)

    def child_work() -> list[Key]:
        pid, path = _in_child(lambda: [gen.next_key(s % 2) for s in range(6000)])
        mine = [gen.next_key(s % 2) for s in range(6000)]
        return mine + [Key(k) for k in _collect(pid, path)]

    first, second = _in_child(child_work), _in_child(child_work)
    parent = [gen.next_key(s % 2) for s in range(6000)]
    keys = parent + _collect(*first) + _collect(*second)
    assert len(keys) == 5 * 6000
    assert len(set(keys)) == len(keys)


@needs_fork
def test_fork_with_a_sequence_source_drops_cached_blocks_in_the_child() -> None:
    _fork_ok()
    source = MemorySequence()
    gen = KeyGenerator(sequence=source, clock=FakeClock(), block_size=64)
    parent_first = gen.next_key(5)  # the parent caches a block of 64 (0..63)

    def child_work() -> list[Key]:
        assert source.forked == 1  # after_fork_in_child() was called
        key = gen.next_key(5)  # not from the parent's cached block: reserved again
        assert source.calls[-1][0] == 5 and len(source.calls) == 2
        return [key]

    pid, path = _in_child(child_work)
    child = _collect(pid, path)
    assert source.forked == 0 and parent_first.added_id == 0
    assert gen.next_key(5).added_id == 1  # the parent keeps its block
    assert Key(child[0]).added_id == 64  # the in-memory source did not see the parent's block given away


@needs_fork
def test_fork_while_the_parent_is_in_a_millisecond_shares_it_without_repeats() -> None:
    _fork_ok()
    clock = FakeClock()
    gen = KeyGenerator(clock=clock)
    parent = [gen.next_key(1), gen.next_key(2)]  # T0, in use by the parent when it forks
    clock.tick_every = 20  # the clock moves on, in parent and child alike
    pid, path = _in_child(lambda: [gen.next_key(1) for _ in range(50)] + gen.next_keys(2, 50))
    parent += [gen.next_key(1) for _ in range(50)] + gen.next_keys(2, 50)
    child = _collect(pid, path)
    keys = parent + child
    assert len(set(keys)) == len(keys)  # the child may go on in the parent's millisecond: the table is shared


@needs_fork
@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fork() with live threads warns on 3.12+")
def test_fork_while_other_threads_generate_never_repeats() -> None:
    gen = KeyGenerator()
    stop = threading.Event()
    results: list[list[Key]] = [[] for _ in range(2)]

    def work(out: list[Key]) -> None:
        while not stop.is_set():
            out.append(gen.next_key(3))
            out.extend(gen.next_keys(4, 3))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    try:
        while sum(map(len, results)) < 20_000:  # the threads are busy when the fork happens
            threading.Event().wait(0.001)
        pid, path = _in_child(lambda: [k for _ in range(5000) for k in (gen.next_key(3), *gen.next_keys(4, 3))])
        child = _collect(pid, path)
    finally:
        stop.set()
        for t in threads:
            t.join()
    keys = [k for out in results for k in out] + child
    assert len(child) == 20_000
    assert len(set(keys)) == len(keys), "a thread of the parent and the child handed out the same id"


def test_a_generator_without_a_sequence_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import hvcore._generator as generator_module

    def no_table(*args: object, **kwargs: object) -> None:
        raise OSError("no memory file here")

    monkeypatch.setattr(generator_module, "SharedSequenceTable", no_table)
    with pytest.raises(HypervaultError, match="could not make the key generator's sequence table"):
        KeyGenerator(KeyLayout(epoch_ms=1_234_567), clock=FakeClock())  # a layout of its own: no table to share yet


# -- asyncio twin ----------------------------------------------------------------------------------------------------


def test_async_generator_mirrors_the_sync_one() -> None:
    public = {name for name in dir(KeyGenerator) if not name.startswith("_")}
    assert public == {name for name in dir(AsyncKeyGenerator) if not name.startswith("_")}
    for name in ("next_key", "next_keys", "close", "__init__"):
        sync_sig = inspect.signature(getattr(KeyGenerator, name))
        async_sig = inspect.signature(getattr(AsyncKeyGenerator, name))
        assert [(p.name, p.kind, p.default) for p in sync_sig.parameters.values()] == [
            (p.name, p.kind, p.default) for p in async_sig.parameters.values()
        ], name
        if name != "__init__":
            assert getattr(KeyGenerator, name).__doc__ == getattr(AsyncKeyGenerator, name).__doc__, name
    for name in ("next_key", "next_keys", "close"):
        assert inspect.iscoroutinefunction(getattr(AsyncKeyGenerator, name)), name
    # One implementation: everything but carrying out the slow path's effects is the shared base's.
    own = {name for name in vars(AsyncKeyGenerator) if not name.startswith("__")}
    assert own == {"next_key", "next_keys", "close", "_fill"}
    assert {"_step", "_pauses", "_install", "_sleep_for", "_reserve"} <= set(vars(_GeneratorBase))


_ASYNC_NAMES = {("asyncio", "sleep"): ("time", "sleep"), ("asyncio", "Lock"): ("threading", "Lock")}


class _AsyncToSync(ast.NodeTransformer):
    """What psycopg's async_to_sync does, for one function: drop ``async``/``await`` and map the asyncio names."""

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.FunctionDef:
        self.generic_visit(node)
        fields = {f: getattr(node, f) for f in node._fields}
        return ast.copy_location(ast.FunctionDef(**fields), node)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.With:
        self.generic_visit(node)
        return ast.copy_location(ast.With(items=node.items, body=node.body), node)

    def visit_Await(self, node: ast.Await) -> ast.expr:
        return self.visit(node.value)  # type: ignore[no-any-return]

    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        if isinstance(node.value, ast.Name) and (node.value.id, node.attr) in _ASYNC_NAMES:
            module, attr = _ASYNC_NAMES[(node.value.id, node.attr)]
            return ast.copy_location(ast.Attribute(value=ast.Name(id=module, ctx=ast.Load()), attr=attr), node)
        return node


def _function_source(cls: type, name: str, *, to_sync: bool = False) -> str:
    """The function's code without its docstring, its "# async only" statements (with their blocks) and, when
    ``to_sync``, without async/await."""
    kept: list[str] = []
    skip_deeper_than: int | None = None
    for line in inspect.getsource(getattr(cls, name)).splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None and indent > skip_deeper_than:
            continue
        skip_deeper_than = indent if "# async only" in line else None
        if skip_deeper_than is None:
            kept.append(line)
    tree = ast.parse(textwrap.dedent("\n".join(kept)))
    function = tree.body[0]
    assert isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
    function.body = [s for s in function.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if to_sync:
        tree = ast.fix_missing_locations(_AsyncToSync().visit(tree))
    return ast.unparse(tree)


def test_the_sync_slow_path_is_the_async_one_without_await() -> None:
    """No hand-kept twin: KeyGenerator._fill is AsyncKeyGenerator._fill with async/await taken out (the check
    psycopg's tools/async_to_sync.py --check makes on its generated sync code)."""
    assert _function_source(KeyGenerator, "_fill") == _function_source(AsyncKeyGenerator, "_fill", to_sync=True)


def test_async_generator_local_mode() -> None:
    async def main() -> list[Key]:
        clock = FakeClock(tick_every=0)
        gen = AsyncKeyGenerator(clock=clock)
        keys = [await gen.next_key(3) for _ in range(1000)] + await gen.next_keys(3, 24)
        assert {k.timestamp_ms for k in keys} == {T0}
        clock.tick_every = 20
        keys += await gen.next_keys(3, 2000)
        keys += list(await asyncio.gather(*(gen.next_key(3) for _ in range(100))))
        with pytest.raises(InvalidShard):
            await gen.next_key(-1)
        return keys

    keys = asyncio.run(main())
    assert_unique(keys)


def test_async_generator_with_an_async_source() -> None:
    async def main() -> tuple[list[Key], AsyncMemorySequence]:
        source = AsyncMemorySequence(block=9)
        gen = AsyncKeyGenerator(sequence=source, clock=FakeClock(tick_every=30))
        batches = asyncio.gather(*(gen.next_keys(s % 2, 7) for s in range(50)))
        singles = asyncio.gather(*(gen.next_key(s % 2) for s in range(200)))
        lists, keys = await asyncio.gather(batches, singles)
        return [k for batch in lists for k in batch] + keys, source

    keys, source = asyncio.run(main())
    assert len(keys) == 50 * 7 + 200
    assert_unique(keys)
    assert source.sync.calls  # numbers came from the source


def test_async_generator_clock_back_beyond_the_skew_raises() -> None:
    async def main() -> None:
        clock = FakeClock()
        gen = AsyncKeyGenerator(clock=clock, max_backwards_ms=5)
        await gen.next_keys(1, 1024)
        clock.ms -= 100
        with pytest.raises(ClockMovedBackwards):
            await gen.next_key(1)

    asyncio.run(main())


# -- random start: each millisecond's sequence starts at a random number (the default with the system clock) --------


def test_random_start_is_the_default_with_the_system_clock_only() -> None:
    assert KeyGenerator().random_start
    assert AsyncKeyGenerator().random_start
    assert not KeyGenerator(clock=FakeClock()).random_start  # tests injecting a clock get the same keys every run
    assert not KeyGenerator(sequence=MemorySequence()).random_start
    assert not KeyGenerator(random_start=False).random_start
    assert KeyGenerator(clock=FakeClock(), random_start=True).random_start


def test_random_start_goes_on_from_a_random_number_of_each_millisecond() -> None:
    _keymaker.seed_random(7)
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, random_start=True)
    starts = []
    for _ in range(400):
        keys = [gen.next_key(3) for _ in range(5)] + gen.next_keys(3, 4) + [gen.next_key(3)]
        ids = [k.added_id for k in keys]
        assert ids == list(range(ids[0], ids[0] + 10))  # one run, from the millisecond's start on
        assert {k.timestamp_ms for k in keys} == {clock.ms}
        starts.append(ids[0])
        clock.ms += 1
    top = LAYOUT.sequence_size - LAYOUT.sequence_size // 16 - 1  # 959: room for 64 more in the millisecond
    assert min(starts) >= 0 and max(starts) <= top
    assert len(set(starts)) > 300 and min(starts) < 50 and max(starts) > top - 50


def test_random_start_leaves_room_for_a_batch_that_claims_the_millisecond() -> None:
    _keymaker.seed_random(11)
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, random_start=True)
    for n in (1000, 1024, 300, 64):
        for _ in range(30):
            batch = gen.next_keys(4, n)
            assert {k.timestamp_ms for k in batch} == {clock.ms}, n  # never split by a random start
            assert [k.added_id for k in batch] == list(range(batch[0].added_id, batch[0].added_id + n))
            clock.ms += 1


def test_random_start_runs_whole_milliseconds_after_a_shard_ran_out() -> None:
    _keymaker.seed_random(3)
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, random_start=True)
    first = gen.next_key(5)
    while first.added_id < 100:  # a start well above 0, so that the millisecond runs out early
        clock.ms += 1
        first = gen.next_key(5)
    t0 = first.timestamp_ms
    clock.reads, clock.tick_every = 0, 3  # the clock moves on (from its 3rd read) while the call waits
    rest = gen.next_keys(5, 2000)
    in_t0 = [k for k in rest if k.timestamp_ms == t0]
    assert len(in_t0) == 1023 - first.added_id  # the millisecond ran out
    after = [k for k in rest if k.timestamp_ms > t0]
    assert after[0].added_id == 0  # then the next one started at 0: a process that needs it all gets it all
    clock.tick_every = 0
    assert rest[-1].timestamp_ms < t0 + _keymaker.HOT_MS
    for ms in range(rest[-1].timestamp_ms + 1, t0 + 1 + _keymaker.HOT_MS):
        clock.ms = ms
        assert gen.next_key(6).added_id == 0, ms - t0
    starts = []
    for ms in range(t0 + 1 + _keymaker.HOT_MS, t0 + 41 + _keymaker.HOT_MS):
        clock.ms = ms
        starts.append(gen.next_key(6).added_id)
    assert len(set(starts)) > 30  # random again


def test_random_starts_of_two_generators_repeat_by_chance_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two generators of two processes on one shard (one clock, a sequence table each, as in two processes), 3
    keys each per millisecond over 5,000 ms: the repeats are the overlaps of their runs, about 3 * 3 / 960 per
    millisecond; starting at 0 repeats every key."""
    import hvcore._generator as generator_module

    _keymaker.seed_random(2024)
    clock = FakeClock()
    monkeypatch.setattr(generator_module, "process_table", lambda key, make: make())  # nothing shared
    one = KeyGenerator(clock=clock, random_start=True)
    two = KeyGenerator(clock=clock, random_start=True)
    old_one, old_two = KeyGenerator(clock=clock), KeyGenerator(clock=clock)
    keys: list[Key] = []
    old: list[Key] = []
    for _ in range(5000):
        for _ in range(3):
            keys += [one.next_key(1), two.next_key(1)]
            old += [old_one.next_key(1), old_two.next_key(1)]
        clock.ms += 1
    repeats = len(keys) - len(set(keys))
    expected = 5000 * 3 * 3 / 960  # 46.9
    assert 0.5 * expected < repeats < 1.6 * expected
    assert len(old) - len(set(old)) == len(old) // 2  # in step: every key of one is a key of the other


# -- options: every combination that cannot keep its promise is refused at construction -----------------------------


class SizedSequence(MemorySequence):
    """A source made for a layout with another sequence size."""

    sequence_size = 512


def test_option_combinations_that_cannot_keep_their_promise_are_refused() -> None:
    with pytest.raises(ConfigError, match="worker and sequence"):
        KeyGenerator(sequence=MemorySequence(), worker=WorkerSlice(id=1))
    with pytest.raises(ConfigError, match="random_start"):
        KeyGenerator(sequence=MemorySequence(), random_start=True)
    with pytest.raises(ConfigError, match="random_start"):
        KeyGenerator(worker=WorkerSlice(id=1), random_start=True)
    with pytest.raises(ConfigError, match="512"):
        KeyGenerator(sequence=SizedSequence())
    small = KeyLayout(epoch_ms=0, time_bits=46, shard_bits=13, sequence_bits=5)
    with pytest.raises(ConfigError, match="bits <= 3"):
        KeyGenerator(small, worker=WorkerSlice(id=1, bits=4))
    with pytest.raises(ConfigError, match="WorkerSlice"):
        KeyGenerator(worker=3)  # type: ignore[arg-type]
    assert KeyGenerator(worker=WorkerSlice(id=1), random_start=False).worker == WorkerSlice(id=1)


@pytest.mark.parametrize("bad", [12, 1.5, object(), [MemorySequence()], b"redis://127.0.0.1:6379/0", {"url": "x"}])
def test_a_sequence_that_is_neither_a_source_nor_a_url_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigError, match="SequenceSource"):
        KeyGenerator(sequence=bad)
    with pytest.raises(ConfigError, match="SequenceSource"):
        AsyncKeyGenerator(sequence=bad)


def test_a_string_sequence_must_be_a_url_of_a_known_scheme() -> None:
    with pytest.raises(ConfigError, match="URL such as") as info:
        KeyGenerator(sequence="127.0.0.1:6379 password=hunter2")
    assert "hunter2" not in str(info.value)
    with pytest.raises(PluginError, match="nosuch"):
        KeyGenerator(sequence="nosuch://127.0.0.1/0")
    with pytest.raises(ConfigError, match="bogus"):  # the plugin's own checks, before anything connects
        KeyGenerator(sequence="redis://127.0.0.1:6379/0?bogus=1")


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis, and a key prefix no other test uses."""
    import uuid

    import redis
    from fixtures.services import REDIS_URL, missing_service

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return f"{REDIS_URL}?key_prefix=hv-keygen-{uuid.uuid4().hex[:10]}&check_clock=false"


def test_a_sequence_url_is_read_as_the_datastore_reads_it(redis_url: str) -> None:
    with KeyGenerator(sequence=redis_url) as gen:
        assert type(gen.sequence).__name__ == "RedisSequence"
        assert not gen.random_start
        keys = [gen.next_key(3) for _ in range(50)] + gen.next_keys(3, 500)
        assert_unique(keys)
        other = KeyGenerator(sequence=redis_url)  # another "process" on the same Redis
        keys += other.next_keys(3, 500) + [other.next_key(3) for _ in range(50)]
        other.close()
    assert_unique(keys)
    assert gen.sequence._closed  # made from the URL: closed with the generator
    with pytest.raises(HypervaultError, match="closed"):
        gen.next_key(3)


def test_an_async_generator_makes_the_asyncio_source_of_a_url(redis_url: str) -> None:
    async def main() -> list[Key]:
        async with AsyncKeyGenerator(sequence=redis_url) as gen:
            assert type(gen.sequence).__name__ == "AsyncRedisSequence"
            keys = await gen.next_keys(2, 300) + [await gen.next_key(2) for _ in range(30)]
        with pytest.raises(HypervaultError, match="closed"):
            await gen.next_key(2)
        return keys

    assert_unique(asyncio.run(main()))


def test_close_ends_the_generator_and_leaves_a_given_source_open() -> None:
    source = MemorySequence()
    gen = KeyGenerator(sequence=source, clock=FakeClock())
    gen.next_key(1)
    gen.close()
    gen.close()  # idempotent
    assert not source.closed  # not made by the generator: its owner closes it
    for call in (lambda: gen.next_key(1), lambda: gen.next_keys(1, 5)):
        with pytest.raises(HypervaultError, match="closed"):
            call()
    local = KeyGenerator()
    local.next_key(1)  # the fast path is warm
    local.close()
    with pytest.raises(HypervaultError, match="closed"):
        local.next_key(1)
    assert "closed" in repr(local)


@pytest.mark.parametrize("n", [1_500, 50_000, 200_000])
def test_a_batch_draws_sequence_numbers_in_proportion_to_its_size(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """next_keys(shard, n) skipped everything still wanted at every millisecond boundary (quadratic: 400,000 keys
    took 6 s, 10**12 never returned): it draws no more than a millisecond can still give."""
    import itertools

    import hvcore._generator as generator_module

    skipped = 0
    real_islice = itertools.islice

    def counting_islice(iterable: Any, *args: Any) -> Any:
        nonlocal skipped
        skipped += args[-1] if len(args) == 1 else 0
        return real_islice(iterable, *args)

    monkeypatch.setattr(generator_module, "islice", counting_islice)
    ticks = itertools.count(1_800_000_000_000)
    gen = KeyGenerator(clock=lambda: next(ticks))  # every reading a new millisecond: no sleeping
    keys = gen.next_keys(1, n)
    assert len(keys) == n and keys == sorted(set(keys))
    assert {k.shard_id for k in keys} == {1}
    assert skipped <= 2 * n, f"{skipped:,} sequence numbers skipped over to make {n:,} keys"


def test_skip_numbers_moves_past_a_stretch_of_the_current_millisecond() -> None:
    """After a collision the datastore steps past a random stretch: the next key lands beyond it, same millisecond;
    a shard that has not drawn in this millisecond, or a shared sequence, is left alone."""
    clock = FakeClock()
    gen = KeyGenerator(clock=clock, random_start=False)
    first = gen.next_key(4)
    gen.skip_numbers(4, 10)
    after = gen.next_key(4)
    assert (after.created, after.added_id) == (first.created, first.added_id + 11)
    gen.skip_numbers(5, 10)  # shard 5 has not drawn in this millisecond: nothing to skip
    assert gen.next_key(5).added_id == 0
    gen.skip_numbers(4, 0)  # nothing, not an error
    assert gen.next_key(4).added_id == after.added_id + 1


@pytest.mark.parametrize(
    ("clock", "said"),
    [(time.time_ns, "µs or ns"), (lambda: time.time_ns() // 1000, "µs or ns"), (time.time, "float")],
)
def test_a_clock_in_other_units_is_a_typed_error(clock: Any, said: str) -> None:
    """A test clock in ns, µs or float seconds: `InvalidArgument` naming the unit expected (was a bare
    OverflowError or TypeError from deep inside)."""
    generator = KeyGenerator(clock=clock)
    with pytest.raises(InvalidArgument, match=said) as caught:
        generator.next_key(1)
    assert "milliseconds" in str(caught.value)
