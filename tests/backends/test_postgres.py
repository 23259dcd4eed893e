"""The hstore and jsonb backends on real PostgreSQL servers: routing, the 2015 README flow, faults, logging."""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

import psycopg
import pytest

import hvcore
from hvbackend_postgres import PostgresServerStore

pytestmark = pytest.mark.postgres
SECRET_ROLE = "hv_secret"  # made by the pg_cluster fixture: logs in with a password (scram-sha-256)
SECRET_PASSWORD = "s3cr3t-Pa55word"

_dbs = itertools.count()


def fresh_db(cluster: Any, index: int, prefix: str = "hvt") -> dict[str, Any]:
    """A new empty database on cluster server ``index``: its settings."""
    settings = cluster.settings(index)
    name = f"{prefix}_{os.getpid()}_{next(_dbs)}"
    with psycopg.connect(**settings, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return {**settings, "dbname": name}


def query(settings: dict[str, Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement directly on a server (not through hypervault)."""
    clean = {k: v for k, v in settings.items() if k != "shards"}
    with psycopg.connect(**clean, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


class ListHandler(logging.Handler):
    """Keeps formatted log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log_lines() -> Any:
    logger = logging.getLogger(f"hvtest.{next(_dbs)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    yield logger, handler.lines
    logger.removeHandler(handler)


# -- plugin and routing ----------------------------------------------------------------------------------------


def test_both_backends_registered() -> None:
    names = hvcore.default_registry().backend_names()
    assert {"hstore", "jsonb"} <= set(names)


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_routing_end_to_end(pg_datastore_factory: Any, backend: str) -> None:
    db = pg_datastore_factory(backend)
    servers = [s.label for s in db.servers]
    keys = {shard: db.put(shard, 7, name=f"in {shard}") for shard in (0, 3, 7, 8, 12, 15)}
    settings = [dict(s) for s in db._settings]
    for shard, key in keys.items():
        home = 0 if shard < 8 else 1
        other = 1 - home
        rows = query(settings[home], f"SELECT id, kind FROM shard{shard:04d}.entities")
        assert rows == [(int(key), 7)], f"key of shard {shard} not found on {servers[home]}"
        missing = query(settings[other], "SELECT to_regnamespace(%s) IS NULL", (f"shard{shard:04d}",))
        assert missing == [(True,)]
        record = db.get(key)
        assert record is not None and record.data == {"name": f"in {shard}"} and record.kind == 7
    assert db.get(db.layout.key(int(keys[3]) + 1)) is None
    counts = {s["server"]: s["rows"] for s in db.status()}
    assert sorted(counts.values()) == [3, 3]


def test_jsonb_preserves_types(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    body = {"n": 1, "f": 1.5, "b": True, "none": None, "list": [1, "a"], "obj": {"k": [None]}, "big": 2**62}
    key = db.put(9, 3, **body)
    record = db.get(key)
    assert record is not None and record.data == body


def test_hstore_text_only_rejected_before_sql(pg_datastore_factory: Any, log_lines: Any) -> None:
    logger, lines = log_lines
    db = pg_datastore_factory("hstore", logger=logger)
    with pytest.raises(hvcore.InvalidData, match="'count'"):
        db.put(2, 1, name="x", count=3)
    with pytest.raises(hvcore.InvalidData, match="NUL"):
        db.put(2, 1, name="a\x00b")
    assert not [line for line in lines if "INSERT" in line]
    key = db.put(2, 1, name="x", empty=None, unicode="żółw ✓")
    record = db.get(key)
    assert record is not None and record.data == {"name": "x", "empty": None, "unicode": "żółw ✓"}


def test_duplicate_key_is_typed(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    key = db.put(4, 1, a=1)
    with pytest.raises(hvcore.DuplicateKey, match=str(int(key))):
        db.store_for(4).insert(4, key, 1, {"a": 2})
    record = db.get(key)
    assert record is not None and record.data == {"a": 1}


def test_rows_are_dicts_by_default_and_tuples_on_request(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    with db.cursor(1) as cur:
        cur.execute("SELECT 1 AS one, current_schema() AS schema")
        assert cur.fetchone() == {"one": 1, "schema": "shard0001"}
    conn = db.get_connection(9)
    try:
        assert conn.execute("SELECT current_schema() AS s").fetchone() == {"s": "shard0009"}
        assert not conn.autocommit
    finally:
        db.put_connection(conn)
    with pytest.raises(hvcore.ConnectionMisuse):
        db.put_connection(conn)
    tuples = pg_datastore_factory("jsonb", row_factory="tuple")
    with tuples.cursor(1) as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchone() == (1,)


def test_cursor_commits_and_rolls_back(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    with db.cursor(2) as cur:
        cur.execute("INSERT INTO entities (id, kind, body) VALUES (1, 1, '{}')")
    with pytest.raises(RuntimeError), db.cursor(2) as cur:
        cur.execute("INSERT INTO entities (id, kind, body) VALUES (2, 1, '{}')")
        raise RuntimeError("boom")
    with db.cursor(2) as cur:
        cur.execute("SELECT id FROM entities ORDER BY id")
        assert cur.fetchall() == [{"id": 1}]
    assert all(s.stats()["borrowed"] == 0 for s in db.servers)


def test_key_goes_out_as_int8(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    with db.cursor(1) as cur:
        cur.execute("SELECT pg_typeof(%s)::text AS t", (hvcore.Key(5),))
        assert cur.fetchone() == {"t": "bigint"}
        cur.execute("SELECT pg_typeof(%s)::text AS t", (hvcore.KeyLayout.HYPERVAULT.key(7),))
        assert cur.fetchone() == {"t": "bigint"}


# -- the 2015 README, verbatim ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["default", "hypervault"])
def test_readme_flow(pg_cluster: Any, layout: str) -> None:
    first, second = fresh_db(pg_cluster, 0), fresh_db(pg_cluster, 1)
    db = hvcore.Datastore([dict(shards="1-9", **first), dict(shards="9-17", **second)], layout=layout)
    try:
        db.provision()
        with db.cursor(5) as cur:
            cur.execute("SELECT version()")
            row = cur.fetchone()
            assert row is not None and "PostgreSQL" in row["version"]
        key = db.put(12, 1, beep="boop")
        assert key.shard_id == 12 and key.layout == db.layout
        record = db.get(key)
        assert record is not None and record.data == {"beep": "boop"} and record.kind == 1
        assert query(second, "SELECT id FROM shard0012.entities") == [(int(key),)]
        assert abs(key.timestamp_ms - time.time() * 1000) < 60_000  # decodes with the store's epoch
    finally:
        db.close()


# -- faults ----------------------------------------------------------------------------------------------------


def test_unknown_shard(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb")
    with pytest.raises(hvcore.ShardNotFound):
        db.put(16, 1, a=1)
    with pytest.raises(hvcore.ShardNotFound):
        db.get_connection(100)
    with pytest.raises(hvcore.InvalidShard):
        db.put("3", 1, a=1)


def test_server_down_then_back(pg_cluster: Any) -> None:
    up = fresh_db(pg_cluster, 0)
    down = {**fresh_db(pg_cluster, 2), "user": SECRET_ROLE, "password": SECRET_PASSWORD}
    db = hvcore.Datastore(
        [dict(shards="0-8", **up), dict(shards="8-16", **down)], backend="jsonb", pool_max=2, pool_block_timeout=3
    )
    try:
        db.provision()
        db.put(10, 1, a=1)
        pg_cluster.stop(2)
        try:
            for _ in range(5):  # more failures than pool slots: none may leak
                started = time.monotonic()
                with pytest.raises(hvcore.ServerUnavailable) as info:
                    db.put(10, 1, a=2)
                assert time.monotonic() - started < 2.5
                message = str(info.value)
                assert f"127.0.0.1:{down['port']}/{down['dbname']}" in message
                assert SECRET_PASSWORD not in message and SECRET_PASSWORD not in repr(info.value)
            key = db.put(3, 1, a=3)  # the other server keeps working
            assert db.get(key) is not None
            status = {s["server"]: s for s in db.status()}
            assert [s["reachable"] for s in status.values()] == [True, False]
            assert SECRET_PASSWORD not in repr(status) and SECRET_PASSWORD not in repr(db)
        finally:
            pg_cluster.start(2)
        key = db.put(10, 1, a=4)  # recovered: the first operation after the restart succeeds
        assert db.get(key) is not None
        assert db.servers[1].stats()["borrowed"] == 0
    finally:
        db.close()


def test_restart_with_idle_connections_costs_nothing(pg_cluster: Any) -> None:
    settings = fresh_db(pg_cluster, 2)
    db = hvcore.Datastore([dict(shards="0-4", **settings)], backend="jsonb", pool_max=3)
    try:
        db.provision()
        conns = [db.get_connection(1) for _ in range(3)]  # three idle connections in the pool afterwards
        for conn in conns:
            db.put_connection(conn)
        pg_cluster.stop(2)
        pg_cluster.start(2)
        key = db.put(1, 1, a=1)
        assert db.get(key) is not None
    finally:
        pg_cluster.start(2)
        db.close()


def test_wrong_password(pg_cluster: Any) -> None:
    wrong = "not-the-Pa55word-42"
    settings = {**pg_cluster.settings(2), "user": SECRET_ROLE, "password": wrong}
    db = hvcore.Datastore([dict(shards="0-4", **settings)], backend="jsonb", pool_block_timeout=3)
    try:
        started = time.monotonic()
        with pytest.raises(hvcore.LoginRefused) as info:  # not ServerUnavailable: retrying cannot help
            db.put(1, 1, a=1)
        assert time.monotonic() - started < 2.5
        assert "password" in str(info.value) and wrong not in str(info.value)
        assert info.value.setting == "password" and info.value.role == SECRET_ROLE
        with pytest.raises(hvcore.LoginRefused) as info:
            db.provision()
        assert wrong not in str(info.value)
        assert wrong not in repr(db) and wrong not in repr(db.servers[0])
    finally:
        db.close()
    conninfo = f"host=127.0.0.1 port={settings['port']} dbname=postgres user={SECRET_ROLE} password={wrong}"
    with hvcore.Datastore([dict(shards="0-4", conninfo=conninfo)], backend="jsonb") as db2:
        with pytest.raises(hvcore.LoginRefused) as info:
            db2.put(1, 1, a=1)
        assert wrong not in str(info.value)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(hvcore.ConfigError) as info:
        hvcore.Datastore(
            [dict(shards="0-4", host="127.0.0.1", password="hunter2-secret", bogus_option=1)], backend="jsonb"
        )
    assert "hunter2-secret" not in str(info.value)


def test_missing_hstore_before_provisioning(pg_cluster: Any) -> None:
    settings = fresh_db(pg_cluster, 0)
    with hvcore.Datastore([dict(shards="0-4", **settings)], backend="hstore") as db:
        with pytest.raises(hvcore.NotProvisioned, match="hv init"):
            db.put(1, 1, a="b")
        with pytest.raises(hvcore.NotProvisioned, match="hv init"):
            db.get(db.generator.next_key(1))
        db.provision()
        key = db.put(1, 1, a="b")
        assert db.get(key) is not None
    with hvcore.Datastore([dict(shards="0-4", **fresh_db(pg_cluster, 0))], backend="jsonb") as db:
        with pytest.raises(hvcore.NotProvisioned, match="hv init"):
            db.put(1, 1, a="b")
        with pytest.raises(hvcore.NotProvisioned, match="hv init"):
            db.get_connection(1)
        assert db.servers[0].stats()["borrowed"] == 0


def test_pool_exhausted_times_out(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb", pool_max=1, pool_block_timeout=0.3)
    conn = db.get_connection(1)
    try:
        started = time.monotonic()
        with pytest.raises(hvcore.PoolTimeout, match="pool_max=1"):
            db.put(2, 1, a=1)
        assert 0.25 <= time.monotonic() - started < 2
        db.put(9, 1, a=1)  # the other server has its own pool
    finally:
        db.put_connection(conn)
    db.put(2, 1, a=1)


def test_terminated_backend_next_operation_succeeds(pg_datastore_factory: Any, pg_cluster: Any) -> None:
    db = pg_datastore_factory("jsonb", pool_max=1)
    db.put(1, 1, a=1)
    with db.cursor(1) as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        pid = cur.fetchone()["pid"]
    query(pg_cluster.settings(0), "SELECT pg_terminate_backend(%s)", (pid,))
    time.sleep(0.05)
    key = db.put(1, 1, a=2)  # the idle dead connection is noticed at checkout: no failed operation
    assert db.get(key) is not None
    # killed while borrowed by a user: that statement fails, the pool heals
    conn = db.get_connection(1)
    pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    conn.rollback()
    query(pg_cluster.settings(0), "SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    db.put_connection(conn)
    key = db.put(1, 1, a=3)
    assert db.get(key) is not None
    assert db.servers[0].stats()["borrowed"] == 0


def test_provisioning_is_idempotent(pg_cluster: Any) -> None:
    settings = fresh_db(pg_cluster, 0)
    catalog = (
        "SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname LIKE 'shard%%' ORDER BY 1, 2"
    )
    with hvcore.Datastore([dict(shards="0-40", **settings)], backend="hstore") as db:
        first = db.provision()
        assert first[0].created == 40
        before = query(settings, catalog)
        ticks: list[int] = []
        second = db.provision(ticks.append)
        assert second[0].created == 0 and sum(ticks) == 40
        assert query(settings, catalog) == before
        query(settings, "DROP INDEX shard0007.entities_kind_id_idx")  # as if interrupted half-way
        third = db.provision()
        assert third[0].created == 1
        assert len(query(settings, catalog)) == len(before)
    with (
        hvcore.Datastore([dict(shards="0-40", **settings)], backend="jsonb") as db,
        pytest.raises(hvcore.ConfigError, match="hstore"),
    ):
        db.provision()


def test_logger_logs_statements_never_password(pg_cluster: Any, log_lines: Any) -> None:
    logger, lines = log_lines
    logger.setLevel(logging.DEBUG)
    settings = {**fresh_db(pg_cluster, 2), "user": SECRET_ROLE, "password": SECRET_PASSWORD}
    with hvcore.Datastore([dict(shards="0-4", **settings)], backend="jsonb", logger=logger, log_values=True) as db:
        db.provision()
        key = db.put(1, 5, colour="red")
        db.get(key)
        with db.cursor(2) as cur:
            cur.execute("SELECT %s::int AS x", (41,))
        assert [r.key for r in db.query(where={"colour": "red"})] == [key]
    text = "\n".join(lines)
    assert "INSERT INTO" in text and str(int(key)) in text and "red" in text
    assert "SELECT kind, body" in text and "41" in text
    assert "body @> %s" in text  # query() statements are logged too (a server-side cursor)
    assert SECRET_PASSWORD not in text


def test_statements_are_debug_and_values_only_when_asked(pg_datastore_factory: Any, log_lines: Any) -> None:
    logger, lines = log_lines
    logger.setLevel(logging.INFO)
    db = pg_datastore_factory("jsonb", logger=logger)
    key = db.put(1, 5, colour="hidden-red")
    db.put_many(2, 5, [{"colour": "hidden-blue"}])
    assert lines == []  # nothing at INFO
    logger.setLevel(logging.DEBUG)
    db.put_many(2, 5, [{"colour": "hidden-blue"}])
    db.get(key)
    list(db.query(where={"colour": "hidden-red"}))
    text = "\n".join(lines)
    assert "COPY" in text and "SELECT kind, body" in text and "body @> %s" in text
    assert "hidden" not in text and str(int(key)) not in text  # bound values only with log_values=True


def test_fork_child_gets_new_pools_parent_keeps_sessions(pg_datastore_factory: Any) -> None:
    db = pg_datastore_factory("jsonb", pool_max=1)
    with db.cursor(1) as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        parent_pid = cur.fetchone()["pid"]
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            with db.cursor(1) as cur:
                cur.execute("SELECT pg_backend_pid() AS pid")
                child_pid = cur.fetchone()["pid"]
            db.put(1, 1, who="child")
            code = 0 if child_pid != parent_pid else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with db.cursor(1) as cur:  # the parent's session survived the child
        cur.execute("SELECT pg_backend_pid() AS pid, count(*) AS n FROM entities")
        assert cur.fetchone() == {"pid": parent_pid, "n": 1}


def test_store_repr_and_label_hide_password() -> None:
    options = hvcore.BackendOptions()
    store = PostgresServerStore(
        {"conninfo": "postgresql://u:topsecret-pw@db.example:6543/app"}, options, backend="jsonb"
    )
    assert store.label == "db.example:6543/app"
    assert "topsecret-pw" not in repr(store)


@pytest.mark.parametrize(("backend", "method"), [("hstore", "gin"), ("jsonb", "gin")])
def test_where_filters_use_the_body_index(pg_datastore_factory: Any, backend: str, method: str) -> None:
    store = pg_datastore_factory(backend)
    store.put_many(3, 1, [{"city": "Oslo" if i % 100 == 0 else "Lima", "n": str(i)} for i in range(3000)])
    store.create_body_index()  # opt-in (tests/backends/test_body_index.py: none by default)
    try:
        _where_uses_the_body_index(store, backend, method)
    finally:
        store.drop_body_index()


def _where_uses_the_body_index(store: Any, backend: str, method: str) -> None:
    with store.cursor(3) as cur:
        cur.execute(
            "SELECT am.amname AS method FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE c.relname = 'entities_body_idx' "
            "AND c.relnamespace = 'shard0003'::regnamespace"
        )
        assert cur.fetchone() == {"method": method}
        cur.execute("ANALYZE entities")
        cur.execute("SET LOCAL enable_seqscan = off")  # small table: make the planner show it can use the index
        body = "hstore_to_jsonb(body)" if backend == "hstore" else "body"
        probe = f"""{body} @> '{{"city": "Oslo"}}'"""
        cur.execute(f"EXPLAIN SELECT id FROM entities WHERE {probe}")
        plan = "\n".join(str(next(iter(row.values()))) for row in cur.fetchall())
    assert "entities_body_idx" in plan
    assert len(list(store.query(where={"city": "Oslo"}))) == 30


def test_operation_timeout_bounds_a_statement_and_the_pool_recovers(pg_datastore_factory: Any) -> None:
    import psycopg

    store = pg_datastore_factory("jsonb", operation_timeout=0.5)
    key = store.put(2, 1, a="b")
    with pytest.raises(psycopg.OperationalError), store.cursor(2) as cur:  # raw SQL: psycopg's own error
        cur.execute("SELECT pg_sleep(3)")
    assert store.get(key) is not None  # the timed-out session was discarded, not reused
    assert store.status()[0]["reachable"]
