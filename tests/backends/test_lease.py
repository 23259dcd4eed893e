"""Worker numbers leased from the real PostgreSQL: distinct numbers, freed by death or close, lost safely.

Every test uses its own namespace in the table ``hv_test_leases.worker_leases``, so parallel runs never meet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hvbackend_postgres._lease import LeaseOptions, PostgresWorkerLease, alease_worker, lease_worker
from hvcore import (
    AsyncKeyGenerator,
    ConfigError,
    Key,
    KeyGenerator,
    NoFreeWorker,
    ServerUnavailable,
    WorkerLeaseLost,
)

SCHEMA = "hv_test_leases"
TABLE = sql.Identifier(SCHEMA, "worker_leases")


@pytest.fixture
def namespace(pg_main: dict[str, Any]) -> Iterator[str]:
    """A namespace of the test's own; its rows are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.worker_leases"]).fetchone() != (None,):
            conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(TABLE), [name])


def lease(pg_main: dict[str, Any], namespace: str, **options: Any) -> PostgresWorkerLease:
    return lease_worker(pg_main, namespace=namespace, schema=SCHEMA, **{"ttl": 1.0, **options})


def row(pg_main: dict[str, Any], namespace: str, worker: int) -> tuple[Any, ...]:
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        found = conn.execute(
            sql.SQL("SELECT holder, horizon_ms, holder_info FROM {} WHERE namespace = %s AND worker = %s").format(
                TABLE
            ),
            [namespace, worker],
        ).fetchone()
    assert found is not None
    return tuple(found)


def test_leases_get_different_numbers_and_their_keys_never_repeat(pg_main: dict[str, Any], namespace: str) -> None:
    leases = [lease(pg_main, namespace, bits=2) for _ in range(4)]
    try:
        assert sorted(x.worker.id for x in leases) == [0, 1, 2, 3]
        with pytest.raises(NoFreeWorker, match="all 4 worker numbers") as info:
            lease(pg_main, namespace, bits=2)
        assert "127.0.0.1" in str(info.value) and SCHEMA in str(info.value)
        gens = [KeyGenerator(worker=x) for x in leases]
        keys: list[list[Key]] = [[] for _ in gens]

        def work(index: int) -> None:
            for i in range(3000):
                keys[index].append(gens[index].next_key(5))
                if i % 100 == 0:
                    keys[index].extend(gens[index].next_keys(5, 300))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        everything = [k for mine in keys for k in mine]
        assert len(everything) == 4 * (3000 + 30 * 300)
        assert len(set(everything)) == len(everything)
        for x, mine in zip(leases, keys, strict=True):
            assert {k.added_id >> 8 for k in mine} == {x.worker.id}
        for gen in gens:
            gen.close()
    finally:
        for x in leases:
            x.close()


def test_bits_must_match_the_namespace(pg_main: dict[str, Any], namespace: str) -> None:
    with lease(pg_main, namespace, bits=3), pytest.raises(ConfigError, match="bits=3, not bits=5"):
        lease(pg_main, namespace, bits=5)


def test_close_releases_the_number_and_its_next_holder_starts_after_the_horizon(
    pg_main: dict[str, Any], namespace: str
) -> None:
    first, second = lease(pg_main, namespace, bits=1), lease(pg_main, namespace, bits=1)
    gen = KeyGenerator(worker=first)
    used = gen.next_keys(1, 100)
    horizon = first.horizon_ms
    threading.Timer(0.3, first.close).start()
    third = lease(pg_main, namespace, bits=1, acquire_timeout=5)  # waits for the number first gives back
    try:
        assert third.worker == first.worker and third.floor_ms >= horizon
        assert third.floor_ms < time.time_ns() // 1_000_000  # lease_worker returned once the floor had passed
        with pytest.raises(WorkerLeaseLost, match="closed"):
            gen.next_key(1)
        fresh = KeyGenerator(worker=third).next_keys(1, 100)
        assert min(k.timestamp_ms for k in fresh) > max(k.timestamp_ms for k in used)
        assert row(pg_main, namespace, third.worker.id)[2].endswith(f"pid {os.getpid()}")
    finally:
        second.close()
        third.close()
    assert row(pg_main, namespace, third.worker.id)[0] is None  # released


CHILD = """
import json, sys, time
from hvbackend_postgres._lease import lease_worker
from hvcore import KeyGenerator
settings, namespace, schema = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
lease = lease_worker(settings, namespace=namespace, schema=schema, bits=1, ttl=1.0)
gen = KeyGenerator(worker=lease)
keys = gen.next_keys(4, 500)
time.sleep(0.3)
keys += gen.next_keys(4, 500)
print(json.dumps({"worker": lease.worker.id, "keys": keys}), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_leasing_process_frees_its_number(pg_main: dict[str, Any], namespace: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(pg_main), namespace, SCHEMA], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        report = json.loads(child.stdout.readline())
        mine = lease(pg_main, namespace, bits=1)
        assert mine.worker.id != report["worker"]
        with pytest.raises(NoFreeWorker):
            lease(pg_main, namespace, bits=1)  # the child holds the other number while it lives
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        started = time.monotonic()
        taken = lease(pg_main, namespace, bits=1, acquire_timeout=10)
        waited = time.monotonic() - started
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None
        child.stdout.close()
    try:
        assert taken.worker.id == report["worker"]
        assert waited < 3  # the dead process's last renewal ran out (ttl = 1 s)
        theirs = [Key(k) for k in report["keys"]]
        ours = KeyGenerator(worker=taken).next_keys(4, 1000)
        assert taken.floor_ms >= max(k.timestamp_ms for k in theirs)
        assert not set(ours) & set(theirs)
        assert min(k.timestamp_ms for k in ours) > taken.floor_ms
    finally:
        mine.close()
        taken.close()


@pytest.fixture
def cut_role(pg_main: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A login role of the test's own, and a switch that bars it from logging in and ends its sessions."""
    role = f"hv_lease_{uuid.uuid4().hex[:10]}"
    admin = psycopg.connect(**pg_main, autocommit=True)
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))

    def cut(off: bool) -> None:
        login = sql.SQL("NOLOGIN" if off else "LOGIN")
        admin.execute(sql.SQL("ALTER ROLE {} {}").format(sql.Identifier(role), login))
        if off:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])

    try:
        yield role, cut
    finally:
        cut(True)
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        admin.close()


@pytest.mark.slow
def test_a_lost_lease_makes_the_generator_refuse_and_never_repeats_a_key(
    pg_main: dict[str, Any], namespace: str, cut_role: tuple[str, Any]
) -> None:
    role, cut = cut_role
    other = lease(pg_main, namespace, bits=1)  # holds the other number: the takeover below must take ours
    cut_off = lease({**pg_main, "user": role}, namespace, bits=1, connect_timeout=1)
    gen = KeyGenerator(worker=cut_off)
    theirs: list[Key] = gen.next_keys(2, 200)

    # 1. Its connection dies and it cannot reconnect: it goes on up to the horizon the server confirmed, then
    #    refuses every key; once it can renew again (the row is still its own), it goes on.
    cut(True)
    with pytest.raises(WorkerLeaseLost, match="not renewed in time") as info:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            theirs.append(gen.next_key(2))
            time.sleep(0.0005)
    assert "renewals have failed" in str(info.value) and role in str(info.value)  # the server's own words
    assert max(k.timestamp_ms for k in theirs) <= cut_off.horizon_ms
    cut(False)
    deadline = time.monotonic() + 5
    while not cut_off.renew() and time.monotonic() < deadline:
        time.sleep(0.1)
    theirs += gen.next_keys(2, 100)

    # 2. Cut off again, long enough for its number to be taken over: the new holder starts after the old horizon,
    #    and the old holder, once it reaches the server again, finds the number gone and stops for good.
    cut(True)
    stale = cut_off.horizon_ms
    taker = lease(pg_main, namespace, bits=1, acquire_timeout=10)
    try:
        assert taker.worker == cut_off.worker and taker.floor_ms >= stale
        ours = KeyGenerator(worker=taker).next_keys(2, 500)
        with pytest.raises(WorkerLeaseLost):
            theirs.append(gen.next_key(2))
        cut(False)
        assert not cut_off.renew()
        with pytest.raises(WorkerLeaseLost, match="held by another lease"):
            gen.next_key(2)
        assert cut_off.lost is not None
        assert not set(ours) & set(theirs)
        assert min(k.timestamp_ms for k in ours) > max(k.timestamp_ms for k in theirs)
    finally:
        taker.close()
        cut_off.close()
        other.close()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_renews_the_lease_it_inherited(pg_main: dict[str, Any], namespace: str) -> None:
    if sys.version_info >= (3, 12):  # pragma: no cover - the lease's renewal thread makes fork() warn there
        pytest.skip("fork() with live threads warns on 3.12+")
    held = lease(pg_main, namespace, bits=2)
    gen = KeyGenerator(worker=held)
    gen.next_key(1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            time.sleep(2.5)  # 2.5 ttl: only its own renewals keep the number (the parent stopped renewing)
            keys = gen.next_keys(1, 50)
            held.close()  # a child's close does not release the parent's number
            os.write(write, json.dumps(keys).encode())
        except BaseException as exc:
            os.write(write, json.dumps(repr(exc)).encode())
            code = 1
        os._exit(code)
    os.close(write)
    held._stopping.set()  # the parent's renewals stop; the child's go on
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert len(json.loads(text)) == 50
    assert row(pg_main, namespace, held.worker.id)[0] is not None  # still held: the parent has not closed it
    held.close()
    assert row(pg_main, namespace, held.worker.id)[0] is None


def test_the_async_helper_leases_for_an_async_generator(pg_main: dict[str, Any], namespace: str) -> None:
    async def main() -> None:
        async with await alease_worker(pg_main, namespace=namespace, schema=SCHEMA, bits=4, ttl=1.0) as held:
            gen = AsyncKeyGenerator(worker=held)
            keys = await gen.next_keys(3, 200) + [await gen.next_key(3) for _ in range(50)]
            assert len(set(keys)) == 250 and {k.added_id >> 6 for k in keys} == {held.worker.id}
            await asyncio.sleep(0.6)  # renewed meanwhile, on the lease's own thread
            assert held.horizon_ms > keys[-1].timestamp_ms + 500
        with pytest.raises(WorkerLeaseLost, match="closed"):
            await gen.next_key(3)

    asyncio.run(main())


def test_bad_settings_and_options_are_typed_errors_without_the_password(pg_main: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="bits"):
        LeaseOptions(bits=0)
    with pytest.raises(ConfigError, match="ttl"):
        lease_worker(pg_main, ttl=0.1)
    with pytest.raises(ConfigError, match="namespace"):
        lease_worker(pg_main, namespace="")
    with pytest.raises(ConfigError, match="settings"):
        lease_worker(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid PostgreSQL connection settings") as info:
        lease_worker("host=127.0.0.1 password=hunter2 bogus=1")
    assert "hunter2" not in str(info.value)
    free_port = {**pg_main, "port": 1, "password": "hunter2"}
    with pytest.raises(ServerUnavailable, match=r"127\.0\.0\.1:1") as unavailable:
        lease_worker(free_port, connect_timeout=1)
    assert "hunter2" not in str(unavailable.value)


@pytest.mark.slow
def test_independent_processes_with_leased_workers_never_repeat_a_key(pg_main: dict[str, Any]) -> None:
    """Four processes started with subprocess, one key per 100-300 µs each on one shard, each with a worker number
    leased from PostgreSQL (benchmarks/bench_key_collisions.py's leased mode): no key made twice."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_key_collisions.py"
    spec = importlib.util.spec_from_file_location("hv_bench_key_collisions", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    conninfo = " ".join(f"{k}={v}" for k, v in pg_main.items())
    args = argparse.Namespace(processes=4, seconds=1.0, gap_us="100:300", bits=4, pg=conninfo, repeat=1)
    done = bench.run_processes("leased", args)
    counted = bench.repeats(done["keys"])
    assert counted["keys"] > 4 * 1500 and counted["repeats"] == 0
    assert len({s["worker"] for s in done["summaries"]}) == 4
