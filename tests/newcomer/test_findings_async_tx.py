"""A newcomer's findings: AsyncDatastore transactions opened by child tasks (asyncio.gather) inside an open one.

The open transactions are kept in a ContextVar, which asyncio copies into every child task: a child's
``db.transaction(5)`` becomes a savepoint of the parent's transaction on the parent's connection, and concurrent
children interleave their savepoints (one counter, one connection). README: 'so is db.transaction(5) again in the
same thread or asyncio task while one on shard 5 is open' - a gathered child is another task.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import hvcore


def _servers(backend: str, pg_fresh_db: dict[str, Any] | None) -> list[dict[str, Any]]:
    if backend == "memory":
        return [dict(shards="0-8")]
    assert pg_fresh_db is not None
    return [{**pg_fresh_db, "shards": "0-8"}]


async def _scenario(servers: list[dict[str, Any]], backend: str, a_fails: bool) -> tuple[list[Any], list[str]]:
    async with hvcore.AsyncDatastore(servers, backend=backend) as db:
        await db.provision()

        async def child(name: str, fail: bool, delay: float) -> str:
            async with db.transaction(5) as tx:
                await tx.put(1, name=name)
                await asyncio.sleep(delay)
                if fail:
                    raise ValueError(name)
            return name

        async with db.transaction(5) as outer:
            await outer.put(1, name="outer")
            results = await asyncio.gather(child("A", a_fails, 0.3), child("B", False, 0.1), return_exceptions=True)
        stored = sorted([r.data["name"] async for r in db.query(shards=[5])])
    shown = [f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r for r in results]
    return shown, stored


def test_child_tasks_open_their_own_transactions_inside_an_open_one(pg_fresh_db: dict[str, Any]) -> None:
    """Two gathered tasks, each ``async with db.transaction(5)``, while the parent has one open on shard 5: both
    finish without error and both rows are stored."""
    shown, stored = asyncio.run(_scenario(_servers("jsonb", pg_fresh_db), "jsonb", a_fails=False))
    assert shown == ["A", "B"]
    assert stored == ["A", "B", "outer"]


@pytest.mark.parametrize("backend", ["memory", "jsonb"])
def test_a_failing_child_task_does_not_undo_a_sibling_that_finished(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Task A fails (its block rolls back), task B finishes first without error: B's row must be stored, on every
    backend alike."""
    fresh = request.getfixturevalue("pg_fresh_db") if backend != "memory" else None
    shown, stored = asyncio.run(_scenario(_servers(backend, fresh), backend, a_fails=True))
    assert shown == ["ValueError: A", "B"]
    assert stored == ["B", "outer"], f"B's block ended normally, yet stored: {stored}"
