"""Opening databases that already hold data: rows as 2015 code reads them, the other backend, the other layout,
the 2015 library's own tables, and provisioning that survives a crash right after it returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from fixtures.faults import FaultServers

import hvcore
from hvcore import KeyLayout

pytestmark = pytest.mark.postgres

OLD = KeyLayout.HYPERVAULT


# -- rows from cursor() and get_connection() -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_rows_index_by_position_and_by_name(pg_datastore_factory: Any, backend: str) -> None:
    db = pg_datastore_factory(backend)
    with db.cursor(5) as cur:
        cur.execute("SELECT version(), 7 AS seven")
        ver = cur.fetchone()
    assert ver is not None and ver[0] == ver["version"] and ver[1] == ver["seven"] == 7
    assert tuple(ver) == (ver[0], 7) and isinstance(ver, hvcore.Row) and isinstance(ver, tuple)
    assert dict(ver) == {"version": ver[0], "seven": 7} and list(ver.keys()) == ["version", "seven"]
    assert "seven" in ver and ver.get("nope", "default") == "default"
    conn = db.get_connection(9)
    try:
        (row,) = conn.execute("SELECT current_schema() AS s").fetchall()
        assert row[0] == row["s"] == "shard0009"
    finally:
        db.put_connection(conn)
    record = db.get(db.put(5, 1, a="b"))
    assert record is not None and type(record.data) is dict  # bodies stay plain dicts


def test_async_rows_index_by_position_and_by_name(pg_datastore_factory: Any) -> None:
    servers = list(pg_datastore_factory("jsonb")._config.servers)

    async def run() -> None:
        async with hvcore.AsyncDatastore(servers, backend="jsonb") as db:
            async with db.cursor(5) as cur:
                await cur.execute("SELECT version()")
                ver = await cur.fetchone()
            assert ver is not None and ver[0] == ver["version"]
            conn = await db.get_connection(9)
            try:
                row = await (await conn.execute("SELECT 1 AS one")).fetchone()
                assert row is not None and row[0] == row["one"] == 1
            finally:
                await db.put_connection(conn)

    asyncio.run(run())


# -- a database provisioned by the other backend ---------------------------------------------------------------------


@pytest.mark.parametrize(("provisioned", "opened"), [("jsonb", "hstore"), ("hstore", "jsonb")])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_the_other_backend_is_a_config_error_naming_both(
    pg_datastore_factory: Any, provisioned: str, opened: str, api: str
) -> None:
    servers = list(pg_datastore_factory(provisioned)._config.servers)
    ops: list[Callable[[Any], Any]] = [
        lambda db: db.put(1, 1, a="b"),
        lambda db: db.get(KeyLayout.DEFAULT.key(1 << 23 | 1 << 10)),
        lambda db: db.put_many(1, 1, [{"a": "b"}]),
        lambda db: list(db.query(shards=[1])),
    ]
    if api == "sync":
        for op in ops:
            with hvcore.Datastore(servers, backend=opened) as db, pytest.raises(hvcore.ConfigError) as info:
                op(db)
            assert f"provisioned for the {provisioned} backend" in str(info.value)
            assert f"backend={opened!r}" in str(info.value) and f"backend={provisioned!r}" in str(info.value)
    else:

        async def run() -> None:
            async with hvcore.AsyncDatastore(servers, backend=opened) as db:
                with pytest.raises(hvcore.ConfigError, match=f"provisioned for the {provisioned} backend"):
                    await db.put(1, 1, a="b")

        asyncio.run(run())
    with hvcore.Datastore(servers, backend=provisioned) as db:
        assert list(db.query()) == []  # nothing written by the refused calls


# -- ids of another layout, and the 2015 library's tables ----------------------------------------------------------


def _sql(settings: dict[str, Any], statement: str, params: Any = None) -> None:
    clean = {k: v for k, v in settings.items() if k != "shards"}
    with psycopg.connect(**clean, autocommit=True) as conn:
        conn.execute(statement, params)


def test_provision_refuses_a_layout_that_does_not_match_the_stored_ids(fault_pg: FaultServers) -> None:
    servers = [dict(shards="0-8", **fault_pg.fresh_db(0))]
    with hvcore.Datastore(servers, backend="jsonb", layout="hypervault") as old:
        old.provision()
        old.put(3, 1, written="by an application on the 2015 layout")
    with hvcore.Datastore(servers, backend="jsonb") as new, pytest.raises(hvcore.ConfigError) as info:
        new.provision()  # the default layout
    text = str(info.value)
    assert "shard 3" in text and "layout='default'" in text and "layout='hypervault'" in text
    with hvcore.Datastore(servers, backend="jsonb", layout="hypervault") as old:
        old.provision()  # the matching layout passes


@pytest.mark.parametrize("api", ["sync", "async"])
@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_a_write_under_another_layout_is_refused_before_anything_is_stored(
    fault_pg: FaultServers, api: str, backend: str
) -> None:
    """A process opened with the wrong ``layout=`` (provisioning is an operator's step, done long before) used to
    write ids that sort before the stored ones; its first statement on the shards is now a ConfigError."""
    servers = [dict(shards="0-8", **fault_pg.fresh_db(0))]
    with hvcore.Datastore(servers, backend=backend, layout="hypervault") as old:
        old.provision()
        stored = old.put(6, 1, written="on the 2015 layout")
    if api == "sync":
        ops: list[Callable[[Any], Any]] = [lambda db: db.put(1, 1, a="b"), lambda db: db.put_many(2, 1, [{"a": "b"}])]
        for op in ops:
            with hvcore.Datastore(servers, backend=backend) as new, pytest.raises(hvcore.ConfigError) as info:
                op(new)
            assert "shard 6" in str(info.value) and "layout='hypervault'" in str(info.value)
    else:

        async def run() -> None:
            async with hvcore.AsyncDatastore(servers, backend=backend) as new:
                with pytest.raises(hvcore.ConfigError, match="layout='hypervault'"):
                    await new.put(1, 1, a="b")

        asyncio.run(run())
    with hvcore.Datastore(servers, backend=backend, layout="hypervault") as old:
        assert [r.key for r in old.query()] == [stored]  # nothing written by the refused calls


SCHEMA_2015 = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE SCHEMA shard0003;
CREATE SEQUENCE shard0003.table_id_seq;
CREATE TABLE shard0003.entities (id bigint PRIMARY KEY, type smallint, body hstore);
CREATE FUNCTION shard0003.next_id(OUT result bigint) AS $$
DECLARE
    our_epoch bigint := 1379365531352;
    seq_id bigint;
    now_millis bigint;
    shard_id int := 3;
BEGIN
    SELECT nextval('shard0003.table_id_seq') % 1024 INTO seq_id;
    SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) INTO now_millis;
    result := (now_millis - our_epoch) << 23;
    result := result | (shard_id << 10);
    result := result | (seq_id);
END;
$$ LANGUAGE PLPGSQL;
INSERT INTO shard0003.entities VALUES (shard0003.next_id(), 1, 'beep => boop');
"""


def test_a_2015_database_is_opened_with_the_2015_layout_after_one_rename(fault_pg: FaultServers) -> None:
    """The 2015 library's schema as its users created it (Instagram's next_id()), opened by hypervault."""
    settings = fault_pg.fresh_db(0)
    _sql(settings, SCHEMA_2015)
    servers = [dict(shards="0-8", **settings)]
    with hvcore.Datastore(servers) as db, pytest.raises(hvcore.ConfigError) as info:
        db.provision()  # the default layout: its next_id() says otherwise
    assert "next_id()" in str(info.value) and "layout='hypervault'" in str(info.value)
    assert "layout='default'" in str(info.value)
    with hvcore.Datastore(servers, layout="hypervault") as db, pytest.raises(hvcore.ConfigError) as info:
        db.provision()  # the right layout, but the kind column is still named type
    assert "RENAME COLUMN type TO kind" in str(info.value)
    _sql(settings, "ALTER TABLE shard0003.entities RENAME COLUMN type TO kind")
    with hvcore.Datastore(servers, layout="hypervault") as db:
        db.provision()
        (old,) = db.query(shards=[3])
        assert old.data == {"beep": "boop"} and old.kind == 1 and old.key.shard_id == 3
        assert abs(old.key.timestamp_ms - time.time() * 1000) < 120_000  # decoded with the 2015 epoch
        new = db.put(3, 1, beep="again")
        assert [r.key for r in db.query(shards=[3])] == [old.key, new]  # key order is creation order


# -- provisioning is durable when it returns ----------------------------------------------------------------------


def test_provisioned_shards_survive_a_crash_right_after_provision_returns(fault_pg: FaultServers) -> None:
    """Three times: provision, crash the server at once (``pg_ctl stop -m immediate``), restart, count the shards.

    With ``synchronous_commit = off`` the last batches' commits were still in the WAL buffers when the server
    died: every try lost shards.
    """
    for attempt in range(3):
        settings = fault_pg.fresh_db(1)
        servers = [dict(shards="0-600", **settings)]
        db = hvcore.Datastore(servers, backend="jsonb")
        try:
            db.provision()
            fault_pg.stop(1, "immediate")
        finally:
            fault_pg.start(1)
            db.close()
        with hvcore.Datastore(servers, backend="jsonb") as db:
            (report,) = db.status()
        assert report["provisioned_shards"] == 600, f"try {attempt + 1}: {report['provisioned_shards']} of 600"
