"""put_many (one COPY) through a Citus coordinator: a unique violation relayed from a worker is a typed error.

Citus relays a worker's COPY unique violation as an internal error (not ``UniqueViolation``); the store reads it as
what it is: a value a unique index already holds (`DuplicateValue`, nothing written) or a taken key (redrawn).
"""

from __future__ import annotations

import pytest
from fixtures.datastores import MakeDatastore

import hvcore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]

SHARD = 5


def test_put_many_of_a_value_a_unique_index_holds_is_duplicate_value(make_datastore: MakeDatastore) -> None:
    """The whole batch refused with `DuplicateValue`, none of its rows stored; a batch without the value stored."""
    db = make_datastore()
    db.create_index(7, "email", type="text", unique=True)
    try:
        db.put(SHARD, 7, email="ada@example.org")
        before = len(list(db.query(shards=[SHARD], kind=7)))
        with pytest.raises(hvcore.DuplicateValue, match=r"ada@example\.org"):
            db.put_many(SHARD, 7, [{"email": "bob@example.org"}, {"email": "ada@example.org"}])
        assert len(list(db.query(shards=[SHARD], kind=7))) == before  # all-or-nothing
        keys = db.put_many(SHARD, 7, [{"email": "bob@example.org"}, {"email": "cy@example.org"}])
        assert [db.get(k).data["email"] for k in keys] == ["bob@example.org", "cy@example.org"]  # type: ignore[union-attr]
    finally:
        db.drop_index(7, "email")
