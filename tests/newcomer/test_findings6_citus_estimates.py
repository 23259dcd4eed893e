"""Sixth newcomer: ``status(rows="estimated")`` (``hv status --watch`` / ``--estimate``) reads 0 rows through Citus.

After ``hv citus adopt`` the README's next command is ``hv status --config hv-citus.toml``; with ``--watch`` (the
way to keep an eye on a fleet) rows are estimated from ``pg_stat_user_tables`` of the server in the config, the
coordinator. Through a coordinator each shard schema is a distributed schema whose rows live on a worker: the
coordinator's statistics of its shell tables stay at 0, so every server shows 0 rows (estimated) however many it
holds, while the exact count (``count(*)``, routed by Citus) is right.
"""

from __future__ import annotations

import os
import time
from typing import Any

from citus.citus_helpers import add_citus_database

import hvcore

SHARDS = "0-4"
ROWS_PER_SHARD = 10


def test_estimated_rows_through_a_citus_coordinator_are_the_rows_stored(citus_cluster: Any) -> None:
    coordinator = add_citus_database(citus_cluster, f"hv_nc6_est_{os.getpid()}")
    servers = [{**coordinator, "shards": SHARDS}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
        for shard in range(4):
            db.put_many(shard, 1, [{"i": str(i)} for i in range(ROWS_PER_SHARD)])
        assert db.status()[0]["rows"] == 4 * ROWS_PER_SHARD
    # the writing sessions have ended (and with them Citus's sessions on the workers): their statistics are reported
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        deadline = time.monotonic() + 3
        while (estimated := db.status(rows="estimated")[0])["rows"] != 4 * ROWS_PER_SHARD:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert estimated["rows_estimated"]
        assert estimated["rows"] == 4 * ROWS_PER_SHARD
