"""A fourth newcomer's findings: some hvcore errors do not survive pickling.

Exceptions cross process boundaries by pickle (concurrent.futures.ProcessPoolExecutor, multiprocessing.Pool,
Celery). Errors whose __init__ takes keyword-only arguments cannot be rebuilt from their ``args``: a worker
raising `ServerLimitReached` or `ShardMoved` makes ProcessPoolExecutor fail with BrokenProcessPool (the pool is
then unusable), and `ShardMapError` comes back with its message split into one "problem" per character.
"""

from __future__ import annotations

import pickle

import pytest

from hvcore import errors


def _examples() -> list[errors.HypervaultError]:
    return [
        errors.ShardMoved("shard 5 moved to h2:5432/app", shard_id=5, server="h2:5432/app", version=3),
        errors.ServerLimitReached("out of shared memory", limit="max_locks_per_transaction", server="h1"),
        errors.ShardMapError(["shards 4-8 are mapped twice", "shard 9 is mapped to no server"]),
    ]


@pytest.mark.parametrize("index", range(3), ids=["ShardMoved", "ServerLimitReached", "ShardMapError"])
def test_hvcore_errors_round_trip_through_pickle(index: int) -> None:
    error = _examples()[index]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
