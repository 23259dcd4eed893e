"""Contract for secondary indexes (issue 17), on every backend, sync and async: range filters find what the
reference semantics (`QuerySpec.matches`, ``hvcore._schemadefs.typed_value``) find, with or without an index."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fixtures.datastores import BACKENDS, TEXT_ONLY_BACKENDS, THROUGH_PGBOUNCER, MakeDatastore

import hvcore
from hvcore import DuplicateValue, InvalidKind, InvalidQuery, MigrationError
from hvcore._schemadefs import typed_value

KIND = 7
UTC = dt.UTC
START = dt.datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(params=[name for name in BACKENDS if not name.endswith(THROUGH_PGBOUNCER)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Every backend, directly: a schema change holds a session advisory lock, which a transaction-mode pooler
    cannot keep, so it is refused there (tests/backends/test_pgbouncer_store.py checks that)."""
    return str(request.param)


@pytest.fixture
def db(make_datastore: MakeDatastore) -> Iterator[hvcore.Datastore]:
    """An empty store; every index recorded during the test is dropped afterwards (PostgreSQL databases are shared)."""
    store = make_datastore()
    yield store
    for info in store.list_indexes():
        if info.index.kind is None or info.index.field is None:
            store.drop_body_index()
        else:
            store.drop_index(info.index.kind, info.index.field)


def bodies(text_only: bool, count: int = 240) -> list[dict[str, Any]]:
    """Bodies mixing well-typed values, wrongly typed ones and missing fields."""
    rng = random.Random(17)
    out: list[dict[str, Any]] = []
    for i in range(count):
        at = START + dt.timedelta(hours=i, microseconds=rng.choice([0, 250000]))
        body: dict[str, Any] = {
            "age": i % 90,
            "score": round(rng.uniform(-5, 5), 3),
            "name": rng.choice(["ada", "Bob", "bea", "ZED", "émile", "b"]) + str(i % 7),
            "at": at.isoformat(),
            "ok": i % 3 == 0,
        }
        if i % 11 == 0:
            body["age"] = f"{i}" if not text_only else f"x{i}"  # not a bigint
        if i % 13 == 0:
            body["score"] = 7.0 if not text_only else "seven"
        if i % 17 == 0:
            del body["at"]
        if i % 19 == 0:
            body["at"] = "2024-03-01"  # no time, no offset: not a timestamptz
        if text_only:
            body = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in body.items()}
        out.append(body)
    return out


def expected(records: list[hvcore.Record], field: str, type_name: str, text_only: bool, **ops: Any) -> set[int]:
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = set()
    for record in records:
        value = typed_value(record.data.get(field), type_name, text_values=text_only)
        if value is None:
            continue
        if all(
            {">=": value >= b, ">": value > b, "<=": value <= b, "<": value < b}[names[op]] for op, b in ops.items()
        ):
            found.add(int(record.key))
    return found


def keys(records: Iterator[hvcore.Record]) -> list[int]:
    return [int(r.key) for r in records]


def test_range_filters_match_the_reference_on_every_type(db: hvcore.Datastore, backend_name: str) -> None:
    text_only = backend_name in TEXT_ONLY_BACKENDS
    for shard in range(16):
        db.put_many(shard, KIND, bodies(text_only)[shard::16])
    db.put_many(3, KIND + 1, bodies(text_only, 20))  # another kind: never matches
    stored = [r for r in db.query(kind=KIND)]
    for field, type_name in (("age", "bigint"), ("score", "numeric"), ("name", "text"), ("at", "timestamptz")):
        db.create_index(KIND, field, type=type_name)
    db.create_index(KIND, "ok", type="boolean")
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("age", "bigint", {"ge": 10, "lt": 40}),
        ("age", "bigint", {"gt": 85}),
        ("age", "bigint", {"le": -1}),
        ("score", "numeric", {"gt": -1.5, "le": Decimal("2.25")}),
        ("score", "numeric", {"ge": 7}),
        ("name", "text", {"ge": "b", "lt": "c"}),
        ("name", "text", {"gt": "Z"}),
        ("at", "timestamptz", {"ge": START + dt.timedelta(days=2), "lt": START + dt.timedelta(days=3, minutes=1)}),
        ("ok", "boolean", {"ge": True}),
    ]
    names = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    for field, type_name, ops in cases:
        where = {field: {names[op]: bound for op, bound in ops.items()}}
        bounds = {op: (Decimal(repr(b)) if isinstance(b, float) else b) for op, b in ops.items()}
        want = expected(stored, field, type_name, text_only, **bounds)
        got = keys(db.query(kind=KIND, where=where))
        assert got == sorted(got), "key order"
        assert set(got) == want, (field, ops)
        assert len(got) == len(want)
    assert len(keys(db.query(kind=KIND, where={"age": {">=": 10, "<": 40}}))) > 20  # the cases are not trivial


def test_ranges_combine_with_equality_limit_and_time(db: hvcore.Datastore, backend_name: str) -> None:
    text_only = backend_name in TEXT_ONLY_BACKENDS
    for shard in (1, 9):
        db.put_many(shard, KIND, bodies(text_only, 120))
    db.create_index(KIND, "age", type="bigint")
    stored = list(db.query(kind=KIND))
    ok = "true" if text_only else True
    want = sorted(k for k in expected(stored, "age", "bigint", text_only, ge=20, lt=60))
    want = [k for k in want if next(r for r in stored if int(r.key) == k).data["ok"] == ok]
    assert keys(db.query(kind=KIND, where={"age": {">=": 20, "<": 60}, "ok": ok})) == want
    assert keys(db.query(kind=KIND, where={"age": {">=": 20, "<": 60}, "ok": ok}, limit=3)) == want[:3]
    middle = hvcore.Key(want[len(want) // 2])
    assert keys(db.query(kind=KIND, where={"age": {">=": 20, "<": 60}, "ok": ok}, since=middle)) == [
        k for k in want if k >= middle
    ]


def test_equality_on_an_indexed_field_finds_what_it_found_before(db: hvcore.Datastore, backend_name: str) -> None:
    text_only = backend_name in TEXT_ONLY_BACKENDS
    for shard in (0, 8, 15):
        db.put_many(shard, KIND, bodies(text_only, 90))
    probes: list[Any] = ["5", "11", "x11", "ada0"] if text_only else [5, 11, "11", 5.0, True, "ada0"]
    before = {repr(p): keys(db.query(kind=KIND, where={"age": p})) for p in probes}
    before_name = keys(db.query(kind=KIND, where={"name": "ada0"}))
    db.create_index(KIND, "age", type="bigint")
    db.create_index(KIND, "name")
    after = {repr(p): keys(db.query(kind=KIND, where={"age": p})) for p in probes}
    assert after == before
    assert keys(db.query(kind=KIND, where={"name": "ada0"})) == before_name
    assert any(before.values())


def test_index_lifecycle(db: hvcore.Datastore) -> None:
    db.put(2, KIND, name="ada")
    report = db.create_index(KIND, "name")
    assert report.index.name.startswith(f"hv_k{KIND}_")
    assert report.shards == 16 and report.built + report.present == report.shards - report.rebuilt
    again = db.create_index(KIND, "name")  # idempotent: nothing left to build
    assert again.built == 0 and again.rebuilt == 0
    [info] = db.list_indexes()
    assert (info.index.kind, info.index.field, info.index.type, info.index.state) == (KIND, "name", "text", "active")
    assert not info.invalid and not info.missing and info.valid == 16
    assert keys(db.query(kind=KIND, where={"name": {">": "a"}}))
    with pytest.raises(MigrationError, match="already has an index"):
        db.create_index(KIND, "name", type="bigint")
    dropped = db.drop_index(KIND, "name")
    assert dropped.index.field == "name"
    assert db.list_indexes() == []
    with pytest.raises(InvalidQuery, match="no index on field 'name' of kind 7"):
        list(db.query(kind=KIND, where={"name": {">": "a"}}))
    with pytest.raises(InvalidQuery, match="nothing to drop"):
        db.drop_index(KIND, "name")


def test_body_index_lifecycle_and_where_results_with_and_without_it(db: hvcore.Datastore, backend_name: str) -> None:
    """The body index is opt-in: ``where`` finds the same records without it, with it, and after it is dropped;
    on the memory backend its calls are recorded no-ops with the same reports."""
    text_only = backend_name in TEXT_ONLY_BACKENDS
    made = bodies(text_only)
    for shard in (1, 9):
        db.put_many(shard, KIND, made)
    records = list(db.query())
    wheres = [{"name": made[0]["name"]}, {"name": made[3]["name"], "age": made[3]["age"]}, {"name": "nobody"}]
    if not text_only:
        wheres.append({"ok": True, "age": 3})

    def found() -> list[list[int]]:
        return [keys(db.query(where=where)) for where in wheres]

    wanted = [sorted(r.key for r in records if all(r.data.get(k) == v for k, v in w.items())) for w in wheres]
    assert found() == wanted and all(wanted[:2])
    assert db.list_indexes() == []
    report = db.create_body_index()
    assert report.index.is_body and report.index.name == "entities_body_idx" and report.index.kind is None
    assert report.shards == 16 and report.built + report.present == 16
    [info] = db.list_indexes()
    assert info.index == hvcore.IndexSpec.body() and not info.missing and not info.invalid
    assert info.valid == 16  # built in every shard, also those holding nothing yet (memory: made on first use)
    assert found() == wanted
    db.create_index(KIND, "name")  # beside a typed index
    assert [i.index.is_body for i in db.list_indexes()] == [True, False]
    assert db.drop_body_index().index.is_body
    assert [i.index.field for i in db.list_indexes()] == ["name"]
    assert found() == wanted


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda db: db.create_index(KIND, "age", type="int"), InvalidQuery, "unknown index type 'int'"),
        (lambda db: db.create_index(40000, "age"), InvalidKind, "0..32767"),
        (lambda db: db.create_index(-1, "age"), InvalidKind, "0..32767"),
        (lambda db: db.create_index(KIND, ""), InvalidQuery, "non-empty string"),
        (lambda db: db.query(where={"age": {">": 1}}), InvalidQuery, "needs kind=K"),
        (lambda db: db.query(kind=KIND, where={"age": {">": 1, "<": "z"}}), InvalidQuery, "mixes bounds"),
        (lambda db: list(db.query(kind=KIND, where={"nope": {">": 1}})), InvalidQuery, "no index on field 'nope'"),
        (lambda db: db.query(kind=40000, where={"age": {">": 1}}), InvalidKind, "0..32767"),
    ],
)
def test_bad_index_input_is_a_typed_error(db: hvcore.Datastore, call: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call(db)
    assert db.list_indexes() == []


def test_unique_index_is_unique_within_each_shard(db: hvcore.Datastore, backend_name: str) -> None:
    email = "ada@example.org"
    db.put(4, KIND, email=email)
    db.put(4, KIND + 1, email=email)  # another kind: not covered
    db.create_index(KIND, "email", unique=True)
    with pytest.raises(DuplicateValue, match="unique"):
        db.put(4, KIND, email=email)
    with pytest.raises(DuplicateValue):
        db.put_many(4, KIND, [{"email": "new@example.org"}, {"email": email}])
    assert len(keys(db.query(kind=KIND, shards=[4]))) == 1  # nothing of the refused writes
    other = db.put(12, KIND, email=email)  # another shard: unique per shard only
    key = db.put(4, KIND, email="bob@example.org")
    with pytest.raises(DuplicateValue):
        db.update(key, email=email)
    assert db.get(key).data["email"] == "bob@example.org"  # type: ignore[union-attr]
    assert db.get(other) is not None


def test_a_unique_index_over_duplicates_fails_naming_the_shard(db: hvcore.Datastore) -> None:
    db.put(5, KIND, code="A")
    db.put(5, KIND, code="A")
    with pytest.raises(MigrationError, match="shard 5") as failure:
        db.create_index(KIND, "code", unique=True)
    assert failure.value.shard_id == 5
    [info] = db.list_indexes()
    assert 5 in info.missing and not info.invalid  # the failed build left nothing behind


def test_the_memory_backend_runs_no_migrations(tmp_path: Any) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    with hvcore.Datastore([dict(shards="0-4")], backend="memory") as db:
        with pytest.raises(MigrationError, match="cannot run SQL migrations"):
            db.migrate(tmp_path)
        with pytest.raises(MigrationError, match="does not exist"):
            db.migrate(tmp_path / "nope")
