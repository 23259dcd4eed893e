"""Fifth newcomer: two KeyGenerators of one process with different clock functions repeated each other's ids.

The KeyGenerator docstring says every generator without a ``sequence`` takes its numbers from the process's one
sequence table, "so two generators of a process never hand out the same key either" -- but generators given
different ``clock`` functions kept separate tables. Two clocks that read the same real time (two lambdas, or the
default generator beside one given ``clock=`` reading ``time.time_ns``) then started each millisecond's sequence
at the same place: 97-100 % of their ids were the same. Fixed: one table per layout and worker numbers, whatever
the clock (tests/core/test_generator_clocks.py has the property over arbitrary clocks).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import hvcore


def _real_ms() -> int:
    return time.time_ns() // 1_000_000


def _other_real_ms() -> int:
    return time.time_ns() // 1_000_000


CLOCKS: dict[str, tuple[Callable[[], int] | None, Callable[[], int] | None]] = {
    "default-and-custom": (None, _real_ms),
    "two-custom-functions": (_real_ms, _other_real_ms),
}


@pytest.mark.parametrize("clocks", sorted(CLOCKS))
def test_two_generators_with_clocks_reading_the_same_time_never_repeat_an_id(clocks: str) -> None:
    first, second = CLOCKS[clocks]
    a = hvcore.KeyGenerator() if first is None else hvcore.KeyGenerator(clock=first)
    b = hvcore.KeyGenerator(clock=second)
    try:
        keys_a = {a.next_key(3) for _ in range(2000)}
        keys_b = {b.next_key(3) for _ in range(2000)}
        interleaved_a, interleaved_b = set(), set()
        for _ in range(2000):
            interleaved_a.add(a.next_key(4))
            interleaved_b.add(b.next_key(4))
    finally:
        a.close()
        b.close()
    assert not keys_a & keys_b and not interleaved_a & interleaved_b, (
        f"{len(keys_a & keys_b)} + {len(interleaved_a & interleaved_b)} ids repeated"
    )
