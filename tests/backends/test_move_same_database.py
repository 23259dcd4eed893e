"""Shard moves between server entries that reach one database under two names are refused before any change.

Two [[servers]] entries can name one database (127.0.0.1 and localhost, the Unix socket, a hostaddr, a copied
entry): a move "between" them would copy the shard onto itself. Whatever the spelling, the move is refused with a
`MoveError` saying so, before anything is written on either side; distinct databases of one server (same system
identifier, same start time) still move; `hv shard plan` refuses and `hv status` warns.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_postgres._move import shard_state
from hvcore.cli import main

pytestmark = pytest.mark.postgres

SOCKET_DIR = "/var/run/postgresql"


def _spellings(settings_: dict[str, Any]) -> list[dict[str, Any]]:
    """Ways of reaching the database of ``settings_`` (a TCP server on 127.0.0.1)."""
    out = [
        {**settings_, "host": "127.0.0.1"},
        {**settings_, "host": "localhost"},
        {**settings_, "host": "localhost", "hostaddr": "127.0.0.1"},
        {**settings_, "host": "127.0.0.1", "application_name": "a copied entry"},
        # session settings of their own (the database identity must not render them)
        {**settings_, "host": "127.0.0.1", "options": "-c TimeZone=Asia/Kolkata"},
        {
            **settings_,
            "host": "localhost",
            "options": "-c TimeZone=America/St_Johns -c DateStyle=SQL,DMY -c extra_float_digits=-15 "
            "-c IntervalStyle=iso_8601 -c search_path=public,pg_catalog",
        },
    ]
    if os.path.exists(os.path.join(SOCKET_DIR, f".s.PGSQL.{settings_.get('port', 5432)}")):
        out.append({**settings_, "host": SOCKET_DIR})
    return out


def _conn(entry: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(**{k: v for k, v in entry.items() if k != "shards"}, autocommit=True)


def _leftovers(entry: dict[str, Any]) -> list[str]:
    """What a move leaves behind: move records, change-capture triggers, source and staging schemas."""
    with _conn(entry) as conn:
        schemas = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hv\\_src\\_%' OR nspname LIKE 'hv\\_dst\\_%'"
        ).fetchall()
        triggers = conn.execute("SELECT tgname FROM pg_trigger WHERE tgname IN ('hv_capture', 'hv_no_truncate')")
        found = [str(r[0]) for r in schemas] + [str(r[0]) for r in triggers.fetchall()]
        if conn.execute("SELECT to_regclass('hypervault.moves') IS NOT NULL").fetchone() == (True,):
            found += [f"moves row {r[0]}" for r in conn.execute("SELECT shard FROM hypervault.moves").fetchall()]
    return found


@pytest.fixture
def second_db(pg_fresh_db2: dict[str, Any]) -> dict[str, Any]:
    """Another fresh database on the same server as ``pg_fresh_db`` (same system identifier and start time)."""
    return pg_fresh_db2


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rows=st.sampled_from([0, 0, 1, 25]), drop_source=st.booleans())
def test_a_move_between_two_spellings_of_one_database_is_refused_and_changes_nothing(
    pg_fresh_db: dict[str, Any], data: st.DataObject, rows: int, drop_source: bool
) -> None:
    spellings = _spellings(pg_fresh_db)
    first, second = data.draw(st.permutations(range(len(spellings))))[:2]
    entries = [{**spellings[first], "shards": "0-8"}, {**spellings[second], "shards": "8-16"}]
    shard = data.draw(st.integers(0, 15), label="shard")
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.provision()
        if rows:
            db.put_many(shard, 1, [{"i": i} for i in range(rows)])
        before = sum(1 for _ in db.query(kind=1, shards=[shard]))
        target = 1 - db.shard_map.server_for(shard)
        with pytest.raises(hvcore.MoveError) as caught:
            db.move_shard(shard, target, drop_source=drop_source)
        message = str(caught.value)
        assert "same database" in message and "drop" not in message, message
        assert db.servers[0].label in message and db.servers[1].label in message, message
        with _conn(entries[0]) as conn:
            assert shard_state(conn, shard) == "live"
        assert _leftovers(entries[0]) == []
        assert db.placement_version(shard) == 0
        assert sum(1 for _ in db.query(kind=1, shards=[shard])) == before
        assert db.get(db.put(shard, 1, after="the refused move")) is not None
        assert db.shared_databases() == [tuple(s.label for s in db.servers)]


def test_distinct_databases_of_one_server_are_not_taken_for_one(
    pg_fresh_db: dict[str, Any], second_db: dict[str, Any]
) -> None:
    entries = [
        {**pg_fresh_db, "host": "127.0.0.1", "shards": "0-8"},
        {**second_db, "host": "localhost", "shards": "8-16"},
    ]
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.provision()
        db.put_many(3, 1, [{"i": i} for i in range(10)])
        assert db.shared_databases() == []
        report = db.move_shard(3, 1)
        assert report.rows == 10 and report.target == db.servers[1].label
        assert len(list(db.query(kind=1, shards=[3]))) == 10


def test_a_target_already_holding_rows_is_refused_without_advice_to_drop_a_copy(
    pg_fresh_db: dict[str, Any], second_db: dict[str, Any]
) -> None:
    entries = [{**pg_fresh_db, "shards": "0-8"}, {**second_db, "shards": "8-16"}]
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.provision()  # before the other copy holds rows: provisioning refuses a map whose shard has rows elsewhere
    with hvcore.Datastore([{**second_db, "shards": "0-16"}], backend="jsonb", worker=None) as other:
        other.provision()
        other.put_many(3, 1, [{"other": i} for i in range(4)])  # a second live copy of shard 3 (an older config)
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.put_many(3, 1, [{"i": i} for i in range(6)])
        with pytest.raises(hvcore.MoveError) as caught:
            db.move_shard(3, 1)
        message = str(caught.value)
        assert "drop" not in message.lower(), message
        assert "already holds rows of shard 3" in message, message
        assert len(list(db.query(kind=1, shards=[3]))) == 6
    with _conn(second_db) as conn:
        assert conn.execute("SELECT count(*) FROM shard0003.entities").fetchone() == (4,)


def _config(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    lines = ['backend = "jsonb"']
    for entry in entries:
        lines.append("[[servers]]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in entry.items()]
    path = tmp_path / "hv.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hv_shard_plan_refuses_and_hv_status_warns_about_entries_reaching_one_database(
    pg_fresh_db: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [
        {**pg_fresh_db, "host": "127.0.0.1", "shards": "0-8"},
        {**pg_fresh_db, "host": "localhost", "shards": "8-16"},
    ]
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.provision()
        db.put_many(3, 1, [{"i": i} for i in range(50)])
    config = _config(tmp_path, entries)
    out = io.StringIO()
    assert main(["shard", "plan", "--config", str(config), "--servers", "2"], out) == 2
    error = capsys.readouterr().err
    assert "same database" in error and "127.0.0.1" in error and "localhost" in error, error
    assert "hv shard move" not in out.getvalue(), out.getvalue()
    out = io.StringIO()
    assert main(["status", "--config", str(config)], out) == 1
    assert "same database" in out.getvalue(), out.getvalue()


def test_async_datastore_lists_and_refuses_the_same_database_twice(pg_fresh_db: dict[str, Any]) -> None:
    entries = [
        {**pg_fresh_db, "host": "127.0.0.1", "shards": "0-8"},
        {**pg_fresh_db, "host": "localhost", "shards": "8-16"},
    ]

    async def scenario() -> list[tuple[str, ...]]:
        async with hvcore.AsyncDatastore([dict(e) for e in entries], backend="jsonb", worker=None) as db:
            await db.provision()
            with pytest.raises(hvcore.MoveError, match="same database"):
                await db.move_shard(4, 1)
            assert await db.get(await db.put(4, 1, after="the refused move")) is not None
            return await db.shared_databases()

    groups = asyncio.run(scenario())
    assert len(groups) == 1 and len(groups[0]) == 2


def test_two_entries_differing_only_in_their_time_zone_are_one_database(pg_fresh_db: dict[str, Any]) -> None:
    """The identity rendered the postmaster's start time in the session's TimeZone: an entry whose options set
    another one passed for a second database, and the move dropped the empty shard's table it was moving."""
    entries = [
        {**pg_fresh_db, "shards": "0-8"},
        {**pg_fresh_db, "options": "-c TimeZone=Pacific/Chatham", "shards": "8-16"},
    ]
    with hvcore.Datastore(entries, backend="jsonb", worker=None) as db:
        db.provision()
        with pytest.raises(hvcore.MoveError, match="same database"):
            db.move_shard(3, 1)
        with _conn(entries[0]) as conn:
            assert shard_state(conn, 3) == "live"
        assert _leftovers(entries[0]) == []
        assert db.get(db.put(3, 1, after="the refused move")) is not None


_ZONES = ["UTC", "Asia/Kolkata", "Pacific/Chatham", "America/St_Johns", "Africa/Monrovia", "Etc/GMT+12", "Europe/Paris"]
_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "TimeZone": st.sampled_from(_ZONES),
        "DateStyle": st.sampled_from(["ISO, MDY", "SQL, DMY", "Postgres, YMD", "German"]),
        "extra_float_digits": st.integers(-15, 3),
        "IntervalStyle": st.sampled_from(["postgres", "sql_standard", "iso_8601", "postgres_verbose"]),
        "search_path": st.sampled_from(['"$user", public', "public, pg_catalog", "pg_catalog"]),
        "bytea_output": st.sampled_from(["hex", "escape"]),
        "lc_monetary": st.just("C"),
        "lc_numeric": st.just("C"),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(session=_SETTINGS)
def test_the_database_identity_does_not_depend_on_session_settings(
    pg_fresh_db: dict[str, Any], session: dict[str, Any]
) -> None:
    from hvbackend_postgres._move import database_identity

    entry = {k: v for k, v in pg_fresh_db.items() if k != "shards"}
    with psycopg.connect(**entry, autocommit=True) as plain:
        expected = database_identity(plain)
    options = " ".join(f"-c {name}={str(value).replace(' ', '')}" for name, value in session.items())
    with psycopg.connect(**entry, options=options, autocommit=True) as conn:
        assert database_identity(conn) == expected, session

    async def through_the_store() -> str:
        async with hvcore.AsyncDatastore(
            [{**entry, "options": options, "shards": "0-1"}], backend="jsonb", worker=None
        ) as db:
            identity: str = await db.servers[0].database_identity()  # type: ignore[attr-defined]
            return identity

    assert asyncio.run(through_the_store()) == expected
