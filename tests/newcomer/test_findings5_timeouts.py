"""Fifth newcomer: a filter write cut off by operation_timeout said 'cannot exit pipeline mode while busy'.

``db.update(key, ...)`` waiting past ``operation_timeout`` for a row another thread's transaction holds raises
``ServerUnavailable: ... did not answer within operation_timeout=2 s: the write's session was ended and the write did
not commit ...``. ``db.update_where`` / ``db.delete_where`` in the same situation raised ``ServerUnavailable: ... is
unavailable: cannot exit pipeline mode while busy``: psycopg's internal state leaked out, operation_timeout was not
named, and the caller was not told whether the filter write (of many rows) committed; a ``query()`` ended after twice
the timeout. Fixed for every pipelined path (``_pipelined``; more in tests/backends/test_pipeline_timeouts.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import hvcore

WRITES: dict[str, Callable[[hvcore.Datastore], object]] = {
    "update_where": lambda db: db.update_where(set={"note": "x"}, kind=1),
    "delete_where": lambda db: db.delete_where(kind=1),
}


@pytest.mark.parametrize("op", sorted(WRITES))
def test_a_filter_write_cut_off_by_operation_timeout_names_the_timeout(pg_fresh_db: dict[str, Any], op: str) -> None:
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=4, operation_timeout=1)
    ready, done = threading.Event(), threading.Event()
    try:
        db.provision()
        key = db.put(5, 1, balance=1)

        def holder() -> None:
            with db.transaction(5) as tx:
                tx.update(key, balance=2)
                ready.set()
                done.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert ready.wait(5)
            with pytest.raises(hvcore.ServerUnavailable) as caught:
                WRITES[op](db)
        finally:
            done.set()
            thread.join()
        message = str(caught.value)
        assert "pipeline" not in message, message
        assert "operation_timeout" in message, message
    finally:
        db.close()


def test_a_query_cut_off_by_operation_timeout_ends_at_the_timeout_and_names_it(pg_fresh_db: dict[str, Any]) -> None:
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=4, operation_timeout=1)
    ready, done = threading.Event(), threading.Event()
    try:
        db.provision()
        db.put(5, 1, balance=1)

        def holder() -> None:
            with db.transaction(5) as tx:
                with tx.cursor() as cur:
                    cur.execute("LOCK TABLE shard0005.entities IN ACCESS EXCLUSIVE MODE")
                ready.set()
                done.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert ready.wait(5)
            started = time.monotonic()
            with pytest.raises(hvcore.ServerUnavailable) as caught:
                list(db.query(1, shards=[5]))
            elapsed = time.monotonic() - started
        finally:
            done.set()
            thread.join()
        message = str(caught.value)
        assert elapsed < 1.6, f"{elapsed:.1f} s for operation_timeout=1: {message}"
        assert "operation_timeout" in message, message
    finally:
        db.close()


def test_a_read_cut_off_by_operation_timeout_names_the_server_once(pg_fresh_db: dict[str, Any]) -> None:
    db = hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", pool_max=4, operation_timeout=1)
    ready, done = threading.Event(), threading.Event()
    try:
        db.provision()
        key = db.put(5, 1, balance=1)

        def holder() -> None:
            with db.transaction(5) as tx:
                with tx.cursor() as cur:
                    cur.execute("LOCK TABLE shard0005.entities IN ACCESS EXCLUSIVE MODE")
                ready.set()
                done.wait(10)

        thread = threading.Thread(target=holder)
        thread.start()
        try:
            assert ready.wait(5)
            with pytest.raises(hvcore.ServerUnavailable) as caught:
                db.get(key)
        finally:
            done.set()
            thread.join()
        message = str(caught.value)
        assert message.count("PostgreSQL server") == 1, message
    finally:
        db.close()
