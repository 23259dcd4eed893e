"""An error about one shard names that shard (id, schema) and its server, also when one statement covered many
shards (a query, get_many, a filter write): the shard actually missing or refused, not the first one asked."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import hvcore

_roles = itertools.count()
SHARDS = 40  # more than one statement's 16 shards: the missing one sits in a later piece
MISSING = 35


def _label(settings: dict[str, Any]) -> str:
    return f"{settings['host']}:{settings['port']}/{settings['dbname']}"


def _names_only(text: str, shard: int) -> None:
    assert f"shard {shard} " in text and f"shard{shard:04d}" in text, text
    for other in (0, 1, 16):
        assert f"shard {other} " not in text, text


@pytest.fixture
def one_missing(pg_fresh_db: dict[str, Any]) -> Iterator[tuple[hvcore.Datastore, list[hvcore.Key]]]:
    servers = [{**pg_fresh_db, "shards": f"0-{SHARDS}"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        db.provision()
        keys = [db.put(shard, 1, a=shard) for shard in (0, 1, 16, MISSING)]
        with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA shard{MISSING:04d} CASCADE")
        yield db, keys


def test_query_over_many_shards_names_the_missing_one(
    one_missing: tuple[hvcore.Datastore, list[hvcore.Key]], pg_fresh_db: dict[str, Any]
) -> None:
    db, _ = one_missing
    for shards in (None, [0, 1, MISSING], [MISSING, 0]):
        with pytest.raises(hvcore.NotProvisioned) as caught:
            list(db.query(kind=1, shards=shards))
        _names_only(str(caught.value), MISSING)
        assert _label(pg_fresh_db) in str(caught.value)


def test_get_many_and_filter_writes_name_the_missing_shard(
    one_missing: tuple[hvcore.Datastore, list[hvcore.Key]],
) -> None:
    db, keys = one_missing
    for call in (
        lambda: db.get_many(keys),
        lambda: db.update_where(set={"b": 1}, kind=1),
        lambda: db.delete_where(kind=2),
    ):
        with pytest.raises(hvcore.NotProvisioned) as caught:
            call()
        _names_only(str(caught.value), MISSING)


@pytest.fixture
def app_role(pg_fresh_db: dict[str, Any]) -> Iterator[str]:
    """A role granted what an application needs on every shard of 0-8 except shard 5's table."""
    name = f"hv_shardperm_{os.getpid()}_{next(_roles)}"
    with hvcore.Datastore([{**pg_fresh_db, "shards": "0-8"}], backend="jsonb", worker=None) as owner:
        owner.provision()
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
        for shard in range(8):
            conn.execute(f"GRANT USAGE ON SCHEMA shard{shard:04d} TO {name}")
            if shard != 5:
                conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shard{shard:04d} TO {name}")
    yield name
    with psycopg.connect(**pg_fresh_db, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def test_permission_denied_names_the_shard_schema_and_server(pg_fresh_db: dict[str, Any], app_role: str) -> None:
    servers = [{**pg_fresh_db, "user": app_role, "shards": "0-8"}]
    with hvcore.Datastore(servers, backend="jsonb", worker=None) as db:
        key = db.put(1, 1, a=1)
        for call in (
            lambda: db.put(5, 1, a=1),
            lambda: db.get(db.layout.key_type.from_parts(shard_id=5, added_id=0, created=key.created)),
            lambda: list(db.query(kind=1)),
            lambda: db.get_many([key, db.layout.key_type.from_parts(shard_id=5, added_id=0, created=key.created)]),
            lambda: db.delete_where(kind=1),
        ):
            with pytest.raises(hvcore.PermissionDenied) as caught:
                call()
            text = str(caught.value)
            _names_only(text, 5)
            assert _label(pg_fresh_db) in text and app_role in text, text
            assert "GRANT" in text and "shard0005" in text.split("GRANT", 1)[1], text
