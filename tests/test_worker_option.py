"""``Datastore(worker=...)``: keys unique by construction across processes, from a leased or fixed worker number."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

import hvcore
from hvcore import ConfigError, WorkerSlice
from hvcore._worker import home_start

_namespaces = itertools.count()
MEMORY = [dict(shards="0-8", name="worker-a"), dict(shards="8-16", name="worker-b")]


def worker_of(key: hvcore.Key, bits: int = 4) -> int:
    """The worker number a key carries: the high ``bits`` of its sequence part."""
    return key.added_id >> (type(key).layout.sequence_bits - bits)


def test_two_memory_stores_lease_different_numbers_and_give_them_back() -> None:
    with (
        hvcore.Datastore(MEMORY, backend="memory", worker="lease") as a,
        hvcore.Datastore(MEMORY, backend="memory", worker="lease") as b,
    ):
        keys_a = [a.put(3, 1, n=str(i)) for i in range(50)]
        keys_b = [b.put(3, 1, n=str(i)) for i in range(50)]
        assert {worker_of(k) for k in keys_a} != {worker_of(k) for k in keys_b}
        assert len({worker_of(k) for k in keys_a}) == 1 and len({worker_of(k) for k in keys_b}) == 1
        taken = worker_of(keys_a[0])
    with hvcore.Datastore(MEMORY, backend="memory", worker="lease") as c:  # both numbers came back on close
        assert worker_of(c.put(3, 1)) == min(taken, worker_of(keys_b[0]))


def test_a_fixed_worker_slice_is_used_as_given() -> None:
    with hvcore.Datastore(MEMORY, backend="memory", worker=WorkerSlice(id=5, bits=3)) as db:
        assert {worker_of(db.put(2, 1), bits=3) for _ in range(20)} == {5}
    with hvcore.Datastore(MEMORY, backend="memory", worker={"id": 2, "bits": 2}) as db:
        assert worker_of(db.put(2, 1), bits=2) == 2


@pytest.mark.parametrize(
    ("worker", "words"),
    [
        ("postgres", "worker must be 'auto', None, 'lease'"),
        ({"bits": 4, "colour": "red"}, "unknown worker lease option(s) colour"),
        ({"id": 3, "size": 1}, "unknown key(s) size"),
        ({"id": 99, "bits": 4}, "WorkerSlice.id"),
        (7, "worker must be 'auto', None"),
    ],
)
def test_bad_worker_options_are_config_errors(worker: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        hvcore.Datastore(MEMORY, backend="memory", worker=worker)
    assert words in str(caught.value)


def test_worker_and_a_shared_sequence_are_refused_together() -> None:
    with pytest.raises(ConfigError, match="worker and sequence cannot be combined"):
        hvcore.Datastore(MEMORY, backend="memory", worker="lease", sequence="redis://127.0.0.1:6379/0")


def test_the_config_file_takes_a_worker_table(tmp_path: Path) -> None:
    path = tmp_path / "hv.toml"
    path.write_text(
        'backend = "memory"\n[worker]\nbits = 3\nnamespace = "app"\n[[servers]]\nshards = "0-4"\nname = "cfg"\n'
    )
    with hvcore.Datastore.from_config(path) as db:
        assert db._config.lease_options == {"bits": 3, "namespace": "app"}
        db.put(1, 1)
        assert db.generator is not None


def test_postgres_leases_keep_two_datastores_apart(pg_datastore_factory: Any) -> None:
    base = pg_datastore_factory("jsonb")
    servers = [dict(s) for s in base._config.servers]
    worker = {"namespace": f"test-option-{next(_namespaces)}", "ttl": 5}
    with (
        hvcore.Datastore(servers, backend="jsonb", worker=worker) as a,
        hvcore.Datastore(servers, backend="jsonb", worker=worker) as b,
    ):
        keys_a = [a.put(3, 1, who="a") for _ in range(30)]
        keys_b = [b.put(3, 1, who="b") for _ in range(30)]
        assert len({worker_of(k) for k in keys_a}) == 1
        assert {worker_of(k) for k in keys_a}.isdisjoint({worker_of(k) for k in keys_b})
        assert all(r.data == {"who": "a"} for r in a.get_many(keys_a).values())


def test_async_postgres_lease_is_taken_on_open_and_released_on_close(pg_datastore_factory: Any) -> None:
    base = pg_datastore_factory("jsonb")
    servers = [dict(s) for s in base._config.servers]
    worker = {"namespace": f"test-option-{next(_namespaces)}", "bits": 1, "ttl": 5}

    async def main() -> None:
        for _ in range(3):  # two numbers with bits=1: each close must give its number back
            async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=worker) as db:
                key = await db.put(4, 1, x="y")
                assert (await db.get(key)) is not None
                assert db._lease is not None
            assert db._lease is None

    asyncio.run(main())


# -- worker="auto", the default --------------------------------------------------------------------------------------


def sequence_of(key: hvcore.Key) -> int:
    """The sequence number a key carries in its millisecond."""
    return int(key.added_id)


def auto_db(settings: dict[str, Any], **options: Any) -> hvcore.Datastore:
    """A provisioned jsonb datastore with the default worker option on a database of its own."""
    db = hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", **options)
    db.provision()
    return db


def test_the_default_leases_a_distinct_start_per_process_on_postgresql(fault_pg: Any) -> None:
    settings = fault_pg.fresh_db(0)
    with auto_db(settings) as a, hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb") as b:
        assert a._config.worker == "auto"
        homes = []
        for db in (a, b):
            assert db._lease is not None, db.worker_status
            assert "starting at" in db.worker_status
            homes.append(home_start(db._lease.worker))
            seen = set()
            for _ in range(5):  # a put alone in its millisecond starts at the home
                time.sleep(0.002)
                seen.add(sequence_of(db.put(3, 1, x=1)))
            assert homes[-1] in seen
        assert homes[0] != homes[1]
        taken = [r[0] for r in fault_pg.sql(0, LEASED, dbname=settings["dbname"])]
        assert sorted(taken) == sorted([a._lease.worker.id, b._lease.worker.id])
    assert fault_pg.sql(0, LEASED, dbname=settings["dbname"]) == []  # given back on close
    started = time.monotonic()
    with hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb") as c:
        assert c._lease is not None
        c.put(3, 1)
    assert time.monotonic() - started < 5  # a released number is free at once (no wait for its ttl)


LEASED = "SELECT worker FROM hypervault.worker_leases WHERE namespace = 'auto' AND holder IS NOT NULL"


def test_the_default_falls_back_to_a_random_start_with_a_warning_when_every_number_is_held(
    fault_pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fault_pg.fresh_db(0)
    with auto_db(settings) as first:
        assert first._lease is not None
    dbname = settings["dbname"]
    fault_pg.sql(
        0,
        "UPDATE hypervault.worker_leases SET holder = 'elsewhere', horizon_ms = 9e15 WHERE namespace = 'auto'",
        dbname=dbname,
    )
    with caplog.at_level(logging.WARNING, logger="hvcore"), auto_db(settings) as db:
        assert db._lease is None
        assert "no lease" in db.worker_status and "NoFreeWorker" not in db.worker_status
        keys = [db.put(3, 1, n=i) for i in range(20)]
        assert [db.get_many(keys)[k].data["n"] for k in keys] == list(range(20))
    warned = [r for r in caplog.records if "no start could be leased" in r.getMessage()]
    assert len(warned) == 1 and "NoFreeWorker" in warned[0].getMessage()


def test_the_default_falls_back_for_a_role_that_cannot_create_the_lease_table(
    fault_pg: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fault_pg.fresh_db(0)
    dbname = settings["dbname"]
    auto_db(settings, worker=None).close()  # provisioned by the owner, no lease table
    role = f"hv_ro_{next(_namespaces)}_{os.getpid()}"
    fault_pg.sql(0, f"CREATE ROLE {role} LOGIN PASSWORD 'ro-Pa55'")
    for shard in range(16):  # opening reads every shard (the newest key of each); puts go to shard 3
        fault_pg.sql(0, f"GRANT USAGE ON SCHEMA shard{shard:04d} TO {role}", dbname=dbname)
        fault_pg.sql(0, f"GRANT SELECT, INSERT ON shard{shard:04d}.entities TO {role}", dbname=dbname)
    limited = {**settings, "user": role, "password": "ro-Pa55"}
    with (
        caplog.at_level(logging.WARNING, logger="hvcore"),
        hvcore.Datastore([dict(shards="0-16", **limited)], backend="jsonb") as db,
    ):
        assert db._lease is None
        key = db.put(3, 1, who="ro")
        assert db.get_many([key])[key].data["who"] == "ro"
    assert any("WorkerLeaseError" in r.getMessage() and "CREATE" in r.getMessage() for r in caplog.records)
    with pytest.raises(hvcore.errors.WorkerLeaseError):  # asked for explicitly, the lease is strict
        hvcore.Datastore([dict(shards="0-16", **limited)], backend="jsonb", worker="lease")


def test_worker_none_and_the_memory_backend_keep_the_random_start_without_a_lease(fault_pg: Any) -> None:
    settings = fault_pg.fresh_db(0)
    with auto_db(settings, worker=None) as db:
        assert db._lease is None and "random start" in db.worker_status
    assert fault_pg.sql(0, "SELECT to_regclass('hypervault.worker_leases')", dbname=settings["dbname"]) == [(None,)]
    with hvcore.Datastore(MEMORY, backend="memory") as mem:
        assert mem._lease is None and "memory backend" in mem.worker_status


def test_async_default_leases_on_open_and_gives_back_on_close(fault_pg: Any) -> None:
    settings = fault_pg.fresh_db(0)
    auto_db(settings, worker=None).close()

    async def main() -> None:
        db = hvcore.AsyncDatastore([dict(shards="0-16", **settings)], backend="jsonb")
        async with db:
            assert db._lease is not None and "starting at" in db.worker_status
            await db.put(3, 1)
        assert db._lease is None and "starting at" in db.worker_status  # the status of its last open

    asyncio.run(main())
    assert fault_pg.sql(0, LEASED, dbname=settings["dbname"]) == []


def test_a_lost_auto_lease_goes_back_to_random_starts(fault_pg: Any) -> None:
    """Another holder took the number (ours lapsed): two processes must not count from one home in step."""
    settings = fault_pg.fresh_db(0)
    with auto_db(settings) as db:
        lease = db._lease
        assert lease is not None and db.generator._home == home_start(lease.worker)
        fault_pg.sql(
            0,
            "UPDATE hypervault.worker_leases SET holder = 'thief' WHERE namespace = 'auto' AND worker = %s",
            (lease.worker.id,),
            dbname=settings["dbname"],
        )
        assert lease.renew() is False and lease.lost is not None
        assert db.generator._home is None
        assert "was lost" in db.worker_status
        db.put(3, 1)


def test_a_leased_datastore_and_a_plain_generator_never_repeat_an_id() -> None:
    """The README's use: a datastore with a leased worker number and a `KeyGenerator()` "for ids you store
    elsewhere" in one process, made in either order (tests/newcomer/test_findings6_keygen_workers.py): the
    plain generator's ids never equal the records' keys (it used to keep a table of its own, ~10 % repeats)."""
    before = hvcore.KeyGenerator()  # hands out numbers of the current millisecond before the lease's generator
    made = {before.next_key(3) for _ in range(300)}
    with hvcore.Datastore(MEMORY, backend="memory", worker="lease") as db:
        after = hvcore.KeyGenerator()
        stored: set[hvcore.Key] = set()
        for i in range(300):
            stored.add(db.put(3, 1, n=str(i)))
            stored.update(db.generator.next_keys(3, 3))
            made.update([before.next_key(3), after.next_key(3), *after.next_keys(3, 2)])
        assert len({worker_of(key) for key in stored}) == 1
    before.close()
    after.close()
    repeated = stored & made
    assert not repeated, f"{len(repeated)} of the datastore's keys also made by a plain generator"
