"""A second newcomer's findings: `hv shard move` to a config entry that names the source's own database.

Two [[servers]] entries can reach one database under two spellings (127.0.0.1 and localhost, or an entry copied
for a new server whose dbname was not changed yet). hv shard plan then proposes moves between them, and a move
"to" the other entry copies the shard onto itself.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


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
