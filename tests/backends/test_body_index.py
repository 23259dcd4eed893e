"""The body index is opt-in (issue 14): shards are provisioned without it; ``create_body_index`` builds it in every
shard of every server (recorded, so provisioning and moves give new shards it), ``drop_body_index`` removes it; a
server whose shards have it from an earlier release, with nothing recorded, gets it recorded by provisioning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.schemadbs import SchemaSetup

import hvcore
from hvcore import IndexSpec
from hvcore import cli as _cli

pytestmark = pytest.mark.postgres

BODY = "entities_body_idx"
OLD_DDL = {  # what every shard got from the releases before the body index was optional
    "jsonb": "CREATE INDEX {idx} ON {schema}.entities USING gin (body jsonb_path_ops) WITH (fastupdate = off)",
    "hstore": "CREATE INDEX {idx} ON {schema}.entities USING gin ((public.hstore_to_jsonb(body)) jsonb_path_ops) "
    "WITH (fastupdate = off)",
}


@pytest.fixture(params=["jsonb", "hstore"])
def setup(request: pytest.FixtureRequest, pg_cluster: Any) -> Iterator[SchemaSetup]:
    made = SchemaSetup(pg_cluster, request.param)
    yield made
    made.close()


def bodies(setup: SchemaSetup, count: int) -> list[dict[str, Any]]:
    made = [{"city": "Oslo" if i % 100 == 0 else "Lima", "n": i} for i in range(count)]
    return [{k: str(v) for k, v in b.items()} for b in made] if setup.backend == "hstore" else made


def gin_options(setup: SchemaSetup) -> dict[int, list[str]]:
    """Shard → reloptions of its body index (GIN only), over both servers."""
    found: dict[int, list[str]] = {}
    for index in range(len(setup.settings)):
        with setup.conn(index) as conn:
            rows = conn.execute(
                "SELECT n.nspname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN pg_am am ON am.oid = c.relam WHERE c.relname = %s AND am.amname = 'gin' "
                "AND n.nspname LIKE 'shard%%'",
                (BODY,),
            ).fetchall()
        for schema, options in rows:
            found[int(schema.removeprefix("shard"))] = list(options or [])
    return found


def recorded(setup: SchemaSetup, index: int) -> list[tuple[str, str]]:
    with setup.conn(index) as conn:
        if conn.execute("SELECT to_regclass('hypervault.body_index')").fetchone() == (None,):
            return []
        return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT name, state FROM hypervault.body_index")]


def explain_where(setup: SchemaSetup, shard: int) -> str:
    """The plan of the containment filter a ``where`` sends to one shard (as `_common._filter_sql` writes it)."""
    index = 0 if shard < 8 else 1
    probe = "public.hstore_to_jsonb(body)" if setup.backend == "hstore" else "body"
    with setup.conn(index) as conn:
        conn.execute(f"ANALYZE shard{shard:04d}.entities")
        rows = conn.execute(
            f"EXPLAIN SELECT id FROM shard{shard:04d}.entities WHERE {probe} @> %s::jsonb",
            (json.dumps({"city": "Oslo"}),),
        ).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def test_provisioned_shards_have_no_body_index_and_where_still_finds_the_records(setup: SchemaSetup) -> None:
    db = setup.datastore()
    assert gin_options(setup) == {}
    assert db.list_indexes() == []
    keys = db.put_many(3, 1, bodies(setup, 3000))
    assert BODY not in explain_where(setup, 3)
    found = [r.key for r in db.query(where={"city": "Oslo"})]
    assert found == [k for i, k in enumerate(keys) if i % 100 == 0]
    assert [r.key for r in db.query(kind=1, where={"city": "Oslo", "n": "200" if setup.backend == "hstore" else 200})]
    assert sum(r.created for r in db.provision()) == 0  # a shard without it counts as provisioned


def test_create_body_index_builds_it_everywhere_and_new_shards_get_it(setup: SchemaSetup) -> None:
    db = setup.datastore()
    db.put_many(3, 1, bodies(setup, 3000))
    done: list[tuple[str, int, int]] = []
    report = db.create_body_index(progress=lambda label, n, total: done.append((label, n, total)))
    assert report.index == IndexSpec.body() and report.index.is_body and report.index.name == BODY
    assert (report.shards, report.built, report.rebuilt, report.present) == (16, 16, 0, 0)
    assert done[-1] == (BODY, 16, 16)
    assert gin_options(setup) == {s: ["fastupdate=off"] for s in range(16)}
    assert recorded(setup, 0) == recorded(setup, 1) == [(BODY, "active")]
    assert BODY in explain_where(setup, 3)  # 3000 rows, 30 match: the planner takes the index
    assert len(list(db.query(where={"city": "Oslo"}))) == 30
    [info] = db.list_indexes()
    assert info.index.is_body and info.valid == 16 and not info.missing and not info.invalid
    again = db.create_body_index()
    assert (again.built, again.present) == (0, 16)
    grown = setup.datastore(shards=("0-8", "8-24"))
    [_, provisioned] = grown.provision()
    assert provisioned.created == 8
    assert sorted(gin_options(setup)) == list(range(24))
    [info] = grown.list_indexes()
    assert info.valid == 24


def test_drop_body_index_removes_it_everywhere_and_new_shards_go_without(setup: SchemaSetup) -> None:
    db = setup.datastore()
    db.create_body_index()
    report = db.drop_body_index()
    assert report.index.is_body and report.dropped == 16
    assert gin_options(setup) == {}
    assert recorded(setup, 0) == recorded(setup, 1) == []
    assert db.list_indexes() == []
    grown = setup.datastore(shards=("0-8", "8-24"))
    grown.provision()
    assert gin_options(setup) == {}
    assert db.drop_body_index().dropped == 0  # nothing there: nothing to do


def test_an_interrupted_body_index_build_resumes(setup: SchemaSetup) -> None:
    """An INVALID leftover (what a CONCURRENTLY build killed for real leaves) is rebuilt by the next run."""
    db = setup.datastore()
    with setup.conn(0) as conn:
        conn.execute(OLD_DDL["jsonb" if setup.backend == "jsonb" else "hstore"].format(idx=BODY, schema="shard0005"))
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'shard0005.entities_body_idx'::regclass"
        )
    report = db.create_body_index()
    assert (report.built, report.rebuilt, report.present) == (15, 1, 0)
    assert sorted(gin_options(setup)) == list(range(16))
    [info] = db.list_indexes()
    assert info.valid == 16 and not info.invalid


def test_a_moved_shard_keeps_the_body_index(setup: SchemaSetup) -> None:
    db = setup.datastore()
    keys = db.put_many(3, 1, bodies(setup, 300))
    db.create_body_index()
    report = db.move_shard(3, 1)
    assert report.rows == 300
    assert gin_options(setup) == {s: ["fastupdate=off"] for s in range(16)}
    with setup.conn(1) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'shard0003' AND indexname = %s", (BODY,)
        ).fetchone() == (1,)
    fresh = setup.datastore()
    assert [r.key for r in fresh.query(where={"city": "Oslo"})] == [k for i, k in enumerate(keys) if i % 100 == 0]
    [info] = fresh.list_indexes()
    assert info.valid == 16 and not info.missing


def test_a_moved_shard_gets_no_body_index_when_none_is_recorded(setup: SchemaSetup) -> None:
    db = setup.datastore()
    db.put_many(3, 1, bodies(setup, 10))
    db.move_shard(3, 1)
    assert gin_options(setup) == {}


@pytest.mark.parametrize("operation", ["create", "drop"])
def test_a_body_index_created_or_dropped_during_a_move_is_so_on_the_moved_shard(
    setup: SchemaSetup, operation: str
) -> None:
    """Another process builds (or drops) the body index while the move copies: the switch reconciles the copy."""
    db = setup.datastore(worker=None)
    operator = setup.datastore(worker=None)
    db.put_many(3, 1, bodies(setup, 200))
    if operation == "drop":
        db.create_body_index()
    done: list[object] = []

    def progress(phase: str, n: int, total: int) -> None:
        if phase == "catchup" and not done:  # the copy is done; the switch has not happened yet
            done.append(operator.create_body_index() if operation == "create" else operator.drop_body_index())

    db.move_shard(3, 1, progress=progress)
    assert done, "the move never reached its catch-up phase"
    if operation == "create":
        assert sorted(gin_options(setup)) == list(range(16))
        [info] = db.list_indexes()
        assert info.valid == 16 and not info.missing
    else:
        assert gin_options(setup) == {}
        assert db.list_indexes() == []


def old_layout(setup: SchemaSetup, shards: range) -> None:
    """Give these shards the body index as the releases before did (no record)."""
    for shard in shards:
        with setup.conn(0 if shard < 8 else 1) as conn:
            conn.execute(OLD_DDL[setup.backend].format(idx=BODY, schema=f"shard{shard:04d}"))


def test_provisioning_records_the_body_index_of_shards_made_by_an_earlier_release(setup: SchemaSetup) -> None:
    old_layout(setup, range(16))
    db = setup.datastore()
    reports = db.provision()
    assert all(any("recorded the body index" in note for note in r.notes) for r in reports)
    assert recorded(setup, 0) == recorded(setup, 1) == [(BODY, "active")]
    [info] = db.list_indexes()
    assert info.index.is_body and info.valid == 16
    grown = setup.datastore(shards=("0-8", "8-24"))
    grown.provision()
    assert sorted(gin_options(setup)) == list(range(24))  # new shards get it, as they did before
    # and a drop is final: provisioning does not record it again
    grown.drop_body_index()
    grown.provision()
    assert recorded(setup, 0) == recorded(setup, 1) == []


def test_hv_init_says_it_recorded_the_body_index(
    setup: SchemaSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_layout(setup, range(16))
    assert _cli.main(["init", "--config", str(setup.config_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert out.count("recorded the body index (entities_body_idx): existing shards have it") == 2, out


def test_a_shard_moved_from_an_earlier_release_keeps_its_body_index(setup: SchemaSetup) -> None:
    old_layout(setup, range(16))
    db = setup.datastore()
    db.put_many(3, 1, bodies(setup, 50))
    db.move_shard(3, 1)  # no provision() since the upgrade: the move records it itself
    assert sorted(gin_options(setup)) == list(range(16))
    assert recorded(setup, 0) == recorded(setup, 1) == [(BODY, "active")]


def test_the_async_datastore_creates_and_drops_the_body_index(setup: SchemaSetup) -> None:
    async def run() -> tuple[int, int, list[hvcore.IndexInfo]]:
        async with hvcore.AsyncDatastore(setup.servers(), backend=setup.backend) as db:
            built = (await db.create_body_index()).built
            infos = await db.list_indexes()
            dropped = (await db.drop_body_index()).dropped
        return built, dropped, infos

    built, dropped, infos = asyncio.run(run())
    assert (built, dropped) == (16, 16)
    assert [i.index.name for i in infos] == [BODY]
    assert gin_options(setup) == {}


def test_drop_index_refuses_none_and_names_drop_body_index(setup: SchemaSetup) -> None:
    db = setup.datastore()
    with pytest.raises(hvcore.InvalidQuery, match="drop_body_index"):
        db.drop_index(None, None)  # type: ignore[arg-type]


def test_hv_index_body_commands(setup: SchemaSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(setup.config_file(tmp_path))
    assert _cli.main(["index", "create", "--body", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "body index entities_body_idx" in out and "16 shards, 16 built" in out
    assert _cli.main(["index", "list", "--config", config]) == 0
    out = capsys.readouterr().out
    assert BODY in out and "body" in out
    assert _cli.main(["index", "list", "--config", config, "--json"]) == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["index"] == {
        "name": BODY,
        "kind": None,
        "field": None,
        "type": "body",
        "unique": False,
        "state": "active",
    }
    assert entry["valid"] == 16
    assert _cli.main(["index", "create", "--body", "--kind", "1", "--config", config]) == 2
    assert "--body takes no --kind" in capsys.readouterr().err
    assert _cli.main(["index", "drop", "--config", config]) == 2
    assert "--kind K and --field F (or --body" in capsys.readouterr().err
    assert _cli.main(["index", "drop", "--body", "--config", config]) == 0
    assert "from 16 shards" in capsys.readouterr().out
    assert gin_options(setup) == {}
