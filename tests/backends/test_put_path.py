"""What a put touches on the server, per shard (issue 14): no body index unless built, and then without a pending
list.

At thousands of shards per server a put's pages no longer all fit the default 128 MB ``shared_buffers``; each page a
put touches in every shard adds to that working set (measured by ``benchmarks/bench_put_blocks.py``, see
docs/fanout.md). Shards have no body index unless ``create_body_index`` built one (tests/backends/test_body_index.py);
a GIN body index with ``fastupdate = on`` (PostgreSQL's default) touches two pages per insert (its metapage and the
pending list's tail), with ``fastupdate = off`` one leaf of a small index.
"""

from __future__ import annotations

from typing import Any

import pytest

BODY_INDEX_OPTIONS = (
    "SELECT c.reloptions FROM pg_class c WHERE c.relname = 'entities_body_idx' "
    "AND c.relnamespace = 'shard0003'::regnamespace"
)


def _options(store: Any) -> list[str]:
    with store.cursor(3) as cur:
        cur.execute(BODY_INDEX_OPTIONS)
        row = cur.fetchone()
    assert row is not None, "shard 3 has no body index"
    return list(row["reloptions"] or [])


def _old_body_index(store: Any, backend: str, options: str) -> None:
    """Shard 3's body index as an earlier release made it (every shard had one), with these ``WITH`` options."""
    body = "hstore_to_jsonb(body)" if backend == "hstore" else "body"
    with store.cursor(3) as cur:
        cur.execute(f"CREATE INDEX entities_body_idx ON entities USING gin (({body}) jsonb_path_ops){options}")


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_a_built_body_index_has_no_pending_list(pg_datastore_factory: Any, backend: str) -> None:
    store = pg_datastore_factory(backend)
    store.create_body_index()
    try:
        assert "fastupdate=off" in _options(store)
        before = store.put(3, 1, city="Oslo", n="1")
        with store.cursor(3) as cur:  # nothing waits in a pending list: the entry is in the index's tree at once
            cur.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
            cur.execute("SELECT n_pending_tuples FROM gin_metapage_info(get_raw_page('entities_body_idx', 0))")
            assert cur.fetchone() == {"n_pending_tuples": 0}
        assert [r.key for r in store.query(where={"city": "Oslo"})] == [before]
    finally:
        store.drop_body_index()


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_provisioning_again_turns_off_the_pending_list_of_shards_made_before(
    pg_datastore_factory: Any, backend: str
) -> None:
    store = pg_datastore_factory(backend)
    _old_body_index(store, backend, "")  # a shard as provisioned before: PostgreSQL's default, fastupdate on
    try:
        assert "fastupdate=off" not in _options(store)
        old = store.put(3, 1, city="Oslo", n="1")  # such a shard keeps working as it did
        assert [r.key for r in store.query(where={"city": "Oslo"})] == [old]
        report = store.provision()
        assert "fastupdate=off" in _options(store)
        assert sum(r.created for r in report) == 1  # only that shard had anything to do
        new = store.put(3, 1, city="Oslo", n="2")
        assert [r.key for r in store.query(where={"city": "Oslo"})] == [old, new]  # the pending entry too
        assert store.get(old).data == {"city": "Oslo", "n": "1"}
        assert sum(r.created for r in store.provision()) == 0
    finally:
        store.drop_body_index()  # provisioning recorded it (shards of an earlier release have it)


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_provisioning_again_keeps_a_pending_list_its_owner_turned_on(pg_datastore_factory: Any, backend: str) -> None:
    """An index set to ``fastupdate = on`` by hand (few large shards: the list amortises inserts) stays so."""
    store = pg_datastore_factory(backend)
    _old_body_index(store, backend, " WITH (fastupdate = on)")
    try:
        assert sum(r.created for r in store.provision()) == 0
        assert "fastupdate=on" in _options(store)
        key = store.put(3, 1, city="Oslo", n="1")
        assert [r.key for r in store.query(where={"city": "Oslo"})] == [key]
    finally:
        store.drop_body_index()
