"""Worker slices and grants: keys unique by construction between generators of different worker numbers.

The property tests drive two generators (two processes, each with its own clock, skewed as hypothesis likes)
through any interleaving of calls, clock moves and lease events, and check the promise of each scheme.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import struct
import sys
import tempfile
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvcore import (
    ClockMovedBackwards,
    ConfigError,
    Key,
    KeyGenerator,
    KeyLayout,
    WorkerGrant,
    WorkerLeaseLost,
    WorkerSlice,
    _generator,
    _keymaker,
    _worker,
)
from hvcore._agenerator import AsyncKeyGenerator

LAYOUT = KeyLayout.DEFAULT
T0 = 1_760_000_000_000  # Unix ms


class Clock:
    """Unix ms moved by the test, and by one every ``tick_every`` reads (so waits end)."""

    def __init__(self, ms: int = T0, tick_every: int = 7) -> None:
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


@contextlib.contextmanager
def separate_tables() -> Iterator[None]:
    """Generators made here get a sequence table each, as generators of two processes do (one process's share
    one, whatever their clocks)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_generator, "process_table", lambda key, make: make())
        yield


def ids(keys: list[Key]) -> list[int]:
    return [k.added_id for k in keys]


# -- WorkerSlice -----------------------------------------------------------------------------------------------------


def test_worker_slices_split_the_sequence_bits() -> None:
    assert WorkerSlice(id=3).numbers() == range(192, 256)  # 4 bits by default: 16 workers × 64
    assert WorkerSlice(id=0, bits=1).numbers() == range(512)
    assert WorkerSlice(id=255, bits=8).numbers() == range(1020, 1024)
    assert WorkerSlice(id=1, bits=2).workers == 4
    assert WorkerSlice(id=2, bits=3).numbers(KeyLayout(epoch_ms=0, time_bits=48, shard_bits=10, sequence_bits=6)) == (
        range(16, 24)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"id": 16}, r"0\.\.15"),
        ({"id": -1}, r"0\.\.15"),
        ({"id": 1, "bits": 0}, r"1\.\.8"),
        ({"id": 1, "bits": 9}, r"1\.\.8"),
        ({"id": 1.0}, "id"),
        ({"id": True}, "id"),
        ({"id": 1, "bits": "4"}, "bits"),
    ],
)
def test_bad_worker_slices_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WorkerSlice(**kwargs)


def test_a_worker_makes_only_its_slice_and_waits_for_the_next_millisecond() -> None:
    clock = Clock(tick_every=0)
    gen = KeyGenerator(worker=WorkerSlice(id=5, bits=4), clock=clock)
    keys = [gen.next_key(9) for _ in range(40)] + gen.next_keys(9, 24)
    assert ids(keys) == list(range(320, 384))  # all 64 of worker 5, in T0
    assert {k.timestamp_ms for k in keys} == {T0} and {k.shard_id for k in keys} == {9}
    clock.tick_every = 5
    more = gen.next_keys(9, 200) + [gen.next_key(9) for _ in range(100)]
    assert all(320 <= i < 384 for i in ids(more)) and min(k.timestamp_ms for k in more) > T0
    everything = keys + more
    assert len(set(everything)) == len(everything) and everything == sorted(everything)


def test_one_worker_number_serves_one_generator_of_a_process() -> None:
    clock = Clock(tick_every=0)
    first = KeyGenerator(worker=WorkerSlice(id=2), clock=clock)
    with pytest.raises(ConfigError, match="already used by another KeyGenerator"):
        KeyGenerator(worker=WorkerSlice(id=2), clock=clock)
    with pytest.raises(ConfigError, match="already used"):
        AsyncKeyGenerator(worker=WorkerSlice(id=1, bits=3), clock=clock)  # 128..255 overlaps 2 of 4 bits
    other = KeyGenerator(worker=WorkerSlice(id=3), clock=clock)  # another number: fine
    used = [first.next_key(1) for _ in range(10)]
    clock.ms += 2
    used += [first.next_key(1)]
    first.close()  # given back: a new generator may take it, after the last millisecond the first one used
    clock.ms = T0  # even with a clock that is behind
    clock.tick_every = 3
    second = KeyGenerator(worker=WorkerSlice(id=2), clock=clock)
    fresh = [second.next_key(1) for _ in range(10)]
    assert min(k.timestamp_ms for k in fresh) > T0 + 2
    assert not set(fresh) & set(used)
    other.close()
    second.close()


def test_a_collected_generator_gives_its_number_back_with_its_last_millisecond() -> None:
    clock = Clock(tick_every=0)
    gen = KeyGenerator(worker=WorkerSlice(id=7), clock=clock)
    clock.ms = T0 + 50
    gen.next_key(1)
    del gen
    gc.collect()
    clock.ms, clock.tick_every = T0, 2
    again = KeyGenerator(worker=WorkerSlice(id=7), clock=clock)
    assert again.next_key(1).timestamp_ms > T0 + 50


def test_the_accelerated_and_python_paths_use_the_slice() -> None:
    gen = KeyGenerator(worker=WorkerSlice(id=9, bits=6))  # 16 per millisecond: numbers 144..159
    python_path = getattr(KeyGenerator, "_next_key_py", KeyGenerator.next_key)
    keys = [gen.next_key(4) for _ in range(300)] + [python_path(gen, 4) for _ in range(300)] + gen.next_keys(4, 300)
    assert all(144 <= i < 160 for i in ids(keys))
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert not gen.random_start


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_after_fork_parent_and_child_share_the_slice_and_keep_it() -> None:
    if sys.version_info >= (3, 12) and threading.active_count() > 1:  # pragma: no cover
        pytest.skip("fork() in a process with threads warns on 3.12+")
    gen = KeyGenerator(worker=WorkerSlice(id=1, bits=2))  # numbers 256..511
    before = gen.next_keys(2, 100)
    fd, path = tempfile.mkstemp(prefix="hv-worker-fork-")
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            keys = [gen.next_key(2) for _ in range(3000)] + gen.next_keys(2, 2000)
            with open(path, "wb") as out:
                out.write(struct.pack(f"<{len(keys)}q", *keys))
        except BaseException:
            code = 1
        os._exit(code)
    parent = [gen.next_key(2) for _ in range(3000)] + gen.next_keys(2, 2000)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    child = [Key(k) for k in struct.unpack(f"<{len(data) // 8}q", data)]
    everything = before + parent + child
    assert len(child) == 5000 and len(set(everything)) == len(everything)
    assert all(256 <= i < 512 for i in ids(everything))
    gen.close()  # forked: the child may still use the number, so this process keeps it
    with pytest.raises(ConfigError, match="already used"):
        KeyGenerator(worker=WorkerSlice(id=1, bits=2))


# -- WorkerGrant: floor and horizon ------------------------------------------------------------------------------------


def test_a_grant_is_used_after_its_floor_and_up_to_its_horizon() -> None:
    clock = Clock(tick_every=3)
    grant = WorkerGrant(WorkerSlice(id=4), floor_ms=T0 + 5, horizon_ms=T0 + 8)
    gen = KeyGenerator(worker=grant, clock=clock)
    first = gen.next_key(1)
    assert first.timestamp_ms == T0 + 6 and first.added_id == 256  # waited for the previous holder's floor
    keys = [first]
    with pytest.raises(WorkerLeaseLost, match=f"up to Unix ms {T0 + 8}"):
        while True:
            keys.append(gen.next_key(1))
    assert max(k.timestamp_ms for k in keys) == T0 + 8
    grant._note = "renewals have failed for 3.0 s: server closed the connection"
    with pytest.raises(WorkerLeaseLost, match="renewals have failed"):
        gen.next_keys(1, 3)
    grant.extend(T0 + 20)  # renewed: keys again
    keys += gen.next_keys(1, 10)
    grant.extend(T0 + 10)  # a horizon never moves back
    assert grant.horizon_ms == T0 + 20
    assert len(set(keys)) == len(keys) and keys == sorted(keys)


def test_a_revoked_grant_stops_the_generator_at_once() -> None:
    clock = Clock(tick_every=0)
    grant = WorkerGrant(WorkerSlice(id=0, bits=1), floor_ms=-1, horizon_ms=T0 + 1000)
    gen = KeyGenerator(worker=grant, clock=clock)
    python_path = getattr(KeyGenerator, "_next_key_py", KeyGenerator.next_key)
    gen.next_key(1)  # the millisecond is current: the fast path would go on in it
    grant.revoke("worker 0 is now held by another lease")
    for call in (lambda: gen.next_key(1), lambda: gen.next_keys(1, 4), lambda: python_path(gen, 1)):
        with pytest.raises(WorkerLeaseLost, match="held by another lease"):
            call()
    grant.extend(T0 + 5000)  # a lost grant stays lost
    with pytest.raises(WorkerLeaseLost):
        gen.next_key(2)
    assert grant.lost and "lost" in repr(grant)


def test_a_grant_serves_one_generator_at_a_time() -> None:
    clock = Clock(tick_every=0)
    grant = WorkerGrant(WorkerSlice(id=6), floor_ms=-1, horizon_ms=T0 + 10, scope="postgres db1")
    gen = KeyGenerator(worker=grant, clock=clock)
    with pytest.raises(ConfigError, match="already used"):
        KeyGenerator(worker=grant, clock=clock)
    clock.ms = T0 + 3
    gen.next_key(1)
    gen.close()
    clock.ms, clock.tick_every = T0, 2
    again = KeyGenerator(worker=grant, clock=clock)  # after the first is closed: from its last millisecond on
    assert again.next_key(1).timestamp_ms > T0 + 3
    # Another grant of the same number (a new lease after this one was lost) is kept apart by its floor instead.
    later = WorkerGrant(WorkerSlice(id=6), floor_ms=T0 + 10, horizon_ms=T0 + 20, scope="postgres db1")
    KeyGenerator(worker=later, clock=clock).close()
    again.close()


def test_bad_grants_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="WorkerSlice"):
        WorkerGrant(3, floor_ms=0, horizon_ms=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="floor_ms"):
        WorkerGrant(WorkerSlice(id=1), floor_ms=1.5, horizon_ms=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="horizon_ms"):
        WorkerGrant(WorkerSlice(id=1), floor_ms=0, horizon_ms=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="horizon_ms"):
        WorkerGrant(WorkerSlice(id=1), floor_ms=0, horizon_ms=5).extend("6")  # type: ignore[arg-type]


def test_the_async_generator_follows_a_grant() -> None:
    async def main() -> None:
        clock = Clock(tick_every=2)
        grant = WorkerGrant(WorkerSlice(id=1, bits=8), floor_ms=T0, horizon_ms=T0 + 3)
        gen = AsyncKeyGenerator(worker=grant, clock=clock)
        keys = await gen.next_keys(3, 8)
        assert all(k.timestamp_ms > T0 for k in keys) and set(ids(keys)) <= {4, 5, 6, 7}
        with pytest.raises(WorkerLeaseLost):
            await gen.next_keys(3, 50)
        await gen.close()

    asyncio.run(main())


# -- properties: any interleaving of two generators sharing a shard --------------------------------------------------

# An operation: (which generator, what, amount). What: "key", "keys" (a batch of amount), "tick" (its clock moves
# amount ms), "back" (its clock steps back amount ms).
OPS = st.lists(
    st.tuples(st.sampled_from("AB"), st.sampled_from(["key", "keys", "tick", "back"]), st.integers(1, 40)),
    min_size=1,
    max_size=60,
)


def _run(gens: dict[str, Any], clocks: dict[str, Clock], ops: list[tuple[str, str, int]], out: dict[str, list[Key]]):
    """Carry out ``ops``; refusals (a clock too far back, a lease not covering the time) are allowed outcomes."""
    for who, what, amount in ops:
        gen, clock = gens[who], clocks[who]
        if gen is None:
            continue
        try:
            if what == "key":
                out[who].append(gen.next_key(7))
            elif what == "keys":
                out[who].extend(gen.next_keys(7, amount))
            elif what == "tick":
                clock.ms += amount % 5
            else:
                clock.ms -= amount % 4
        except (ClockMovedBackwards, WorkerLeaseLost):
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=OPS,
    bits=st.sampled_from([1, 4, 8]),
    numbers=st.tuples(st.integers(0, 255), st.integers(0, 255)),
    skew=st.integers(-30, 30),
)
def test_two_workers_never_make_the_same_key(
    ops: list[tuple[str, str, int]], bits: int, numbers: tuple[int, int], skew: int
) -> None:
    """By construction: whatever the interleaving, the clocks and their skew, two worker numbers share no key."""
    _worker._claims.clear()
    a, b = numbers[0] % (1 << bits), numbers[1] % (1 << bits)
    if a == b:
        b = (a + 1) % (1 << bits)
    clocks = {"A": Clock(T0), "B": Clock(T0 + skew)}
    gens: dict[str, Any] = {
        "A": KeyGenerator(worker=WorkerSlice(id=a, bits=bits), clock=clocks["A"], max_backwards_ms=5),
        "B": KeyGenerator(worker=WorkerSlice(id=b, bits=bits), clock=clocks["B"], max_backwards_ms=5),
    }
    out: dict[str, list[Key]] = {"A": [], "B": []}
    _run(gens, clocks, ops, out)
    for who, number in (("A", a), ("B", b)):
        keys = out[who]
        assert len(set(keys)) == len(keys) and keys == sorted(keys)
        assert all(k.added_id >> (10 - bits) == number for k in keys)
    assert not set(out["A"]) & set(out["B"])
    for gen in gens.values():
        gen.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=OPS,
    after=OPS,
    horizon=st.integers(0, 12),
    extend=st.integers(0, 10),
    skew=st.integers(-40, 40),
    revoke=st.booleans(),
)
def test_a_leased_number_passes_to_the_next_holder_without_a_shared_key(
    before: list[tuple[str, str, int]],
    after: list[tuple[str, str, int]],
    horizon: int,
    extend: int,
    skew: int,
    revoke: bool,
) -> None:
    """A holds worker 3 up to its horizon; its lease lapses and B (another process, clock skewed) takes worker 3
    with A's last confirmed horizon as its floor, while A may still be running, not knowing yet. No key is shared,
    whatever the interleaving; A never goes past its horizon, B never at or below its floor."""
    _worker._claims.clear()
    clocks = {"A": Clock(T0), "B": Clock(T0 + skew)}
    grant_a = WorkerGrant(WorkerSlice(id=3), floor_ms=-1, horizon_ms=T0 + horizon, scope="process A")
    with separate_tables():
        gens: dict[str, Any] = {"A": KeyGenerator(worker=grant_a, clock=clocks["A"], max_backwards_ms=5), "B": None}
    out: dict[str, list[Key]] = {"A": [], "B": []}
    _run(gens, clocks, before, out)
    grant_a.extend(T0 + horizon + extend)  # a renewal confirmed before the lease lapsed
    confirmed = grant_a.horizon_ms
    grant_b = WorkerGrant(WorkerSlice(id=3), floor_ms=confirmed, horizon_ms=confirmed + 30, scope="process B")
    with separate_tables():
        gens["B"] = KeyGenerator(worker=grant_b, clock=clocks["B"], max_backwards_ms=60)
    if revoke:
        grant_a.revoke("taken over")
    _run(gens, clocks, after, out)
    assert all(k.timestamp_ms <= confirmed for k in out["A"])
    assert all(k.timestamp_ms > confirmed for k in out["B"])
    assert not set(out["A"]) & set(out["B"])
    for keys in out.values():
        assert len(set(keys)) == len(keys) and keys == sorted(keys)
    for gen in gens.values():
        gen.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**64 - 1), skew=st.integers(-3, 3))
def test_two_default_generators_share_keys_only_where_their_runs_overlap(
    ops: list[tuple[str, str, int]], seed: int, skew: int
) -> None:
    """The default (random start), what it claims: each generator's keys are unique and increasing; in every
    millisecond each one's numbers on the shard are one run from a start in 0..959 (0 after running out), so two
    generators repeat a key only where their runs of one millisecond overlap (by chance: the starts are random)."""
    _keymaker.seed_random(seed)
    clocks = {"A": Clock(T0), "B": Clock(T0 + skew)}
    with separate_tables():
        gens: dict[str, Any] = {
            "A": KeyGenerator(clock=clocks["A"], random_start=True, max_backwards_ms=5),
            "B": KeyGenerator(clock=clocks["B"], random_start=True, max_backwards_ms=5),
        }
    out: dict[str, list[Key]] = {"A": [], "B": []}
    _run(gens, clocks, ops, out)
    runs: dict[str, dict[int, list[int]]] = {}
    for who, keys in out.items():
        assert len(set(keys)) == len(keys) and keys == sorted(keys)
        per_ms: dict[int, list[int]] = defaultdict(list)
        for k in keys:
            per_ms[k.timestamp_ms].append(k.added_id)
        for numbers in per_ms.values():
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # one run
            assert numbers[0] <= 959 or numbers[0] == 0
        runs[who] = per_ms
    shared = set(out["A"]) & set(out["B"])
    overlap = sum(len(set(runs["A"][ms]) & set(runs["B"].get(ms, ()))) for ms in runs["A"])
    assert len(shared) == overlap
    for gen in gens.values():
        gen.close()
