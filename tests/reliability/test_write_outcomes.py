"""An acknowledged write is stored under its own key: lost connections settled by the server, collisions redrawn.

Real servers (the reliability suite's own), real faults: a session cut while its INSERT waits on a lock, a commit
whose reply never comes (the server waits for a synchronous standby that does not exist), and independent writer
processes (started with subprocess, sharing nothing) on one shard with the default configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers
from hypothesis import HealthCheck, event, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres import _astore, _store
from hvcore import _generator, _keymaker
from hvcore._worker import home_start

pytestmark = pytest.mark.postgres

T0 = 1_760_000_000_000
SHARD = 5
WRITER = Path(__file__).with_name("independent_writer.py")


class FrozenClock:
    """An injected clock stuck at one millisecond (both writers of a test read the same one)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def fresh(fault_pg: FaultServers, **options: Any) -> tuple[hvcore.Datastore, dict[str, Any]]:
    """A provisioned jsonb datastore on a new database of fault server 0, and its settings."""
    settings = fault_pg.fresh_db(0)
    db = hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", **options)
    db.provision()
    return db, settings


def lockstep(db: Any, clock: FrozenClock) -> None:
    """Make ``db`` draw keys as every process did before: sequence 0, 1, 2 ... of the frozen millisecond."""
    db.generator = as_another_process(hvcore.KeyGenerator, clock=clock, random_start=False)


def as_another_process(make: Callable[..., Any], **options: Any) -> Any:
    """A generator (``make(**options)``) with a sequence table of its own, as a generator of another process has
    (the generators of one process share one per layout, whatever their clocks, and never collide)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_generator, "process_table", lambda key, make_table: make_table())
        return make(**options)


def rows_of_shard(fault_pg: FaultServers, dbname: str, shard: int = SHARD) -> dict[int, dict[str, Any]]:
    """Every row of a shard, read outside hypervault: id → body."""
    rows = fault_pg.sql(0, f"SELECT id, body FROM shard{shard:04d}.entities", dbname=dbname)
    return {int(key): body for key, body in rows}


def cut_while_waiting(fault_pg: FaultServers, dbname: str, action: Callable[[], Any], shard: int = SHARD) -> Any:
    """Run ``action`` while a table lock holds its statement; terminate its waiting session; release; its outcome.

    The outcome is the action's result, or the exception it raised.
    """
    blocker = psycopg.connect(**fault_pg.settings(0, dbname=dbname), connect_timeout=5)
    # SHARE: writes wait, reads (the store's first-use layout check, the commit checks) do not
    blocker.execute(f"LOCK TABLE shard{shard:04d}.entities IN SHARE MODE")
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_capture(action)), daemon=True)
    worker.start()
    try:
        pid = _lock_waiter(fault_pg, dbname)
        fault_pg.sql(0, "SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)  # the client sees its session end and retries: the retry waits on the lock too
    finally:
        blocker.rollback()
        blocker.close()
    worker.join(30)
    assert not worker.is_alive(), "the write hung"
    return outcome[0]


def _capture(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except Exception as exc:
        return exc


def _lock_waiter(fault_pg: FaultServers, dbname: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = fault_pg.sql(
            0,
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'hypervault' "
            "AND wait_event_type = 'Lock'",
            (dbname,),
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.01)
    raise AssertionError("the write never waited on the lock")


@pytest.fixture
def taken(fault_pg: FaultServers) -> Iterator[tuple[hvcore.Datastore, hvcore.Datastore, dict[str, Any], FrozenClock]]:
    """(ours, other, settings, clock): two writers in lockstep on a fresh database; the other wrote sequence 0."""
    clock = FrozenClock(T0)
    ours, settings = fresh(fault_pg)
    other = hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb")
    lockstep(ours, clock)
    lockstep(other, clock)
    other.put(SHARD, 1, by="other")  # (shard 5, T0, sequence 0): the key ours will draw first
    yield ours, other, settings, clock
    ours.close()
    other.close()


@pytest.mark.parametrize("xid_in_txn", [False, True], ids=["returning", "explicit-transaction"])
def test_a_cut_put_whose_key_another_writer_holds_stores_its_own_row(
    fault_pg: FaultServers, taken: Any, xid_in_txn: bool
) -> None:
    ours, _, settings, _ = taken
    ours.store_for(SHARD)._xid_in_txn = xid_in_txn
    outcome = cut_while_waiting(fault_pg, settings["dbname"], lambda: ours.put(SHARD, 1, by="ours"))
    assert isinstance(outcome, hvcore.Key), outcome
    stored = rows_of_shard(fault_pg, settings["dbname"])
    assert stored[int(outcome)] == {"by": "ours"}  # success means its own row, under the key returned
    assert sorted(b["by"] for b in stored.values()) == ["other", "ours"]
    assert ours.key_collisions == 1  # the retry met the other writer's row: a collision, a fresh key
    pool = ours.status()[0]["pool"]
    # RETURNING: no id had arrived (the INSERT never ran); explicit transaction: the SELECT's id arrived with the
    # termination notice, and the server said aborted. Either way the write ran again.
    settled = "commit_checks_aborted" if xid_in_txn else "commit_checks_unknown"
    assert pool["commit_checks"] == 1 and pool[settled] == 1, pool
    assert ours.status()[0]["key_collisions"] == 1


def test_a_cut_put_many_stores_all_its_rows_and_redraws_only_the_taken_key(fault_pg: FaultServers, taken: Any) -> None:
    ours, _, settings, _ = taken
    bodies = [{"by": "ours", "i": i} for i in range(100)]
    outcome = cut_while_waiting(fault_pg, settings["dbname"], lambda: ours.put_many(SHARD, 1, bodies))
    assert isinstance(outcome, list), outcome
    stored = rows_of_shard(fault_pg, settings["dbname"])
    assert [stored[int(k)] for k in outcome] == bodies  # every key returned holds its own body, in order
    assert len(stored) == 101 and sum(1 for b in stored.values() if b["by"] == "other") == 1
    assert ours.key_collisions == 1  # only sequence 0 was taken: one key redrawn, 99 kept
    assert [k.added_id for k in outcome[1:]] == list(range(1, 100))


@pytest.mark.parametrize("xid_in_txn", [False, True], ids=["returning", "explicit-transaction"])
def test_a_cut_update_is_applied_once(fault_pg: FaultServers, taken: Any, xid_in_txn: bool) -> None:
    ours, _, settings, clock = taken
    ours.store_for(SHARD)._xid_in_txn = xid_in_txn
    clock.ms += 1
    key = ours.put(SHARD, 1, by="ours", n=1)
    outcome = cut_while_waiting(fault_pg, settings["dbname"], lambda: ours.update(key, n=2))
    assert outcome is True
    assert rows_of_shard(fault_pg, settings["dbname"])[int(key)] == {"by": "ours", "n": 2}
    outcome = cut_while_waiting(fault_pg, settings["dbname"], lambda: ours.delete(key))
    assert outcome is True and int(key) not in rows_of_shard(fault_pg, settings["dbname"])


def test_a_cut_async_put_stores_its_own_row(fault_pg: FaultServers, taken: Any) -> None:
    _, _, settings, clock = taken

    async def put() -> hvcore.Key:
        async with hvcore.AsyncDatastore([dict(shards="0-16", **settings)], backend="jsonb") as db:
            db.generator = as_another_process(hvcore.AsyncKeyGenerator, clock=clock, random_start=False)
            key = await db.put(SHARD, 1, by="ours")
            assert db.key_collisions == 1
            return key

    outcome = cut_while_waiting(fault_pg, settings["dbname"], lambda: asyncio.run(put()))
    assert isinstance(outcome, hvcore.Key), outcome
    assert rows_of_shard(fault_pg, settings["dbname"])[int(outcome)] == {"by": "ours"}


@pytest.fixture
def commits_without_reply(fault_pg: FaultServers, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commits on fault server 0 wait for a synchronous standby that never comes: the reply of a COMMIT is lost."""
    for module in (_store, _astore):
        monkeypatch.setattr(module, "SETTLE_SECONDS", 0.5)  # then the orphaned session is ended
    fault_pg.sql(0, "ALTER SYSTEM SET synchronous_standby_names = 'hv_nobody'")
    fault_pg.sql(0, "SELECT pg_reload_conf()")
    time.sleep(0.3)
    try:
        yield
    finally:
        fault_pg.sql(0, "ALTER SYSTEM RESET synchronous_standby_names")
        fault_pg.sql(0, "SELECT pg_reload_conf()")
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.parametrize("xid_in_txn", [False, True], ids=["returning", "explicit-transaction"])
def test_a_write_committed_whose_reply_never_came_is_a_success_with_exactly_one_row(
    fault_pg: FaultServers, request: pytest.FixtureRequest, xid_in_txn: bool
) -> None:
    """Both ways of reading the id: RETURNING, and BEGIN + SELECT first (what a Citus coordinator gets)."""
    db, settings = fresh(fault_pg, operation_timeout=1.0)
    db.store_for(SHARD)._xid_in_txn = xid_in_txn  # type: ignore[attr-defined]
    keyed = db.put(SHARD, 1, n=0)
    request.getfixturevalue("commits_without_reply")
    started = time.monotonic()
    key = db.put(SHARD, 1, n=1)  # committed locally, then waits for the standby; the client gives up after 1 s
    keys = db.put_many(SHARD, 1, [{"n": 2}, {"n": 3}])
    assert db.update(keyed, n=10) is True
    assert time.monotonic() - started < 20
    stored = rows_of_shard(fault_pg, settings["dbname"])
    assert stored == {int(keyed): {"n": 10}, int(key): {"n": 1}, int(keys[0]): {"n": 2}, int(keys[1]): {"n": 3}}
    pool = db.status()[0]["pool"]
    # the cancel request sent at operation_timeout usually ends the standby wait itself; a session still waiting
    # after SETTLE_SECONDS is ended (orphans_ended)
    assert pool["commit_checks_committed"] == 3 and pool["orphans_ended"] <= 3, pool
    assert db.key_collisions == 0
    db.close()


def _spawn(settings: dict[str, Any], writer: int, puts: int, start_at: int, out: Path, use_async: bool) -> Any:
    command = [sys.executable, str(WRITER), json.dumps(settings), str(writer), str(puts), "10", "100"]
    command += [str(start_at), str(out)] + (["--async"] if use_async else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_independent_processes_on_one_shard_lose_and_misattribute_nothing(
    fault_pg: FaultServers, tmp_path: Path, use_async: bool
) -> None:
    """4 processes × (4,000 puts + 10 put_many of 100), default configuration, the same seconds, one shard."""
    db, settings = fresh(fault_pg)
    db.close()
    start_at = time.time_ns() + int(2e9)  # every interpreter is up by then
    outs = [tmp_path / f"{w}.keys" for w in range(4)]
    procs = [_spawn(settings, w, 4000, start_at, outs[w], use_async) for w in range(4)]
    summaries = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stderr[-3000:]
        summaries.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [s["failed"] for s in summaries] == [0, 0, 0, 0], summaries
    acked: dict[int, tuple[int, int]] = {}
    collisions = 0
    total = 0
    for writer, out in enumerate(outs):
        for line in out.read_text().splitlines():
            if line.startswith("# collisions"):
                collisions += int(line.split()[-1])
                continue
            key, n = (int(x) for x in line.split())
            assert key not in acked, f"key {key} acknowledged to writers {acked[key][0]} and {writer}"
            acked[key] = (writer, n)
            total += 1
    assert total == 4 * (4000 + 10 * 100)
    stored = rows_of_shard(fault_pg, settings["dbname"], 3)
    assert len(stored) == total  # nothing lost, nothing stored twice
    wrong = [k for k, (w, n) in acked.items() if stored.get(k) != {"w": w, "n": n}]
    assert not wrong, f"{len(wrong)} acknowledged keys hold another row, e.g. {wrong[:3]}"
    print(f"\n4 independent {'async' if use_async else 'sync'} writers: {total} rows, {collisions} collisions redrawn")


# -- the property: any interleaving of two writers sharing a shard ---------------------------------------------------


class TickingClock:
    """A clock both writers read: it moves on one millisecond every ``per_ms`` readings (a deterministic pace)."""

    def __init__(self, per_ms: int) -> None:
        self.per_ms = per_ms
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return T0 + self.reads // self.per_ms


def _interleave(dbs: list[Any], ops: list[tuple[int, int]]) -> tuple[dict[int, dict[str, Any]], list[Exception]]:
    """Run ``ops`` ((writer, n): a put if n == 1, else a put_many of n) in order; acknowledged key → body, failures."""
    acked: dict[int, dict[str, Any]] = {}
    failures: list[Exception] = []
    for step, (writer, n) in enumerate(ops):
        bodies = [{"w": writer, "step": step, "i": i} for i in range(n)]
        try:
            keys = [dbs[writer].put(SHARD, 1, **bodies[0])] if n == 1 else dbs[writer].put_many(SHARD, 1, bodies)
        except hvcore.DuplicateKey as exc:  # every fresh key taken, 8 times over: typed, and nothing stored
            failures.append(exc)
            continue
        assert len(keys) == n
        for key, body in zip(keys, bodies, strict=True):
            assert int(key) not in acked, f"key {int(key)} acknowledged twice"
            acked[int(key)] = body
    return acked, failures


OPS = st.lists(st.tuples(st.integers(0, 1), st.sampled_from([1, 1, 2, 17, 120])), min_size=1, max_size=25)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, per_ms=st.integers(1, 600), seed=st.integers(0, 2**32), random_start=st.sampled_from([True, False]))
def test_any_interleaving_of_two_writers_stores_every_acknowledged_key_with_its_own_row(
    ops: list[tuple[int, int]], per_ms: int, seed: int, random_start: bool
) -> None:
    """Two generators (the default random start, and the old lockstep) on one memory shard, any interleaving."""
    _keymaker.seed_random(seed)
    clock = TickingClock(per_ms)
    name = f"prop-{seed}-{per_ms}-{len(ops)}-{time.perf_counter_ns()}"
    dbs = [hvcore.Datastore([dict(shards="0-16", name=name)], backend="memory") for _ in range(2)]
    for db in dbs:
        db.generator = as_another_process(hvcore.KeyGenerator, clock=clock, random_start=random_start)
    try:
        dbs[0].provision()
        acked, _ = _interleave(dbs, ops)
        stored = {int(r.key): r.data for r in dbs[0].query(shards=[SHARD])}
        assert stored == acked  # every acknowledged key holds its own writer's row; nothing else was stored
        event(f"collisions: {'some' if any(db.key_collisions for db in dbs) else 'none'}")
    finally:
        for db in dbs:
            db.close()


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.tuples(st.integers(0, 1), st.sampled_from([1, 1, 2, 17])), min_size=1, max_size=40),
    per_ms=st.integers(1, 28),
    seed=st.integers(0, 2**32),
    workers=st.lists(st.integers(0, 255), min_size=2, max_size=2, unique=True),
)
# writer 0 outruns the gap into writer 1's batch of 17: redrawn one after the other, all 8 attempts fell inside it
@example(ops=[(0, 1), (0, 1), (0, 17), (0, 17), (1, 17), (0, 17)], per_ms=17, seed=0, workers=[0, 112])
def test_leased_starts_keep_two_writers_apart_while_each_stays_below_the_gap(
    ops: list[tuple[int, int]], per_ms: int, seed: int, workers: list[int]
) -> None:
    """The default's scheme (worker="auto": each process starts each millisecond at its leased number's home): two
    writers that each make fewer ids in a millisecond than the gap between their homes never collide; whatever
    they do, every acknowledged key holds its own row."""
    _keymaker.seed_random(seed)
    clock = TickingClock(per_ms)
    name = f"homes-{seed}-{per_ms}-{len(ops)}-{time.perf_counter_ns()}"
    dbs = [hvcore.Datastore([dict(shards="0-16", name=name)], backend="memory") for _ in range(2)]
    homes = [home_start(hvcore.WorkerSlice(id=w, bits=8)) for w in workers]
    for db, home in zip(dbs, homes, strict=True):
        db.generator = as_another_process(hvcore.KeyGenerator, clock=clock, random_start=True)
        db.generator.start_each_ms_at(home)
    try:
        dbs[0].provision()
        acked, failures = _interleave(dbs, ops)
        stored = {int(r.key): r.data for r in dbs[0].query(shards=[SHARD])}
        assert stored == acked and not failures
        # at most per_ms readings of the clock per millisecond, each giving a writer at most 17 ids
        if per_ms * 17 <= abs(homes[0] - homes[1]) and per_ms * 17 <= 1024 - max(homes):
            assert dbs[0].key_collisions == dbs[1].key_collisions == 0
        event(f"collisions: {'some' if any(db.key_collisions for db in dbs) else 'none'}")
    finally:
        for db in dbs:
            db.close()


@pytest.fixture(scope="module")
def property_db(fault_pg: FaultServers) -> Iterator[dict[str, Any]]:
    """A provisioned database of fault server 0 for the property run on PostgreSQL."""
    db, settings = fresh(fault_pg)
    db.close()
    yield settings


@hsettings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, per_ms=st.integers(100, 3000), seed=st.integers(0, 2**32))
def test_any_interleaving_of_two_writers_on_postgresql_stores_every_acknowledged_key_with_its_own_row(
    fault_pg: FaultServers, property_db: dict[str, Any], ops: list[tuple[int, int]], per_ms: int, seed: int
) -> None:
    """The same on a real server, with the default scheme (a random start per millisecond)."""
    fault_pg.sql(0, f"TRUNCATE shard{SHARD:04d}.entities", dbname=property_db["dbname"])
    _keymaker.seed_random(seed)
    clock = TickingClock(per_ms)
    dbs = [hvcore.Datastore([dict(shards="0-16", **property_db)], backend="jsonb") for _ in range(2)]
    for db in dbs:
        db.generator = as_another_process(hvcore.KeyGenerator, clock=clock, random_start=True)
    try:
        acked, _ = _interleave(dbs, ops)
        assert rows_of_shard(fault_pg, property_db["dbname"]) == acked
        event(f"collisions: {'some' if any(db.key_collisions for db in dbs) else 'none'}")
    finally:
        for db in dbs:
            db.close()


def test_a_session_that_lost_our_prepared_statements_still_writes(fault_pg: FaultServers) -> None:
    """DEALLOCATE ALL on a pooled session (user code through cursor()): the next writes there are sent unprepared."""
    db, settings = fresh(fault_pg, pool_max=1)
    first = db.put(SHARD, 1, n=1)  # the only pooled session prepares the INSERT
    with db.cursor(SHARD) as cur:
        cur.execute("DEALLOCATE ALL")
    second = db.put(SHARD, 1, n=2)
    assert db.update(first, n=3) is True
    assert rows_of_shard(fault_pg, settings["dbname"]) == {int(first): {"n": 3}, int(second): {"n": 2}}
    db.close()


def test_a_write_ended_between_its_statement_and_its_commit_is_aborted_and_runs_again(fault_pg: FaultServers) -> None:
    """A deferred trigger makes the commit slow: the session is ended after its statement ran, before the commit.

    The session is gone before it is looked at and the write returns no transaction id (a RETURNING costs 3-5 % on
    every write; `_commit`): its rows decide, once nothing can commit it: not stored, so it runs again."""
    db, settings = fresh(fault_pg)
    fault_pg.sql(
        0,
        f"CREATE FUNCTION shard{SHARD:04d}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(1.0); RETURN NULL; END $$;"
        f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON shard{SHARD:04d}.entities "
        f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION shard{SHARD:04d}.slow_commit()",
        dbname=settings["dbname"],
    )
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(_capture(lambda: db.put(SHARD, 1, n=1))), daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    pids: list[tuple[Any, ...]] = []
    while not pids and time.monotonic() < deadline:
        pids = fault_pg.sql(
            0,
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND wait_event = 'PgSleep'",
            (settings["dbname"],),
        )
        time.sleep(0.01)
    assert pids, "the commit never waited in the trigger"
    fault_pg.sql(0, "SELECT pg_terminate_backend(%s)", (pids[0][0],))
    worker.join(30)
    assert isinstance(outcome[0], hvcore.Key), outcome
    assert rows_of_shard(fault_pg, settings["dbname"]) == {int(outcome[0]): {"n": 1}}
    pool = db.status()[0]["pool"]
    assert pool["commit_checks"] == 1 and pool["commit_checks_committed"] == 0, pool
    db.close()


@pytest.mark.parametrize("op", ["put", "update", "delete", "async put"])
def test_a_write_timed_out_on_a_lock_is_ended_and_reported_not_stored(fault_pg: FaultServers, op: str) -> None:
    """operation_timeout while the write waits on a lock (a table lock for put, a row lock for update and delete):
    its session is ended and the write settled, so the caller learns it did not commit (a plain
    `ServerUnavailable`, not `WriteOutcomeUnknown`), and it does not commit later when the lock goes."""
    db, settings = fresh(fault_pg, operation_timeout=0.5)
    key = db.put(SHARD, 1, n=0)
    blocker = psycopg.connect(**fault_pg.settings(0, dbname=settings["dbname"]), connect_timeout=5)
    if op.endswith("put"):
        blocker.execute(f"LOCK TABLE shard{SHARD:04d}.entities IN SHARE MODE")
    else:
        blocker.execute(f"SELECT FROM shard{SHARD:04d}.entities WHERE id = %s FOR UPDATE", (int(key),))

    async def async_put() -> Any:
        async with hvcore.AsyncDatastore(
            [dict(shards="0-16", **settings)], backend="jsonb", operation_timeout=0.5
        ) as adb:
            return await adb.put(SHARD, 1, n=1)

    write: Callable[[], Any] = {
        "put": lambda: db.put(SHARD, 1, n=1),
        "update": lambda: db.update(key, n=1),
        "delete": lambda: db.delete(key),
        "async put": lambda: asyncio.run(async_put()),
    }[op]
    try:
        started = time.monotonic()
        with pytest.raises(hvcore.ServerUnavailable, match="did not commit") as info:
            write()
        assert not isinstance(info.value, hvcore.WriteOutcomeUnknown), info.value
        assert time.monotonic() - started < 5  # not waited for SETTLE_SECONDS: the session was ended at once
    finally:
        blocker.rollback()
        blocker.close()
    time.sleep(0.5)  # a write still alive on the server would now run and commit
    assert rows_of_shard(fault_pg, settings["dbname"]) == {int(key): {"n": 0}}
    if op != "async put":
        pool = db.status()[0]["pool"]
        assert pool["commit_checks"] == 1 and pool["commit_checks_committed"] == 0, pool
    assert db.put(SHARD, 1, n=2)  # the pool serves on
    db.close()


def test_a_cancelled_async_put_leaves_a_usable_pool(fault_pg: FaultServers) -> None:
    """asyncio cancellation while the INSERT waits on a lock: the cancellation is what the caller sees, the session
    is discarded (its results were still due), and the next put works."""
    db, settings = fresh(fault_pg)
    db.close()
    blocker = psycopg.connect(**fault_pg.settings(0, dbname=settings["dbname"]), connect_timeout=5)
    blocker.execute(f"LOCK TABLE shard{SHARD:04d}.entities IN SHARE MODE")

    async def scenario() -> hvcore.Key:
        async with hvcore.AsyncDatastore([dict(shards="0-16", **settings)], backend="jsonb", pool_max=1) as db:
            await db.put(SHARD + 1, 1, warm=True)  # the pool's one session, on another (unlocked) shard
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(db.put(SHARD, 1, n=1), 0.5)
            blocker.rollback()
            key = await db.put(SHARD, 1, n=2)
            assert db.store_for(SHARD).stats()["borrowed"] == 0
            return key

    try:
        key = asyncio.run(scenario())
    finally:
        blocker.close()
    stored = rows_of_shard(fault_pg, settings["dbname"])
    assert stored[int(key)] == {"n": 2} and len(stored) <= 2  # the cancelled INSERT may have run once unlocked
