"""Fifth newcomer: a coalesced ``get`` waiting for its caller's own transaction took an innocent thread down with it.

Fixed: a caller holding a session of the server (``holds_session``) runs its own statement, never in a batch
(``hvcore._acoalesce``). What follows is the finding as it was.

With ``coalesce_reads`` (the default), a ``get`` arriving while every slot of its server is taken is queued, and the
thread queued first runs every queued call as one batch. If thread T holds ``db.transaction(5)`` that locked shard
5's table (``tx.cursor()``, ``LOCK TABLE``) and calls ``db.get(key_in_5)`` (the slip `SelfDeadlock` is for) while
thread U's ``db.get(key_in_7)`` is queued ahead of it, U runs the batch: the statement is U's, not watched, and it
waits for T's lock until ``operation_timeout``. Both fail with ServerUnavailable, U for a key nobody locked.

The slots are filled deterministically: an outside session locks shard 6, and pool_max threads read it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

import hvcore

TIMEOUT = 3
GAP = 0.5  # lets each thread reach the coalescer's queue before the next step (they need milliseconds)


def test_a_coalesced_get_waiting_for_its_callers_transaction_is_a_self_deadlock_and_spares_the_batch(
    pg_fresh_db: dict[str, Any],
) -> None:
    db = hvcore.Datastore(
        [{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None, pool_max=3, operation_timeout=TIMEOUT
    )
    outside = psycopg.connect(**pg_fresh_db)
    outcomes: dict[str, object] = {}
    threads: list[threading.Thread] = []
    try:
        db.provision()
        own, busy, other = db.put(5, 1, a=5), db.put(6, 1, a=6), db.put(7, 1, a=7)
        outside.execute("LOCK TABLE shard0006.entities IN ACCESS EXCLUSIVE MODE")

        def get(name: str, key: hvcore.Key) -> None:
            try:
                outcomes[name] = db.get(key)
            except Exception as exc:
                outcomes[name] = exc

        locked, go = threading.Event(), threading.Event()

        def caller() -> None:
            with db.transaction(5) as tx:
                with tx.cursor() as cur:
                    cur.execute("LOCK TABLE shard0005.entities IN ACCESS EXCLUSIVE MODE")
                locked.set()
                go.wait(10)
                get("caller", own)  # the slip: db.get instead of tx.get

        threads.append(threading.Thread(target=caller))
        threads[-1].start()
        assert locked.wait(5)
        for i in range(3):  # every slot of the server taken by reads waiting for the outside lock
            threads.append(threading.Thread(target=get, args=(f"busy{i}", busy)))
            threads[-1].start()
        time.sleep(GAP)
        threads.append(threading.Thread(target=get, args=("bystander", other)))
        threads[-1].start()
        time.sleep(GAP)
        go.set()
        time.sleep(GAP)
        outside.commit()  # the slots free up: the bystander, queued first, runs the batch
        for thread in threads:
            thread.join(TIMEOUT * 3)
        assert isinstance(outcomes.get("bystander"), hvcore.Record), repr(outcomes.get("bystander"))
        assert isinstance(outcomes.get("caller"), hvcore.SelfDeadlock), repr(outcomes.get("caller"))
    finally:
        outside.close()
        db.close()
