"""Migration bookkeeping on real PostgreSQL: any bigint version (YYYYMMDDHHMMSS timestamps) is applied and recorded,
tables an earlier release made with int versions are widened in place, versions past bigint are refused by name
before any SQL, and a file that escapes the shard's search path (every spelling) is refused in every shard with
nothing recorded and nothing created outside the shards' schemas."""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres._indexes import ensure_support, narrow_version_tables
from hvcore import MigrationError
from hvcore._schemadefs import BIGINT_MAX, load_migrations
from hvcore.cli import main

pytestmark = pytest.mark.postgres

INT_MAX = 2**31 - 1
_dbs = itertools.count()
OLD_LAYOUT = (  # the bookkeeping tables as earlier releases made them (int versions)
    "CREATE SCHEMA hypervault;"
    "CREATE TABLE hypervault.migrations (version int PRIMARY KEY, name text NOT NULL, checksum text NOT NULL, "
    "body text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE hypervault.shard_versions (shard int NOT NULL, version int NOT NULL, "
    "applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shard, version));"
)


@pytest.fixture
def fresh_dbs(pg_main: dict[str, Any]) -> Iterator[Any]:
    """A maker of fresh databases on the machine's PostgreSQL (all dropped at the end)."""
    made: list[str] = []

    def make() -> dict[str, Any]:
        name = f"hvmigbk_{os.getpid()}_{next(_dbs)}"
        with psycopg.connect(**pg_main, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        made.append(name)
        return {**pg_main, "dbname": name}

    yield make
    with psycopg.connect(**pg_main, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _shard_versions(settings_: dict[str, Any]) -> dict[int, set[int]]:
    with psycopg.connect(**settings_) as conn:
        rows = conn.execute("SELECT shard, version FROM hypervault.shard_versions").fetchall()
    found: dict[int, set[int]] = {}
    for shard, version in rows:
        found.setdefault(shard, set()).add(version)
    return found


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    versions=st.lists(
        st.one_of(
            st.integers(1, 9999),
            st.integers(INT_MAX - 2, INT_MAX + 2),
            st.integers(19_700_101_000_000, 29_991_231_235_959),  # YYYYMMDDHHMMSS
            st.integers(BIGINT_MAX - 2, BIGINT_MAX),
        ),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    old_layout=st.booleans(),
)
def test_any_bigint_version_is_applied_and_recorded_exactly(
    fresh_dbs: Any, tmp_path_factory: pytest.TempPathFactory, versions: list[int], old_layout: bool
) -> None:
    settings_ = fresh_dbs()
    if old_layout:
        with psycopg.connect(**settings_, autocommit=True) as conn:
            conn.execute(OLD_LAYOUT)
    files = {f"{v:04d}_t{i}.sql": f"CREATE TABLE t{i} (id int);" for i, v in enumerate(versions)}
    folder = _write(tmp_path_factory.mktemp("migrations"), files)
    with hvcore.Datastore([{**settings_, "shards": "0-3"}], backend="jsonb", worker=None) as db:
        db.provision()
        report = db.migrate(folder)
        assert sorted(run.version for run in report.runs) == sorted(versions)
        assert all(run.applied == 3 for run in report.runs)
        status = db.migration_status(folder)
        assert status.up_to_date, status
        assert sorted(v.version for v in status.versions) == sorted(versions)
    assert _shard_versions(settings_) == {shard: set(versions) for shard in range(3)}
    with psycopg.connect(**settings_) as conn:
        assert narrow_version_tables(conn) == []


def test_an_old_layout_is_widened_in_place_keeping_its_records(fresh_dbs: Any, tmp_path: Path) -> None:
    settings_ = fresh_dbs()
    folder = _write(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);"})
    with hvcore.Datastore([{**settings_, "shards": "0-2"}], backend="jsonb", worker=None) as db:
        db.provision()
        with psycopg.connect(**settings_, autocommit=True) as conn:
            conn.execute(OLD_LAYOUT)
        db.migrate(folder)  # an installation of an earlier release, with one migration applied
        with psycopg.connect(**settings_, autocommit=True) as conn:
            conn.execute("ALTER TABLE hypervault.migrations ALTER COLUMN version TYPE int")
            conn.execute("ALTER TABLE hypervault.shard_versions ALTER COLUMN version TYPE int")
            assert narrow_version_tables(conn) == ["migrations", "shard_versions"]
        _write(folder, {"20261130100512_b.sql": "CREATE TABLE b (id int);"})
        db.migrate(folder)
        assert db.migration_status(folder).up_to_date
    with psycopg.connect(**settings_, autocommit=True) as conn:
        assert narrow_version_tables(conn) == []
        ensure_support(conn)  # idempotent
        ensure_support(conn)
        rows = conn.execute("SELECT version, name FROM hypervault.migrations ORDER BY version").fetchall()
    assert rows == [(1, "0001_a.sql"), (20261130100512, "20261130100512_b.sql")]
    assert _shard_versions(settings_) == {0: {1, 20261130100512}, 1: {1, 20261130100512}}


def test_a_role_that_cannot_widen_old_tables_is_refused_by_file_name(fresh_dbs: Any, tmp_path: Path) -> None:
    settings_ = fresh_dbs()
    role = f"hv_migrator_{os.getpid()}"
    with psycopg.connect(**settings_, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(OLD_LAYOUT)
        conn.execute(
            f"GRANT ALL ON SCHEMA hypervault TO {role}; GRANT ALL ON ALL TABLES IN SCHEMA hypervault TO {role}"
        )
        conn.execute(f"GRANT CREATE ON DATABASE {settings_['dbname']} TO {role}")
    try:
        folder = _write(tmp_path / "m", {"20261130100512_b.sql": "CREATE TABLE b (id int);"})
        entry = {**settings_, "user": role, "shards": "0-2"}
        with hvcore.Datastore([entry], backend="jsonb", worker=None) as db:
            db.provision()
            with pytest.raises(MigrationError) as caught:
                db.migrate(folder)
            assert "20261130100512_b.sql" in str(caught.value) and "bigint" in str(caught.value)
        with psycopg.connect(**settings_) as conn:
            assert conn.execute("SELECT count(*) FROM hypervault.shard_versions").fetchone() == (0,)
    finally:
        with psycopg.connect(**settings_, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with psycopg.connect(**{**settings_, "dbname": "postgres"}, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {settings_['dbname']} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@settings(max_examples=30, deadline=None)
@given(extra=st.integers(1, 10**30))
def test_a_version_past_bigint_is_refused_by_name_before_any_sql(
    tmp_path_factory: pytest.TempPathFactory, extra: int
) -> None:
    name = f"{BIGINT_MAX + extra}_big.sql"
    folder = _write(tmp_path_factory.mktemp("migrations"), {"0001_a.sql": "SELECT 1;", name: "SELECT 1;"})
    with pytest.raises(MigrationError) as caught:
        load_migrations(folder)
    assert name in str(caught.value) and f"{BIGINT_MAX:,}" in str(caught.value)


def test_hv_migrate_refuses_a_version_past_bigint_without_a_traceback(
    pg_fresh_db: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"{BIGINT_MAX + 1}_big.sql"
    folder = _write(tmp_path / "m", {name: "CREATE TABLE big (id int);"})
    config = tmp_path / "hv.toml"
    settings_ = "".join(f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in pg_fresh_db.items())
    config.write_text(f'backend = "jsonb"\n[[servers]]\nshards = "0-2"\n{settings_}')
    assert main(["migrate", "--config", str(config), str(folder)], io.StringIO()) == 2
    error = capsys.readouterr().err
    assert name in error and "Traceback" not in error, error


ESCAPES = [
    "RESET ALL",
    "SELECT pg_catalog.set_config('search_path', 'public', true)",
    "SELECT set_config('search_path', 'public', false)",
    "SELECT set_config('search_path', '', true)",
    "SELECT set_config('search_path', 'hypervault', true)",  # into another existing schema
    "SELECT set_config('search_path', 'shard0007, public', true)",  # another shard's (not on this server)
    "DO $$BEGIN PERFORM set_config('search_path', 'public', true); END$$",
    "DO $$BEGIN EXECUTE 'RESET ALL'; END$$",
]
HARMLESS = [
    "SELECT set_config('search_path', current_setting('search_path'), true)",
    "SET LOCAL work_mem = '8MB'",
    "SELECT current_setting('search_path')",
]


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(escape=st.sampled_from(ESCAPES), after=st.booleans(), harmless=st.lists(st.sampled_from(HARMLESS), max_size=2))
def test_a_migration_escaping_the_shards_search_path_is_refused_everywhere(
    fresh_dbs: Any, tmp_path_factory: pytest.TempPathFactory, escape: str, after: bool, harmless: list[str]
) -> None:
    settings_ = fresh_dbs()
    create = "CREATE TABLE notes (id bigserial PRIMARY KEY)"
    body = [*harmless, create, escape] if after else [*harmless, escape, create]
    folder = _write(tmp_path_factory.mktemp("migrations"), {"0001_notes.sql": ";\n".join(body) + ";"})
    with hvcore.Datastore([{**settings_, "shards": "0-4"}], backend="jsonb", worker=None) as db:
        db.provision()
        with pytest.raises(MigrationError) as caught:
            db.migrate(folder)
        message = str(caught.value)
        assert "0001_notes.sql" in message and "search_path" in message, message
        assert caught.value.migration == "0001_notes.sql" and caught.value.shard_id in range(4)
        assert [v.applied for v in db.migration_status().versions] == [0]
        with db.cursor(0) as cur:
            cur.execute(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = 'notes'"
            )
            assert cur.fetchall() == []
        (folder / "0001_notes.sql").write_text(";\n".join([*harmless, create]) + ";")
        report = db.migrate(folder)  # the file fixed: every shard gets it in its own schema
        assert [run.applied for run in report.runs] == [4]


def test_a_recorded_escaping_migration_is_not_replayed_outside_a_new_shard(
    pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    folder = _write(tmp_path / "m", {"0001_ok.sql": "CREATE TABLE ok (id int);"})
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-2"}], backend="jsonb", worker=None) as db:
        db.provision()
        db.migrate(folder)
        with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:  # recorded by a release without the guard
            conn.execute(
                "INSERT INTO hypervault.migrations (version, name, checksum, body) "
                "VALUES (2, '0002_escape.sql', 'x', 'RESET ALL; CREATE TABLE escaped (id int);')"
            )
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-3"}], backend="jsonb", worker=None) as db:
        with pytest.raises(MigrationError) as caught:  # was the raw ZHV02 psycopg error
            db.provision()
        message = str(caught.value)
        assert "search_path" in message and "recorded migration 2" in message and "shard 2" in message, message
        assert "hv init" in message and caught.value.server is not None
    with psycopg.connect(**pg_fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('public.escaped')").fetchone() == (None,)
        assert conn.execute("SELECT to_regclass('shard0002.entities')").fetchone() == (None,)
