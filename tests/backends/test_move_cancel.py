"""A cancelled ``AsyncDatastore.move_shard`` stops its mover (a worker thread) before raising, and can be resumed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import hvcore


def test_a_cancelled_move_has_stopped_when_the_cancellation_is_raised_and_resumes(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]
) -> None:
    async def main() -> tuple[list[str], dict[str, Any] | None, dict[str, Any] | None, int, int]:
        servers = [{**pg_fresh_db, "shards": "0-8"}, {**pg_fresh_db2, "shards": "8-16"}]
        async with hvcore.AsyncDatastore(servers, backend="jsonb", worker=None) as db:
            await db.provision()
            await db.put_many(3, 1, [{"i": i} for i in range(30_000)])
            phases: list[str] = []

            def progress(phase: str, done: int, total: int) -> None:
                if phase == "copy" and "copy" not in phases:  # the copy outlasts the timeout even on an idle machine
                    time.sleep(0.5)
                phases.append(phase)

            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await db.move_shard(3, 1, progress=progress)
            # the cancellation came out once the mover had stopped: no step reported after it
            reported = len(phases)
            stopped = await db.move_state(3)
            await asyncio.sleep(1.0)
            later = await db.move_state(3)
            assert len(phases) == reported, (
                f"the mover went on after the cancellation: {len(phases) - reported} more steps, up to {phases[-1]!r}"
            )
            report = await db.move_shard(3, 1)  # resumes the interrupted move
            return phases, stopped, later, report.rows, (await db.reload_placement()).server_for(3)

    phases, stopped, later, rows, placement = asyncio.run(main())
    assert stopped is not None and stopped["phase"] in ("prepare", "copy", "catchup", "fence", "verify"), stopped
    assert later is not None and later["phase"] == stopped["phase"] and later["updated_at"] == stopped["updated_at"]
    assert "switch" not in phases
    assert placement == 1 and rows > 0
