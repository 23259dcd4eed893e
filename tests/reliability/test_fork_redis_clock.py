"""fork() with open pools, Redis stopped and restarted under load, a clock stepped back: no id twice, nothing lost."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from typing import Any

import pytest
from fixtures.faults import DuplicateCounter, FaultServers, OwnRedis, WriteLoad, count_outcome, warm_prefix

import hvcore
from hvplugin_redis import RedisSequence


def backend_pids(db: hvcore.Datastore, shards: tuple[int, ...]) -> list[int]:
    pids = []
    for shard in shards:
        with db.cursor(shard) as cur:
            cur.execute("SELECT pg_backend_pid() AS pid")
            row = cur.fetchone()
            assert row is not None
            pids.append(row["pid"])
    return pids


# -- fork --------------------------------------------------------------------------------------------------------

_FORK_DB: list[hvcore.Datastore] = []  # the parent's datastore, inherited by the forked workers


def _fork_worker(index: int, count: int, conn: Any) -> None:
    db = _FORK_DB[0]
    counter = DuplicateCounter()
    assert db.logger is not None
    db.logger.addHandler(counter)
    keys = [int(db.put((index * 5 + n) % 16, 2, w=index, n=n)) for n in range(count)]
    conn.send((keys, counter.count, backend_pids(db, (0, 8))))
    conn.close()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("sequence", ["redis", "local"])
def test_fork_workers_write_parent_sessions_survive(
    fault_pg: FaultServers, redis_prefix: tuple[str, str], duplicate_log: Any, sequence: str
) -> None:
    logger, duplicates = duplicate_log
    url, prefix = redis_prefix
    source = RedisSequence(url, key_prefix=prefix) if sequence == "redis" else None
    a, b = fault_pg.fresh_db(0), fault_pg.fresh_db(1)
    db = hvcore.Datastore(
        [dict(shards="0-8", **a), dict(shards="8-16", **b)], backend="jsonb", pool_max=2, logger=logger,
        sequence=source,
    )  # fmt: skip
    db.provision()
    parent_keys = [int(db.put(s, 1, w="parent")) for s in range(16)]
    pids_before = backend_pids(db, (0, 8))
    _FORK_DB[:] = [db]
    ctx = multiprocessing.get_context("fork")
    workers, pipes = [], []
    for index in range(4):
        mine, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_fork_worker, args=(index, 400, theirs))
        proc.start()
        workers.append(proc)
        pipes.append(mine)
    parent_during = [int(db.put(n % 16, 1, w="parent", n=n)) for n in range(400)]  # meanwhile, on the same pools
    results = [pipe.recv() for pipe in pipes]
    for proc in workers:
        proc.join(30)
        assert proc.exitcode == 0
    _FORK_DB.clear()
    child_keys = [k for keys, _, _ in results for k in keys]
    child_duplicates = sum(d for _, d, _ in results)
    child_pids = {p for _, _, pids in results for p in pids}
    pids_after = backend_pids(db, (0, 8))
    everything = parent_keys + parent_during + child_keys
    found = db.get_many(everything)
    repeated = sum(c - 1 for c in Counter(everything).values())
    print(
        f"\nfork ({sequence} sequence): 4 workers × 400 writes + parent {len(parent_keys) + len(parent_during)}; "
        f"keys={len(everything)} repeated={repeated} retried_ids={duplicates.count + child_duplicates} "
        f"found={len(found)} lost={len(everything) - len(found)}"
    )
    assert pids_after == pids_before, "the parent's sessions were replaced: a child ended them"
    assert not child_pids & set(pids_before), "a child used the parent's session"
    assert repeated == 0 and duplicates.count + child_duplicates == 0
    assert len(found) == len(everything)
    db.close()
    if source is not None:
        source.close()


# -- Redis stopped and restarted -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.postgres
def test_redis_stopped_and_restarted_under_load(
    fault_pg: FaultServers, own_redis: OwnRedis, duplicate_log: Any
) -> None:
    logger, duplicates = duplicate_log
    prefix = "hvfault:restart"
    warm_prefix(own_redis.url, prefix)
    source = RedisSequence(own_redis.url, key_prefix=prefix, connect_timeout=0.3, read_timeout=0.3, retries=1)
    db = hvcore.Datastore(
        [dict(shards="0-16", **fault_pg.fresh_db(0))], backend="jsonb", pool_max=4, logger=logger, sequence=source
    )
    db.provision()
    load = WriteLoad(db, list(range(16)), threads=4, pause_after_error=0.01)
    try:
        load.start()
        load.wait_acks(300)
        stopped_at = time.monotonic()
        own_redis.stop()
        time.sleep(1.0)
        while not load.failed:  # every writer needs a new block sooner or later
            assert time.monotonic() - stopped_at < 10, "no write failed while Redis was down"
            time.sleep(0.05)
        own_redis.start()  # empty: counters and the born guard are gone
        up_at = time.monotonic()
        recovered_at = load.wait_acks(1, since=up_at)
        load.wait_acks(300, since=recovered_at)
    finally:
        load.stop()
    outcome = count_outcome(load, db)
    errors = Counter(type(exc).__name__ for *_, exc in load.failed)
    late = [exc for _, at, _, exc in load.failed if at > recovered_at + 0.5]
    print(
        f"\nredis restart: {outcome}, errors={dict(errors)}, retried_ids={duplicates.count}, "
        f"recovered {recovered_at - up_at:.2f} s after the restart"
    )
    assert set(errors) == {"SequenceUnavailable"}
    assert not late, f"writes still failing after recovery: {late[:3]}"
    assert outcome["duplicate_keys"] == 0 and duplicates.count == 0
    assert outcome["lost"] == 0 and outcome["wrong"] == 0
    assert recovered_at - up_at < source.max_wait + 2.0
    db.close()
    source.close()


# -- the clock stepped back ----------------------------------------------------------------------------------


class SteppedClock:
    """An injected clock (Unix ms): set by the test; ``tick_every`` reads advance it by 1 ms (a clock that runs)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.tick_every = 0
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.reads += 1
            if self.tick_every and self.reads % self.tick_every == 0:
                self.ms += 1
            return self.ms


T0 = 1_760_000_000_000  # 2025-10-09, in Unix ms


def test_clock_stepped_back_5_ms_waits_and_repeats_nothing() -> None:
    clock = SteppedClock(T0)
    gen = hvcore.KeyGenerator(clock=clock, max_backwards_ms=100)
    before = [gen.next_key(s % 4) for s in range(2000)]  # 500 per shard in T0
    clock.ms = T0 - 5
    clock.tick_every = 50  # the clock runs on: 1 ms per 50 reads
    after = [gen.next_key(s % 4) for s in range(8000)]  # 2000 per shard: more than T0 has left
    keys = before + after
    per_shard = {s: [k for k in keys if k.shard_id == s] for s in range(4)}
    newest_ms = max(k >> hvcore.KeyLayout.DEFAULT.time_shift for k in before)
    print(
        f"\nclock back 5 ms: keys={len(keys)} duplicates={len(keys) - len(set(keys))}, "
        f"clock read {clock.reads} times, ended at T0{clock.ms - T0:+d} ms"
    )
    assert len(set(keys)) == len(keys)
    for shard_keys in per_shard.values():
        assert shard_keys == sorted(shard_keys)  # one thread's keys only increase, across the step
    assert all(k >> hvcore.KeyLayout.DEFAULT.time_shift >= newest_ms for k in after)  # no earlier ms reused
    assert clock.ms > T0  # it waited for the clock to pass T0 again (no error raised)


def test_clock_stepped_back_10_s_raises_clock_moved_backwards() -> None:
    clock = SteppedClock(T0)
    gen = hvcore.KeyGenerator(clock=clock, max_backwards_ms=100)
    keys = [gen.next_key(7) for _ in range(10)]
    clock.ms = T0 - 10_000
    with pytest.raises(hvcore.ClockMovedBackwards, match="behind") as info:
        for _ in range(2000):  # T0's sequence lasts 1014 more ids, then the generator refuses
            keys.append(gen.next_key(7))
    served_in_t0 = len(keys)
    clock.ms = T0 + 1  # the clock is fixed
    keys += [gen.next_key(7) for _ in range(100)]
    print(f"\nclock back 10 s: {served_in_t0} keys from T0, then {type(info.value).__name__}: {info.value}")
    assert isinstance(info.value, hvcore.HypervaultError)
    assert served_in_t0 == 1024
    assert len(set(keys)) == len(keys) and keys == sorted(keys)


@pytest.mark.postgres
@pytest.mark.parametrize("step_ms", [5, 10_000])
def test_clock_stepped_back_through_put_on_postgres(fault_pg: FaultServers, step_ms: int) -> None:
    settings = fault_pg.fresh_db(0)
    with hvcore.Datastore([dict(shards="0-4", **settings)], backend="hstore") as db:
        db.provision()
        clock = SteppedClock(T0)
        db.generator = hvcore.KeyGenerator(clock=clock)
        keys = [db.put(1, 1, n=str(n)) for n in range(300)]
        clock.ms -= step_ms
        clock.tick_every = 20
        failed: list[BaseException] = []
        for n in range(300, 2000):
            try:
                keys.append(db.put(1, 1, n=str(n)))
            except hvcore.HypervaultError as exc:
                failed.append(exc)
                break
        rows = fault_pg.sql(0, "SELECT count(*), count(DISTINCT id) FROM shard0001.entities", dbname=settings["dbname"])
        print(f"\nclock back {step_ms} ms through put: acknowledged={len(keys)} failed={len(failed)} rows={rows[0]}")
        assert rows[0] == (len(keys), len(keys))
        assert len(set(keys)) == len(keys)
        if step_ms <= db.generator.max_backwards_ms:
            assert not failed
        else:
            assert [type(e) for e in failed] == [hvcore.ClockMovedBackwards]


@pytest.mark.slow
@pytest.mark.postgres
def test_fork_while_threads_write_hangs_nothing_and_repeats_nothing(fault_pg: FaultServers) -> None:
    a, b = fault_pg.fresh_db(0), fault_pg.fresh_db(1)
    db = hvcore.Datastore([dict(shards="0-8", **a), dict(shards="8-16", **b)], backend="jsonb", pool_max=4)
    db.provision()
    load = WriteLoad(db, list(range(16)), threads=4)
    _FORK_DB[:] = [db]
    ctx = multiprocessing.get_context("fork")
    results = []
    try:
        load.start()
        load.wait_acks(100)
        for round_ in range(3):  # fork at moments when writer threads hold locks and connections
            procs, pipes = [], []
            for index in range(2):
                mine, theirs = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_fork_worker_plain, args=(round_ * 2 + index, 200, theirs))
                proc.start()
                procs.append(proc)
                pipes.append(mine)
            for pipe, proc in zip(pipes, procs, strict=True):
                assert pipe.poll(30), "a forked worker hung"
                results.append(pipe.recv())
                proc.join(10)
                assert proc.exitcode == 0
    finally:
        load.stop()
        _FORK_DB.clear()
    child_keys = [k for keys in results for k in keys]
    outcome = count_outcome(load, db)
    found = db.get_many(child_keys)
    everything = child_keys + list(load.acked)
    repeated = len(everything) - len(set(everything))
    print(
        f"\nfork under load: 6 workers × 200 writes forked while 4 threads wrote; parent {outcome}; "
        f"child keys={len(child_keys)} found={len(found)} repeated={repeated}"
    )
    assert outcome["lost"] == 0 and outcome["failed"] == 0 and outcome["duplicate_keys"] == 0
    assert len(found) == len(child_keys) and repeated == 0
    db.close()


def _fork_worker_plain(index: int, count: int, conn: Any) -> None:
    db = _FORK_DB[0]
    conn.send([int(db.put((index * 3 + n) % 16, 3, w=index, n=n)) for n in range(count)])
    conn.close()
