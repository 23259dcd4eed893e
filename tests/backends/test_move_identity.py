"""A moved shard is followed by processes that name its new server otherwise (the stub names it by identity)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvcore
from hvcore._placement import canonical_identity, match_identity


@pytest.fixture
def two_databases(pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**pg_fresh_db, "shards": "0-4"}, {**pg_fresh_db2, "shards": "4-8"}]


def test_an_async_application_follows_a_move_made_under_other_server_names(two_databases: list[dict[str, Any]]) -> None:
    operator_servers = [{**s, "host": "127.0.0.1"} for s in two_databases]
    app_servers = [{**s, "host": "localhost"} for s in two_databases]
    with hvcore.Datastore(operator_servers, backend="jsonb", worker=None) as operator:
        operator.provision()

        async def before() -> hvcore.Key:
            async with hvcore.AsyncDatastore(app_servers, backend="jsonb", worker=None) as app:
                return await app.put(1, 1, n="before")

        key = asyncio.run(before())
        operator.move_shard(1, 1)

    async def after() -> list[Any]:
        async with hvcore.AsyncDatastore(app_servers, backend="jsonb", worker=None) as app:
            got = await app.get(key)
            new = await app.put(1, 1, n="after")
            return [got, await app.get(new), app.shard_map.server_for(1)]

    got, new, server = asyncio.run(after())
    assert got is not None and got.data == {"n": "before"}
    assert new is not None and server == 1  # followed to the entry that reaches the shard's new database


_SYSTEMS = st.sampled_from(["7310000000000000001", "7310000000000000002"])
_STARTS = st.sampled_from(["2026-11-30T09:00:00.000001+00:00", "2026-11-30T10:00:00.000002+00:00"])
_DBS = st.sampled_from(["app/16384", "app/16390", "other/16384"])


@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.tuples(_SYSTEMS, _STARTS, _DBS)), _SYSTEMS, _STARTS, _DBS)
def test_match_identity_names_one_entry_or_none(
    known_parts: dict[str, tuple[str, str, str]], system: str, start: str, db: str
) -> None:
    known = {label: f"{s}/{t}/{d}" for label, (s, t, d) in known_parts.items()}
    wanted = f"{system}/{start}/{db}"
    found = match_identity(wanted, known)
    exact = [label for label, text in known.items() if text == wanted]
    same_database = [label for label, (s, _, d) in known_parts.items() if (s, d) == (system, db)]
    if len(exact) == 1:
        assert found == exact[0]
    elif len(same_database) == 1:
        assert found == same_database[0]  # the server restarted since the move: its start time changed
    else:
        assert found is None  # unknown, or ambiguous (two entries reach one database): never a guess
    assert match_identity(f"?/{start}/{db}", {label: f"?/x/{db}" for label in known}) is None


@given(
    st.datetimes(
        min_value=datetime.datetime(2000, 1, 1), max_value=datetime.datetime(2100, 1, 1), timezones=st.timezones()
    ),
    _SYSTEMS,
    _DBS,
)
def test_a_stub_written_in_a_session_time_zone_matches_the_utc_identity(
    start: datetime.datetime, system: str, db: str
) -> None:
    """Stubs left by earlier releases name the start time in their session's TimeZone (isoformat, offset)."""
    new = f"{system}/{start.astimezone(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}/{db}"
    old = f"{system}/{start.isoformat()}/{db}"
    assert canonical_identity(old) == new and canonical_identity(new) == new
    assert match_identity(old, {"a": new, "b": f"{system}/2001-01-01T00:00:00.000000Z/other/1"}) == "a"


def test_reload_placement_matches_a_record_naming_the_target_otherwise(two_databases: list[dict[str, Any]]) -> None:
    """hv status and provision reload placement: a record naming the target 127.0.0.1 is this config's localhost."""
    operator_servers = [{**s, "host": "127.0.0.1"} for s in two_databases]
    app_servers = [{**s, "host": "localhost"} for s in two_databases]
    with hvcore.Datastore(operator_servers, backend="jsonb", worker=None) as operator:
        operator.provision()
        key = operator.put(1, 1, n="before")
        operator.move_shard(1, 1)
    with hvcore.Datastore(app_servers, backend="jsonb", worker=None) as app:
        app.reload_placement()
        assert app.shard_map.server_for(1) == 1 and app.placement_version(1) == 1
        app.provision()  # where the shard lives now: nothing recreated on its old server
        assert [s["provisioned_shards"] for s in app.status()] == [3, 5]
        got = app.get(key)
        assert got is not None and got.data == {"n": "before"}

    async def scenario() -> int:
        async with hvcore.AsyncDatastore(app_servers, backend="jsonb", worker=None) as app:
            await app.reload_placement()
            return app.shard_map.server_for(1)

    assert asyncio.run(scenario()) == 1


def test_a_transaction_refused_by_a_moved_shard_sends_the_next_one_to_the_otherwise_named_server(
    two_databases: list[dict[str, Any]],
) -> None:
    operator_servers = [{**s, "host": "127.0.0.1"} for s in two_databases]
    app_servers = [{**s, "host": "localhost"} for s in two_databases]
    with (
        hvcore.Datastore(operator_servers, backend="jsonb", worker=None) as operator,
        hvcore.Datastore(app_servers, backend="jsonb", worker=None) as app,
    ):
        operator.provision()
        app.put(1, 1, n="before")  # the app knows shard 1 on server 0
        operator.move_shard(1, 1)
        with pytest.raises(hvcore.ShardMoved) as refused, app.transaction(1) as tx:
            tx.put(1, n="in a transaction")
        assert refused.value.server == app.servers[1].label, refused.value
        assert app.shard_map.server_for(1) == 1
        with app.transaction(1) as tx:
            key = tx.put(1, n="again")
        assert app.get(key) is not None

    async def scenario() -> tuple[str, int, bool]:
        async with hvcore.AsyncDatastore(app_servers, backend="jsonb", worker=None) as app:
            await app.put(2, 1, n="before")
            with hvcore.Datastore(operator_servers, backend="jsonb", worker=None) as operator:
                await asyncio.to_thread(operator.move_shard, 2, 1)
            try:
                async with app.transaction(2) as tx:
                    await tx.put(1, n="in a transaction")
            except hvcore.ShardMoved as moved:
                server = moved.server
            else:
                raise AssertionError("the transaction was not refused")
            async with app.transaction(2) as tx:
                key = await tx.put(1, n="again")
            return server, app.shard_map.server_for(2), await app.get(key) is not None

    server, index, found = asyncio.run(scenario())
    assert server.startswith("localhost:") and server.endswith(app_servers[1]["dbname"]), server
    assert (index, found) == (1, True)
