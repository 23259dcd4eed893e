"""Versioned migrations on real PostgreSQL servers: 512 shards on two servers, interrupted (in process, and by
SIGKILL) and resumed, a migration failing on one shard, two migrators, bad files, provisioning and shard moves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from fixtures.schemadbs import SchemaSetup

import hvcore
from hvbackend_postgres._indexes import SCHEMA_LOCK
from hvcore import MigrationError, MoveError, ServerUnavailable
from hvcore import cli as _cli
from hvcore._schemadefs import IndexSpec, load_migrations

pytestmark = pytest.mark.postgres

THREE = {
    "0001_notes.sql": "-- a table and its index\nCREATE TABLE notes (id bigserial PRIMARY KEY, note text NOT NULL);\n"
    "CREATE INDEX notes_note ON notes (note);\n",
    "0002_views.sql": "CREATE VIEW recent AS SELECT id, kind FROM entities WHERE id > 0;\n"
    "CREATE FUNCTION note_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM notes; $$;\n"
    "SELECT pg_sleep(0.004); -- slow enough to be interrupted in the middle\n",
    "0003_column.sql": "ALTER TABLE notes ADD COLUMN at timestamptz NOT NULL DEFAULT now();",
}


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def setup(pg_cluster: Any) -> Iterator[SchemaSetup]:
    made = SchemaSetup(pg_cluster, "jsonb")
    yield made
    made.close()


@pytest.fixture
def big(pg_cluster: Any) -> Iterator[SchemaSetup]:
    made = SchemaSetup(pg_cluster, "jsonb", shards=("0-256", "256-512"))
    yield made
    made.close()


def catalog(setup: SchemaSetup) -> dict[int, dict[str, Any]]:
    """Per shard: versions recorded, and which of the migrations' objects exist (read from each server's catalog)."""
    out: dict[int, dict[str, Any]] = {}
    for index in range(len(setup.settings)):
        with setup.conn(index) as conn:
            relations: dict[str, set[str]] = {}
            for schema, name in conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname LIKE 'shard%%' AND (c.relname IN ('notes', 'recent') "
                "OR (c.relname = 'entities' AND c.relkind = 'r'))"
            ):
                relations.setdefault(schema, set()).add(name)
            with_at = {
                row[0]
                for row in conn.execute(
                    "SELECT n.nspname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'notes' AND a.attname = 'at' "
                    "AND NOT a.attisdropped"
                )
            }
            versions: dict[int, list[int]] = {}
            if conn.execute("SELECT to_regclass('hypervault.shard_versions') IS NOT NULL").fetchone() == (True,):
                for shard, version in conn.execute("SELECT shard, version FROM hypervault.shard_versions"):
                    versions.setdefault(shard, []).append(version)
            for schema, names in relations.items():
                if "entities" not in names:
                    continue  # a forwarding stub: the shard lives on the other server
                shard = int(schema.removeprefix("shard"))
                out[shard] = {
                    "versions": sorted(versions.get(shard, [])),
                    "notes": "notes" in names,
                    "recent": "recent" in names,
                    "at": schema in with_at,
                }
    return out


def assert_consistent(found: dict[int, dict[str, Any]]) -> None:
    """Every shard has a file's objects exactly when it records the file's version: nothing half-applied."""
    for shard, state in found.items():
        assert state["notes"] == (1 in state["versions"]), shard
        assert state["recent"] == (2 in state["versions"]), shard
        assert state["at"] == (3 in state["versions"]), shard


def test_three_migrations_over_512_shards_interrupted_in_migration_2_then_finished(
    big: SchemaSetup, tmp_path: Path
) -> None:
    folder = write(tmp_path / "m", THREE)
    db = big.datastore()
    status = db.migration_status(folder)
    assert status.shards == 512 and len(status.shards_behind) == 512
    assert [(v.version, v.recorded, v.applied) for v in status.versions] == [
        (1, False, 0),
        (2, False, 0),
        (3, False, 0),
    ]
    seen: list[tuple[str, int, int]] = []

    def progress(label: str, done: int, total: int) -> None:
        seen.append((label, done, total))
        if label == "0002_views.sql" and done == 100:
            raise KeyboardInterrupt  # as a Ctrl-C after shard 100 of migration 2

    with pytest.raises(KeyboardInterrupt):
        db.migrate(folder, progress=progress)
    found = catalog(big)
    assert len(found) == 512
    assert_consistent(found)
    with_two = [s for s, state in found.items() if 2 in state["versions"]]
    assert all(state["versions"][:1] == [1] for state in found.values())
    assert 100 <= len(with_two) <= 104  # the shards in flight on the other sessions finish theirs
    status = db.migration_status(folder)
    two = status.versions[1]
    assert (two.recorded, two.applied, len(two.behind)) == (True, len(with_two), 512 - len(with_two))
    assert status.versions[2].applied == 0 and status.versions[0].applied == 512
    assert two.behind == sorted(set(range(512)) - set(with_two))
    assert status.shards_behind == list(range(512))  # none has migration 3 yet
    report = db.migrate(folder)
    assert [(r.version, r.applied, r.already) for r in report.runs] == [
        (1, 0, 512),
        (2, 512 - len(with_two), len(with_two)),
        (3, 512, 0),
    ]
    found = catalog(big)
    assert all(state["versions"] == [1, 2, 3] for state in found.values())
    assert_consistent(found)
    assert db.migration_status(folder).up_to_date
    started = time.perf_counter()
    again = db.migrate(folder)
    assert again.applied == 0
    print(f"\nre-run over 512 shards: {time.perf_counter() - started:.3f} s")
    with db.cursor(511) as cur:
        cur.execute("SELECT note_count()")
        assert cur.fetchone() == {"note_count": 0}


def test_a_migrator_killed_by_sigkill_is_finished_by_the_next_run(big: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", THREE)
    config = big.config_file(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "hvcore.cli", "migrate", "--config", str(config), str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = []
            for index in range(2):
                with big.conn(index) as conn:
                    if conn.execute("SELECT to_regclass('hypervault.shard_versions')").fetchone() == (None,):
                        counts.append(0)
                        continue
                    row = conn.execute("SELECT count(*) FROM hypervault.shard_versions WHERE version = 2").fetchone()
                    counts.append(int(row[0]) if row else 0)
            if sum(counts) >= 100:
                break
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    found = catalog(big)
    assert_consistent(found)
    two = sum(2 in state["versions"] for state in found.values())
    assert 100 <= two < 512, two
    db = big.datastore()
    assert len(db.migration_status(folder).versions[1].behind) == 512 - two
    db.migrate(folder)
    found = catalog(big)
    assert all(state["versions"] == [1, 2, 3] for state in found.values())
    assert_consistent(found)


def test_a_failing_migration_names_its_shard_and_the_rest_stays_consistent(big: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"0001_notes.sql": THREE["0001_notes.sql"]})
    db = big.datastore()
    db.migrate(folder)
    dup = db.put(300, 1, email="ada@example.org")
    db.put(300, 1, email="ada@example.org")
    write(
        folder,
        {
            "0002_unique.sql": "CREATE TABLE audit (id bigint);\n"
            "CREATE UNIQUE INDEX email_once ON entities ((body ->> 'email')) WHERE kind = 1;\n"
        },
    )
    with pytest.raises(MigrationError, match="shard 300") as failure:
        db.migrate(folder)
    error = failure.value
    assert (error.shard_id, error.migration) == (300, "0002_unique.sql")
    assert error.statement is not None and error.statement.startswith("CREATE UNIQUE INDEX email_once")
    assert error.server is not None and big.dbname in error.server
    assert "statement 2 of 2" in str(error) and "duplicate" in str(error).lower()
    with big.conn(1) as conn:
        assert conn.execute("SELECT to_regclass('shard0300.audit')").fetchone() == (None,)  # nothing half-applied
    found = catalog(big)
    audit: dict[int, bool] = {}
    for index in range(2):
        with big.conn(index) as conn:
            for shard in found:
                if (shard < 256) == (index == 0):
                    row = conn.execute("SELECT to_regclass(%s)", (f"shard{shard:04d}.audit",)).fetchone()
                    audit[shard] = row != (None,)
    for shard, state in found.items():
        assert audit[shard] == (2 in state["versions"]), shard
    assert 2 not in found[300]["versions"]
    db.delete(dup)  # fix the data, then run again: it goes on with shard 300
    report = db.migrate(folder)
    assert report.runs[1].applied == 512 - sum(2 in s["versions"] for s in found.values())
    assert all(state["versions"] == [1, 2] for state in catalog(big).values())


def test_two_migrators_the_second_refuses_or_waits(setup: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"0001_notes.sql": THREE["0001_notes.sql"]})
    with setup.conn(0) as holder:
        holder.execute("SET application_name = 'the-first-migrator'")
        holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        with pytest.raises(MigrationError, match="the-first-migrator") as refused:
            setup.datastore().migrate(folder)
        assert "wait=SECONDS" in str(refused.value)
        assert catalog(setup)[0]["versions"] == []  # refused before recording or applying anything
        release = threading.Timer(0.5, lambda: holder.execute("SELECT pg_advisory_unlock_all()"))
        release.start()
        started = time.monotonic()
        report = setup.datastore().migrate(folder, wait=10)
        release.join()
    assert time.monotonic() - started >= 0.4
    assert report.applied == 16


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"0001_bad.sql": "CREATE TABLE (a int);"}, "syntax error"),
        ({"0001_tx.sql": "BEGIN; CREATE TABLE a (x int); COMMIT;"}, "transaction control"),
        ({"0001_path.sql": "SET search_path = public; CREATE TABLE a (x int);"}, "search_path"),
        (
            {"0001_mixed.sql": "CREATE TABLE a (x int); CREATE INDEX CONCURRENTLY a_x ON a (x);"},
            "mixes statements that cannot run in a transaction",
        ),
        ({"0001_noname.sql": "CREATE INDEX CONCURRENTLY ON entities (kind);"}, "name the index"),
        ({"0001_empty.sql": "-- nothing\n"}, "no SQL statement"),
        ({"0001_ok.sql": "SELECT 1", "0003_b.sql": "SELECT (", "0002_a.sql": "SELECT 2"}, "0003_b.sql"),
    ],
)
def test_bad_files_are_refused_before_any_sql(
    setup: SchemaSetup, tmp_path: Path, files: dict[str, str], match: str
) -> None:
    folder = write(tmp_path / "m", files)
    with pytest.raises(MigrationError, match=match):
        setup.datastore().migrate(folder)
    for index in range(2):
        with setup.conn(index) as conn:
            assert conn.execute("SELECT to_regclass('hypervault.migrations')").fetchone() == (None,)


def test_statements_outside_a_transaction_and_an_interrupted_concurrent_build(
    setup: SchemaSetup, tmp_path: Path
) -> None:
    folder = write(
        tmp_path / "m",
        {
            "0001_notes.sql": THREE["0001_notes.sql"],
            "0002_index.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS by_city ON entities ((body ->> 'city'));",
        },
    )
    db = setup.datastore()
    dry = db.migrate(folder, dry_run=True)
    assert [(r.version, r.transactional, r.applied) for r in dry.runs] == [(1, True, 16), (2, False, 16)]
    db.put(5, 1, city="Oslo")
    blocker = setup.conn(0)
    blocker.execute("BEGIN")
    blocker.execute("INSERT INTO shard0005.entities SELECT id + 1, kind, body FROM shard0005.entities")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            setup.datastore().migrate(folder)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    with setup.conn(0) as watcher:
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' "
                "AND wait_event_type = 'Lock'"
            ).fetchone()
            pid = row[0] if row else None
            time.sleep(0.05)
        assert pid is not None
        watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
    thread.join(30)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert failure and isinstance(failure[0], ServerUnavailable), failure
    assert setup.index_states("by_city").get(5) is False  # INVALID, left by the killed build
    report = setup.datastore().migrate(folder)
    assert report.runs[1].applied == 16 - report.runs[1].already
    assert setup.index_states("by_city") == dict.fromkeys(range(16), True)
    assert all(state["versions"] == [1, 2] for state in catalog(setup).values())


def test_dry_run_changes_nothing(setup: SchemaSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path / "m", THREE)
    config = str(setup.config_file(tmp_path))
    assert _cli.main(["migrate", "--config", config, str(folder), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "0001_notes.sql: 16 shard(s) to apply" in out and "CREATE TABLE notes" in out
    assert "dry run: 48 shard transaction(s)" in out
    for index in range(2):
        with setup.conn(index) as conn:
            assert conn.execute("SELECT to_regclass('hypervault.migrations')").fetchone() == (None,)
    assert all(not state["versions"] and not state["notes"] for state in catalog(setup).values())


def test_hv_migrate_and_status(setup: SchemaSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write(tmp_path / "m", {k: v for k, v in THREE.items() if not k.startswith("0003")})
    config = str(setup.config_file(tmp_path))
    assert _cli.main(["migrate", "--config", config, "--status", str(folder)]) == 1
    assert "0 of 16 shards up to date; behind: 0-16" in capsys.readouterr().out
    assert _cli.main(["migrate", "--config", config, str(folder)]) == 0
    assert "32 shard migration(s) applied over 16 shards" in capsys.readouterr().out
    write(folder, {"0003_column.sql": THREE["0003_column.sql"]})
    assert _cli.main(["migrate", "--config", config, "--status", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "0003_column.sql" in out and "0 of 16 shards up to date" in out
    assert _cli.main(["migrate", "--config", config, "--status"]) == 0  # what the servers recorded: current
    assert "16 of 16 shards up to date" in capsys.readouterr().out
    assert _cli.main(["migrate", "--config", config, str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == 16
    assert _cli.main(["migrate", "--config", config, "--status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["up_to_date"] and [v["applied"] for v in status["versions"]] == [16, 16, 16]
    assert _cli.main(["migrate", "--config", config]) == 2
    assert "give the migrations directory" in capsys.readouterr().err


def test_files_are_checked_against_what_was_recorded(setup: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"0001_notes.sql": THREE["0001_notes.sql"], "0005_five.sql": "SELECT 5"})
    db = setup.datastore()
    db.migrate(folder)
    (folder / "0001_notes.sql").write_text("CREATE TABLE other (a int);")
    with pytest.raises(MigrationError, match=r"0001_notes\.sql changed after it was applied"):
        db.migrate(folder)
    (folder / "0001_notes.sql").write_text(THREE["0001_notes.sql"], encoding="utf-8")
    write(folder, {"0003_late.sql": "SELECT 3"})
    with pytest.raises(MigrationError, match=r"0003_late\.sql is new but older than the newest recorded one"):
        db.migrate(folder)
    (folder / "0003_late.sql").unlink()
    (folder / "0005_five.sql").unlink()
    with pytest.raises(MigrationError, match=r"0005_five\.sql is recorded on .* but missing from the directory"):
        db.migrate(folder)
    # a file that failed everywhere (recorded, applied nowhere) may be withdrawn
    write(folder, {"0005_five.sql": "SELECT 5", "0006_fails.sql": "SELECT 1/0"})
    with pytest.raises(MigrationError, match="division by zero"):
        db.migrate(folder)
    (folder / "0006_fails.sql").unlink()
    assert db.migrate(folder).applied == 0
    assert [v.version for v in db.migration_status().versions] == [1, 5]


def test_new_shards_get_every_recorded_migration(setup: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", THREE)
    setup.datastore().migrate(folder)
    grown = setup.datastore(shards=("0-8", "8-24"))
    grown.provision()
    found = catalog(setup)
    assert sorted(found) == list(range(24))
    assert all(state["versions"] == [1, 2, 3] for state in found.values())
    assert_consistent(found)
    assert grown.migration_status(folder).up_to_date
    with grown.cursor(20) as cur:
        cur.execute("INSERT INTO notes (note) VALUES ('hi')")
        cur.execute("SELECT note_count()")
        assert cur.fetchone() == {"note_count": 1}


MOVABLE = {
    "0001_objects.sql": "CREATE TYPE mood AS ENUM ('ok', 'great');\n"
    "CREATE TABLE notes (id bigserial PRIMARY KEY, note text NOT NULL, m mood);\n"
    "CREATE VIEW recent AS SELECT id, kind FROM entities WHERE kind = 1;\n"
    "CREATE FUNCTION note_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM notes; $$;\n"
    "CREATE INDEX by_name ON entities ((body -> 'name'));\n",
    "0002_more.sql": "CREATE SEQUENCE tickets;\nCREATE DOMAIN positive AS int CHECK (VALUE > 0);\n",
}


@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
def test_a_shard_move_carries_its_migrations(pg_cluster: Any, tmp_path: Path, backend: str) -> None:
    setup = SchemaSetup(pg_cluster, backend)
    try:
        folder = write(tmp_path / "m", MOVABLE)
        db = setup.datastore()
        db.migrate(folder)
        keys = db.put_many(3, 1, [{"name": f"n{i}"} for i in range(50)])
        report = db.move_shard(3, 1)
        assert report.rows == 50
        with setup.conn(1) as conn:
            objects = conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'shard0003' AND c.relkind IN ('r', 'v', 'S', 'i') ORDER BY 1"
            ).fetchall()
            versions = conn.execute("SELECT version FROM hypervault.shard_versions WHERE shard = 3").fetchall()
            staging = conn.execute("SELECT to_regnamespace('hv_dst_0003')").fetchone()
        assert [o[0] for o in objects] == [
            "by_name", "entities", "entities_kind_id_idx", "entities_pkey", "notes", "notes_pkey", "recent", "tickets",
        ] or {"by_name", "entities", "notes", "recent", "tickets"} <= {o[0] for o in objects}  # fmt: skip
        assert sorted(v[0] for v in versions) == [1, 2]
        assert staging == (None,)
        fresh = setup.datastore()
        assert fresh.migration_status(folder).up_to_date
        with fresh.cursor(3) as cur:
            cur.execute("INSERT INTO notes (note, m) VALUES ('moved', 'great')")
            cur.execute("SELECT note_count(), nextval('tickets'), 5::positive AS p")
            assert cur.fetchone() == {"note_count": 1, "nextval": 1, "p": 5}
            cur.execute("SELECT count(*) AS n FROM recent")
            assert cur.fetchone() == {"n": 50}
        assert len(fresh.get_many(keys)) == 50
        with pytest.raises(MoveError, match=r"tables besides entities hold rows \(notes\)"):
            fresh.move_shard(3, 0)  # notes now holds a row, which a move would not copy
        fresh.rollback_move(3)
        with fresh.cursor(3) as cur:
            cur.execute("DELETE FROM notes")
        fresh.move_shard(3, 0)  # back where it was: the objects it left there are replaced
        assert fresh.migration_status(folder).up_to_date
        with fresh.cursor(3) as cur:
            cur.execute("SELECT note_count()")
            assert cur.fetchone() == {"note_count": 0}
    finally:
        setup.close()


def test_async_migrate_and_status(setup: SchemaSetup, tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {"0001_notes.sql": THREE["0001_notes.sql"]})

    async def main() -> tuple[hvcore.MigrationReport, hvcore.MigrationStatus]:
        async with hvcore.AsyncDatastore(setup.servers(), backend="jsonb") as adb:
            report = await adb.migrate(folder)
            return report, await adb.migration_status(folder)

    report, status = asyncio.run(main())
    assert report.applied == 16 and status.up_to_date


def test_a_moved_shard_is_not_migrated_twice_and_an_interrupted_move_resumes(pg_cluster: Any, tmp_path: Path) -> None:
    """A data migration is replayed on the target's empty staging table, so the copied rows keep the value the
    source's migration gave them; a move interrupted after the replay resumes without replaying again."""
    setup = SchemaSetup(pg_cluster, "jsonb")
    try:
        db = setup.datastore()
        keys = db.put_many(3, 1, [{"n": i} for i in range(20)])
        folder = write(
            tmp_path / "m",
            {
                "0001_bump.sql": "UPDATE entities SET body = "
                "jsonb_set(body, '{n}', to_jsonb((body ->> 'n')::int + 100));\nCREATE TABLE notes (id bigint);",
            },
        )
        db.migrate(folder)

        def stop_in_copy(phase: str, done: int, total: int) -> None:
            if phase == "copy":
                raise KeyboardInterrupt  # after prepare (and its replay) committed on the target

        with pytest.raises(KeyboardInterrupt):
            db.move_shard(3, 1, progress=stop_in_copy)
        assert db.move_state(3) is not None
        report = db.move_shard(3, 1)  # resumes: the staging schema was replayed already
        assert report.resumed_from is not None and report.rows == 20
        fresh = setup.datastore()
        assert sorted(r.data["n"] for r in fresh.get_many(keys).values()) == list(range(100, 120))
        assert fresh.migration_status(folder).up_to_date
        with fresh.cursor(3) as cur:
            cur.execute("SELECT count(*) AS n FROM notes")
            assert cur.fetchone() == {"n": 0}
    finally:
        setup.close()


def test_a_move_to_a_server_recording_other_definitions_is_refused_before_anything_changes(
    setup: SchemaSetup, tmp_path: Path
) -> None:
    """A move copies the source's records (migrations, index definitions) to the target: where the target records
    another file under one version, or another index on one field, that would silently replace them."""
    db = setup.datastore()
    one = load_migrations(write(tmp_path / "one", {"0001_first.sql": "CREATE TABLE a (x int);"}))
    two = load_migrations(write(tmp_path / "two", {"0001_first.sql": "CREATE TABLE b (x int);"}))
    source, target = (cast(Any, store).migrator() for store in db._stores)
    source.record(one)
    target.record(two)
    with pytest.raises(MoveError, match=r"migration version 1 is 0001_first\.sql \(checksum .* on the target") as err:
        db.move_shard(3, 1)
    assert setup.settings[0]["dbname"] in str(err.value) and "Nothing was changed" in str(err.value)
    assert target.recorded() == two  # not replaced by the source's file
    target.forget([1])
    builders = [cast(Any, store).index_builder() for store in db._stores]
    builders[0].record(IndexSpec(kind=1, field="email"))
    builders[1].record(IndexSpec(kind=1, field="email", type="bigint", unique=True))
    with pytest.raises(MoveError, match=r"field 'email' of kind 1 has index hv_k1_\w+ \(text\) on the source but "):
        db.move_shard(3, 1)
    assert [spec.type for spec in builders[1].definitions()] == ["bigint"]
    with setup.conn(0) as conn:  # no move was started
        if conn.execute("SELECT to_regclass('hypervault.moves') IS NOT NULL").fetchone() == (True,):
            assert conn.execute("SELECT count(*) FROM hypervault.moves").fetchone() == (0,)
    builders[1].forget(IndexSpec(kind=1, field="email", type="bigint", unique=True))
    assert db.move_shard(3, 1).rows == 0  # once they agree, the move goes on
