"""A second newcomer's findings: `hv index create` / `hv migrate` run while `hv shard move` is moving a shard.

Two operators, or one script after the other in CI. The move prepares the target's copy when it starts; an index or
a migration applied meanwhile lands on the source table, which the switch then sets aside:

- create_index reports every shard built; afterwards the moved shard has no such index (list_indexes: missing),
  and a unique index then lets duplicates into that shard;
- migrate reports every shard applied and migration_status says up to date, but the moved shard has no trace of
  the migration (its table is missing on the new server), and a rerun has nothing to do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore
from hvbackend_postgres._indexes import SCHEMA_LOCK


@pytest.fixture
def two_databases(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> list[dict[str, Any]]:
    """Server 0 (shards 0-4) is the fresh database, server 1 (4-8) a second one made beside it."""
    return [{**pg_fresh_db, "shards": "0-4"}, {**pg_fresh_db2, "shards": "4-8"}]


def test_an_index_created_during_a_move_is_on_the_moved_shard(two_databases: list[dict[str, Any]]) -> None:
    with (
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db,
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as operator,
    ):
        db.provision()
        db.put_many(2, 1, [{"email": f"u{i}@x"} for i in range(200)])
        reports: list[hvcore.HypervaultError | object] = []

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "catchup" and not reports:  # the copy is done; the switch has not happened yet
                reports.append(operator.create_index(1, "email", type="text", unique=True))

        db.move_shard(2, 1, progress=progress)
        assert reports, "the move never reached its catch-up phase"
        [info] = [i for i in db.list_indexes() if i.index.field == "email"]
        assert info.missing == [] and info.valid == 8, info
        db.put(2, 1, email="dup@x")
        with pytest.raises(hvcore.DuplicateValue):
            db.put(2, 1, email="dup@x")


def test_a_migration_applied_during_a_move_is_on_the_moved_shard(
    two_databases: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "0001_notes.sql").write_text("CREATE TABLE notes (id bigserial PRIMARY KEY, note text);")
    with (
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db,
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as operator,
    ):
        db.provision()
        db.put_many(2, 1, [{"i": i} for i in range(200)])
        migrated: list[object] = []

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "catchup" and not migrated:  # the copy is done; the switch has not happened yet
                migrated.append(operator.migrate(tmp_path))

        db.move_shard(2, 1, progress=progress)
        assert migrated, "the move never reached its catch-up phase"
        with db.cursor(2) as cur:
            cur.execute("SELECT to_regclass('notes') IS NOT NULL")
            row = cur.fetchone()
        status = db.migration_status()
        assert row is not None and row[0], f"shard 2 has no notes table on its new server; status: {status}"


def test_an_index_dropped_during_a_move_is_gone_from_the_moved_shard(two_databases: list[dict[str, Any]]) -> None:
    with (
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db,
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as operator,
    ):
        db.provision()
        db.put_many(2, 1, [{"email": f"u{i}@x"} for i in range(200)])
        db.create_index(1, "email", type="text", unique=True)
        dropped: list[object] = []

        def progress(phase: str, done: int, total: int) -> None:
            if phase == "catchup" and not dropped:  # the copy (with the index) is done; no switch yet
                dropped.append(operator.drop_index(1, "email"))

        report = db.move_shard(2, 1, progress=progress)
        assert dropped and any("indexes dropped" in note for note in report.notes), report.notes
        assert [i for i in db.list_indexes() if i.index.field == "email"] == []
        db.put(2, 1, email="dup@x")
        db.put(2, 1, email="dup@x")  # no unique index left behind on the moved shard
        with db.cursor(2) as cur:
            cur.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'shard0002' AND indexname LIKE 'hv_k%'")
            assert cur.fetchone() == (0,)


@pytest.mark.parametrize("operation", ["create_index", "drop_index", "migrate"])
def test_a_move_switching_before_the_schema_change_locks_is_caught_up(
    two_databases: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """Another process's move switches after this one read placement but before it recorded or locked anything:
    neither server's part of the operation has the shard, so the operation runs again where it lives now."""
    (tmp_path / "0001_notes.sql").write_text("CREATE TABLE notes (id bigserial PRIMARY KEY, note text);")
    with (
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db,
        hvcore.Datastore(two_databases, backend="jsonb", worker=None) as operator,
    ):
        db.provision()
        db.put_many(2, 1, [{"email": f"u{i}@x"} for i in range(50)])
        if operation == "drop_index":
            db.create_index(1, "email", type="text", unique=True)
        read_first = operator._schema_targets
        moved: list[object] = []

        def targets_then_a_move() -> Any:
            targets = read_first()
            if not moved:
                moved.append(db.move_shard(2, 1))
            return targets

        monkeypatch.setattr(operator, "_schema_targets", targets_then_a_move)
        if operation == "create_index":
            report = operator.create_index(1, "email", type="text", unique=True)
            assert report.built + report.present == 8, report
            [info] = db.list_indexes()
            assert info.missing == [] and info.valid == 8, info
        elif operation == "drop_index":
            operator.drop_index(1, "email")
            with db.cursor(2) as cur:
                cur.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'shard0002' AND indexname LIKE 'hv_k%'")
                assert cur.fetchone() == (0,)
        else:
            operator.migrate(tmp_path)
            with db.cursor(2) as cur:
                cur.execute("SELECT to_regclass('notes') IS NOT NULL")
                assert cur.fetchone() == (True,)
            assert all(not v.behind for v in db.migration_status().versions)
        assert moved


def test_a_move_waits_for_a_schema_change_running_on_its_source(two_databases: list[dict[str, Any]]) -> None:
    """hv migrate holds the source's schema-change lock: the move catches up meanwhile and fences once it ends."""
    with hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db:
        db.provision()
        db.put_many(2, 1, [{"i": i} for i in range(50)])
        entry = {k: v for k, v in two_databases[0].items() if k != "shards"}
        with psycopg.connect(**entry, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
            phases: list[tuple[str, float]] = []
            release = threading.Timer(1.5, lambda: holder.execute("SELECT pg_advisory_unlock_all()"))
            started = time.monotonic()
            release.start()
            report = db.move_shard(2, 1, progress=lambda phase, done, total: phases.append((phase, time.monotonic())))
            release.join()
        fenced = min(t for phase, t in phases if phase == "fence") - started
        assert fenced >= 1.4, (fenced, phases)
        assert report.rows == 50 and len(list(db.query(kind=1, shards=[2]))) == 50


def test_an_async_datastore_catches_up_a_move_switching_before_its_index_build(
    two_databases: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:

    with hvcore.Datastore(two_databases, backend="jsonb", worker=None) as db:
        db.provision()
        db.put_many(2, 1, [{"email": f"u{i}@x"} for i in range(50)])

        async def scenario() -> hvcore.IndexReport:
            async with hvcore.AsyncDatastore(two_databases, backend="jsonb", worker=None) as operator:
                read_first = operator._schema_targets
                moved: list[object] = []

                async def targets_then_a_move() -> Any:
                    targets = await read_first()
                    if not moved:
                        moved.append(await asyncio.to_thread(db.move_shard, 2, 1))
                    return targets

                monkeypatch.setattr(operator, "_schema_targets", targets_then_a_move)
                return await operator.create_index(1, "email", type="text", unique=True)

        report = asyncio.run(scenario())
        assert report.built + report.present == 8, report
        [info] = db.list_indexes()
        assert info.missing == [] and info.valid == 8, info
