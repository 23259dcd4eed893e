"""A second newcomer's findings on migration files named with a timestamp version (Rails' 20261130100512_x.sql).

The file-name rule takes "at least four digits", and `hv migrate --dry-run` lists such a file as applicable, but
the version columns of hypervault.migrations and hypervault.shard_versions are `int`: the run dies recording it.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

import hvcore
from hvcore.cli import main

TIMESTAMPED = "20261130100512_add_notes.sql"  # a version past 2**31 - 1, as Rails/Flyway timestamps are
REASON = (
    "a migration version past 2**31-1 (a YYYYMMDDHHMMSS timestamp, accepted by the NNNN_name.sql rule and by "
    "--dry-run) raises psycopg's NumericValueOutOfRange 'integer out of range' (hypervault.migrations.version is "
    "int), and `hv migrate` prints a traceback; it should be applied (bigint versions) or refused before any SQL "
    "with a MigrationError naming the largest version allowed"
)


def _migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / TIMESTAMPED).write_text("CREATE TABLE notes (id bigserial PRIMARY KEY, note text);")
    return folder


def test_a_timestamp_versioned_migration_is_applied_or_refused_by_name(
    pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    folder = _migrations(tmp_path)
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-4"}], backend="jsonb", worker=None) as db:
        db.provision()
        try:
            report = db.migrate(folder)
        except hvcore.MigrationError as exc:
            assert "20261130100512" in str(exc), exc
            return
        assert [(run.name, run.applied) for run in report.runs] == [(TIMESTAMPED, 4)]
        assert db.migration_status().up_to_date


def test_hv_migrate_with_a_timestamp_version_exits_without_a_traceback(
    pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    folder = _migrations(tmp_path)
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-4"}], backend="jsonb", worker=None) as db:
        db.provision()
    config = tmp_path / "hv.toml"
    settings = "".join(f"{name} = {value!r}\n" for name, value in pg_fresh_db.items()).replace("'", '"')
    config.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-4"\n{settings}')
    assert main(["migrate", "--config", str(config), str(folder)], io.StringIO()) in (0, 2)


@pytest.mark.parametrize(
    "statement",
    ["RESET ALL", "SELECT pg_catalog.set_config('search_path', 'public', true)"],
    ids=["reset", "set_config"],
)
def test_a_migration_that_resets_search_path_migrates_no_shard_into_public(
    statement: str, pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_notes.sql").write_text(f"{statement};\nCREATE TABLE notes (id bigserial PRIMARY KEY);")
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-3"}], backend="jsonb", worker=None) as db:
        db.provision()
        with contextlib.suppress(hvcore.MigrationError):
            db.migrate(folder)
        applied = db.migration_status().versions
        with db.cursor(0) as cur:
            cur.execute("SELECT to_regclass('public.notes') IS NOT NULL")
            row = cur.fetchone()
    assert row is not None
    in_public = row[0]
    assert not in_public, "a shard's migration created public.notes"
    assert all(version.applied in (0, 3) for version in applied), applied
