"""Sixth newcomer: a generator with a worker number and a plain one, in one process, repeat each other's ids.

The KeyGenerator docstring: "every generator without a ``sequence`` takes its numbers from the process's one sequence
table for its layout (and worker numbers ...), so two generators of a process never hand out the same key either".
A generator given ``worker=WorkerSlice(...)`` (or a `Datastore(worker="lease")`, whose generator has a leased worker
number) keeps a table of its own, and its slice of each millisecond's sequence overlaps the numbers a plain
``KeyGenerator()`` of the same process hands out: about one id in ten is made by both (285 of 3,000 here). A
process with a leased or fixed worker number for its datastore and a ``KeyGenerator()`` "for ids you store
elsewhere" (README) gets ids equal to its records' keys. Two generators with the same worker number are refused
(`ConfigError`); a worker number beside the whole sequence is not.
"""

from __future__ import annotations

import hvcore


def test_a_worker_slice_generator_and_a_plain_one_never_repeat_an_id() -> None:
    sliced = hvcore.KeyGenerator(worker=hvcore.WorkerSlice(id=1, bits=4))
    plain = hvcore.KeyGenerator()
    try:
        made_sliced, made_plain = set(), set()
        for _ in range(3000):
            made_sliced.add(sliced.next_key(3))
            made_plain.add(plain.next_key(3))
        for _ in range(30):
            made_sliced.update(sliced.next_keys(4, 100))
            made_plain.update(plain.next_keys(4, 100))
    finally:
        sliced.close()
        plain.close()
    repeated = made_sliced & made_plain
    assert not repeated, f"{len(repeated)} ids made by both generators"
