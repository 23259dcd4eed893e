"""KeyGenerators of one process with any clocks: no id is handed out twice, whatever each generator's clock reads.

Found by a newcomer (tests/newcomer/test_findings5_keygen_clocks.py): generators given different ``clock``
callables kept separate sequence tables, so two clocks reading the same time repeated 97-100 % of each other's
ids. Now one table serves a layout and its worker numbers whatever the clock; its lanes keep clocks reading
far-apart times (a test's fake clock beside the system clock) from moving each other's shards.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvcore import (
    ClockMovedBackwards,
    ConfigError,
    Key,
    KeyGenerator,
    KeyLayout,
    WorkerGrant,
    WorkerSlice,
    _keymaker,
    _worker,
)
from hvcore._sharedseq import LANE_STEP_MS, LANES

T0 = 1_770_000_000_000  # Unix ms, 2026-02-02: apart from the other generator tests' times
MODES = ["c", "python", "locked"] if _keymaker.ACCELERATED else ["locked"]
"""How keys are taken: straight from the table in C; by the Python code from blocks reserved in C; by the Python
code from a table reserved under locks (the build without the accelerator)."""
OFFSETS = [0, 0, 1, 3, 700, 3_000, -50_000_000, 90_000_000]
"""Where clocks start, from T0: the same time, close (one lane), or far apart (lanes of their own)."""


class StepClock:
    """Unix ms that a test moves; a reading repeated 5,000 times moves on by one (a wait for the next millisecond
    ends instead of spinning for ever)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.reads = 0

    def step(self, ms: int) -> None:
        self.ms += ms
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        if self.reads % 5000 == 0:
            self.ms += 1
        return self.ms


@contextlib.contextmanager
def generators(mode: str, clocks: list[StepClock], random_starts: list[bool]) -> Iterator[list[KeyGenerator]]:
    gc.collect()  # generators of earlier examples give their lanes up: each example starts afresh
    with pytest.MonkeyPatch.context() as patch:
        if mode == "locked":
            patch.setattr(_keymaker, "table_reserve", None)  # the table made next is the locked kind
        gens = [
            KeyGenerator(clock=clock, random_start=random_starts[i % len(random_starts)], block_size=4)
            for i, clock in enumerate(clocks)
        ]
        if mode == "python":
            for gen in gens:
                gen._shared = None  # the Python code, with blocks reserved in C
        assert all(gen._source is gens[0]._source for gen in gens)  # whatever their clocks: one table
        assert gens[0]._source.atomic == (mode != "locked")
        try:
            yield gens
        finally:
            for gen in gens:
                gen.close()


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=150, deadline=None)
@given(
    offsets=st.lists(st.sampled_from(OFFSETS), min_size=2, max_size=4),
    random_starts=st.lists(st.booleans(), min_size=1, max_size=4),
    calls=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([0, 0, 0, 1, 2, 5, LANE_STEP_MS - 1, LANE_STEP_MS + 1, 40_000]),
            st.integers(0, 2),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 2**64 - 1),
)
def test_generators_with_any_clocks_never_repeat_an_id(
    mode: str,
    offsets: list[int],
    random_starts: list[bool],
    calls: list[tuple[int, int, int, int]],
    seed: int,
) -> None:
    """Generators whose clocks are any non-decreasing sequences of ms (equal, close or far apart across
    generators), interleaved: no id repeats, and no key is older than its generator's clock reading. A clock
    behind what another one used of its lane may wait or raise ClockMovedBackwards, never repeat an id."""
    _keymaker.seed_random(seed)
    clocks = [StepClock(T0 + offset) for offset in offsets]
    made: list[Key] = []
    last: dict[tuple[int, int], Key] = {}  # per generator and shard: its keys only increase
    with generators(mode, clocks, random_starts) as gens:
        for index, step, shard, n in calls:
            gen, clock = gens[index % len(gens)], clocks[index % len(gens)]
            clock.step(step)
            reading = clock.ms
            try:
                keys = [gen.next_key(shard)] if n == 1 else gen.next_keys(shard, n)
            except ClockMovedBackwards:
                continue
            assert len(keys) == n
            assert all(key.timestamp_ms >= reading for key in keys)
            mine = (index % len(gens), shard)
            assert keys == sorted(keys) and (mine not in last or keys[0] > last[mine])
            last[mine] = keys[-1]
            made += keys
    assert len(set(made)) == len(made), f"{len(made) - len(set(made))} repeated ids"


@pytest.mark.parametrize("mode", MODES)
def test_a_clock_going_back_below_its_lane_keeps_the_keys_increasing(mode: str) -> None:
    """The clock of one generator steps back before the first millisecond of its lane (found by the reliability
    test of a clock stepped back 5 ms): it goes on in its shards' newest millisecond, not in a new lane below."""
    clock = StepClock(T0 + 60_000_000)
    with generators(mode, [clock], [False]) as (gen,):
        before = [gen.next_key(s % 3) for s in range(30)]
        clock.step(-5)
        after = [gen.next_key(s % 3) for s in range(30)]
        for shard in range(3):
            mine = [k for k in before + after if k.shard_id == shard]
            assert mine == sorted(mine) and len(set(mine)) == len(mine)
        assert {k.timestamp_ms for k in after} == {T0 + 60_000_000}


@pytest.mark.parametrize("mode", MODES)
def test_clocks_reading_the_same_time_share_each_millisecond(mode: str) -> None:
    """Two clock callables reading the same fake time: their keys of a millisecond follow each other."""
    one, two = StepClock(T0 + 5_000_000), StepClock(T0 + 5_000_000)
    with generators(mode, [one, two], [False]) as (a, b):
        keys = [gen.next_key(7) for _ in range(3) for gen in (a, b)]
        assert [key.added_id for key in keys] == [0, 1, 2, 3, 4, 5] if mode == "c" else len(set(keys)) == 6
        assert {key.timestamp_ms for key in keys} == {T0 + 5_000_000}


@pytest.mark.parametrize("mode", MODES)
def test_clocks_far_apart_keep_out_of_each_others_way(mode: str) -> None:
    """A fake clock in the past, one in the future and the system clock, interleaved on one shard: each key
    carries its own clock's time, and each fake clock's sequence starts at 0 as if it were alone."""
    past, future = StepClock(T0 - 80_000_000), StepClock(time.time_ns() // 1_000_000 + 10**9)
    with generators(mode, [past, future], [False]) as (a, b):
        real = KeyGenerator()
        for _ in range(20):
            for i in range(30):
                ka, kb, kr = a.next_key(3), b.next_key(3), real.next_key(3)
                assert (ka.timestamp_ms, ka.added_id) == (past.ms, i)
                assert (kb.timestamp_ms, kb.added_id) == (future.ms, i)
                assert abs(kr.timestamp_ms - time.time_ns() // 1_000_000) < 1000
            past.step(1)
            future.step(1)
        real.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_clock_behind_another_in_its_lane_goes_on_after_it(mode: str) -> None:
    """Two clocks less than a lane step apart share the lane: the one behind goes on in the newest millisecond
    the other used on that shard (as when a clock goes back), and on another shard uses its own time."""
    ahead, behind = StepClock(T0 + 7_000_000), StepClock(T0 + 7_000_010)
    with generators(mode, [ahead, behind], [False]) as (a, b):
        a.next_key(1)  # the lane starts here
        ahead.step(50)
        first = a.next_key(1)
        key = b.next_key(1)
        assert key.timestamp_ms == first.timestamp_ms == ahead.ms and key > first
        assert b.next_key(2).timestamp_ms == behind.ms
        ahead.step(50)
        a.next_key(1)
        behind.step(1)
        later = b.next_key(1)  # no ClockMovedBackwards: it moves on again with the other clock (after its block)
        assert later > key and later.timestamp_ms == (ahead.ms if mode == "c" else key.timestamp_ms)
        assert [b.next_key(1).timestamp_ms for _ in range(4)][-1] == ahead.ms


@pytest.mark.parametrize("mode", MODES)
def test_more_far_apart_clocks_than_lanes_still_never_repeat(mode: str) -> None:
    """Past `LANES` stretches of time in use, the nearest lane stretches to a new one: still no repeats."""
    clocks = [StepClock(T0 + 20_000_000 + i * 100_000) for i in range(LANES + 6)]
    with generators(mode, clocks, [False]) as gens:
        made: list[Key] = []
        for _ in range(3):
            for gen, clock in zip(gens, clocks, strict=True):
                made += [gen.next_key(0), gen.next_key(1)]
                clock.step(1)
        assert len(set(made)) == len(made)
        assert gens[0]._source._words[1] == LANES


def test_lanes_of_generators_gone_are_given_up() -> None:
    """A generator's lanes are forgotten once it is gone (as the whole table is once no generator holds it):
    a new generator on that fake time starts its sequence at 0 again, while the table lives on."""
    keeper = KeyGenerator()  # holds the table
    clock = StepClock(T0 + 30_000_000)
    gen = KeyGenerator(clock=clock)
    assert [gen.next_key(4).added_id for _ in range(3)] == [0, 1, 2]
    other = KeyGenerator(clock=StepClock(clock.ms))
    assert other.next_key(4).added_id >= 3  # shared while the first one lives (past its block, without the C code)
    del gen, other
    gc.collect()
    again = KeyGenerator(clock=StepClock(clock.ms))
    assert again.next_key(4).added_id == 0
    assert again._source is keeper._source
    keeper.close()


def test_a_layout_of_its_own_is_a_table_of_its_own() -> None:
    layout = KeyLayout(epoch_ms=T0 - 1000)
    assert KeyGenerator(layout, clock=StepClock(T0))._source is not KeyGenerator(clock=StepClock(T0))._source


# -- worker slices beside plain generators (tests/newcomer/test_findings6_keygen_workers.py) -----------------------

KINDS = [
    ("plain", 0, 0),  # random start
    ("plain0", 0, 0),  # random_start=False
    ("system", 0, 0),  # KeyGenerator(): the system clock, random start
    ("slice", 1, 4),  # a fixed worker number (WorkerSlice): 64..127
    ("slice", 0, 2),  # other bits: 0..255, overlapping the one above (refused beside it: one scope)
    ("slice", 3, 8),
    ("grant", 1, 4),  # a leased worker number (WorkerGrant, a scope of its own: never refused)
    ("grant", 0, 1),  # 0..511: overlaps most of the others
    ("grant", 0, 4),
    ("grant", 1, 1),
]
"""Generator kinds: (kind, worker id, bits)."""


class QuickClock(StepClock):
    """A `StepClock` that moves on after 200 readings: a worker's slice of 4 numbers runs out often."""

    def __call__(self) -> int:
        self.reads += 1
        if self.reads % 200 == 0:
            self.ms += 1
        return self.ms


def _make(kind: tuple[str, int, int], clock: StepClock) -> KeyGenerator:
    name, number, bits = kind
    if name == "system":
        return KeyGenerator(block_size=4)
    if name in ("plain", "plain0"):
        return KeyGenerator(clock=clock, random_start=name == "plain", block_size=4)
    worker = WorkerSlice(id=number, bits=bits)
    if name == "slice":
        return KeyGenerator(worker=worker, clock=clock, block_size=4)
    grant = WorkerGrant(worker, floor_ms=-1, horizon_ms=2**45, scope=f"property {number}/{bits}")
    return KeyGenerator(worker=grant, clock=clock, block_size=4)


def _numbers(kind: tuple[str, int, int]) -> range:
    name, number, bits = kind
    return WorkerSlice(id=number, bits=bits).numbers() if name in ("slice", "grant") else range(1024)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=100, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=4),
    offsets=st.lists(st.sampled_from([0, 0, 0, 0, *OFFSETS]), min_size=1, max_size=4),
    calls=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([0, 0, 0, 0, 1, 2, LANE_STEP_MS + 1]),
            st.integers(0, 1),
            st.sampled_from([1, 1, 2, 3, 12]),
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 2**64 - 1),
)
def test_worker_slices_and_plain_generators_never_repeat_an_id(
    mode: str,
    kinds: list[tuple[str, int, int]],
    offsets: list[int],
    calls: list[tuple[int, int, int, int]],
    seed: int,
) -> None:
    """Plain generators (random start or not, a fake clock or the system one) and generators with worker
    numbers (fixed or leased, of the same or other bits, overlapping or not), each made at its first call (any
    order, after others made keys in that millisecond), with clocks equal, close or far apart: no id repeats,
    a worker's keys stay in its slice, and no generator is refused but one beside a fixed worker number whose
    slice overlaps its own (`ConfigError`, as two generators with one worker number)."""
    _keymaker.seed_random(seed)
    clocks = [QuickClock(T0 + offsets[i % len(offsets)]) for i in range(len(kinds))]
    gens: dict[int, KeyGenerator | None] = {}
    made: list[Key] = []
    last: dict[tuple[int, int], Key] = {}
    gc.collect()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_worker, "_claims", [])  # no worker number held by an earlier example
        if mode == "locked":
            patch.setattr(_keymaker, "table_reserve", None)
        try:
            for index, step, shard, n in calls:
                index %= len(kinds)
                kind, clock = kinds[index], clocks[index]
                if index not in gens:
                    try:
                        gens[index] = gen = _make(kind, clock)
                    except ConfigError:  # refused only beside a fixed worker number overlapping its own
                        own = _numbers(kind)
                        held = [_numbers(kinds[i]) for i, g in gens.items() if g is not None and kinds[i][0] == "slice"]
                        assert kind[0] == "slice" and any(set(own) & set(other) for other in held)
                        gens[index] = None
                    else:
                        assert gen._source.atomic == (mode != "locked")
                        if mode == "python":
                            gen._shared = None
                gen_or_none = gens[index]
                if gen_or_none is None:
                    continue
                gen = gen_or_none
                clock.step(step)
                reading = clock.ms
                try:
                    keys = [gen.next_key(shard)] if n == 1 else gen.next_keys(shard, n)
                except ClockMovedBackwards:
                    continue
                assert len(keys) == n
                assert all(key.added_id in _numbers(kind) for key in keys)
                if kind[0] != "system":
                    assert all(key.timestamp_ms >= reading for key in keys)
                mine = (index, shard)
                assert keys == sorted(keys) and (mine not in last or keys[0] > last[mine])
                last[mine] = keys[-1]
                made += keys
        finally:
            for gen_or_none in gens.values():
                if gen_or_none is not None:
                    gen_or_none.close()
    assert len(set(made)) == len(made), f"{len(made) - len(set(made))} repeated ids"
