"""Seventh newcomer: a transaction cancelled after its COMMIT reached the server is not noted for read-your-writes.

The README (Transactions, "Cancelled while committing"): an ``async with adb.transaction()`` block cut off by a
cancellation while its ``COMMIT`` is on its way raises the cancellation although the transaction may have
committed, so "make such a transaction's effect checkable (a key you chose, a row you can look for) before running
it again". With read replicas, ``hvcore._atransaction`` notes a transaction's commit in the current timeline only on
the success path; the cancellation leaves through ``except BaseException: raise`` and skips
``db._note_write(shard)``. The check the README recommends, ``await db.get(key)`` on a datastore with
``read_from="replica"``, then goes to a standby that has not replayed the commit and answers None: the caller
concludes the transaction did not commit and runs it again (a second transfer, a second order), the very
duplicate the README's advice is meant to prevent. A plain ``put`` whose connection is lost is settled and noted;
a transaction that may have committed is not.

Reproduce: primary + streaming standby (``pg_replica_pair``), ``read_from="replica"``, standby replay paused;
``async with db.transaction(1) as tx: key = await tx.put(1, ...)`` with the task cancelled as the COMMIT's reply
arrives (a real ``task.cancel()`` delivered at an await right after psycopg's ``COMMIT``: the README's own
scenario, seen in 6 of 300 blocks under random timeouts); then ``await db.get(key)`` → None, although the row is
committed on the primary. Expected: a transaction whose COMMIT was sent counts as a write for read-your-writes
whatever ends the block (as ``cursor()`` blocks and ``put_connection`` already count "whether they wrote or not"),
so the read goes to the primary and finds the row.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fixtures.pgreplica import ReplicaPair

import hvcore
from hvbackend_postgres._atransaction import AsyncPostgresTransaction


def test_a_commit_cut_off_by_a_cancel_still_counts_for_read_your_writes(
    pg_replica_pair: ReplicaPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = pg_replica_pair
    standby = pair.standby_settings
    original = AsyncPostgresTransaction._commit

    async def commit_then_cancelled(self: AsyncPostgresTransaction) -> None:
        await original(self)  # the server committed
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the caller's deadline fires as the reply comes in
        await asyncio.sleep(0)

    async def main() -> tuple[bool, Any, Any]:
        servers = [
            dict(shards="0-4", **pair.primary_settings, replicas=[dict(host=standby["host"], port=standby["port"])])
        ]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", read_from="replica", max_replica_lag=60) as db:
            await db.provision()
            pair.wait_replayed()
            assert db._router is not None
            db._router.interval = 3600.0  # positions read by refresh_replicas() only
            await db.refresh_replicas()
            pair.pause_replay()
            try:
                keys: list[hvcore.Key] = []

                async def transfer() -> None:
                    async with db.transaction(1) as tx:
                        keys.append(await tx.put(1, v="committed, then cancelled"))

                monkeypatch.setattr(AsyncPostgresTransaction, "_commit", commit_then_cancelled)
                task = asyncio.ensure_future(transfer())
                cancelled = False
                try:
                    await task
                except asyncio.CancelledError:
                    cancelled = True
                monkeypatch.undo()
                on_primary = await db.get(keys[0], read_from="primary")
                await db.refresh_replicas()
                checked = await db.get(keys[0])  # the README's check before running the transaction again
                return cancelled, on_primary, checked
            finally:
                pair.resume_replay()

    cancelled, on_primary, checked = asyncio.run(main())
    assert cancelled and on_primary is not None  # the scenario: cancelled, yet committed
    assert checked is not None, "the read went to a standby that lacks the committed transaction"
