"""``Datastore(worker=...)``: keys unique by construction across processes, from a leased or fixed worker number."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

import hvcore
from hvcore import ConfigError, WorkerSlice

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
        ("postgres", "worker must be None, 'lease'"),
        ({"bits": 4, "colour": "red"}, "unknown worker lease option(s) colour"),
        ({"id": 3, "size": 1}, "unknown key(s) size"),
        ({"id": 99, "bits": 4}, "WorkerSlice.id"),
        (7, "worker must be None"),
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
