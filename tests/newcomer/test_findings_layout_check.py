"""A newcomer's findings on the stored-layout check a store runs before its first statement on shards."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

import hvcore

DAY_MS = 86_400_000


def test_an_id_from_a_clock_two_days_ahead_does_not_close_the_datastore(pg_fresh_db: dict[str, Any]) -> None:
    """Another host's Datastore, its clock two days ahead, wrote one row (the raw INSERT below is that row). The
    ids are of the right layout. New processes with correct clocks must still be able to read and write."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        db.put(3, 1, n="today")
    ahead = hvcore.Key.from_parts(timestamp_ms=time.time_ns() // 1_000_000 + 2 * DAY_MS, shard_id=3, added_id=0)
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute("INSERT INTO shard0003.entities (id, kind, body) VALUES (%s, 1, '{}')", (int(ahead),))
        conn.execute("ANALYZE shard0003.entities")
    with hvcore.Datastore(servers, backend="jsonb") as db:
        try:
            record = db.get(ahead)
            key = db.put(3, 1, n="later")
        except hvcore.ConfigError as exc:
            pytest.fail(f"the store refuses to work: {exc}")
        assert record is not None and db.get(key) is not None


def test_an_id_of_the_other_preset_layout_is_still_refused(pg_fresh_db: dict[str, Any]) -> None:
    """The check the skew bound must not weaken: ids made with the 2015 epoch, opened with the 2024 one."""
    servers = [{**pg_fresh_db, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", layout="hypervault") as db:
        db.provision()
        db.put(3, 1, n="2015 epoch")
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute("ANALYZE shard0003.entities")
    with (
        hvcore.Datastore(servers, backend="jsonb", layout="default") as db,
        pytest.raises(hvcore.ConfigError, match=r"more than a year in the future.*layout='hypervault'"),
    ):
        db.put(3, 1, n="refused")
