"""Contract: a transaction belongs to the asyncio task or thread that opened it, on every backend (newcomer finding 2).

Child tasks (``asyncio.gather``, ``create_task``, a ``TaskGroup``) and threads (plain, or run in a copy of the
parent's context as ``asyncio.to_thread`` and ``contextvars.copy_context().run`` do) opening ``db.transaction(shard)``
while their parent holds one on the same shard get transactions of their own: a sibling's rollback never undoes
another's commit, the parent's commit keeps its own writes only. Calling the parent's ``tx`` from such a child is
`TransactionError`, before any I/O (the parent's transaction goes on).

Each kind runs the same program: the parent opens a transaction and writes "outer"; child A writes "A", waits
until child B has finished, then fails; child B writes "B" and finishes. Stored afterwards: "B" and "outer".
Before the fix (transactions found through a ContextVar, which child tasks and copied contexts inherit) A and B
became savepoints of the parent on its one connection: A's rollback undid B's acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixtures.datastores import MakeDatastore

import hvcore
from hvcore import TransactionError

SHARD = 3
ASYNC_KINDS = ["gather", "create_task", "task_group"]
THREAD_KINDS = ["thread", "thread_in_copied_context", "to_thread"]


class Failed(Exception):
    """Child A's failure."""


@pytest.fixture
def servers(make_datastore: MakeDatastore) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The backend and server list of an empty, provisioned store (each test opens its own datastores on them)."""
    store = make_datastore()
    yield store.backend, [dict(s) for s in store._config.servers]


def _stored(db: hvcore.Datastore) -> list[str]:
    return sorted(r.data["name"] for r in db.query(shards=[SHARD]))


@pytest.mark.parametrize("api", ["sync"])  # the fixture's store only; each kind opens the API it exercises
@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_child_tasks_get_transactions_of_their_own(servers: tuple[str, list[dict[str, Any]]], kind: str) -> None:
    backend, config = servers

    async def scenario() -> tuple[list[Any], list[str], list[str]]:
        async with hvcore.AsyncDatastore([dict(s) for s in config], backend=backend) as db:
            b_done = asyncio.Event()
            refused: list[str] = []

            async def child(name: str, outer: hvcore.AsyncShardTransaction) -> str:
                with pytest.raises(TransactionError, match="used only in the asyncio task or thread"):
                    await outer.put(1, name=f"{name} through the parent's tx")
                refused.append(name)
                async with db.transaction(SHARD) as tx:
                    assert tx is not outer
                    await tx.put(1, name=name)
                    if name == "A":
                        await b_done.wait()
                        raise Failed(name)
                b_done.set()
                return name

            results: list[Any]
            async with db.transaction(SHARD) as outer:
                await outer.put(1, name="outer")
                if kind == "gather":
                    results = list(await asyncio.gather(child("A", outer), child("B", outer), return_exceptions=True))
                elif kind == "create_task":
                    tasks = [asyncio.create_task(child(n, outer)) for n in "AB"]
                    await asyncio.wait(tasks)
                    results = [t.exception() or t.result() for t in tasks]
                else:
                    results = []
                    try:
                        async with asyncio.TaskGroup() as group:
                            group.create_task(child("A", outer))
                            group.create_task(child("B", outer))
                    except* Failed as failed:
                        results = list(failed.exceptions)
                assert outer.state == "open"  # the children's errors were theirs
                await outer.put(1, name="outer again")
            stored = sorted([r.data["name"] async for r in db.query(shards=[SHARD])])
            shown = [type(r).__name__ if isinstance(r, BaseException) else r for r in results]
            return shown, stored, sorted(refused)

    shown, stored, refused = asyncio.run(scenario())
    assert refused == ["A", "B"]
    assert stored == ["B", "outer", "outer again"]
    if kind != "task_group":
        assert shown == ["Failed", "B"]


@pytest.mark.parametrize("api", ["sync"])
@pytest.mark.parametrize("kind", THREAD_KINDS)
def test_threads_started_inside_a_transaction_get_their_own(
    servers: tuple[str, list[dict[str, Any]]], kind: str
) -> None:
    backend, config = servers
    with hvcore.Datastore([dict(s) for s in config], backend=backend) as db:
        b_done = threading.Event()
        outcome: dict[str, Any] = {}

        def child(name: str, outer: hvcore.ShardTransaction) -> None:
            try:
                with pytest.raises(TransactionError, match="used only in the asyncio task or thread"):
                    outer.put(1, name=f"{name} through the parent's tx")
                with pytest.raises(TransactionError, match="used only in the asyncio task or thread"):
                    outer.query()
                with db.transaction(SHARD) as tx:
                    assert tx is not outer
                    tx.put(1, name=name)
                    if name == "A":
                        assert b_done.wait(30)
                        raise Failed(name)
                outcome[name] = "done"
            except Exception as exc:
                outcome[name] = type(exc).__name__
            finally:
                if name == "B":
                    b_done.set()

        def run_children(start: Callable[[Callable[[], None]], Any]) -> None:
            started = [start(lambda n=name: child(n, outer)) for name in "AB"]  # type: ignore[misc]
            for handle in started:
                handle()

        with db.transaction(SHARD) as outer:
            outer.put(1, name="outer")
            if kind == "thread":

                def plain(work: Callable[[], None]) -> Callable[[], None]:
                    thread = threading.Thread(target=work)
                    thread.start()
                    return lambda: thread.join(60)

                run_children(plain)
            elif kind == "thread_in_copied_context":

                def copied(work: Callable[[], None]) -> Callable[[], None]:
                    context = contextvars.copy_context()  # holds the parent's open transactions
                    thread = threading.Thread(target=context.run, args=(work,))
                    thread.start()
                    return lambda: thread.join(60)

                run_children(copied)
            else:

                async def both() -> None:
                    await asyncio.gather(*(asyncio.to_thread(child, name, outer) for name in "AB"))

                asyncio.run(both())
            assert outer.state == "open"
            outer.put(1, name="outer again")
        assert outcome == {"A": "Failed", "B": "done"}
        assert _stored(db) == ["B", "outer", "outer again"]


@pytest.mark.parametrize("api", ["sync"])
def test_the_owner_still_nests_and_ends_its_transaction_from_the_same_task(
    servers: tuple[str, list[dict[str, Any]]],
) -> None:
    """The rule does not get in the way of the task that opened the transaction: nested db.transaction is a
    savepoint of it, helpers awaited directly (same task) use it, asyncio.timeout() around a call is fine."""
    backend, config = servers

    async def scenario() -> list[str]:
        async with hvcore.AsyncDatastore([dict(s) for s in config], backend=backend) as db:

            async def helper(tx: hvcore.AsyncShardTransaction) -> None:
                await tx.put(1, name="helper")

            async with db.transaction(SHARD) as outer:
                await helper(outer)
                async with asyncio.timeout(30):
                    await outer.put(1, name="timed")
                async with db.transaction(SHARD) as nested:
                    assert nested is outer  # a savepoint of it
                    await nested.put(1, name="nested")
            return sorted([r.data["name"] async for r in db.query(shards=[SHARD])])

    assert asyncio.run(scenario()) == ["helper", "nested", "timed"]
