"""Seventh newcomer: behind PgBouncer in transaction mode, a ``SET`` committed through ``get_connection()`` stays
in a server session of the pooler, for later puts and for every other client of that pooler.

The README: "Connections come back clean, whatever the pooling ... So ``SET default_transaction_read_only = on``
... no longer changes later puts and gets". For ``cursor()`` behind a transaction pooler this holds: the reset is
the block transaction's last statement. A ``get_connection(shard)`` connection is documented to behave as on a
direct connection across ``commit()``; but a ``SET`` made in one of its transactions is a session setting, and once
``commit()`` hands the server session back to PgBouncer nothing undoes it there (``put_connection`` only rolls
back; a reset sent later reaches whichever server session comes next). PgBouncer runs no ``server_reset_query`` in
transaction mode. So the setting is inherited by whichever client's transaction gets that server session next:
another application's plain psycopg connection sees ``default_transaction_read_only = on``, and the datastore's own
``put`` later fails with a misleading ``ReadOnlyServer`` ("Point the entry at the primary, or ALTER DATABASE/ROLE
... SET default_transaction_read_only = off"), although the server is a primary and nobody altered anything.

Reproduce: a transaction-mode PgBouncer with 2 server sessions in front of a fresh database; ``conn =
db.get_connection(3)``, ``conn.execute("SET default_transaction_read_only = on")``, ``conn.commit()``; another
client of the pooler opens a transaction (it gets that server session: ``SHOW default_transaction_read_only`` is
``on``), ``db.put_connection(conn)``, the other client commits; then ``db.put`` six times: one fails.
Expected: what a lent connection's transaction set is undone before its ``COMMIT`` reaches the pooler (as
``cursor()`` does), so no other transaction ever sees it.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import hvcore


def test_a_set_committed_through_a_lent_connection_reaches_no_other_transaction(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any
) -> None:
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=2)
    pooled = {**bouncer.settings, "dbname": pg_fresh_db["dbname"]}
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as direct:
        direct.provision()
    entry = {**pooled, "shards": "0-8", "pgbouncer": "transaction"}
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=2) as db:
        db.put(3, 1, n=0)
        lent = db.get_connection(3)
        lent.execute("SET default_transaction_read_only = on")
        lent.commit()  # documented to behave as on a direct connection
        other = psycopg.connect(**{k: pooled[k] for k in ("host", "port", "user", "dbname")})
        try:
            seen = other.execute("SHOW default_transaction_read_only").fetchone()  # another application's transaction
            db.put_connection(lent)
            other.commit()
        finally:
            other.close()
        failures = []
        for n in range(6):
            try:
                db.put(3, 1, n=n)
            except hvcore.HypervaultError as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
    assert (seen, failures) == (("off",), []), f"another client saw {seen}; puts failed: {failures}"


def test_an_advisory_lock_taken_through_a_lent_connection_is_released(
    pg_fresh_db: dict[str, Any], pgbouncer_factory: Any
) -> None:
    """The same gap for what the README lists as reset (``pg_advisory_unlock_all()``): a session lock taken in a
    lent connection's transaction stays held by the pooler's server session after ``commit()`` and
    ``put_connection()`` whenever another client's transaction is on that session as the connection is given back
    (the reset then reaches another server session): held for good, as PgBouncer keeps the session open, blocking
    every other session that wants it.

    Fixed (pooler2): a session advisory lock asked for by name is refused before it is sent (`ConnectionMisuse`,
    naming ``pg_advisory_xact_lock``), as hypervault refuses its own operator work holding one there; one taken by a
    server function (not seen) is released by the reset the ``COMMIT`` carries."""
    bouncer = pgbouncer_factory(pg_fresh_db, pool_mode="transaction", default_pool_size=2)
    pooled = {**bouncer.settings, "dbname": pg_fresh_db["dbname"]}
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as direct:
        direct.provision()
    direct_settings = {k: pg_fresh_db[k] for k in ("host", "port", "user", "dbname")}
    with psycopg.connect(**direct_settings, autocommit=True) as setup:
        setup.execute(
            "CREATE FUNCTION public.hv_take_lock() RETURNS void LANGUAGE plpgsql AS "
            "$$BEGIN PERFORM pg_catalog.pg_advisory_lock(4242); END$$"
        )
    entry = {**pooled, "shards": "0-8", "pgbouncer": "transaction"}
    with hvcore.Datastore([entry], backend="jsonb", worker=None, pool_max=2) as db:
        lent = db.get_connection(3)
        with pytest.raises(hvcore.ConnectionMisuse, match=r"session advisory lock .* pg_advisory_xact_lock"):
            lent.execute("SELECT pg_advisory_lock(4242)")
        lent.execute("SELECT public.hv_take_lock()")  # the same lock, taken where the text does not show it
        lent.commit()
        other = psycopg.connect(**{k: pooled[k] for k in ("host", "port", "user", "dbname")})
        try:
            other.execute("SELECT 1")  # another client's transaction is on that server session meanwhile
            db.put_connection(lent)
            other.commit()
        finally:
            other.close()
        db.put(3, 1, n=1)  # the store goes on using the pooler
    with psycopg.connect(**direct_settings) as check:
        held = check.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    assert held == (0,), "the advisory lock is still held by a server session of the pooler"
