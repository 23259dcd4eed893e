"""Eighth newcomer: behind PgBouncer in transaction mode, a lent connection's ``commit()`` runs the session reset
*before* ``COMMIT`` in the same transaction (``<reset>; COMMIT``), so deferred work that runs at ``COMMIT`` (a
``DEFERRABLE INITIALLY DEFERRED`` constraint trigger) no longer sees the transaction's ``search_path``: ``RESET
ALL`` has undone the shard binding (``SET LOCAL search_path``) and the trigger's unqualified names fail, the
commit with them. The same transaction commits on a direct connection; the README says "a
``get_connection(shard)`` connection binds every transaction it opens ... to the shard".

Reproduce: a deferred constraint trigger on ``shard0001.entities`` whose function (no ``SET search_path`` of its
own) inserts into an unqualified ``audit`` table living in ``shard0001``; through a transaction-mode PgBouncer,
``conn = db.get_connection(1)``, ``conn.execute("INSERT INTO entities ...")`` (unqualified, bound to the shard),
``conn.commit()``: ``relation "audit" does not exist`` at COMMIT; directly (pgbouncer off) the same code commits.
``with db.cursor(1) as cur:`` fails the same way at its end (checked by hand: ``UndefinedTable`` from the
block's exit; directly it commits). By reading (not tested): ``db.transaction()`` after user SQL uses the same
order, and the early ``RESET ALL`` also undoes a ``SET LOCAL synchronous_commit = on`` (or ``remote_apply``) made
for a write that must be durable when ``commit()`` returns, on a database whose default is ``off``.
Expected: the commit runs deferred triggers with the transaction's own settings (the reset after them), as on a
direct connection.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import hvcore

TRIGGER = """
CREATE TABLE shard0001.audit (id bigint);
CREATE FUNCTION shard0001.hv_audit() RETURNS trigger LANGUAGE plpgsql AS
  $f$BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NULL; END$f$;
CREATE CONSTRAINT TRIGGER hv_audit AFTER INSERT ON shard0001.entities
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION shard0001.hv_audit();
"""


INSERT = "INSERT INTO entities (id, kind, body) VALUES (%s, 1, '{}')"


def _run(entry: dict[str, Any], added_id: int, way: str) -> str:
    """The insert and its commit through ``way``: a lent connection's ``commit()``, a ``cursor()`` block's end, or
    ``db.transaction()``'s end after ``tx.cursor()`` SQL (each resets the session behind a transaction pooler)."""
    key = int(hvcore.Key.from_parts(timestamp_ms=1_800_000_000_000, shard_id=1, added_id=added_id))
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=1) as db:
        try:
            if way == "lent":
                conn = db.get_connection(1)
                try:
                    conn.execute(INSERT, (key,))
                    conn.commit()
                finally:
                    db.put_connection(conn)
            elif way == "cursor":
                with db.cursor(1) as cur:
                    cur.execute(INSERT, (key,))
            else:
                with db.transaction(1) as tx, tx.cursor() as cur:
                    cur.execute(INSERT, (key,))
        except (psycopg.Error, hvcore.HypervaultError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return "committed"


@pytest.mark.parametrize("way", ["lent", "cursor", "transaction"])
def test_a_deferred_trigger_commits_through_a_transaction_pooler_as_directly(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any, way: str
) -> None:
    direct = {**pg_fresh_db, "shards": "0-8"}
    with hvcore.Datastore([direct], backend="jsonb", worker=None) as db:
        db.provision()
    settings = {k: pg_fresh_db[k] for k in ("host", "port", "user", "dbname")}
    with psycopg.connect(**settings, autocommit=True) as setup:
        setup.execute(TRIGGER)
    assert _run({**direct, "pgbouncer": "off"}, 7, way) == "committed"
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=1)
    pooled = {**{k: bouncer.settings[k] for k in ("host", "port", "user")}, "dbname": pg_fresh_db["dbname"]}
    outcome = _run({**pooled, "shards": "0-8", "pgbouncer": "transaction"}, 8, way)
    assert outcome == "committed", outcome
