"""Fan-out through a Citus coordinator: every statement names one shard schema, so Citus router-plans each.

Citus routes a statement naming one distributed schema to the worker holding it, but plans a ``UNION ALL`` over
several schemas by recursive planning (a distributed subplan per schema, collected on the coordinator). The stores
detect a Citus node whose shard schemas are distributed and cut ``get_many`` and ``query`` into one-schema
statements, still one pipeline per call. Checked two ways: the statements the store sends (its statement log:
none names two schemas) and what Citus says while planning them (``client_min_messages = debug2``: "Creating
router plan" for each, never "generating subplan").
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from citus.citus_helpers import StatementLog, connect, statement_log
from citus.conftest import _ContractDatabases
from fixtures.citus import CitusCluster
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

import hvbackend_postgres._store
import hvcore
from hvbackend_postgres._citus import CITUS_SHARDS_PER_STATEMENT
from hvbackend_postgres._fanout import SHARDS_PER_STATEMENT, group_pieces, pieces_per_transaction, shard_pieces
from hvbackend_postgres._lent import forget_user_state
from hvcore import Key

pytestmark = [pytest.mark.citus, pytest.mark.postgres]

SHARDS = 16
SCHEMA = re.compile(r"shard\d{4,}")
SUBPLAN = "generating subplan"
ROUTER = ("Creating router plan", "fast-path router")


class _Statements(StatementLog):
    """The store's statement log, and the shard schemas each statement names."""

    def schemas(self) -> list[set[str]]:
        """The shard schemas each logged statement names (statements naming none left out)."""
        return [found for line in self.lines if (found := set(SCHEMA.findall(line)))]


@pytest.fixture
def statements() -> Iterator[tuple[logging.Logger, _Statements]]:
    with statement_log("hv.test.citus.fanout", _Statements()) as pair:
        yield pair


@pytest.fixture
def filled(_citus_contract_databases: _ContractDatabases) -> dict[str, Any]:
    """The jsonb contract database on the coordinator (shards 0-16, distributed), 20 rows per shard."""
    server = _citus_contract_databases.empty("jsonb")
    with hvcore.Datastore([dict(server)], backend="jsonb") as db:
        for shard in range(SHARDS):
            db.put_many(shard, shard % 2, [{"shard": shard, "i": i, "odd": i % 2 == 1} for i in range(20)])
    return server


def _debug_notices(db: hvcore.Datastore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Collect the notices of the store's only pooled connection (``pool_max=1``) from now on.

    A handler added to a borrowed connection is dropped when it is given back (so one borrower never hears the
    next one's notices); this test keeps its own through the store's returns, to read how Citus planned the
    store's own statements."""
    notices: list[str] = []

    def handler(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(str(diag.message_primary))

    def keep_handler(conn: Any) -> None:
        forget_user_state(conn)
        conn.add_notice_handler(handler)

    monkeypatch.setattr(hvbackend_postgres._store, "forget_user_state", keep_handler)
    conn = db.get_connection(0)
    try:
        conn.add_notice_handler(handler)
        conn.commit()
    finally:
        db.put_connection(conn)
    return notices


def test_get_many_and_queries_send_one_schema_per_statement_and_citus_router_plans_each(
    filled: dict[str, Any], statements: tuple[logging.Logger, _Statements], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, log = statements
    server = {**filled, "options": "-c client_min_messages=debug2"}  # Citus says how it plans each statement
    with hvcore.Datastore([server], backend="jsonb", pool_max=1, logger=logger) as db:
        everything = sorted((r for s in range(SHARDS) for r in db.query(shards=[s])), key=lambda r: int(r.key))
        assert len(everything) == SHARDS * 20
        (store,) = db._stores
        assert store.shards_per_statement == CITUS_SHARDS_PER_STATEMENT == 1  # type: ignore[attr-defined]
        notices = _debug_notices(db, monkeypatch)
        log.lines.clear()

        keys = [r.key for r in everything[::3]]
        assert db.get_many(keys) == {r.key: r for r in everything[::3]}
        assert list(db.query()) == everything
        assert list(db.query(limit=25)) == everything[:25]
        odd = [r for r in everything if r.kind == 1 and r.data["odd"]]
        assert list(db.query(kind=1, where={"odd": True}, limit=40)) == odd[:40]
        assert list(db.query(since=everything[50].key, until=everything[200].key)) == everything[50:200]

    multi = [sorted(names) for names in log.schemas() if len(names) > 1]
    assert multi == [], f"statements naming several shard schemas were sent: {multi[:3]}"
    assert len(log.schemas()) >= 5 * SHARDS  # every call went to every shard, one statement each
    assert [n for n in notices if SUBPLAN in n] == [], "Citus planned a statement with distributed subplans"
    routed = [n for n in notices if any(r in n for r in ROUTER)]
    assert len(routed) >= 5 * SHARDS, notices[:20]


def test_one_schema_statements_share_transactions_sixteen_at_a_time(
    filled: dict[str, Any], statements: tuple[logging.Logger, _Statements]
) -> None:
    """A transaction holds what one 16-shard statement would lock, and Citus opens its remote transactions once
    per 16 statements, not per statement (each transaction costs a BEGIN and COMMIT on every worker it reaches)."""
    logger, log = statements
    with hvcore.Datastore([filled], backend="jsonb", logger=logger) as db:
        everything = list(db.query())
        log.lines.clear()
        assert len(db.get_many([r.key for r in everything])) == SHARDS * 20
    groups: list[int] = []
    inside: int | None = None
    for line in log.lines:
        text = line.removeprefix("statement:").strip().upper()
        if text.startswith("BEGIN"):
            assert inside is None, "nested BEGIN"
            inside = 0
        elif text.startswith("COMMIT"):
            assert inside is not None
            groups.append(inside)
            inside = None
        elif SCHEMA.search(line):
            assert inside is not None, f"a statement outside the pieces' transactions: {line[:120]}"
            inside += 1
    assert groups == [SHARDS_PER_STATEMENT] * (SHARDS // SHARDS_PER_STATEMENT), (groups, log.lines[:5])


def test_row_counts_of_a_fresh_store_send_one_schema_per_statement(
    filled: dict[str, Any], statements: tuple[logging.Logger, _Statements]
) -> None:
    """What ``hv status`` counts with, on a store that ran nothing on shards before: it looks for Citus itself."""
    logger, log = statements
    with hvcore.Datastore([filled], backend="jsonb", logger=logger) as db:
        (store,) = db._stores
        assert store.row_counts(range(SHARDS)) == dict.fromkeys(range(SHARDS), 20)
    assert any("count(" in line for line in log.lines)  # the statements were logged
    assert [sorted(n) for n in log.schemas() if len(n) > 1] == []
    assert len(log.schemas()) >= SHARDS


def test_the_async_store_cuts_the_same_pieces(filled: dict[str, Any], statements: tuple[Any, _Statements]) -> None:
    logger, log = statements

    async def main() -> tuple[int, int]:
        async with hvcore.AsyncDatastore([filled], backend="jsonb", logger=logger) as db:
            everything = [r async for r in db.query()]
            found = await db.get_many([r.key for r in everything])
            return len(everything), len(found)

    assert asyncio.run(main()) == (SHARDS * 20, SHARDS * 20)
    assert [names for names in log.schemas() if len(names) > 1] == []


@given(st.lists(st.integers(0, 200), max_size=300), st.integers(1, 40))
def test_pieces_of_one_shard_cover_every_shard_once_in_order(shards: list[int], params: int) -> None:
    pieces = shard_pieces(shards, params, per_statement=CITUS_SHARDS_PER_STATEMENT)
    assert pieces == [[s] for s in shards]
    items = [(s, Key(i)) for i, s in enumerate(shards)]
    groups = group_pieces(items, lambda item: item[0], per_statement=CITUS_SHARDS_PER_STATEMENT)
    assert all(len({s for s, _ in group}) == 1 for group in groups)
    assert sorted(item for group in groups for item in group) == sorted(items)
    assert len(groups) == len(set(shards))


def test_one_schema_pieces_share_transactions_within_one_full_pieces_locks() -> None:
    assert pieces_per_transaction(None) == 1  # full pieces: a transaction each (as before)
    assert pieces_per_transaction(SHARDS_PER_STATEMENT) == 1
    assert pieces_per_transaction(CITUS_SHARDS_PER_STATEMENT) == SHARDS_PER_STATEMENT
    assert pieces_per_transaction(4) * 4 == SHARDS_PER_STATEMENT


def test_a_citus_node_whose_shard_schemas_are_not_distributed_keeps_full_pieces(citus_cluster: CitusCluster) -> None:
    """A server prepared for adoption (Citus installed, its shard schemas still its own tables): one statement per
    16 shards, as on a plain server, since nothing there is planned by Citus."""
    dbname = "hv_citus_not_distributed"
    worker = citus_cluster.workers[0]
    with connect(worker, dbname="postgres") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    server = {**worker, "dbname": dbname, "shards": "0-4"}
    try:
        with hvcore.Datastore([server], backend="jsonb") as db:
            db.provision()  # before Citus: plain schemas
        with connect(server) as conn:
            conn.execute("CREATE EXTENSION citus")
        with hvcore.Datastore([server], backend="jsonb") as db:
            keys = [db.put(s, 1, s=s) for s in range(4)]
            assert sorted(db.get_many(keys)) == sorted(keys)
            (store,) = db._stores
            assert store.shards_per_statement is None  # type: ignore[attr-defined]
    finally:
        with connect(worker, dbname="postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
