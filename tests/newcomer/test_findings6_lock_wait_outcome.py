"""Sixth newcomer: a put/update/delete cut off by ``operation_timeout`` while waiting for a lock is "outcome unknown".

README: "a write that hit ``operation_timeout`` is ended and settled the same way [committed / aborted], and what
cannot be known is a typed error (``WriteOutcomeUnknown``)". With another session holding a shard table locked (a
long ``ALTER TABLE``, ``LOCK TABLE``), ``put_many`` is settled: after the bound it says "the write's session was
ended and the write did not commit (aborted: nothing of it is stored); it can be run again". ``put`` (coalesced,
the default), ``update`` and ``delete`` in the same spot wait twice the bound and raise ``WriteOutcomeUnknown``
("the question failed (OperationTimeout ...)"): the question reads the table the lock holds. The write had not even
begun (no transaction id, waiting for its table lock), so the caller is told to read a key that the same lock keeps
unreadable, and a retry policy treating "unknown" as "maybe written" skips a write that never happened.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import hvcore

BOUND = 1.0


@pytest.mark.parametrize("call", ["put", "update", "delete"])
def test_a_write_cut_off_while_waiting_for_a_lock_is_settled(pg_fresh_db: dict[str, Any], call: str) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=BOUND) as db:
        db.provision()
        key = db.put(5, 1, balance="100")
        with psycopg.connect(**pg_fresh_db) as locker:
            locker.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')  # another session's DDL
            with pytest.raises(hvcore.ServerUnavailable) as caught:
                if call == "put":
                    db.put(5, 1, balance="0")
                elif call == "update":
                    db.update(key, balance="0")
                else:
                    db.delete(key)
            locker.rollback()
        assert not isinstance(caught.value, hvcore.WriteOutcomeUnknown), str(caught.value)
        assert db.get(key) is not None and db.get(key).data == {"balance": "100"}  # type: ignore[union-attr]
