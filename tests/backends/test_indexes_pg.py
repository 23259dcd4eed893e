"""Secondary indexes on real PostgreSQL servers: every shard of two servers, used by the planner, carried by shard
moves and provisioning, resumed after a real interruption, and the same typed values as the Python rule."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fixtures.schemadbs import SchemaSetup
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import hvcore
from hvbackend_postgres._indexes import SCHEMA_LOCK, ensure_support
from hvbackend_postgres._indexsql import field_expr
from hvcore import IndexSpec, MigrationError, ServerUnavailable
from hvcore import cli as _cli
from hvcore._backend import QuerySpec
from hvcore._schemadefs import INDEX_TYPES, bind_filters, split_ranges, typed_value

pytestmark = pytest.mark.postgres

KIND = 7


@pytest.fixture(params=["jsonb", "hstore"])
def setup(request: pytest.FixtureRequest, pg_cluster: Any) -> Iterator[SchemaSetup]:
    made = SchemaSetup(pg_cluster, request.param)
    yield made
    made.close()


def body(i: int, text_only: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"age": i % 1000, "name": f"n{i:05d}", "city": ["Oslo", "Bergen", "Tromsø"][i % 3]}
    return {k: str(v) for k, v in data.items()} if text_only else data


def test_an_index_is_built_in_every_shard_of_both_servers(setup: SchemaSetup) -> None:
    db = setup.datastore()
    db.put(3, KIND, **body(1, setup.backend == "hstore"))
    report = db.create_index(KIND, "age", type="bigint")
    assert (report.shards, report.built, report.rebuilt, report.present) == (16, 16, 0, 0)
    name = report.index.name
    for index, shards in enumerate((range(8), range(8, 16))):
        with setup.conn(index) as conn:
            rows = conn.execute(
                "SELECT schemaname, indexdef FROM pg_indexes WHERE indexname = %s ORDER BY schemaname", (name,)
            ).fetchall()
            recorded = conn.execute("SELECT kind, field, type, state FROM hypervault.indexes").fetchall()
        assert [r[0] for r in rows] == [f"shard{s:04d}" for s in shards]
        assert all(f"WHERE (kind = {KIND})" in r[1] for r in rows)
        assert recorded == [(KIND, "age", "bigint", "active")]
    assert setup.index_states(name) == dict.fromkeys(range(16), True)
    assert db.create_index(KIND, "age", type="bigint").present == 16  # idempotent


def plan(setup: SchemaSetup, db: hvcore.Datastore, shard: int, where: dict[str, Any]) -> str:
    """EXPLAIN of the statement `query(kind=KIND, where=...)` runs for one shard."""
    store: Any = db.servers[db.shard_map.server_for(shard)]
    equal, ranges = split_ranges(where, KIND)
    definitions = db._index_catalog.load(db.servers)
    spec = QuerySpec(kind=KIND, where=equal, filters=bind_filters(KIND, equal, ranges, definitions))
    query, params = store._query_sql([shard], spec, store._ext_schema)
    with setup.conn(db.shard_map.server_for(shard)) as conn:
        rows = conn.execute(sql.SQL("EXPLAIN ") + query, params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_the_planner_uses_the_index(setup: SchemaSetup) -> None:
    text_only = setup.backend == "hstore"
    db = setup.datastore()
    db.put_many(1, KIND, [body(i, text_only) for i in range(5000)])
    db.put_many(1, KIND + 1, [body(i, text_only) for i in range(2000)])  # another kind, outside the partial index
    db.create_index(KIND, "age", type="bigint")
    db.create_index(KIND, "name")
    with setup.conn(0) as conn:
        conn.execute("ANALYZE shard0001.entities")
    ranged = plan(setup, db, 1, {"age": {">=": 100, "<": 103}})
    name = IndexSpec(kind=KIND, field="age", type="bigint").name
    assert f"Index Scan using {name}" in ranged or f"Bitmap Index Scan on {name}" in ranged, ranged
    equal = plan(setup, db, 1, {"name": "n00042"})
    name_index = IndexSpec(kind=KIND, field="name").name
    assert name_index in equal, equal
    print(f"\n{setup.backend}: where={{'age': {{'>=': 100, '<': 103}}}}\n{ranged}")
    # the plan is what query() runs: same rows as the reference
    got = [int(r.data["age"]) for r in db.query(kind=KIND, where={"age": {">=": 100, "<": 103}})]
    assert sorted(got) == [100] * 5 + [101] * 5 + [102] * 5


def test_a_generic_plan_can_use_the_index_too(setup: SchemaSetup) -> None:
    """The kind is written as a literal, so a prepared statement's generic plan still proves the partial index."""
    text_only = setup.backend == "hstore"
    db = setup.datastore()
    db.put_many(2, KIND, [body(i, text_only) for i in range(3000)])
    db.create_index(KIND, "age", type="bigint")
    store: Any = db.servers[0]
    equal, ranges = split_ranges({"age": {">=": 5, "<": 6}}, KIND)
    spec = QuerySpec(kind=KIND, filters=bind_filters(KIND, equal, ranges, db._index_catalog.load(db.servers)))
    query, params = store._query_sql([2], spec, store._ext_schema)
    with setup.conn(0) as conn:
        conn.execute("ANALYZE shard0002.entities")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        parts = query.as_string(conn).split("%s")  # psycopg's placeholders → PREPARE's $1, $2...
        assert len(parts) == len(params) + 1
        text = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
        conn.execute(f"PREPARE hvq AS {text}")
        rows = conn.execute(
            sql.SQL("EXPLAIN EXECUTE hvq ({})").format(sql.SQL(", ").join(sql.Literal(p) for p in params))
        ).fetchall()
    explained = "\n".join(r[0] for r in rows)
    assert IndexSpec(kind=KIND, field="age", type="bigint").name in explained, explained


def test_indexes_survive_a_shard_move(setup: SchemaSetup) -> None:
    text_only = setup.backend == "hstore"
    db = setup.datastore()
    db.put_many(3, KIND, [body(i, text_only) for i in range(300)])
    name = db.create_index(KIND, "age", type="bigint").index.name
    before = [r.key for r in db.query(kind=KIND, where={"age": {">": 250}})]
    report = db.move_shard(3, 1)
    assert report.rows == 300
    states = setup.index_states(name)
    assert states[3] is True and len(states) == 16
    with setup.conn(1) as conn:
        where = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'shard0003' AND indexname = %s", (name,)
        ).fetchone()
    assert where is not None and f"WHERE (kind = {KIND})" in where[0]
    fresh = setup.datastore()
    assert [r.key for r in fresh.query(kind=KIND, where={"age": {">": 250}})] == before
    [info] = fresh.list_indexes()
    assert info.valid == 16 and not info.missing and not info.invalid


def test_new_shards_get_the_recorded_indexes(setup: SchemaSetup) -> None:
    db = setup.datastore()
    names = [db.create_index(KIND, "age", type="bigint").index.name, db.create_index(KIND + 1, "name").index.name]
    grown = setup.datastore(shards=("0-8", "8-24"))
    [_, report] = grown.provision()
    assert report.created == 8
    for name in names:
        assert setup.index_states(name) == dict.fromkeys(range(24), True)
    for info in grown.list_indexes():
        assert info.valid == 24 and not info.missing
    grown.put(20, KIND, **body(7, setup.backend == "hstore"))
    assert [int(r.data["age"]) for r in grown.query(kind=KIND, where={"age": {"<": 8}})] == [7]


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_an_interrupted_build_resumes(setup: SchemaSetup) -> None:
    """A CONCURRENTLY build killed for real leaves an INVALID index; the next run finds it and builds it again."""
    db = setup.datastore()
    db.put(5, KIND, **body(1, setup.backend == "hstore"))
    name = IndexSpec(kind=KIND, field="age", type="bigint").name
    blocker = setup.conn(0)
    blocker.execute("BEGIN")
    blocker.execute("INSERT INTO shard0005.entities SELECT id + 1, kind, body FROM shard0005.entities")  # uncommitted
    failure: list[BaseException] = []

    def build() -> None:
        try:
            setup.datastore().create_index(KIND, "age", type="bigint")
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    with setup.conn(0) as watcher:

        def waiting_build() -> int | None:
            row = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%shard0005%%' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            return int(row[0]) if row else None

        pid = wait_for(waiting_build)  # the build of shard 5 waits for the open writer
        watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(30)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert failure and isinstance(failure[0], ServerUnavailable), failure
    states = setup.index_states(name)
    assert states[5] is False  # INVALID, left by the interrupted build
    assert all(states.get(s) for s in range(5))  # shards before it were done
    info = next(i for i in setup.datastore().list_indexes() if i.index.name == name)
    assert info.invalid == [5]
    report = setup.datastore().create_index(KIND, "age", type="bigint")
    assert report.rebuilt == 1 and report.present >= 5
    assert report.rebuilt + report.built + report.present == 16
    assert setup.index_states(name) == dict.fromkeys(range(16), True)


def test_a_second_schema_change_is_refused_naming_the_holder(setup: SchemaSetup) -> None:
    with setup.conn(1) as holder:
        holder.execute("SET application_name = 'other-migrator'")
        holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        with pytest.raises(MigrationError, match="other-migrator") as refused:
            setup.datastore().create_index(KIND, "age", type="bigint")
    assert refused.value.server is not None and refused.value.server.endswith(setup.dbname)
    report = setup.datastore().create_index(KIND, "age", type="bigint")  # once the other one is done: resumes
    assert report.built + report.present == 16


# -- the SQL expressions compute what typed_value computes --------------------------------------------------------


def json_values(rng: random.Random) -> list[Any]:
    edge: list[Any] = [
        0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 42.0, 42.5, 1e16, 1e300, 1e-7, 0.1, True, False, None,
        "42", "", "ab", "B", "é", "2024-02-29T23:59:59.999999+15:59", "2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z",
        "2024-01-01 00:00:00Z", "2024-01-01T00:00:00+16:00", "2024-13-01T00:00:00Z", "2024-01-01T00:00:60Z",
        [1], {"a": 1},
    ]  # fmt: skip
    edge += [rng.randint(-(2**64), 2**64) for _ in range(40)]
    edge += [rng.uniform(-1e6, 1e6) for _ in range(40)]
    edge += [
        (dt.datetime(1, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randint(0, 300_000_000_000))).isoformat()
        for _ in range(40)
    ]
    return edge


def text_values(rng: random.Random) -> list[str]:
    edge = [
        "0", "-0", "007", "+1", "1.", ".5", "1e5", "1E-3", "1e1000", "9223372036854775807", "9223372036854775808",
        "-9223372036854775808", "99999999999999999999", "true", "false", "True", "t", "", " 1", "1 ", "٣",
        "2024-02-29T12:00:00Z", "2023-02-29T12:00:00Z", "2024-01-01T00:00:00.1234567Z",
    ]  # fmt: skip
    alphabet = "0123456789-+.eE:TZ ab"
    edge += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    edge += [str(rng.randint(-(2**70), 2**70)) for _ in range(30)]
    edge += [f"{rng.uniform(-1e5, 1e5):.{rng.randint(0, 8)}f}" for _ in range(30)]
    return edge


def test_the_sql_expressions_compute_what_python_computes(setup: SchemaSetup) -> None:
    text_only = setup.backend == "hstore"
    rng = random.Random(2017)
    values: list[Any] = text_values(rng) if text_only else json_values(rng)
    db = setup.datastore()
    keys = db.put_many(1, KIND, [{"v": v} for v in values])
    store: Any = db.servers[0]
    ext = store._ext_schema
    with setup.conn(0) as conn:
        ensure_support(conn)  # the timestamptz function
        for type_name in INDEX_TYPES:
            expr = field_expr("v", type_name, ext)
            rows = dict(
                conn.execute(
                    sql.SQL("SELECT id, ({})::text FROM shard0001.entities WHERE kind = {}").format(
                        expr, sql.Literal(KIND)
                    )
                ).fetchall()
            )
            for key, value in zip(keys, values, strict=True):
                python = typed_value(
                    value if text_only else json.loads(json.dumps(value)), type_name, text_values=text_only
                )
                server = rows[int(key)]
                if python is None or server is None:
                    assert python is None and server is None, (type_name, value, server)
                elif type_name == "numeric":
                    assert Decimal(server) == python, (value, server)
                elif type_name == "timestamptz":
                    assert conn.execute("SELECT %s::timestamptz = %s", (server, python)).fetchone() == (True,), value
                elif type_name == "boolean":
                    assert server == ("true" if python else "false")
                else:
                    assert server == str(python), (type_name, value, server)


# -- the command line ----------------------------------------------------------------------------------------------


def test_hv_index_commands(setup: SchemaSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(setup.config_file(tmp_path))
    assert _cli.main(["index", "list", "--config", config]) == 0
    assert "no secondary indexes" in capsys.readouterr().out
    args = ["index", "create", "--kind", str(KIND), "--field", "age", "--type", "bigint", "--config", config]
    assert _cli.main(args) == 0
    out = capsys.readouterr().out
    assert "16 shards, 16 built" in out and "bigint" in out
    assert _cli.main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["present"] == 16
    assert _cli.main(["index", "list", "--config", config, "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["valid"] == 16 and entry["index"]["field"] == "age"
    assert _cli.main(["index", "create", "--kind", "99999", "--field", "age", "--config", config]) == 2
    assert "0..32767" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli.main(["index", "create", "--kind", "1", "--field", "age", "--type", "integer", "--config", config])
    capsys.readouterr()
    assert _cli.main(["index", "drop", "--kind", str(KIND), "--field", "age", "--config", config]) == 0
    assert "from 16 shards" in capsys.readouterr().out
    assert setup.index_states(IndexSpec(kind=KIND, field="age", type="bigint").name) == {}


@pytest.mark.parametrize("field", ["x'); DROP TABLE canary; --", 'a"b', "\\'; SELECT pg_sleep(5); --", "é ñ $$ $hv$"])
def test_field_names_in_index_expressions_are_inert(setup: SchemaSetup, field: str) -> None:
    """The field name is part of the index's expression (as a psycopg.sql.Literal): hostile names stay data."""
    with setup.conn(0) as conn:
        conn.execute("CREATE TABLE canary (x int); INSERT INTO canary VALUES (1)")
    db = setup.datastore()
    value = "5" if setup.backend == "hstore" else 5
    key = db.put(1, KIND, **{field: value})
    db.create_index(KIND, field, type="bigint")
    assert [r.key for r in db.query(kind=KIND, where={field: {">=": 5, "<": 6}})] == [key]
    assert [r.key for r in db.query(kind=KIND, where={field: value})] == [key]
    db.drop_index(KIND, field)
    with setup.conn(0) as conn:
        assert conn.execute("SELECT count(*) FROM canary").fetchone() == (1,)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field=st.text(alphabet="%%sdbt'\"\\ a$;é", min_size=1, max_size=8).filter(lambda f: f.strip() == f and "%" in f),
    decoy=st.sampled_from(["percent halved", "other name"]),
)
def test_field_names_with_percent_signs_query_their_own_field_through_the_index(
    setup: SchemaSetup, field: str, decoy: str
) -> None:
    """The class of a newcomer's finding: an indexed field's name is a constant in a statement run with bound
    parameters, where psycopg reads '%' as a placeholder ('cpu%' crashed; 'a%%b' filtered on 'a%b' and
    delete_where deleted the wrong record). Any name: range and equality filters find exactly its own records, and
    a record under the name psycopg would have made of it is untouched."""
    db = setup.datastore()
    text_only = setup.backend == "hstore"
    value: Any = "5" if text_only else 5
    other = field.replace("%%", "%") if decoy == "percent halved" and "%%" in field else field + "x"
    mine = db.put(1, KIND, **{field: value})
    theirs = db.put(1, KIND, **{other: value})
    db.create_index(KIND, field, type="bigint")
    try:
        assert [r.key for r in db.query(kind=KIND, where={field: {">=": 5, "<": 6}})] == [mine]
        assert [r.key for r in db.query(kind=KIND, where={field: value})] == [mine]
        assert db.delete_where(kind=KIND, where={field: {">=": 5}}) == 1
        assert set(db.get_many([mine, theirs])) == {theirs}
    finally:
        db.drop_index(KIND, field)
        db.delete(mine)
        db.delete(theirs)
