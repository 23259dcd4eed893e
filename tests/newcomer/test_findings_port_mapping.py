"""A newcomer's findings: PostgreSQL behind a plain port mapping (docker run -p 15432:5432), pgbouncer='auto'."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.relay import Forward

import hvcore


@pytest.fixture
def mapped(pg_fresh_db: dict[str, Any]) -> Iterator[dict[str, Any]]:
    relay = Forward(pg_fresh_db["host"], pg_fresh_db["port"])
    try:
        yield {**pg_fresh_db, "port": relay.port}
    finally:
        relay.close()


def test_provision_behind_a_port_mapping_says_how_to_fix_it(mapped: dict[str, Any]) -> None:
    """The first thing a newcomer with PostgreSQL in Docker does is `hv init`."""
    with hvcore.Datastore([{**mapped, "shards": "0-4"}], backend="jsonb") as db:
        try:
            db.provision()
        except hvcore.ConfigError as exc:
            assert "pgbouncer='off'" in str(exc) or 'pgbouncer="off"' in str(exc), str(exc)
