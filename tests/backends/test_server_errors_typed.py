"""What the user's own schema additions make the server refuse reaches the user as a typed hypervault error that
keeps the server's message and SQLSTATE and names the shard (the psycopg error kept as ``__cause__``): a CHECK
constraint, a trigger raising; a database's ``statement_timeout`` is a `StatementTimeout`, not `ServerUnavailable`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import hvcore

TRIGGER_SQL = """
CREATE FUNCTION shard0004.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no writes on this shard today' USING HINT = 'come back tomorrow'; END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON shard0004.entities FOR EACH ROW EXECUTE FUNCTION shard0004.refuse();
CREATE FUNCTION shard0006.slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON shard0006.entities FOR EACH ROW EXECUTE FUNCTION shard0006.slow();
ALTER TABLE shard0002.entities ADD CONSTRAINT small_kinds CHECK (kind < 100);
"""


@pytest.fixture
def servers(pg_fresh_db: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(TRIGGER_SQL)
        conn.execute(f"ALTER DATABASE {pg_fresh_db['dbname']} SET statement_timeout = '300ms'")
    yield servers


def _label(settings: dict[str, Any]) -> str:
    return f"{settings['host']}:{settings['port']}/{settings['dbname']}"


def _check(error: BaseException, label: str, shard: int, sqlstate: str, said: str) -> None:
    assert isinstance(error, hvcore.ServerError) and not isinstance(error, hvcore.ServerUnavailable), repr(error)
    text = str(error)
    assert said in text and sqlstate in text and f"shard {shard} " in text and f"shard{shard:04d}" in text, text
    assert label in text, text
    assert error.sqlstate == sqlstate and error.shard_id == shard and error.server == label
    assert isinstance(error.__cause__, psycopg.Error) and error.__cause__.sqlstate == sqlstate


def test_a_check_constraint_refusing_a_write_is_constraint_violation(
    servers: list[dict[str, Any]], pg_fresh_db: dict[str, Any]
) -> None:
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        key = db.put(2, 1, a=1)
        for call in (lambda: db.put(2, 500, a="body-77"), lambda: db.put_many(2, 500, [{"a": "body-77"}, {"a": 2}])):
            with pytest.raises(hvcore.ConstraintViolation) as caught:
                call()
            _check(caught.value, _label(pg_fresh_db), 2, "23514", 'violates check constraint "small_kinds"')
            assert isinstance(caught.value, ValueError)
            assert "body-77" not in str(caught.value)  # the server's detail shows the row: user data stays out
        assert db.get(key) is not None


def test_a_trigger_raising_is_a_server_error_with_its_message(
    servers: list[dict[str, Any]], pg_fresh_db: dict[str, Any]
) -> None:
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        with pytest.raises(hvcore.ServerError) as caught:
            db.put(4, 1, a=1)
        _check(caught.value, _label(pg_fresh_db), 4, "P0001", "no writes on this shard today")
        assert "come back tomorrow" in str(caught.value)


def test_a_trigger_raising_is_a_server_error_on_asyncio_too(
    servers: list[dict[str, Any]], pg_fresh_db: dict[str, Any]
) -> None:
    async def main() -> BaseException:
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None) as db:
            try:
                await db.put(4, 1, a=1)
            except hvcore.HypervaultError as exc:
                return exc
        raise AssertionError("not refused")

    _check(asyncio.run(main()), _label(pg_fresh_db), 4, "P0001", "no writes on this shard today")


def test_statement_timeout_is_statement_timeout_not_server_unavailable(
    servers: list[dict[str, Any]], pg_fresh_db: dict[str, Any]
) -> None:
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        with pytest.raises(hvcore.HypervaultError) as caught:
            db.put(6, 1, a=1)
        error = caught.value
        assert isinstance(error, hvcore.StatementTimeout) and isinstance(error, TimeoutError), repr(error)
        assert not isinstance(error, hvcore.ServerUnavailable)
        text = str(error)
        assert "statement_timeout" in text and "shard 6 " in text and _label(pg_fresh_db) in text, text
        assert error.setting == "statement_timeout" and error.sqlstate == "57014"
        assert db.put(5, 1, a=1)  # the server is fine


RAISING_SQL = """
CREATE FUNCTION shard0003.check_body() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.body ? 'zero' THEN PERFORM 1 / (NEW.body->>'zero')::int; END IF;
  IF NEW.body ? 'count' THEN PERFORM (NEW.body->>'count')::int; END IF;
  IF NEW.body ? 'code' THEN
    RAISE EXCEPTION 'refused with %', NEW.body->>'code' USING ERRCODE = NEW.body->>'code';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER check_body BEFORE INSERT OR UPDATE ON shard0003.entities FOR EACH ROW
EXECUTE FUNCTION shard0003.check_body();
"""

# (body, SQLSTATE): a data exception a trigger's own expression raises, and a sample of every class a routine raises
RAISED: list[tuple[dict[str, Any], str]] = [
    ({"zero": 0}, "22012"),
    ({"count": "many"}, "22P02"),
    *(({"code": code}, code) for code in ("P0001", "22023", "21000", "20000", "2F005", "38000", "39P01", "09000")),
    ({"code": "27000"}, "27000"),
]


def _writes(db: hvcore.Datastore, key: hvcore.Key, body: dict[str, Any]) -> dict[str, Callable[[], object]]:
    return {
        "put": lambda: db.put(3, 1, **body),
        "put_many": lambda: db.put_many(3, 1, [{"ok": 2}, body]),
        "update": lambda: db.update(key, **body),
        "update_where": lambda: db.update_where(set=body, kind=1, shards=[3]),
    }


def test_every_error_a_trigger_raises_is_a_server_error_from_every_write(pg_fresh_db: dict[str, Any]) -> None:
    """Not only RAISE (class P0): a cast or a division by zero inside a trigger (class 22) and the other classes a
    routine raises reach the user as `ServerError` naming the shard, from put, put_many, update and update_where,
    sync and async — never a raw psycopg error."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn, hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        conn.execute(RAISING_SQL)
        key = db.put(3, 1, ok=1)
        label = _label(pg_fresh_db)
        for body, sqlstate in RAISED:
            calls = _writes(db, key, body)
            for name, call in calls.items():
                with pytest.raises(hvcore.HypervaultError) as caught:
                    call()
                assert isinstance(caught.value, hvcore.ServerError), (name, sqlstate, repr(caught.value))
                assert caught.value.sqlstate == sqlstate and caught.value.shard_id == 3, (name, caught.value)
                assert label in str(caught.value) and "shard 3 " in str(caught.value), (name, str(caught.value))
        stored = db.get(key)
        assert stored is not None and stored.data == {"ok": 1} and len(list(db.query(1, shards=[3]))) == 1

    async def main() -> BaseException:
        async with hvcore.AsyncDatastore(servers, backend="jsonb") as adb:
            try:
                await adb.put(3, 1, zero=0)
            except hvcore.HypervaultError as exc:
                return exc
        raise AssertionError("not refused")

    error = asyncio.run(main())
    assert isinstance(error, hvcore.ServerError) and error.sqlstate == "22012", repr(error)
