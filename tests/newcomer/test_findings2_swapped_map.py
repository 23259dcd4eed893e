"""A second newcomer's findings: a config that maps shards to the wrong server of the same fleet.

Server lines swapped while editing the config (after `hv shard move` printed new `shards = "..."` lines, or a config
copied between environments): `hv status` shows the servers with 0 provisioned shards and 0 rows, and `hv init`
creates empty shards on the wrong servers, after which the application sees none of its rows and writes new ones
beside them: the data is split over two servers without an error.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import hvcore


@pytest.fixture
def two_databases(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return pg_fresh_db, pg_fresh_db2


def test_provisioning_a_swapped_map_is_refused(two_databases: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = two_databases
    right = [{**first, "shards": "0-4"}, {**second, "shards": "4-8"}]
    swapped = [{**first, "shards": "4-8"}, {**second, "shards": "0-4"}]
    with hvcore.Datastore(right, backend="jsonb", worker=None) as db:
        db.provision()
        for shard in range(8):
            db.put_many(shard, 1, [{"shard": shard}] * 5)
    with hvcore.Datastore(swapped, backend="jsonb", worker=None) as db:
        with pytest.raises(hvcore.HypervaultError):
            db.provision()
        with pytest.raises(hvcore.NotProvisioned):  # no new empty shard took the place of the real ones
            list(db.query(kind=1))
    with psycopg.connect(**first) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'shard%'").fetchone()
    assert row == (4,), f"shard schemas on the first server: {row}"
