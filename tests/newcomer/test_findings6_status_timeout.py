"""Sixth newcomer: ``status()`` (``hv status``, exact rows) waits without bound for a lock on a shard table.

README: "``operation_timeout`` bounds every exchange with a server on the client (raw ``cursor()`` statements
included; None waits forever), so a server that stops answering fails the call with ``ServerUnavailable`` instead of
hanging it". The exact row count of ``status()`` runs ``count(*)`` on every shard table on a connection of its own
that has no such bound: while any session holds a shard table locked (a long ``ALTER TABLE``, ``VACUUM FULL``, a
migration, a stuck transaction that ran ``LOCK TABLE``), ``status()`` and ``hv status`` hang (15 s and more here
with ``operation_timeout=1``), exactly when an operator looks. Inside one's own transaction that locked the table
(``tx.cursor()``: ``LOCK TABLE entities``), ``db.status()`` never returns: every other call is a `SelfDeadlock`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

import hvcore

BOUND = 1.0
WAIT = 6.0  # the call should be over by then (the bound, a round trip, a second's slack on a loaded machine)


@pytest.mark.parametrize("api", ["sync", "async"])
def test_status_waiting_for_a_locked_shard_table_ends_at_operation_timeout(
    pg_fresh_db: dict[str, Any], api: str
) -> None:
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as setup:
        setup.provision()
    done: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            if api == "sync":
                with hvcore.Datastore(servers, backend="jsonb", worker=None, operation_timeout=BOUND) as db:
                    db.status()
            else:

                async def main() -> None:
                    async with hvcore.AsyncDatastore(
                        servers, backend="jsonb", worker=None, operation_timeout=BOUND
                    ) as adb:
                        await adb.status()

                asyncio.run(main())
        except Exception as exc:  # a typed error within the bound is fine
            done["error"] = exc
        done["seconds"] = time.monotonic() - started

    with psycopg.connect(**pg_fresh_db) as locker:
        locker.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')  # another session's long DDL
        caller = threading.Thread(target=run, daemon=True)
        caller.start()
        caller.join(WAIT)
        still_waiting = caller.is_alive()
        locker.rollback()
    caller.join(30)
    assert not still_waiting, f"status() still waiting after {WAIT} s with operation_timeout={BOUND}"
    assert "error" not in done or isinstance(done["error"], hvcore.HypervaultError)
