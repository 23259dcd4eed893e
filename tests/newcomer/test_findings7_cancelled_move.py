"""Seventh newcomer: cancelling ``AsyncDatastore.move_shard`` does not stop the move; it switches the shard later.

``AsyncDatastore.move_shard`` runs the sync mover in a worker thread (``asyncio.to_thread``). A cancellation of the
awaiting task (``asyncio.timeout`` around a long operation, a ``TaskGroup`` sibling failing, a web handler's
deadline, Ctrl-C in an ``asyncio.run`` script) raises at once in the caller, but the thread goes on copying, fences
the shard's writes and switches it to the target: the caller was told the call ended with ``TimeoutError`` /
``CancelledError``, and the shard moves anyway, seconds later. Trying to undo it the documented way,
``rollback_move(shard)``, is refused with ``MoveError: another process is moving shard 3 right now: stop it
first`` although the mover is this process's own thread, which nothing can stop.

Reproduce: two servers (two fresh databases), 60,000 rows in shard 3, ``async with asyncio.timeout(0.2): await
db.move_shard(3, 1)`` → ``TimeoutError`` (state: phase ``copy``/``catchup``); ``await db.rollback_move(3)`` →
``MoveError``; a few seconds later ``move_state(3)`` is None and the recorded placement of shard 3 is server #1.
Expected: a cancelled ``move_shard`` stops its mover at the next step and leaves the move interrupted (resumable
with ``move_shard`` again, or undone by ``rollback_move``), never switching the shard after the caller was told the
call was cancelled; at the least ``rollback_move`` from the same process must not be refused as "another process".
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import hvcore


def test_a_cancelled_move_does_not_switch_the_shard(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> None:
    async def main() -> tuple[str, int]:
        servers = [{**pg_fresh_db, "shards": "0-8"}, {**pg_fresh_db2, "shards": "8-16"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None) as db:
            await db.provision()
            await db.put_many(3, 1, [{"i": i} for i in range(30_000)])
            copying: list[str] = []

            def slow_copy(phase: str, done: int, total: int) -> None:
                if phase == "copy" and not copying:  # the copy outlasts the timeout even on an idle machine
                    copying.append(phase)
                    time.sleep(0.5)

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await db.move_shard(3, 1, progress=slow_copy)
            try:
                undo = f"rolled back: {await db.rollback_move(3)}"
            except hvcore.MoveError as exc:
                undo = f"MoveError: {exc}"
            deadline = time.monotonic() + 60
            while await db.move_state(3) is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            return undo, (await db.reload_placement()).server_for(3)

    undo, placement = asyncio.run(main())
    assert placement == 0 and not undo.startswith("MoveError"), f"{undo}; shard 3 is now on server #{placement}"
