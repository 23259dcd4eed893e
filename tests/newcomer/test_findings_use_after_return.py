"""A newcomer's findings: a connection used after put_connection()."""

from __future__ import annotations

from typing import Any

import pytest

import hvcore


def test_a_returned_connection_handle_is_refused(pg_fresh_db: dict[str, Any]) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", pool_max=1) as db:
        db.provision()
        mine = db.get_connection(3)
        db.put_connection(mine)
        theirs = db.get_connection(4)  # another request's borrow
        try:
            with pytest.raises(hvcore.HypervaultError):
                mine.execute("SELECT 1")  # a bug in the first request's code, after it gave the connection back
        finally:
            theirs.rollback()
            db.put_connection(theirs)
