"""A newcomer's findings: secondary indexes on body fields whose names contain '%'.

The indexed field's name is spliced into the statement as a ``psycopg.sql.Literal``; the composed text is then
run with bound parameters, so psycopg reads a '%' in the name as a placeholder: '%s', '%d', a lone '%' crash,
and '%%' becomes '%' - the statement then filters on another field. Memory gets all of these right.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


def _store(backend: str, request: pytest.FixtureRequest) -> hvcore.Datastore:
    if backend == "memory":
        return hvcore.Datastore([dict(shards="0-4")], backend="memory")
    fresh = request.getfixturevalue("pg_fresh_db")
    db = hvcore.Datastore([{**fresh, "shards": "0-4"}], backend=backend)
    db.provision()
    return db


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
@pytest.mark.parametrize("field", ["cpu%", "50%d", "%s"])
def test_queries_on_an_indexed_field_with_a_percent_sign(
    backend: str, field: str, request: pytest.FixtureRequest
) -> None:
    with _store(backend, request) as db:
        db.create_index(1, field, type="bigint")
        key = db.put(2, 1, **{field: "5"} if backend == "hstore" else {field: 5})
        bound = 5
        assert [r.key for r in db.query(kind=1, where={field: {">=": bound}})] == [key]
        assert db.update_where(kind=1, where={field: {">=": bound}}, set={"seen": "yes"}) == 1


@pytest.mark.parametrize("backend", ["memory", "hstore", "jsonb"])
def test_delete_where_on_an_indexed_field_with_a_double_percent_deletes_the_matching_record(
    backend: str, request: pytest.FixtureRequest
) -> None:
    with _store(backend, request) as db:
        db.create_index(1, "a%%b", type="bigint")
        five, seven = ("5", "7") if backend == "hstore" else (5, 7)
        match = db.put(2, 1, **{"a%%b": five})
        other = db.put(2, 1, **{"a%b": seven})
        deleted = db.delete_where(kind=1, where={"a%%b": {">=": 5}})
        left: dict[Any, Any] = db.get_many([match, other])
        assert (deleted, sorted(left)) == (1, [other]), f"deleted {deleted}, left {sorted(left)}; match={match}"
