"""Generated calls to every public method of Datastore and AsyncDatastore, on memory and on PostgreSQL.

The whole kind of "passes a check, fails later": hypothesis draws a method and its arguments (bodies nesting every
builtin and common stdlib type, huge and tiny numbers, odd strings, and wrong types for every parameter) and runs
the call on four stores: the PostgreSQL backend and the memory backend standing in for it (``values="text"`` for
hstore), each through `Datastore` and `AsyncDatastore`. Allowed outcomes: the same result on all four (and, for a
write, bodies read back exactly as JSON or text keeps them), or the same typed `hvcore` error on all four with no
row written. Anything else (a raw ``TypeError``, a psycopg error, memory and PostgreSQL disagreeing) fails.
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import fractions
import itertools
import os
import pathlib
import time
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest
from fixtures.datastores import SyncFacade
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import hvcore
from hvbackend_memory import _SERVERS
from hvbackend_postgres._schema import truncate_query

pytestmark = pytest.mark.postgres

SETTINGS = settings(
    max_examples=int(os.environ.get("HV_GENERATED_EXAMPLES", "120")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHARDS = ("0-8", "8-16")
MEMORY_VALUES = {"jsonb": "jsonb", "hstore": "text"}
_names = itertools.count()


# -- the four stores ------------------------------------------------------------------------------------------------


class Stores:
    """One PostgreSQL backend's four stores: (memory | postgres) x (sync | async), emptied before each example."""

    def __init__(self, backend: str, pg_servers: dict[str, list[dict[str, Any]]]) -> None:
        self.backend = backend
        self.memory_names: dict[str, list[str]] = {}
        self.stores: dict[str, Any] = {}
        for api in ("sync", "async"):
            names = [f"gen-{backend}-{api}-{next(_names)}-{i}" for i in range(2)]
            self.memory_names[f"memory-{api}"] = names
            memory = [dict(shards=spec, name=name) for spec, name in zip(SHARDS, names, strict=True)]
            self.stores[f"memory-{api}"] = self._make(api, memory, "memory", values=MEMORY_VALUES[backend])
            self.stores[f"postgres-{api}"] = self._make(api, pg_servers[api], backend)

    @staticmethod
    def _make(api: str, servers: list[dict[str, Any]], backend: str, **options: Any) -> Any:
        if api == "sync":
            return hvcore.Datastore(servers, backend=backend, **options)
        return SyncFacade(hvcore.AsyncDatastore(servers, backend=backend, **options))

    def empty(self) -> None:
        for name, store in self.stores.items():
            if name.startswith("memory"):
                for server in self.memory_names[name]:
                    for table in _SERVERS.get(server, {}).values():
                        table.clear()
            else:
                for first, spec in zip((0, 8), SHARDS, strict=True):
                    low, high = (int(x) for x in spec.split("-"))
                    with store.cursor(first) as cur:
                        done = cur.execute(truncate_query(range(low, high)))
                        if isinstance(store, SyncFacade):
                            store.run(done)  # an asyncio cursor's execute() is a coroutine

    def close(self) -> None:
        for store in self.stores.values():
            getattr(store, "shutdown", store.close)()


@pytest.fixture(scope="module")
def four_stores(pg_cluster: Any) -> Iterator[dict[str, Stores]]:
    """For hstore and jsonb: fresh databases (one per API) on two servers, provisioned, and the memory stand-ins."""
    made: dict[str, Stores] = {}
    for backend in ("jsonb", "hstore"):
        pg_servers: dict[str, list[dict[str, Any]]] = {}
        for api in ("sync", "async"):
            dbname = f"hvgen_{backend}_{api}_{os.getpid()}"
            servers = []
            for index, spec in enumerate(SHARDS):
                server = cluster_settings = pg_cluster.settings(index)
                with psycopg.connect(**cluster_settings, autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
                    conn.execute(f"CREATE DATABASE {dbname}")
                servers.append({**server, "dbname": dbname, "shards": spec})
            with hvcore.Datastore(servers, backend=backend) as db:
                db.provision()
            pg_servers[api] = servers
        made[backend] = Stores(backend, pg_servers)
    yield made
    for stores in made.values():
        stores.close()


# -- generated values ------------------------------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class Mode(enum.StrEnum):
    FAST = "fast"


class Text(str):
    """A str subclass."""


class HugeInt(int):
    """An int of more digits than Python converts to text by default (4300), with a repr that does not raise.

    (hypothesis prints the arguments of a failing example; a plain int this long cannot be printed.)
    """

    def __repr__(self) -> str:
        return f"HugeInt(<{'-' if self < 0 else ''}{4301} digits>)"


HUGE = HugeInt(10**4300 + 1)
NEG_HUGE = HugeInt(-(10**4300) - 1)

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)  # NUL and lone surrogates included
odd_text = text | st.sampled_from(["", " ", "\x00", "\ud800", "é" * 40, "a' OR '1'='1", "ä\u0301", "\U0001f600"])
numbers = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 2**53 + 1, 2**63, -(2**63) - 1, 10**4299, HUGE, NEG_HUGE])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-0.0, 5e-324, 1e-320, 1e16, 3.3e16, 1.7976931348623157e308, 1e-7])
)
stdlib = st.sampled_from(
    [
        b"bytes",
        bytearray(b"ba"),
        1 + 2j,
        decimal.Decimal("1.5"),
        fractions.Fraction(1, 3),
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        dt.date(2020, 1, 1),
        dt.timedelta(seconds=1),
        uuid.UUID(int=1),
        Colour.RED,
        Level.HIGH,
        Mode.FAST,
        Text("sub"),
        pathlib.PurePosixPath("/tmp"),
        range(3),
        frozenset({1}),
        {1, 2},
        object(),
        collections.deque([1]),
        collections.UserList([1]),
        collections.UserString("us"),
        Ellipsis,
        NotImplemented,
        type,
    ]
)
scalars = st.none() | st.booleans() | numbers | odd_text | stdlib


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = odd_text | st.integers(-3, 3) | st.sampled_from([None, 1.5, (1, 2), b"k"])
    string_dicts = st.dictionaries(odd_text, inner, max_size=3)
    return (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | string_dicts
        | st.dictionaries(keys, inner, max_size=2)
        | string_dicts.map(collections.UserDict)
        | string_dicts.map(types.MappingProxyType)
        | string_dicts.map(collections.OrderedDict)
        | string_dicts.map(lambda d: collections.ChainMap(d))
        | st.lists(inner, max_size=3).map(collections.deque)
    )


values = st.recursive(scalars, _containers, max_leaves=6)
json_values = st.recursive(  # mostly storable: the round trips are checked as often as the refusals
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)
text_values = st.none() | odd_text | st.sampled_from([Text("sub"), Mode.FAST])  # what hstore may take
bodies = st.dictionaries(odd_text, values | text_values, max_size=4)
good_bodies = st.dictionaries(odd_text, json_values | text_values, max_size=4)
shard_args = st.integers(0, 15) | st.sampled_from([-1, 16, 8191, 8192, HUGE, True, 1.0, "1", None, [1], b"1"])
kind_args = st.integers(0, 3) | st.sampled_from([-1, 32767, 32768, HUGE, True, 2.0, "1", None])
keys_of_both_layouts = st.builds(lambda v: hvcore.KeyLayout.HYPERVAULT.key(v), st.integers(0, 2**63 - 1))
key_args = (
    st.just("SEED")
    | st.integers(0, 2**63 - 1)
    | st.builds(hvcore.Key, st.integers(0, 2**63 - 1))
    | keys_of_both_layouts
    | st.sampled_from([-1, 2**63, HUGE, True, 1.5, "12", b"12", None, [1]])
)
time_args = (
    st.none()
    | st.just("SEED")
    | st.sampled_from(
        [
            dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
            dt.datetime(2200, 1, 1, tzinfo=dt.UTC),
            dt.datetime(2000, 1, 1),
            dt.datetime.max.replace(tzinfo=dt.UTC),
            dt.datetime.min.replace(tzinfo=dt.UTC),
            dt.date(2020, 1, 1),
            12,
            "2020-01-01",
            1.5,
        ]
    )
)
shards_args = st.none() | st.lists(shard_args, max_size=3) | shard_args | st.sampled_from([range(16), {1, 9}, "1"])
limit_args = st.none() | st.integers(0, 3) | st.sampled_from([-1, 2**63 - 1, 2**63, HUGE, True, 1.0, "1"])
rows_args = (
    st.lists(bodies, max_size=3)
    | st.lists(bodies, max_size=2).map(tuple)
    | st.lists(st.one_of(bodies, scalars), max_size=2)
    | bodies
    | scalars
)
where_args = st.none() | st.dictionaries(odd_text, values | text_values, max_size=2) | scalars


def _call(method: str, *args: Any, **kwargs: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return method, args, kwargs


calls = st.one_of(
    st.builds(lambda s, k, b: _call("put", s, k, **b), st.integers(0, 15), st.integers(0, 3), good_bodies),
    st.builds(
        lambda s, k, r: _call("put_many", s, k, r),
        st.integers(0, 15),
        st.integers(0, 3),
        st.lists(good_bodies, max_size=3),
    ),
    st.builds(lambda b: _call("update", "SEED", **b), good_bodies),
    st.builds(lambda b: _call("replace", "SEED", **b), good_bodies),
    st.builds(
        lambda kind, where, since, shards, limit: _call(
            "query", kind=kind, where=where, since=since, shards=shards, limit=limit
        ),
        st.none() | st.integers(0, 3),
        st.none()
        | st.dictionaries(
            st.sampled_from(["seed", "other"]), st.sampled_from(["x", "y", None, 1, True]) | json_values, max_size=2
        ),
        st.sampled_from([None, "SEED", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)]),
        st.none() | st.lists(st.integers(0, 15), max_size=3),
        st.none() | st.integers(0, 3),
    ),
    st.builds(
        lambda s, k, b: _call("put", s, k, **{n: v for n, v in b.items() if isinstance(n, str)}),
        shard_args,
        kind_args,
        bodies,
    ),
    st.builds(lambda s, k, r: _call("put_many", s, k, r), shard_args, kind_args, rows_args),
    st.builds(lambda k: _call("get", k), key_args),
    st.builds(lambda ks: _call("get_many", ks), st.lists(key_args, max_size=3) | key_args),
    st.builds(lambda k, b: _call("update", k, **b), key_args, bodies),
    st.builds(lambda k, b: _call("replace", k, **b), key_args, bodies),
    st.builds(lambda k: _call("delete", k), key_args),
    st.builds(
        lambda kind, where, since, until, shards, limit: _call(
            "query", kind=kind, where=where, since=since, until=until, shards=shards, limit=limit
        ),
        st.none() | kind_args,
        where_args,
        time_args,
        time_args,
        shards_args,
        limit_args,
    ),
    st.builds(lambda k: _call("as_key", k), key_args),
    st.builds(lambda s: _call("store_for", s), shard_args),
    st.builds(lambda s: _call("get_connection", s), shard_args),
    st.builds(lambda s: _call("cursor", s), shard_args),
    st.builds(lambda s: _call("placement_version", s), shard_args),
    st.builds(lambda p: _call("provision", progress=p), st.sampled_from([None, lambda done: None, 5, "x"])),
    st.just(_call("status")),
    st.builds(lambda c: _call("put_connection", c), st.sampled_from([None, 5, object(), "conn"])),
    st.builds(lambda path: _call("from_config", path), st.sampled_from([5, None, "/", "\x00", "/nonexistent.toml"])),
)


# -- running a call and comparing outcomes --------------------------------------------------------------------------


def json_kept(value: Any) -> Any:
    """``value`` as JSON (or hstore text) keeps it: tuples become lists, mappings dicts, subclasses their base."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list | tuple):
        return [json_kept(v) for v in value]
    if isinstance(value, Mapping):
        return {str.__str__(k): json_kept(v) for k, v in value.items()}
    raise AssertionError(f"accepted a value JSON cannot hold: {value!r}")


def same(a: Any, b: Any) -> bool:
    """Equal with the same JSON types all the way down (True is not 1, 1 is not 1.0, "1" is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    return bool(a == b)


def contents(store: Any) -> list[tuple[int, int, Any]]:
    return [(r.key.shard_id, r.kind, r.data) for r in store.query()]


def resolve(arg: Any, seed: hvcore.Key) -> Any:
    return seed if isinstance(arg, str) and arg == "SEED" else arg


def run(store: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], seed: hvcore.Key) -> Any:
    """The call's outcome on one store, made comparable across stores (keys differ; rows are compared by value)."""
    args = tuple(resolve(a, seed) for a in args)
    kwargs = {k: resolve(v, seed) for k, v in kwargs.items()}
    try:
        if method == "cursor":
            with store.cursor(*args):
                return ("cursor",)
        if method == "from_config":
            return ("opened", type(getattr(store, "inner", store)).from_config(*args))
        result = getattr(store, method)(*args, **kwargs)
        if method == "query":
            result = list(result)
    except hvcore.HypervaultError as exc:
        return ("error", type(exc).__name__)
    if method == "get_connection":
        store.put_connection(result)
        return ("connection",)
    if method == "put":
        record = store.get(result)
        return ("put", record.kind, record.data, result.shard_id)
    if method == "put_many":
        found = store.get_many(result)
        return ("put_many", [(found[k].kind, found[k].data) for k in result])
    if method == "store_for":
        return ("server", store.servers.index(result))
    if method in ("get",):
        return ("record", None if result is None else (result.kind, result.data))
    if method == "get_many":
        return ("records", [(r.kind, r.data) for _, r in sorted(result.items())])
    if method == "query":
        return ("records", [(r.kind, r.data) for r in result])
    if method == "provision":
        return ("provisioned", len(result))
    if method == "status":
        return ("status", [(s["shards"], s.get("rows")) for s in result])
    if method == "as_key":
        return ("key", type(result).layout, "the seed" if result == seed else int(result))
    return ("value", result)


def check_write(method: str, args: tuple[Any, ...], kwargs: dict[str, Any], outcome: Any) -> None:
    """A write that succeeded stored the bodies exactly as JSON (or hstore text) keeps them."""
    if method == "put":
        _, kind, data, _shard = outcome
        assert kind == args[1] and same(data, json_kept(kwargs)), (kwargs, data)
    elif method == "put_many":
        stored = outcome[1]
        wanted = list(args[2])
        assert len(stored) == len(wanted)
        for (kind, data), body in zip(stored, wanted, strict=True):
            assert kind == args[1] and same(data, json_kept(body)), (body, data)


@pytest.mark.parametrize("backend", ["jsonb", "hstore"])
@SETTINGS
@given(call=calls)
def test_every_call_is_exact_or_the_same_typed_error_everywhere(
    four_stores: dict[str, Stores], backend: str, call: tuple[str, tuple[Any, ...], dict[str, Any]]
) -> None:
    method, args, kwargs = call
    stores = four_stores[backend]
    stores.empty()
    seeds = {name: store.put(1, 1, seed="x") for name, store in stores.stores.items()}
    for store in stores.stores.values():
        store.put(9, 2, seed="y")
    before = {name: contents(store) for name, store in stores.stores.items()}
    time.sleep(0.002)  # the call's keys come in a later millisecond than the seeds': the same key order everywhere
    outcomes = {name: run(store, method, args, kwargs, seeds[name]) for name, store in stores.stores.items()}
    note(f"{method} outcomes: {outcomes}")
    reference = outcomes["postgres-sync"]
    for name, outcome in outcomes.items():
        if reference[0] == "opened" or outcome[0] == "opened":
            pytest.fail(f"from_config({args!r}) opened a store")
        assert outcome[0] == reference[0] and (outcome[0] in ("put", "put_many") or same_outcome(outcome, reference)), (
            f"{name} disagrees with postgres-sync on {method}: {outcome!r} vs {reference!r}"
        )
    event(f"{method}: {reference[0]}{' ' + reference[1] if reference[0] == 'error' else ''}")
    after = {name: contents(store) for name, store in stores.stores.items()}
    if reference[0] == "error":
        assert after == before, f"a refused {method} changed the rows"
    else:
        check_write(method, args, kwargs, reference)
        for outcome in outcomes.values():
            if outcome[0] in ("put", "put_many"):
                check_write(method, args, kwargs, outcome)
    first = after["postgres-sync"]
    for name, rows in after.items():
        assert len(rows) == len(first) and all(
            a[:2] == b[:2] and same(a[2], b[2]) for a, b in zip(rows, first, strict=True)
        ), f"{name} holds other rows than postgres-sync after {method}: {rows!r} vs {first!r}"


def same_outcome(a: Any, b: Any) -> bool:
    """Outcomes equal, comparing stored bodies with `same` (types kept)."""
    if (isinstance(a, tuple) and isinstance(b, tuple)) or (isinstance(a, list) and isinstance(b, list)):
        return len(a) == len(b) and all(same_outcome(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) or isinstance(b, dict):
        return same(a, b)
    return bool(type(a) is type(b) and a == b)


# -- construction ---------------------------------------------------------------------------------------------------

option_values: st.SearchStrategy[Any] = st.sampled_from(
    [None, 0, 1, -1, 10**6, HUGE, True, 1.5, float("nan"), float("inf"), 1e300, "", "x", "memory", b"x", [1], {}]
)
settings_values = st.sampled_from(
    ["1-9", "", "0-8192", 5, None, True, b"x", "bogus", "require", "5432", "-1", "\x00", {"a": 1}, [1]]
)
setting_names = st.sampled_from(
    ["host", "port", "dbname", "database", "dsn", "conninfo", "sslmode", "user", "password", "bogus", "shards", ""]
)
option_names = st.sampled_from(
    [
        "pool_max",
        "pool_block_timeout",
        "logger",
        "layout",
        "sequence",
        "allow_gaps",
        "row_factory",
        "registry",
        "operation_timeout",
        "values",
        "log_values",
    ]
)


@SETTINGS
@given(
    extra=st.dictionaries(setting_names, settings_values, max_size=3),
    options=st.dictionaries(option_names, option_values, max_size=2),
    api=st.sampled_from(["sync", "async"]),
)
def test_construction_is_a_store_or_a_config_error_alike_on_memory_and_postgres(
    pg_main: dict[str, Any], extra: dict[str, Any], options: dict[str, Any], api: str
) -> None:
    """Odd settings and options: memory and PostgreSQL (never connected to here) accept or refuse them alike."""
    base = {"shards": "0-8", "host": pg_main["host"], "port": pg_main["port"], "dbname": "hv_never_used"}
    outcomes: list[tuple[str, ...]] = []
    for backend in ("memory", "jsonb"):
        servers = [{**base, **extra}]
        make: Callable[..., Any] = hvcore.Datastore if api == "sync" else hvcore.AsyncDatastore
        try:
            store = make(servers, backend=backend, **options)
        except hvcore.HypervaultError as exc:
            outcomes.append(("error", type(exc).__name__))
            continue
        outcomes.append(("store",))
        if api == "sync":
            store.close()
    note(f"outcomes: {outcomes}")
    event(f"{outcomes[0]}")
    if "values" in options and options["values"] in ("text", "hstore") and outcomes[0] == ("store",):
        assert outcomes[1] == ("error", "ConfigError")  # text values on jsonb: refused there only
        return
    assert outcomes[0] == outcomes[1]
