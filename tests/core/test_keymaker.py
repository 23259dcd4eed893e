"""The C accelerator (hvcore._speedups) against its pure-Python twin: same keys, same errors, no leaks, no races."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fixtures.services import IN_CI
from hypothesis import given
from hypothesis import strategies as st

from hvcore import Key, KeyGenerator, KeyLayout, _keymaker

ROOT = Path(__file__).resolve().parents[2]
MAX_ID = 2**63 - 1
OLD = KeyLayout.HYPERVAULT.key_type


def test_the_accelerator_is_built_where_a_compiler_is() -> None:
    """CI machines have gcc: there, a build that silently fell back to pure Python is a failure."""
    if not IN_CI:
        pytest.skip("only asserted with CI=true (a local build without a compiler may fall back)")
    if os.environ.get("HYPERVAULT_PURE_PYTHON", "") not in ("", "0"):
        pytest.skip("HYPERVAULT_PURE_PYTHON is set: the accelerator is off on purpose")
    from hvcore import _speedups

    assert _keymaker.ACCELERATED
    assert _keymaker.make_keys is _speedups.make_keys
    free_threaded = not getattr(sys, "_is_gil_enabled", lambda: True)() or "t" in getattr(sys, "abiflags", "")
    direct_layout = sys.implementation.name == "cpython" and (3, 11) <= sys.version_info[:2] <= (3, 13)
    direct_layout = direct_layout and not free_threaded
    assert bool(_speedups.DIRECT) is direct_layout


@pytest.fixture
def c() -> Any:
    """The compiled module in use (skipped when it was not built, or turned off by HYPERVAULT_PURE_PYTHON)."""
    module = pytest.importorskip("hvcore._speedups")
    if not _keymaker.ACCELERATED:
        pytest.skip("HYPERVAULT_PURE_PYTHON is set: the accelerator is off")
    return module


def _python_keys(cls: type[Key], start: int, count: int) -> list[Key]:
    return [int.__new__(cls, v) for v in range(start, start + count)]


@given(value=st.integers(0, MAX_ID), old_layout=st.booleans())
def test_make_key_equals_int_new(value: int, old_layout: bool) -> None:
    c = pytest.importorskip("hvcore._speedups")
    cls = OLD if old_layout else Key
    key = c.make_key(cls, value)
    assert type(key) is cls and key == value and int(key) == value
    assert repr(key) == f"Key({value})" and hash(key) == hash(value)
    expected = int.__new__(cls, value)
    assert (key.shard_id, key.added_id, key.timestamp_ms) == (
        expected.shard_id,
        expected.added_id,
        expected.timestamp_ms,
    )


@given(start=st.integers(0, MAX_ID), count=st.integers(0, 1100))
def test_make_keys_equals_int_new(start: int, count: int) -> None:
    c = pytest.importorskip("hvcore._speedups")
    count = min(count, MAX_ID - start + 1)
    keys = c.make_keys(Key, start, count)
    assert keys == _python_keys(Key, start, count)
    assert all(type(k) is Key for k in keys)
    assert _keymaker.make_keys(Key, start, count) == keys  # whichever implementation is in use


@pytest.mark.parametrize("start", [0, 1, 2**30 - 3, 2**60 - 2, (2**30 - 1) << 30, MAX_ID - 5, 1 << 33])
def test_make_keys_across_digit_boundaries(c: Any, start: int) -> None:
    count = min(10, MAX_ID - start + 1)
    assert c.make_keys(Key, start, count) == list(range(start, start + count))


def test_keys_are_not_tracked_by_the_cycle_collector(c: Any) -> None:
    assert not gc.is_tracked(c.make_key(Key, 12345))
    assert not any(gc.is_tracked(k) for k in c.make_keys(OLD, 1 << 40, 100))
    key = KeyGenerator().next_key(3)
    assert not gc.is_tracked(key)
    assert gc.is_tracked(int.__new__(Key, 5))  # what the pure-Python path makes: tracked, and harmless


def test_bad_arguments_get_typed_errors(c: Any) -> None:
    class Wide(int):  # no __slots__: its instances carry a __dict__
        pass

    with pytest.raises(TypeError, match="int subclass"):
        c.make_key(float, 1)
    with pytest.raises(TypeError, match="__slots__"):
        c.make_key(Wide, 1)
    with pytest.raises(TypeError, match="must be an int"):
        c.make_key(Key, 1.0)
    with pytest.raises(TypeError, match="must be an int"):
        c.make_key(Key, True)
    for bad in (-1, 2**63, 2**70):
        with pytest.raises(ValueError, match=r"0\.\.2\*\*63-1"):
            c.make_key(Key, bad)
    with pytest.raises(ValueError, match="count"):
        c.make_keys(Key, MAX_ID, 2)
    with pytest.raises(ValueError, match="count"):
        c.make_keys(Key, 0, -1)
    with pytest.raises(TypeError, match="2 arguments"):
        c.make_key(Key)
    with pytest.raises(TypeError, match="shared-table tuple"):
        c.shared_next((1, 2), 3, 0)


def test_shared_next_leaves_odd_shard_ids_to_the_python_code(c: Any) -> None:
    gen = KeyGenerator()
    gen.next_key(0)
    assert gen._shared is not None
    for odd in (True, -1, 8192, 2**70, 3.0, "3", None):
        assert c.shared_next(gen._shared, odd, 0) is None
    with pytest.raises(Exception, match="shard id"):
        gen.next_key(True)


LEAK_PROBE = """
import gc, sys
from hvcore import Key, KeyGenerator
from hvcore import _speedups as c
gen = KeyGenerator()
for _ in range(2000):  # warm up: caches, dicts at their size
    gen.next_key(5)
    c.make_keys(Key, 1 << 40, 8)
gc.collect()
gc.disable()  # no collection in the loop frees objects made before it
refs = sys.getrefcount(Key)
blocks = sys.getallocatedblocks()
for i in range(100_000):
    gen.next_key(i % 50)
    c.make_keys(Key, 1 << 40, 8)
print(sys.getrefcount(Key) - refs, sys.getallocatedblocks() - blocks)
"""


def test_no_reference_or_memory_leak(c: Any) -> None:
    """Measured in a fresh interpreter with the collector off: nothing but the loop makes or frees objects.

    In the suite's own process, keys made by earlier tests (held by their garbage or their threads) were freed
    during the loop now and then, so the count of references to `Key` went down (a failure once in a full run).
    """
    done = subprocess.run([sys.executable, "-c", LEAK_PROBE], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    refs, blocks = (int(x) for x in done.stdout.split())
    assert refs == 0  # each key gave back its reference to its type
    assert blocks < 5_000  # a leak of one object per call would be 100,000+


def test_c_and_python_paths_interleave_without_duplicates() -> None:
    """Threads on the C fast path and on the Python path share one generator's state: no id twice."""
    gen = KeyGenerator()
    python_path = getattr(KeyGenerator, "_next_key_py", KeyGenerator.next_key)
    results: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def work(index: int) -> None:
        out = results[index]
        start.wait()
        for i in range(30_000):
            shard = i % 3
            out.append(gen.next_key(shard) if index % 2 else python_path(gen, shard))
            if i % 97 == 0:
                out.extend(gen.next_keys(shard, 7))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [k for out in results for k in out]
    assert len(everything) == len(set(everything))
    for out in results:  # what one thread gets only increases, per shard
        for shard in range(3):
            mine = [k for k in out if (k >> 10) & 8191 == shard]
            assert mine == sorted(mine)


@pytest.mark.parametrize("constants", ["LANES = 32", "LANES = 32; SLICES = 0", "LANES = 16; SLICES = 1"])
def test_a_stale_build_of_another_table_layout_is_left_unused(constants: str) -> None:
    """An accelerator built for another table (each worker slice a table of its own before SLICES, other lanes)
    would reserve in it otherwise than the Python code: the pure-Python functions are used instead."""
    fake = (
        "import sys, types; m = types.ModuleType('hvcore._speedups'); "
        f"exec({constants!r}, m.__dict__); m.HOT_MS = 10; sys.modules['hvcore._speedups'] = m; "
        "from hvcore import _keymaker; print(_keymaker.ACCELERATED, _keymaker.table_reserve)"
    )
    env = {**os.environ, "HYPERVAULT_PURE_PYTHON": "0"}
    done = subprocess.run([sys.executable, "-c", fake], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "None"]


@pytest.mark.slow
def test_generator_suite_passes_in_pure_python() -> None:
    """The whole generator suite again with HYPERVAULT_PURE_PYTHON=1: what a build without a compiler runs."""
    env = {**os.environ, "HYPERVAULT_PURE_PYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "tests/core/test_generator.py", "tests/core/test_key.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    probe = subprocess.run(
        [sys.executable, "-c", "from hvcore import _keymaker; print(_keymaker.ACCELERATED)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"


# -- the shared table after fork(): lock-free (C) and fcntl (pure Python) give the same reservations ----------------


SLICES = [None, None, range(64, 128), range(256), range(512, 1024), range(1020, 1024), range(512)]
"""Parts of the sequence reserved in: all of it (None), worker slices of bits 4, 2, 1 and 8."""


@given(
    ops=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from([0, 0, 3_000, 9_000_000]),
            st.integers(0, 40),
            st.integers(0, 1100),
            st.sampled_from(SLICES),
        ),
        max_size=60,
    ),
    floor=st.integers(-1, 2),
    spread=st.sampled_from([0, 959, 1, 1023]),
    seed=st.integers(0, 2**64 - 1),
)
def test_atomic_table_reserves_exactly_like_the_locked_one(
    ops: list[tuple[int, int, int, int, range | None]], floor: int, spread: int, seed: int
) -> None:
    """Reservations of the whole sequence and of worker slices (of any bits), mixed: C and Python agree, each
    lies in its slice, and no number of a (shard, millisecond) goes out twice."""
    if not _keymaker.ACCELERATED:
        pytest.skip("the lock-free table needs the C accelerator")
    from hvcore import _speedups
    from hvcore._sharedseq import SharedSequenceTable

    atomic = SharedSequenceTable(4, 1024, floor=floor, spread=spread)
    locked = SharedSequenceTable(4, 1024, floor=floor, spread=spread)
    locked._atomic_reserve = None  # the fcntl path, as a build without the accelerator runs it
    assert atomic.atomic
    given: set[tuple[int, int, int]] = set()
    try:
        for shard, far, near, wanted, numbers in sorted(ops, key=lambda op: op[2]):  # ms move forward, mostly
            part = far + near  # in one of a few lanes
            mine = spread if numbers is None else min(spread, len(numbers) - 1)  # a slice's random starts fit it
            _speedups.seed_random(seed)  # both draw the same random start (the locked path from _keymaker's C one)
            c_range = atomic.reserve(shard, part, wanted, spread=mine, numbers=numbers)
            _speedups.seed_random(seed)
            assert c_range == locked.reserve(shard, part, wanted, spread=mine, numbers=numbers)
            assert 0 <= c_range.start <= c_range.stop <= 1024
            if c_range and numbers is not None:
                assert numbers.start <= c_range.start and c_range.stop <= numbers.stop
            taken = {(shard, part, number) for number in c_range}
            assert not taken & given
            given |= taken
            seed = (seed * 6364136223846793005 + 1) % 2**64
        fresh = atomic.reserve(0, 10_000, 5)
        assert (fresh.start == 0) if spread == 0 else (0 <= fresh.start <= spread)
    finally:
        atomic.close()
        locked.close()


@given(seed=st.integers(0, 2**64 - 1), bound=st.integers(1, 2**32))
def test_random_starts_are_in_range_and_follow_the_seed(seed: int, bound: int) -> None:
    c = pytest.importorskip("hvcore._speedups")
    c.seed_random(seed)
    drawn = [c.random_below(bound) for _ in range(5)]
    assert all(0 <= x < bound for x in drawn)
    c.seed_random(seed)
    assert [c.random_below(bound) for _ in range(5)] == drawn
    for bad in (0, 2**32 + 1):
        with pytest.raises(ValueError, match="bound"):
            c.random_below(bad)


def test_each_process_draws_its_own_random_starts() -> None:
    """Seeded from os.urandom at import: two fresh interpreters draw different numbers."""
    code = "from hvcore import _keymaker; print([_keymaker.random_below(1 << 32) for _ in range(3)])"
    outs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(outs) == 2


def test_atomic_table_rejects_a_shard_outside_it(c: Any) -> None:
    from hvcore._sharedseq import SharedSequenceTable

    table = SharedSequenceTable(4, 1024)
    with pytest.raises(ValueError, match="shared table"):
        table.reserve(4, 1, 1)
    with pytest.raises(ValueError, match="used_bits"):
        c.table_reserve(table.buffer, 0, 4, 0, 1, 1, 1024, 10, 0)  # 1024 numbers do not fit 10 bits of "used"
    with pytest.raises(ValueError, match="spread"):
        c.table_reserve(table.buffer, 0, 4, 0, 1, 1, 1024, 11, 1024)  # a random start must leave a number
    with pytest.raises(ValueError, match="lane"):
        c.table_reserve(table.buffer, _keymaker.LANES, 4, 0, 1, 1, 1024, 11, 0)  # no such lane
    with pytest.raises(ValueError, match="shared table"):
        c.table_reserve(table.buffer, 0, 4, 4, 1, 1, 1024, 11, 0)  # the table has 4 shards
    table.close()


def _spread_in_child(gen: KeyGenerator, rounds: int) -> tuple[int, int]:
    """Fork; the child makes keys over 1,000 shards plus batches and writes them to a pipe-backed file."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        code = 0
        try:
            keys = [gen.next_key(s) for _ in range(rounds) for s in range(1000)]
            keys += gen.next_keys(7, 3000) + gen.next_keys(8, 1500)
            with os.fdopen(write, "w") as out:
                out.write(",".join(map(str, keys)))
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    return pid, read


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_forked_processes_spreading_over_shards_never_repeat() -> None:
    """Parent and three children draw from the shared table at once (the lock-free path when built)."""
    if sys.version_info >= (3, 12) and threading.active_count() > 1:  # pragma: no cover
        pytest.skip("fork() in a process with threads warns on 3.12+")
    gen = KeyGenerator()
    gen.next_key(0)
    children = [_spread_in_child(gen, 20) for _ in range(3)]
    parent = [gen.next_key(s) for _ in range(20) for s in range(1000)]
    parent += gen.next_keys(7, 3000) + gen.next_keys(8, 1500)
    everything: list[int] = list(parent)
    for pid, read in children:
        with os.fdopen(read) as pipe:
            text = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        keys = [int(k) for k in text.split(",")]
        assert len(keys) == 20 * 1000 + 4500
        everything += keys
    assert len(everything) == 4 * (20 * 1000 + 4500)
    assert len(set(everything)) == len(everything), "two processes handed out the same id"
    batch = gen.next_keys(9, 100)
    assert batch == sorted(batch) and len(set(batch)) == 100


def test_a_free_threaded_python_without_the_gil_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-free paths need the GIL: without it (free-threaded build, GIL off) the generator says what to do."""
    from hvcore import HypervaultError

    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    with pytest.raises(HypervaultError, match="PYTHON_GIL=1"):
        KeyGenerator()
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert KeyGenerator().next_key(1).shard_id == 1
