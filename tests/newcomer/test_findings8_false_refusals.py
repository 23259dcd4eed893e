"""Eighth newcomer: legitimate SQL refused as "a statement ending the transaction".

1. ``tx.cursor()`` inside ``db.transaction()`` refuses a statement whose *string literal* contains ``; end`` (or
   ``; commit``...): `_common.check_not_ending` matches `ENDS_TRANSACTION` on the raw text, while the pooler check
   (`_bouncer.check_pooled_user_sql`) strips literals, quoted identifiers and comments first (`_QUOTED`). So
   ``INSERT INTO notes VALUES (1, 'shipped; end of story')`` raises `TransactionError` ("a statement ending the
   transaction ... was sent through tx.cursor()"), as does a comment ``/* step 1; commit later */``.
2. A SQL-standard function body (PostgreSQL 14+: ``CREATE FUNCTION ... BEGIN ATOMIC SELECT 1; END``) is refused
   by both checks: its closing ``; END`` is read as the statement ``END`` (COMMIT). It ends no transaction.
   ``CREATE PROCEDURE``/``CREATE FUNCTION`` with ``BEGIN ATOMIC`` is ordinary DDL, e.g. in a migration or a
   borrowed connection behind a transaction pooler.

Reproduce: ``with db.transaction(3) as tx, tx.cursor() as cur: cur.execute("SELECT 'a; end'")`` raises
`TransactionError`; ``conn = db.get_connection(1)`` through a transaction-mode PgBouncer,
``conn.execute("CREATE FUNCTION hv_one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END")`` raises
`ConnectionMisuse`.
Expected: both run (literals and comments are data; ``BEGIN ATOMIC ... END`` is one statement), as they do on a
direct connection and through a plain psycopg connection to the pooler.
"""

from __future__ import annotations

from typing import Any

import pytest

import hvcore

LITERALS = [
    "SELECT 'shipped; end of story'",
    "SELECT 1 /* step one; commit later */",
    'SELECT 1 AS "a;commit"',
]
ATOMIC = "CREATE FUNCTION hv_one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END"


@pytest.mark.parametrize("statement", LITERALS)
def test_a_literal_mentioning_end_runs_inside_a_shard_transaction(pg_fresh_db: dict[str, Any], statement: str) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as db:
        db.provision()
        with db.transaction(3) as tx, tx.cursor() as cur:
            cur.execute(statement)
            assert cur.fetchone() is not None


def test_a_begin_atomic_function_is_created_inside_a_shard_transaction(pg_fresh_db: dict[str, Any]) -> None:
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as db:
        db.provision()
        with db.transaction(3) as tx, tx.cursor() as cur:
            cur.execute(ATOMIC)
            cur.execute("SELECT hv_one()")
            assert cur.fetchone() == (1,)


def test_a_begin_atomic_function_is_created_through_a_lent_pooled_connection(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any
) -> None:
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=1)
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as direct:
        direct.provision()
    pooled = {**{k: bouncer.settings[k] for k in ("host", "port", "user")}, "dbname": pg_fresh_db["dbname"]}
    with hvcore.Datastore(
        [{**pooled, "shards": "0-8", "pgbouncer": "transaction"}], backend="jsonb", worker=None, pool_max=1
    ) as db:
        conn = db.get_connection(1)
        try:
            conn.execute(ATOMIC)
            conn.commit()
            assert conn.execute("SELECT hv_one()").fetchone() == (1,)
            conn.commit()
        finally:
            db.put_connection(conn)
