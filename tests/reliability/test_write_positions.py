"""Read-your-writes positions when a write's exchange is lost: the position is read again, never guessed.

A write on a primary with standbys brings back the WAL position past its commit in its own exchange
(``track_wal``); a write whose reply never came, settled as committed by asking the server, brought none, so the
store's `written_position` is unknown until a position read that began after it: the datastore reads one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.faults import FaultServers

import hvcore
from hvbackend_postgres import _astore, _store

pytestmark = pytest.mark.postgres

SHARD = 5


@pytest.fixture
def commits_without_reply(fault_pg: FaultServers, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Commits on fault server 0 wait for a synchronous standby that never comes: the reply of a COMMIT is lost."""
    for module in (_store, _astore):
        monkeypatch.setattr(module, "SETTLE_SECONDS", 0.5)  # then the orphaned session is ended
    fault_pg.sql(0, "ALTER SYSTEM SET synchronous_standby_names = 'hv_nobody'")
    fault_pg.sql(0, "SELECT pg_reload_conf()")
    time.sleep(0.3)
    try:
        yield
    finally:
        fault_pg.sql(0, "ALTER SYSTEM RESET synchronous_standby_names")
        fault_pg.sql(0, "SELECT pg_reload_conf()")
        time.sleep(0.3)


def test_a_write_committed_without_its_reply_leaves_its_position_unknown_until_read_again(
    fault_pg: FaultServers, request: pytest.FixtureRequest
) -> None:
    settings = fault_pg.fresh_db(0)
    with hvcore.Datastore([dict(shards="0-16", **settings)], backend="jsonb", operation_timeout=1.0) as db:
        db.provision()
        store: Any = db.store_for(SHARD)
        store.track_wal = True  # as the read router sets it on a primary with standbys
        db.put(SHARD, 1, n=0)
        known = store.written_position()
        assert known is not None and known > 0  # brought back by the write's own exchange

        request.getfixturevalue("commits_without_reply")
        db.put(SHARD, 1, n=1)  # committed; the reply never came: settled by asking the server
        assert db.status()[0]["pool"]["commit_checks_committed"] == 1
        assert store.written_position() is None  # this write's position is not known

        _, now = store.wal_position()  # a read that began after the write covers it
        assert store.written_position() == now >= known
