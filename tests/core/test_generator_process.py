"""Generators of one process share its sequence table: no two of them ever hand out the same key.

Found by a newcomer (tests/newcomer/test_findings2_keys.py): two ``KeyGenerator()`` of one process each drew their
own random start per millisecond from separate sequence state, and repeated 55-80 % of each other's ids.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvcore import Key, KeyGenerator, KeyLayout, WorkerSlice, _keymaker

T0 = 1_760_000_000_000  # Unix ms, 2025-10-09
MODES = ["c", "python", "locked"] if _keymaker.ACCELERATED else ["locked"]
"""How keys are taken: straight from the table in C; by the Python code from blocks reserved in C; by the Python
code from a table reserved under locks (the build without the accelerator)."""


class TickingClock:
    """Unix ms that move on by one every ``every`` reads."""

    def __init__(self, every: int) -> None:
        self.ms = T0
        self.every = every
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        if self.reads % self.every == 0:
            self.ms += 1
        return self.ms


@contextlib.contextmanager
def generators(
    mode: str, count: int, clock: Callable[[], int] | None, random_starts: list[bool]
) -> Iterator[list[KeyGenerator]]:
    with pytest.MonkeyPatch.context() as patch:
        if mode == "locked":
            patch.setattr(_keymaker, "table_reserve", None)  # the table made next is the locked kind
        gens = [KeyGenerator(clock=clock, random_start=random_starts[i % len(random_starts)]) for i in range(count)]
        if mode == "python":
            for gen in gens:
                gen._shared = None  # the Python code, with blocks reserved in C
        assert all(gen._source is gens[0]._source for gen in gens)
        assert gens[0]._source.atomic == (mode != "locked")
        yield gens


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(2, 4),
    random_starts=st.lists(st.booleans(), min_size=1, max_size=4),
    calls=st.lists(
        st.tuples(
            st.integers(0, 3), st.integers(0, 2), st.one_of(st.just(1), st.integers(0, 80), st.integers(900, 1100))
        ),
        min_size=1,
        max_size=60,
    ),
    every=st.integers(2, 40),
    seed=st.integers(0, 2**64 - 1),
)
def test_generators_of_one_process_never_repeat_a_key(
    mode: str, count: int, random_starts: list[bool], calls: list[tuple[int, int, int]], every: int, seed: int
) -> None:
    """Any interleaving of next_key / next_keys calls of several generators (random starts or not) on one clock."""
    _keymaker.seed_random(seed)
    made: dict[int, list[Key]] = {}
    with generators(mode, count, TickingClock(every), random_starts) as gens:
        for index, shard, n in calls:
            gen = gens[index % count]
            keys = [gen.next_key(shard)] if n == 1 else gen.next_keys(shard, n)
            assert len(keys) == n
            made.setdefault(index % count, []).extend(keys)
    everything = [k for keys in made.values() for k in keys]
    assert len(set(everything)) == len(everything), f"{len(everything) - len(set(everything))} repeated keys"
    for keys in made.values():  # each generator's keys of a shard increase
        for shard in range(3):
            mine = [k for k in keys if k.shard_id == shard]
            assert mine == sorted(mine)


@pytest.mark.parametrize("mode", MODES)
def test_threads_each_with_its_own_generator_never_repeat(mode: str) -> None:
    with generators(mode, 4, None, [True]) as gens:
        out: list[list[Key]] = [[] for _ in gens]

        def work(index: int) -> None:
            gen = gens[index]
            for i in range(4000):
                out[index].append(gen.next_key(1)) if i % 3 else out[index].extend(gen.next_keys(1, 7))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(gens))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    everything = [k for keys in out for k in keys]
    assert len(set(everything)) == len(everything), f"{len(everything) - len(set(everything))} repeated keys"


def test_generators_share_a_table_only_with_the_same_layout() -> None:
    other_epoch = KeyLayout(epoch_ms=KeyLayout.DEFAULT.epoch_ms - 1000)
    a, b = KeyGenerator(), KeyGenerator(random_start=False)
    assert a._source is b._source  # random starts or not: one table
    assert KeyGenerator(other_epoch)._source is not a._source  # other keys: nothing to share
    worker = KeyGenerator(worker=WorkerSlice(id=3, bits=4))
    assert worker._source is a._source and a._source.sequence_size == 1024  # a worker slice: numbers in it
    clock = TickingClock(5)
    assert KeyGenerator(clock=clock)._source is a._source  # whatever the clock (tests/core/test_generator_clocks.py)
    assert KeyGenerator(clock=clock)._source is KeyGenerator(clock=TickingClock(5))._source
    keys = [g.next_key(2) for _ in range(500) for g in (a, b, KeyGenerator(other_epoch))]
    assert len(set(keys)) == len(keys)


def test_a_home_applies_to_the_millisecond_it_starts() -> None:
    clock = TickingClock(10**9)  # a clock that stays put
    homed, plain = KeyGenerator(clock=clock, random_start=True), KeyGenerator(clock=clock, random_start=True)
    homed.start_each_ms_at(480)
    assert homed.next_key(4).added_id == 480
    assert plain.next_key(4).added_id > 480  # the same millisecond goes on past what the other took
    clock.ms += 1
    assert [homed.next_key(5).added_id for _ in range(3)] == [480, 481, 482]
