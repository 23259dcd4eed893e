"""Generated input on real PostgreSQL: stored and read back exactly, or rejected with a typed error before any SQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.faults import FaultServers
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hvcore

pytestmark = pytest.mark.postgres

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHARDS = 4


@pytest.fixture(scope="module")
def stores(fault_pg: FaultServers) -> Iterator[dict[str, hvcore.Datastore]]:
    """An hstore and a jsonb datastore (shards 0-4) on a fault server, provisioned once for the module."""
    made = {}
    for backend in ("hstore", "jsonb"):
        db = hvcore.Datastore([dict(shards=f"0-{SHARDS}", **fault_pg.fresh_db(0))], backend=backend)
        db.provision()
        made[backend] = db
    yield made
    for db in made.values():
        db.close()


def same(stored: Any, read: Any) -> bool:
    """Exactly the same JSON value: types kept (True is not 1), numbers equal (jsonb may write 1e20 as 100000…)."""
    if isinstance(stored, bool) or isinstance(read, bool) or stored is None or read is None:
        return type(stored) is type(read) and stored == read
    if isinstance(stored, int | float) and isinstance(read, int | float):
        return stored == read
    if isinstance(stored, str):
        return type(read) is str and stored == read
    if isinstance(stored, list):
        return type(read) is list and len(stored) == len(read) and all(map(same, stored, read))
    if isinstance(stored, dict):
        return type(read) is dict and stored.keys() == read.keys() and all(same(v, read[k]) for k, v in stored.items())
    return False


text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # NUL and lone surrogates included
names = text | st.sampled_from(["", " ", "a' OR '1'='1", '"; DROP TABLE x; --', "\x00", "\ud800", "é" * 300])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | text
    | st.binary(max_size=8)  # bytes: not text, not JSON
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4)
)


def store_or_reject(db: hvcore.Datastore, body: dict[Any, Any]) -> None:
    try:
        key = db.put(1, 1, **body)
    except hvcore.InvalidData:
        event("rejected: InvalidData")
        return
    event("stored and read back")
    record = db.get(key)
    assert record is not None
    assert same(body, record.data), (body, record.data)


@SETTINGS
@given(body=st.dictionaries(names, st.none() | text | st.integers() | st.binary(max_size=4), max_size=6))
def test_hstore_bodies_round_trip_or_invalid_data(stores: dict[str, hvcore.Datastore], body: dict[str, Any]) -> None:
    store_or_reject(stores["hstore"], body)


@SETTINGS
@given(body=st.dictionaries(names, json_values, max_size=6))
def test_jsonb_bodies_round_trip_or_invalid_data(stores: dict[str, hvcore.Datastore], body: dict[str, Any]) -> None:
    store_or_reject(stores["jsonb"], body)


@pytest.mark.parametrize("value", [3.333473927924339e16, 1e300, -2.5e20, 1.7976931348623157e308, 1e16, 5e-324])
def test_jsonb_floats_of_1e16_and_more_round_trip(stores: dict[str, hvcore.Datastore], value: float) -> None:
    db = stores["jsonb"]
    key = db.put(1, 1, f=value, nested={"f": [value]})
    record = db.get(key)
    assert record is not None and record.data == {"f": value, "nested": {"f": [value]}}
    assert type(record.data["f"]) is float and type(record.data["nested"]["f"][0]) is float
    assert key in [r.key for r in db.query(where={"f": value})]  # queries by that float find it


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
def test_huge_strings_round_trip(stores: dict[str, hvcore.Datastore], backend: str) -> None:
    db = stores[backend]
    body = {"big": "x" * 8_000_000, "wide": "€😀" * 500_000, "k" * 100_000: "long field name"}
    record = db.get(db.put(1, 1, **body))
    assert record is not None and record.data == body


@pytest.mark.parametrize("backend", ["hstore", "jsonb"])
@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("nul-in-value", {"a": "x\x00y"}),
        ("nul-in-name", {"a\x00": "x"}),
        ("lone-surrogate", {"a": "\udc80"}),
        ("surrogate-in-name", {"\ud800": "x"}),
        ("bytes-not-utf8", {"a": b"\xff\xfe"}),
    ],
)
def test_text_postgres_cannot_hold_is_invalid_data(
    stores: dict[str, hvcore.Datastore], backend: str, name: str, body: dict[str, Any]
) -> None:
    with pytest.raises(hvcore.InvalidData):
        stores[backend].put(1, 1, **body)


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


def test_deep_json_round_trips_or_is_invalid_data(stores: dict[str, hvcore.Datastore]) -> None:
    db = stores["jsonb"]
    record = db.get(db.put(1, 1, deep=nested(150)))
    assert record is not None and record.data == {"deep": nested(150)}
    for depth in (250, 5000):  # past the documented 200 levels, and deeper than Python's recursion limit
        with pytest.raises(hvcore.InvalidData, match="deeper"):
            db.put(1, 1, deep=nested(depth))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(hvcore.InvalidData):
            db.put(1, 1, x=[1, {"y": bad}])


@SETTINGS
@given(kind=st.integers(-(2**70), 2**70) | st.booleans() | st.floats() | st.text(max_size=5) | st.none())
def test_kinds_are_stored_exactly_or_invalid_kind(stores: dict[str, hvcore.Datastore], kind: Any) -> None:
    db = stores["jsonb"]
    try:
        key = db.put(2, kind, a=1)
    except hvcore.InvalidKind:
        assert not (type(kind) is int and 0 <= kind <= 32767)
        return
    record = db.get(key)
    assert record is not None and record.kind == kind and type(kind) is int


@SETTINGS
@given(
    key=st.integers(-(2**70), 2**70)
    | st.integers(0, 2**63 - 1)
    | st.text(max_size=20)
    | st.floats()
    | st.booleans()
    | st.binary(max_size=8)
)
def test_keys_are_found_missing_or_typed_errors(stores: dict[str, hvcore.Datastore], key: Any) -> None:
    db = stores["jsonb"]
    for call in (db.get, db.delete, lambda k: db.get_many([k])):
        try:
            result = call(key)
        except (hvcore.InvalidKey, hvcore.InvalidShard, hvcore.ShardNotFound):
            continue
        assert result in (None, False, {}), result  # nothing stored under a random key


# -- shard configs ---------------------------------------------------------------------------------------------

CONFIG_SHARDS = 24


@pytest.fixture(scope="module")
def routing_servers(fault_pg: FaultServers) -> list[dict[str, Any]]:
    """Two databases on two servers, each provisioned with every shard 0..23: a row shows where it was routed."""
    servers = [fault_pg.fresh_db(0), fault_pg.fresh_db(1)]
    for settings_ in servers:
        with hvcore.Datastore([dict(shards=f"0-{CONFIG_SHARDS}", **settings_)], backend="jsonb") as db:
            db.provision()
    return servers


bounds = st.integers(-3, CONFIG_SHARDS + 2)
specs = (
    st.builds(lambda a, b: f"{a}-{b}", bounds, bounds)
    | st.builds(lambda a, b: f" {a} - {b} ", bounds, bounds)
    | st.sampled_from(["", "-", "1-", "a-b", "1-2-3", "0x1-0x4", "1.5-3", "3", "1,2", "١-٣", "0-8192", "5-5"])
    | bounds
    | st.none()
)


@SETTINGS
@given(config=st.lists(st.tuples(specs, st.integers(0, 1)), min_size=1, max_size=4), allow_gaps=st.booleans())
def test_generated_shard_configs_route_exactly_or_raise_config_errors(
    fault_pg: FaultServers, routing_servers: list[dict[str, Any]], config: list[tuple[Any, int]], allow_gaps: bool
) -> None:
    connections = [dict(shards=spec, **routing_servers[server]) for spec, server in config]
    try:
        db = hvcore.Datastore(connections, backend="jsonb", allow_gaps=allow_gaps)
    except hvcore.ConfigError:  # ShardMapError included
        event("rejected: ConfigError")
        return
    event("valid: routing checked")
    try:
        for index, (_, server) in enumerate(config):
            owned = db.shard_map.shards_of(index)
            assert all(db.shard_map.server_for(s) == index for s in owned)
            mapped = [s for s in owned if s < CONFIG_SHARDS]
            if not mapped:
                continue
            shard = mapped[len(mapped) // 2]
            key = db.put(shard, 1, routed=index)
            rows = fault_pg.sql(
                server,
                f"SELECT id FROM shard{shard:04d}.entities WHERE id = %s",
                (int(key),),
                dbname=routing_servers[server]["dbname"],
            )
            assert rows == [(int(key),)], f"shard {shard} of server #{index} was not written to that server"
        every = [s for i in range(len(config)) for s in db.shard_map.shards_of(i)]
        assert len(every) == len(set(every)), "a shard mapped to two servers"
    finally:
        db.close()
