"""Sixth newcomer: raw SQL through ``db.cursor(shard)`` inside one's own ``db.transaction(shard)`` block (fixed).

A newcomer moving a psycopg2 code base over keeps its ``with db.cursor(5) as cur:`` blocks and wraps the calls
around them in ``with db.transaction(5) as tx:``. A statement in the cursor block that touches a row the transaction
wrote waits for the caller's own transaction (another pooled session): it can never go on. Plain calls get a
`SelfDeadlock` at once naming the fix (``tx.cursor()``); the cursor waits the whole ``operation_timeout`` (60 s by
default) and then says the server "did not answer within operation_timeout" (``OperationTimeout``, a
`ServerUnavailable`): the server answered, the wait was the caller's own. Not among the unwatched cases the README
lists (a plain call inside a cursor block, or inside a transaction on a ``get_connection()`` connection).

Fixed: the lent connection's waits are watched like a plain call's statement (``_astore._lent_wait``): the
statement is cancelled after 0.15 s and raises `SelfDeadlock` naming ``tx.cursor()``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import hvcore

BOUND = 2.0


@pytest.mark.parametrize("borrow", ["cursor", "get_connection"])
def test_raw_sql_waiting_for_the_callers_own_transaction_is_a_self_deadlock(
    pg_fresh_db: dict[str, Any], borrow: str
) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=BOUND) as db:
        db.provision()
        key = db.put(5, 1, balance=100)
        started = time.monotonic()
        with pytest.raises(hvcore.SelfDeadlock), db.transaction(5) as tx:
            tx.update(key, balance=70)
            if borrow == "cursor":
                with db.cursor(5) as cur:  # should have been tx.cursor()
                    cur.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
            else:
                conn = db.get_connection(5)
                try:
                    conn.execute("UPDATE entities SET kind = 2 WHERE id = %s", (key,))
                    conn.commit()
                finally:
                    db.put_connection(conn)
        assert time.monotonic() - started < BOUND
