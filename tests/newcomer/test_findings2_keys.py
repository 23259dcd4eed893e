"""A second newcomer's findings on KeyGenerator: two generators in one process.

README: "No id repeats within a process, across its threads, or across processes forked from it". A process that
makes a KeyGenerator() in two places (two modules, or one per request) gets the same ids from both: each
millisecond's sequence starts at a random number drawn once per process, so two generators of one process start
every millisecond at the same number and step together — worse than two unrelated processes, which collide only
by chance.
"""

from __future__ import annotations

import hvcore


def test_two_key_generators_of_one_process_never_repeat_an_id() -> None:
    first, second = hvcore.KeyGenerator(), hvcore.KeyGenerator()
    made_first, made_second = [], []
    for _ in range(2000):
        made_first.append(first.next_key(1))
        made_second.append(second.next_key(1))
    repeated = set(made_first) & set(made_second)
    assert not repeated, f"{len(repeated)} of 2,000 ids made by both generators"
