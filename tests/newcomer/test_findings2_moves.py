"""A second newcomer's findings on `hv shard move` and server names.

A move onto a config entry that names the source's own database; a move followed by a process whose config names
the same servers differently.

Two [[servers]] entries can reach one database under two spellings (127.0.0.1 and localhost, or an entry copied
for a new server whose dbname was not changed yet). hv shard plan then proposes moves between them, and a move
"to" the other entry copies the shard onto itself.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


@pytest.fixture
def two_separate_databases(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> list[dict[str, Any]]:
    """The fresh database (shards 0-4) and a second one beside it (4-8)."""
    return [{**pg_fresh_db, "shards": "0-4"}, {**pg_fresh_db2, "shards": "4-8"}]


def _same_database_twice(pg_fresh_db: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**pg_fresh_db, "host": "127.0.0.1", "shards": "0-8"},
        {**pg_fresh_db, "host": "localhost", "shards": "8-16"},
    ]


def test_moving_an_empty_shard_onto_its_own_database_is_refused_and_keeps_the_shard(
    pg_fresh_db: dict[str, Any],
) -> None:
    with hvcore.Datastore(_same_database_twice(pg_fresh_db), backend="jsonb", worker=None) as db:
        db.provision()
        with pytest.raises(hvcore.MoveError):
            db.move_shard(4, 1)
        key = db.put(4, 1, after="the refused move")
        assert db.get(key) is not None


def test_moving_a_shard_onto_its_own_database_does_not_advise_dropping_it(pg_fresh_db: dict[str, Any]) -> None:
    with hvcore.Datastore(_same_database_twice(pg_fresh_db), backend="jsonb", worker=None) as db:
        db.provision()
        db.put_many(3, 1, [{"i": i} for i in range(10)])
        with pytest.raises(hvcore.MoveError) as caught:
            db.move_shard(3, 1)
        message = str(caught.value)
        assert "drop" not in message, message
        assert "same" in message, message
        assert len(list(db.query(kind=1, shards=[3]))) == 10


def test_a_move_is_followed_by_a_process_that_names_the_servers_differently(
    two_separate_databases: list[dict[str, Any]],
) -> None:
    operator_servers = [{**s, "host": "127.0.0.1"} for s in two_separate_databases]
    app_servers = [{**s, "host": "localhost"} for s in two_separate_databases]
    with hvcore.Datastore(app_servers, backend="jsonb", worker=None) as app:
        with hvcore.Datastore(operator_servers, backend="jsonb", worker=None) as operator:
            operator.provision()
            key = app.put(2, 1, before="the move")
            operator.move_shard(2, 1)
        assert app.get(key) is not None
        assert app.get(app.put(2, 1, after="the move")) is not None


def test_a_move_is_followed_by_an_application_behind_pgbouncer(
    two_separate_databases: list[dict[str, Any]], pgbouncer_factory: Any
) -> None:
    bouncer = pgbouncer_factory()
    app_servers = [{**s, "port": bouncer.port, "pgbouncer": "transaction"} for s in two_separate_databases]
    with hvcore.Datastore(app_servers, backend="jsonb", worker=None) as app:
        with hvcore.Datastore(two_separate_databases, backend="jsonb", worker=None) as operator:
            operator.provision()
            key = app.put(2, 1, before="the move")
            operator.move_shard(2, 1)
        assert app.get(key) is not None
        assert app.get(app.put(2, 1, after="the move")) is not None
