"""Embedded PostgreSQL (pgserver) for `hv demo`: two servers, jsonb, cleaned up afterwards."""

from __future__ import annotations

import os

import pytest
from fixtures.services import require_module

import hvcore
from hvbackend_postgres._embedded import EMBEDDED_BACKEND, embedded_servers

pytestmark = pytest.mark.slow


def test_embedded_servers_run_a_datastore_and_vanish() -> None:
    require_module("pgserver")
    with embedded_servers(2) as servers:
        assert len(servers) == 2 and servers[0]["host"] != servers[1]["host"]
        connections = [dict(shards="0-12", **servers[0]), dict(shards="12-24", **servers[1])]
        with hvcore.Datastore(connections, backend=EMBEDDED_BACKEND) as db:
            db.provision()
            keys = db.put_many(13, 1, [{"i": i, "tags": ["x"]} for i in range(200)])
            record = db.get(keys[7])
            assert record is not None and record.data == {"i": 7, "tags": ["x"]}
            rows = {entry["server"]: entry["rows"] for entry in db.status()}
            assert sorted(rows.values()) == [0, 200]
        hosts = [s["host"] for s in servers]
    assert not any(os.path.exists(h) for h in hosts)
