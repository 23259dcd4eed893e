"""The Redis sequence source: script semantics on fakeredis, uniqueness and faults on real Redis servers."""

from __future__ import annotations

import array
import asyncio
import importlib
import inspect
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest
import redis
from fixtures.faults import start_redis, stop_redis
from fixtures.redis_replica import RedisReplicaPair
from fixtures.services import REDIS_URL, missing_service
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

import hvplugin_redis
from hvcore._key import KeyLayout
from hvcore._plugins import PluginRegistry
from hvcore._sequence import AsyncSequenceSource, SequenceSource
from hvcore.errors import ConfigError, HypervaultError, PluginError, SequenceUnavailable
from hvcore.hookspecs import hookimpl
from hvplugin_redis import (
    CLUSTER_GROUPS,
    DEFAULT_MAX_SKEW_MS,
    RESERVE_SCRIPT,
    AsyncRedisSequence,
    RedisSequence,
    make_sequence,
)
from hvplugin_redis._url import REDIS_OPTIONS, SOURCE_OPTIONS

LAYOUT = KeyLayout.DEFAULT
SIZE = LAYOUT.sequence_size


def now_ms() -> int:
    """Wall clock in Unix ms."""
    return time.time_ns() // 1_000_000


def make_ids(
    source: SequenceSource,
    shard: int,
    n: int,
    *,
    offset_ms: int = 0,
    wanted: int | None = None,
    layout: KeyLayout = LAYOUT,
) -> list[int]:
    """What a generator does with a source: ``n`` ids of ``shard`` from blocks of the current millisecond."""
    out: list[int] = []
    shard_bits = shard << layout.shard_shift
    while len(out) < n:
        t = now_ms() + offset_ms - layout.epoch_ms
        block = source.reserve(shard, t, wanted or n - len(out))
        if not block:  # this millisecond of the shard is used up: wait for the next one
            while now_ms() + offset_ms - layout.epoch_ms == t:
                pass
            continue
        base = (t << layout.time_shift) | shard_bits
        out.extend(base | s for s in block[: n - len(out)])
    return out


def run_script(client: Any, *keys_and_args: object) -> Any:
    """``EVAL`` of `RESERVE_SCRIPT` with its two keys (``client`` as Any: redis-py and its stubs type EVAL apart)."""
    return client.execute_command("EVAL", RESERVE_SCRIPT, 2, *keys_and_args)


def generator_class(name: str) -> Any:
    """``KeyGenerator`` or ``AsyncKeyGenerator``, looked up when used (the generator modules are being reworked)."""
    for module in ("hvcore", "hvcore._generator", "hvcore._agenerator"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    pytest.fail(f"hvcore has no {name}")


def warm(client: Any, prefix: str = "hv:seq") -> None:
    """Mark ``prefix`` as served for an hour, so tests skip the fresh-prefix wait (``max_skew_ms``)."""
    client.set(f"{prefix}:born", now_ms() - 3_600_000)


def assert_unique(ids: list[int]) -> None:
    """No id twice (and say how many repeated if some did)."""
    dupes = len(ids) - len(set(ids))
    assert dupes == 0, f"{dupes} duplicate ids among {len(ids)}"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """One fake Redis server that several clients (standing for processes) share, past its warm-up."""
    fake_server = fakeredis.FakeServer()
    warm(fakeredis.FakeRedis(server=fake_server))
    return fake_server


@pytest.fixture
def fake(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    """A fakeredis client (Lua scripts run through lupa)."""
    return fakeredis.FakeRedis(server=server)


@pytest.fixture
def redis_url() -> str:
    """The machine's Redis (127.0.0.1:6379 unless HV_TEST_REDIS_URL says otherwise)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        missing_service(f"Redis not reachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of its own per test, and its keys deleted afterwards."""
    name = f"hvtest:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    warm(client, name)
    yield name
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i : i + 1000])
    finally:
        client.close()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own on a free port, which the test may stop (never the main one)."""
    port = free_port()
    proc = start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    warm(client)
    client.close()
    yield proc, url
    stop_redis(proc)


# ---------------------------------------------------------------- script semantics (fakeredis)


def test_blocks_of_one_millisecond_never_overlap_and_end_empty(server: fakeredis.FakeServer) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    sources = [RedisSequence(fakeredis.FakeRedis(server=server), block_size=100) for _ in range(3)]
    got: list[int] = []
    blocks = []
    for i in range(12):
        block = sources[i % 3].reserve(5, T, 1)
        blocks.append(block)
        got.extend(block)
    assert sorted(got) == list(range(SIZE))  # every number once, across the three "processes"
    assert blocks[10] == range(1000, 1024)  # the block crossing the end is cut to the layout
    assert blocks[11] == range(0)  # then the millisecond is used up


def test_a_used_up_millisecond_is_not_asked_for_again(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms
    seq = RedisSequence(fake, block_size=1000)
    assert seq.reserve(0, T, 1) == range(1000)
    assert seq.reserve(0, T, 1) == range(1000, 1024)  # reaches the end of the millisecond
    assert seq.reserve(0, T, 1) == range(0)
    assert fake.get(f"hv:seq:0:{T}") == b"2000"  # the last call made no round trip
    assert seq.reserve(1, T, 1) == range(1000)  # other shards and milliseconds are unaffected
    assert seq.reserve(0, T + 1, 1) == range(1000)


def test_counters_are_per_shard_and_per_millisecond(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, block_size=10)
    assert seq.reserve(1, T, 1) == range(10)
    assert seq.reserve(2, T, 1) == range(10)
    assert seq.reserve(1, T + 1, 1) == range(10)
    assert seq.reserve(1, T, 1) == range(10, 20)
    expected = [f"hv:seq:1:{T}", f"hv:seq:1:{T + 1}", f"hv:seq:2:{T}", "hv:seq:born"]
    assert sorted(fake.keys("hv:seq:*")) == [k.encode() for k in expected]


def test_expiry_is_set_when_the_counter_is_created_and_not_extended(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, expire_ms=5000, block_size=4)
    seq.reserve(0, T, 1)
    first = fake.pttl(f"hv:seq:0:{T}")
    assert 0 < first <= 5000
    fake.pexpire(f"hv:seq:0:{T}", 3000)
    seq.reserve(0, T, 1)
    assert 0 < fake.pttl(f"hv:seq:0:{T}") <= 3000  # a later block leaves the expiry alone


def test_script_runs_atomically_as_one_server_call(fake: fakeredis.FakeRedis) -> None:
    assert run_script(fake, "k", "born", 16, 9000, 0, -1) == 16
    assert run_script(fake, "k", "born", 16, 9000, 0, -1) == 32
    assert 0 < fake.pttl("k") <= 9000


def test_script_is_loaded_again_after_a_script_flush(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, block_size=8)
    assert seq.reserve(0, T, 1) == range(8)
    fake.script_flush()
    assert seq.reserve(0, T, 1) == range(8, 16)


def test_adaptive_blocks_grow_within_a_millisecond_and_shrink_after_idle_ones(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, min_block=16)
    sizes = [len(seq.reserve(0, T + 100, 1)) for _ in range(7)]
    assert sizes == [16, 32, 64, 128, 256, 512, 16]  # doubling, the last one cut at 1024
    assert len(seq.reserve(0, T + 101, 1)) == 1024  # the next millisecond starts at the size reached
    assert len(seq.reserve(0, T + 102, 1)) == 1024  # busy every millisecond: stays
    assert len(seq.reserve(0, T + 110, 1)) == 512  # after idle milliseconds: halves
    assert len(seq.reserve(0, T + 120, 1)) == 256
    assert len(seq.reserve(0, T + 121, 1000)) == 1000  # a caller asking for more gets it at once


def test_adaptive_sizes_are_per_shard_and_bounded(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, min_block=4, max_block=64)
    for _ in range(10):
        seq.reserve(1, T, 1)
    assert len(seq.reserve(1, T, 1)) == 64
    assert len(seq.reserve(1, T, 5000)) == 64  # never above max_block, whatever is wanted
    assert len(seq.reserve(2, T, 1)) == 4  # another shard starts small


def test_fixed_block_size_ignores_wanted(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake, block_size=32)
    assert seq.block_size == 32
    assert [len(seq.reserve(0, T, w)) for w in (1, 1000, 1)] == [32, 32, 32]


def test_sequence_size_comes_from_the_layout(fake: fakeredis.FakeRedis) -> None:
    layout = KeyLayout(epoch_ms=0, time_bits=46, shard_bits=10, sequence_bits=8)
    seq = RedisSequence(fake, layout=layout, block_size=200)
    T = now_ms()  # this layout's time part is the Unix ms
    assert seq.sequence_size == 256
    assert seq.reserve(0, T, 1) == range(200)
    assert seq.reserve(0, T, 1) == range(200, 256)
    assert seq.reserve(0, T, 1) == range(0)
    with pytest.raises(ConfigError, match="block_size"):
        RedisSequence(fake, layout=layout, block_size=300)


def test_generated_ids_are_unique_across_sources_sharing_a_server(server: fakeredis.FakeServer) -> None:
    a = RedisSequence(fakeredis.FakeRedis(server=server))
    b = RedisSequence(fakeredis.FakeRedis(server=server))
    ids: list[int] = []
    for _ in range(20):
        ids += make_ids(a, 3, 700, wanted=1)
        ids += make_ids(b, 3, 900, wanted=1)
    assert len(ids) == 20 * 1600
    assert_unique(ids)


def test_a_millisecond_too_far_from_the_servers_clock_is_refused(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms
    seq = RedisSequence(fake, expire_ms=3000, max_skew_ms=1000)
    assert seq.reserve(0, T + 500, 1)
    for off in (+1500, -1500):
        with pytest.raises(SequenceUnavailable, match="clock is off"):
            seq.reserve(0, T + off, 1)
        assert not fake.exists(f"hv:seq:0:{T + off}")  # refused before any counter was made
    assert RedisSequence(fake).max_skew_ms == DEFAULT_MAX_SKEW_MS == 1000
    assert RedisSequence(fake, expire_ms=1500).max_skew_ms == 500  # kept under half the expiry
    unchecked = RedisSequence(fake, check_clock=False)
    assert unchecked.max_skew_ms is None
    assert unchecked.reserve(0, 5, 1) == range(16)  # made-up clocks, for tests only


def test_a_fresh_prefix_serves_no_millisecond_it_may_have_served_before() -> None:
    fake = fakeredis.FakeRedis()  # no born key: a new Redis, or one that lost its counters
    seq = RedisSequence(fake, max_skew_ms=300, expire_ms=5000)
    T = now_ms() - LAYOUT.epoch_ms
    assert seq.reserve(0, T, 1) == range(0)  # refused: that millisecond may have been served before a loss
    born = int(fake.get("hv:seq:born") or 0)
    assert abs(born - (T + LAYOUT.epoch_ms)) < 50
    assert seq.reserve(0, T + 100, 1) == range(0)  # still refused, and without asking Redis
    assert fake.keys("hv:seq:0:*") == []
    resume = born + 300 - LAYOUT.epoch_ms
    while now_ms() - LAYOUT.epoch_ms < resume:
        time.sleep(0.01)
    assert seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1) == range(16)
    assert int(fake.get("hv:seq:born") or 0) == born  # set once, never moved


def test_a_fresh_prefix_longer_than_max_wait_is_a_typed_error() -> None:
    seq = RedisSequence(fakeredis.FakeRedis(), max_skew_ms=10_000, connect_timeout=0.5, read_timeout=0.5, retries=0)
    with pytest.raises(SequenceUnavailable, match=r"serves ids again in \d+ ms"):
        seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1)


def test_the_skew_script_reply(fake: fakeredis.FakeRedis) -> None:
    with pytest.raises(redis.ResponseError, match="HVSKEW -"):
        run_script(fake, "k", "born", 16, 9000, 0, 1000)
    assert not fake.exists("k")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"key_prefix": ""}, "key_prefix"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"read_timeout": -1}, "read_timeout"),
        ({"read_timeout": True}, "read_timeout"),
        ({"retries": -1}, "retries"),
        ({"expire_ms": 10}, "expire_ms"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 1025}, "block_size"),
        ({"min_block": 0}, "min_block"),
        ({"min_block": 64, "max_block": 32}, "min_block"),
        ({"max_block": 2048}, "max_block"),
        ({"max_skew_ms": -1}, "max_skew_ms"),
        ({"expire_ms": 3000, "max_skew_ms": 1500}, "max_skew_ms"),
        ({"wait_replicas": -1}, r"wait_replicas must be an int >= 0"),
        ({"wait_replicas": True}, "wait_replicas"),
        ({"wait_replicas": 1.0}, "wait_replicas"),
        ({"wait_timeout": 0}, r"wait_timeout must be a number of seconds in \(0, 3600\)"),
        ({"wait_timeout": "1"}, "wait_timeout"),
        ({"wait_replicas": 1, "cluster": True}, "wait_replicas=1 cannot be combined with cluster=True"),
    ],
)
def test_bad_options_raise_config_error(fake: fakeredis.FakeRedis, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RedisSequence(fake, **options)
    with pytest.raises(ValueError, match=match):
        AsyncRedisSequence(fakeredis.aioredis.FakeRedis(), **options)


def test_bad_arguments_to_reserve(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence(fake)
    with pytest.raises(ValueError, match="shard_id"):
        seq.reserve(-1, 5, 1)
    with pytest.raises(ValueError, match="time_part"):
        seq.reserve(1, 5.0, 1)  # type: ignore[arg-type]
    assert len(seq.reserve(1, T, 0)) >= 1  # a non-positive wanted still gets a block


def test_invalid_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid Redis URL"):
        RedisSequence("http://example.invalid:6379/0")
    with pytest.raises(ConfigError, match="must be a str"):
        make_sequence(6379)  # type: ignore[arg-type]


# ---------------------------------------------------------------- URL options


def _close(seq: RedisSequence | AsyncRedisSequence) -> None:
    if isinstance(seq, AsyncRedisSequence):
        asyncio.run(seq.close())
    else:
        seq.close()


@pytest.mark.parametrize("cls", [RedisSequence, AsyncRedisSequence])
def test_url_options_set_the_sources_arguments_and_redis_pys(cls: type[RedisSequence | AsyncRedisSequence]) -> None:
    url = (
        "redis://127.0.0.1:1/0?key_prefix=myapp&retries=2&connect_timeout=0.25&socket_timeout=0.5&expire_ms=30000"
        "&block_size=64&max_skew_ms=500&check_clock=false&client_name=api&health_check_interval=5&db=3"
    )
    seq = cls(url)
    assert (seq.key_prefix, seq.retries, seq.connect_timeout, seq.read_timeout) == ("myapp", 2, 0.25, 0.5)
    assert (seq.expire_ms, seq.block_size, seq.max_skew_ms, seq.cluster) == (30000, 64, None, False)
    assert seq.max_wait == pytest.approx(3 * 0.75)
    kwargs = seq._client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert (kwargs["client_name"], kwargs["health_check_interval"], kwargs["db"]) == ("api", 5, 3)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.5, 0.25)  # one setting each
    assert seq.name == "redis://127.0.0.1:1/0"
    _close(seq)


def test_url_options_take_none_and_reach_the_registered_factory() -> None:
    seq = RedisSequence("redis://127.0.0.1:1/0?block_size=none&min_block=32&max_block=512&max_skew_ms=None")
    assert (seq.block_size, seq.min_block, seq.max_block, seq.max_skew_ms) == (None, 32, 512, DEFAULT_MAX_SKEW_MS)
    seq.close()
    factory = PluginRegistry(entry_points=[_FakeEntryPoint()]).sequence("redis")
    made = factory("redis://127.0.0.1:1/0?key_prefix=app&block_size=8", layout=KeyLayout(epoch_ms=0))
    assert isinstance(made, RedisSequence) and (made.key_prefix, made.block_size) == ("app", 8)
    made.close()


def test_an_option_set_in_the_url_and_as_an_argument() -> None:
    url = "redis://127.0.0.1:1/0?key_prefix=a&retries=3"
    seq = RedisSequence(url, key_prefix="a", retries=1)  # the same value, or an argument left at its default
    assert (seq.key_prefix, seq.retries) == ("a", 3)
    seq.close()
    with pytest.raises(ConfigError, match=r"key_prefix is set twice, to 'a' in the Redis URL .* and to 'b'"):
        RedisSequence(url, key_prefix="b")
    with pytest.raises(ConfigError, match="retries is set twice"):
        make_sequence(url, asyncio=True, retries=2)


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("prefix=myapp", r"unknown option 'prefix' .*did you mean 'key_prefix'\?.*takes block_size, .*key_prefix"),
        ("frobnicate=1", r"unknown option 'frobnicate'.*redis-py's .*socket_timeout"),
        ("max_wait=2", r"'max_wait' is not accepted.*\(retries \+ 1\) \* \(connect_timeout \+ read_timeout\)"),
        ("layout=hypervault", "'layout' is not accepted.*Datastore or KeyGenerator"),
        ("retry_on_timeout=true", r"'retry_on_timeout' is not accepted.*retries=N"),
        ("decode_responses=true", "'decode_responses' is not accepted"),
        ("retries=two", "option 'retries' in the Redis URL must be an int, got 'two'"),
        ("retries=11", r"retries must be an int in 0\.\.10, got 11"),
        ("connect_timeout=fast", "option 'connect_timeout' .* number of seconds, got 'fast'"),
        ("socket_timeout=nan", "option 'socket_timeout' .* number of seconds"),
        ("read_timeout=0", r"read_timeout must be a number of seconds in \(0, 3600\)"),
        ("check_clock=maybe", "option 'check_clock' .* true or false"),
        ("cluster=2", "option 'cluster' .* true or false"),
        ("block_size=0", "block_size must be None"),
        ("max_block=big", "must be an int or 'none'"),
        ("key_prefix=", "option 'key_prefix' in the Redis URL must not be empty"),
        ("key_prefix=a&key_prefix=b", "option 'key_prefix' is given twice"),
        ("read_timeout=1&socket_timeout=1", r"option 'read_timeout' is given twice .*\(as 'socket_timeout'\)"),
        ("protocol=4", r"option 'protocol' .* an int 2\.\.3, got '4'"),
        ("max_connections=0", "option 'max_connections' .* >= 1"),
        ("db=x", "option 'db' .* must be an int"),
        ("ssl_cert_reqs=none", "'ssl_cert_reqs' .* needs a rediss://"),
        ("cluster=true&db=2", "a Redis Cluster has only database 0, got db 2"),
        ("wait_replicas=one", "option 'wait_replicas' in the Redis URL must be an int, got 'one'"),
        ("wait_replicas=1.5", "option 'wait_replicas' in the Redis URL must be an int, got '1.5'"),
        ("wait_replicas=-1", "wait_replicas must be an int >= 0 .*got -1"),
        ("wait_timeout=soon", "option 'wait_timeout' in the Redis URL must be a number of seconds, got 'soon'"),
        ("wait_timeout=inf", "option 'wait_timeout' .* number of seconds"),
        ("wait_timeout=0", r"wait_timeout must be a number of seconds in \(0, 3600\), got 0"),
        ("wait_replicas=1&wait_replicas=2", "option 'wait_replicas' is given twice"),
        ("wait_replica=1", r"unknown option 'wait_replica' .*did you mean 'wait_replicas'\?"),
        ("wait_replicas=1&cluster=true", "wait_replicas=1 cannot be combined with cluster=True"),
    ],
)
def test_bad_url_options_are_config_errors(query: str, match: str) -> None:
    for cls in (RedisSequence, AsyncRedisSequence):
        with pytest.raises(ConfigError, match=match):
            cls(f"redis://127.0.0.1:1/0?{query}")


def test_bad_cluster_urls_and_prefixes() -> None:
    with pytest.raises(ConfigError, match="only database 0, got db 3"):
        RedisSequence("redis://127.0.0.1:1/3?cluster=true")
    with pytest.raises(ConfigError, match="only database 0"):
        RedisSequence("redis://127.0.0.1:1/3", cluster=True)
    with pytest.raises(ConfigError, match="unix socket"):
        RedisSequence("unix:///tmp/redis.sock?cluster=1")
    with pytest.raises(ConfigError, match=r"key_prefix must not contain '\{'"):
        RedisSequence(fakeredis.FakeRedis(), cluster=True, key_prefix="{app}")
    with pytest.raises(ConfigError, match="the path must be a database number"):
        RedisSequence("redis://127.0.0.1:1/zero")
    seq = RedisSequence("rediss://127.0.0.1:1/0?ssl_cert_reqs=required&ssl_check_hostname=false")
    assert seq._client.connection_pool.connection_kwargs["ssl_cert_reqs"] == "required"  # type: ignore[union-attr]
    seq.close()


def test_passwords_appear_in_no_url_option_error_or_repr() -> None:
    queries = ["prefix=x", "retries=x", "password=hunter2", "key_prefix=a&key_prefix=b", "cluster=true&db=1"]
    for query in queries:
        with pytest.raises(ConfigError) as info:
            RedisSequence(f"redis://alice:s3cret@127.0.0.1:1/0?{query}")
        assert "s3cret" not in str(info.value) and "hunter2" not in str(info.value), str(info.value)
    with pytest.raises(ConfigError, match="set twice") as info:
        RedisSequence("redis://alice:s3cret@127.0.0.1:1/0?key_prefix=a", key_prefix="b")
    assert "s3cret" not in str(info.value) and "***@127.0.0.1:1" in str(info.value)
    with pytest.raises(ConfigError, match="invalid Redis URL") as info:
        RedisSequence("redis://alice:s3cret@127.0.0.1:port/0")
    assert "s3cret" not in str(info.value)
    seq = RedisSequence("redis://alice:s3cret@127.0.0.1:1/0?cluster=true&key_prefix=p&client_name=x")
    assert "s3cret" not in repr(seq) and repr(seq).startswith("<RedisSequence redis://***@127.0.0.1:1/0 cluster")
    seq.close()


_VALID_OPTIONS = {*SOURCE_OPTIONS, *REDIS_OPTIONS, "socket_timeout", "socket_connect_timeout"}


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30))
def test_any_key_prefix_round_trips_through_a_url(prefix: str) -> None:
    seq = RedisSequence("redis://127.0.0.1:1/0?" + urllib.parse.urlencode({"key_prefix": prefix}))
    assert seq.key_prefix == prefix
    seq.close()


@settings(max_examples=60, deadline=None)
@given(st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True).filter(lambda name: name not in _VALID_OPTIONS))
def test_every_other_option_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match=f"option '{name}'"):
        RedisSequence(f"redis://127.0.0.1:1/0?{name}=1")


# ---------------------------------------------------------------- cluster key names (fakeredis)


def test_single_node_key_names_are_unchanged(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms
    RedisSequence(fake).reserve(5, T, 1)
    assert fake.exists(f"hv:seq:5:{T}", "hv:seq:born") == 2  # what the previous releases used: they mix safely


def test_cluster_keys_of_one_script_share_a_hash_slot() -> None:
    fake = fakeredis.FakeRedis()
    for group in range(CLUSTER_GROUPS):
        warm(fake, f"{{hv:seq:g{group}}}")
    seq = RedisSequence(fake, cluster=True)
    assert seq.cluster and "cluster" in repr(seq)
    T = now_ms() - LAYOUT.epoch_ms
    for shard in (0, 5, 256, 8191):
        assert seq.reserve(shard, T, 1)
    counters = [f"{{hv:seq:g0}}:0:{T}", f"{{hv:seq:g5}}:5:{T}", f"{{hv:seq:g0}}:256:{T}", f"{{hv:seq:g255}}:8191:{T}"]
    assert fake.exists(*counters) == 4
    for key in counters:
        born = key.split("}")[0] + "}:born"
        assert key_slot(key.encode()) == key_slot(born.encode())
    assert len({key_slot(f"{{hv:seq:g{g}}}".encode()) for g in range(CLUSTER_GROUPS)}) > 240  # spread


def test_a_fresh_cluster_prefix_sets_every_guard_at_once() -> None:
    fake = fakeredis.FakeRedis()
    seq = RedisSequence(fake, cluster=True, max_skew_ms=300, expire_ms=5000)
    T = now_ms() - LAYOUT.epoch_ms
    assert seq.reserve(3, T, 1) == range(0)
    assert fake.exists(*(f"{{hv:seq:g{g}}}:born" for g in range(CLUSTER_GROUPS))) == CLUSTER_GROUPS
    assert seq.reserve(200, T + 1, 1) == range(0)  # another group: warming up too, known without asking
    assert fake.keys("*:200:*") == []
    born = int(fake.get("{hv:seq:g200}:born") or 0)  # the guards are set one after another: each has its own time
    while now_ms() < born + 300 + 5:
        time.sleep(0.01)
    assert seq.reserve(200, now_ms() - LAYOUT.epoch_ms, 1) == range(16)


# ---------------------------------------------------------------- errors (fakeredis)


def test_unreachable_redis_raises_sequence_unavailable_after_the_retries(server: fakeredis.FakeServer) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    server.connected = False
    seq = RedisSequence(fakeredis.FakeRedis(server=server), retries=2)
    with pytest.raises(SequenceUnavailable, match=r"after 3 attempt\(s\)") as info:
        seq.reserve(0, T, 1)
    assert isinstance(info.value, OSError) and isinstance(info.value, HypervaultError)
    assert isinstance(info.value.__cause__, redis.ConnectionError)


def test_a_server_error_is_not_retried_and_is_typed(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    fake.rpush(f"hv:seq:0:{T}", "not a counter")
    seq = RedisSequence(fake, retries=3)
    with pytest.raises(SequenceUnavailable, match=r"after 1 attempt\(s\).*WRONGTYPE"):
        seq.reserve(0, T, 1)


def test_closed_source_raises_and_leaves_a_given_client_open(fake: fakeredis.FakeRedis) -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    with RedisSequence(fake) as seq:
        seq.reserve(0, T, 1)
    with pytest.raises(SequenceUnavailable, match="closed"):
        seq.reserve(0, T, 1)
    assert fake.ping()  # not ours to close


def test_names_never_show_the_password() -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock
    seq = RedisSequence("redis://alice:s3cret@127.0.0.1:1/0", connect_timeout=0.2, read_timeout=0.2, retries=0)
    assert "s3cret" not in repr(seq) and "s3cret" not in seq.name
    assert seq.name == "redis://***@127.0.0.1:1/0"
    with pytest.raises(SequenceUnavailable) as info:
        seq.reserve(0, T, 1)
    assert "s3cret" not in str(info.value)
    seq.close()


def test_max_wait_is_the_documented_bound() -> None:
    seq = RedisSequence("redis://127.0.0.1:1/0", connect_timeout=0.25, read_timeout=0.5, retries=2)
    assert seq.max_wait == pytest.approx(3 * 0.75)
    seq.close()


# ---------------------------------------------------------------- asyncio mirror


def test_sync_and_async_sources_have_the_same_public_surface() -> None:
    def surface(cls: type) -> dict[str, bool]:
        return {
            name: inspect.iscoroutinefunction(getattr(cls, name))
            for name in dir(cls)
            if not name.startswith("_") and callable(getattr(cls, name))
        }

    sync, asyn = surface(RedisSequence), surface(AsyncRedisSequence)
    assert sorted(sync) == sorted(asyn)
    assert {name for name, is_async in asyn.items() if is_async} == {"reserve", "close"}
    assert inspect.signature(RedisSequence.__init__).parameters.keys() == (
        inspect.signature(AsyncRedisSequence.__init__).parameters.keys()
    )
    props = {n for n in dir(RedisSequence) if isinstance(getattr(RedisSequence, n), property)}
    assert props == {n for n in dir(AsyncRedisSequence) if isinstance(getattr(AsyncRedisSequence, n), property)}


def test_sources_satisfy_the_protocols(fake: fakeredis.FakeRedis) -> None:
    assert isinstance(RedisSequence(fake), SequenceSource)
    assert isinstance(AsyncRedisSequence(fakeredis.aioredis.FakeRedis()), AsyncSequenceSource)
    assert RedisSequence.__module__ == AsyncRedisSequence.__module__ == "hvplugin_redis"


def test_async_blocks_never_overlap() -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock

    async def main() -> list[int]:
        server = fakeredis.FakeServer()
        warm(fakeredis.FakeRedis(server=server))
        sources = [AsyncRedisSequence(fakeredis.aioredis.FakeRedis(server=server), block_size=50) for _ in range(4)]
        blocks = await asyncio.gather(*(sources[i % 4].reserve(9, T, 1) for i in range(25)))
        for src in sources:
            await src.close()
        return [n for b in blocks for n in b]

    got = asyncio.run(main())
    assert sorted(got) == list(range(SIZE))


def test_async_unreachable_redis_raises_sequence_unavailable() -> None:
    T = now_ms() - LAYOUT.epoch_ms  # the current time part: the source checks it against Redis's clock

    async def main() -> None:
        server = fakeredis.FakeServer()
        warm(fakeredis.FakeRedis(server=server))
        server.connected = False
        seq = AsyncRedisSequence(fakeredis.aioredis.FakeRedis(server=server), retries=1)
        with pytest.raises(SequenceUnavailable, match=r"after 2 attempt\(s\)"):
            await seq.reserve(0, T, 1)

    asyncio.run(main())


# ---------------------------------------------------------------- plugin registration


class _FakeEntryPoint:
    """Stands for the ``hypervault.plugins`` entry point ``redis = "hvplugin_redis"``."""

    name = "redis"
    group = "hypervault.plugins"
    value = "hvplugin_redis"

    def load(self) -> Any:
        return hvplugin_redis


def test_registered_through_the_entry_point_group() -> None:
    registry = PluginRegistry(entry_points=[_FakeEntryPoint()])
    assert registry.sequence_schemes() == ["redis", "rediss"]
    factory = registry.sequence("redis")
    sync = factory("redis://127.0.0.1:6379/0")
    asyn = factory("redis://127.0.0.1:6379/0", asyncio=True, key_prefix="x")
    assert isinstance(asyn, AsyncRedisSequence)  # the factory's type says either flavour
    try:
        assert type(sync) is RedisSequence and type(asyn) is AsyncRedisSequence
        assert asyn.key_prefix == "x"
    finally:
        sync.close()
        asyncio.run(asyn.close())


def test_registering_the_scheme_twice_is_refused() -> None:
    class Other:
        @hookimpl
        def hypervault_register_sequences(self, register: Callable[[str, Any], None]) -> None:
            register("redis", make_sequence)

    registry = PluginRegistry(load_entry_points=False)
    registry.register(hvplugin_redis, "redis")
    with pytest.raises(PluginError, match="registered twice"):
        registry.register(Other(), "other")


def test_default_registry_finds_the_installed_plugin() -> None:
    import importlib.metadata

    points = importlib.metadata.entry_points(group="hypervault.plugins", name="redis")
    if not points:
        missing_service("hypervault is not installed (pip install -e .): no entry points to find")
    from hvcore._plugins import default_registry

    seq = default_registry().sequence("redis")("redis://127.0.0.1:6379/0")
    assert isinstance(seq, RedisSequence)
    seq.close()


# ---------------------------------------------------------------- real Redis: uniqueness


def _worker(url: str, prefix: str, shard: int, n: int, start_at: float, via: str) -> bytes:
    """A separate process making ``n`` ids (``via`` a `KeyGenerator` or reserve() directly); returns them packed."""
    seq = RedisSequence(url, key_prefix=prefix)
    while time.time() < start_at:  # all workers start together, so they really share milliseconds
        time.sleep(0.001)
    if via == "generator":
        gen = generator_class("KeyGenerator")(LAYOUT, sequence=seq)
        ids: list[int] = [gen.next_key(shard) for _ in range(1000)]  # single keys, then batches
        while len(ids) < n:
            ids += gen.next_keys(shard, min(5000, n - len(ids)))
    else:
        ids = make_ids(seq, shard, n, wanted=1)
    seq.close()
    return array.array("q", ids).tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("via", ["generator", "reserve"])
def test_four_processes_on_one_shard_make_no_duplicates(redis_url: str, prefix: str, via: str) -> None:
    n, procs = 200_000, 4
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.5
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(_worker, [(redis_url, prefix, 17, n, start_at, via)] * procs)
    ids: list[int] = []
    per_ms: dict[int, set[int]] = {}
    for i, raw in enumerate(parts):
        got = array.array("q")
        got.frombytes(raw)
        assert len(got) == n
        ids.extend(got)
        for value in got:
            per_ms.setdefault(value >> LAYOUT.time_shift, set()).add(i)
    assert_unique(ids)
    assert all((value >> LAYOUT.shard_shift) & LAYOUT.max_shard_id == 17 for value in ids)
    shared = sum(1 for owners in per_ms.values() if len(owners) > 1)
    assert shared > 0, "the processes never shared a millisecond: the test proved nothing"


def test_clocks_set_apart_by_50_ms_either_way_make_no_duplicates(redis_url: str, prefix: str) -> None:
    # two hosts: own clients, clocks 100 ms apart; small blocks, so neither uses a millisecond up and waits
    ahead_host = RedisSequence(redis_url, key_prefix=prefix, block_size=64)
    behind_host = RedisSequence(redis_url, key_prefix=prefix, block_size=64)
    ahead: list[int] = []
    behind: list[int] = []
    overlap: set[int] = set()
    deadline = time.monotonic() + 20  # until 100 milliseconds were used by both (about 0.2 s on an idle machine)
    while len(overlap) <= 100 and time.monotonic() < deadline:  # interleaved: both touch most milliseconds
        for _ in range(100):
            ahead += make_ids(ahead_host, 4, 50, offset_ms=+50)
            behind += make_ids(behind_host, 4, 50, offset_ms=-50)
        overlap = {i >> LAYOUT.time_shift for i in ahead} & {i >> LAYOUT.time_shift for i in behind}
    ahead_host.close()
    behind_host.close()
    assert len(overlap) > 100, "the skewed clocks never used the same milliseconds: the test proved nothing"
    assert_unique(ahead + behind)


def test_async_source_on_real_redis_makes_unique_blocks(redis_url: str, prefix: str) -> None:
    async def main() -> list[int]:
        seqs = [AsyncRedisSequence(redis_url, key_prefix=prefix) for _ in range(3)]
        t = now_ms() - LAYOUT.epoch_ms
        blocks = await asyncio.gather(*(seqs[i % 3].reserve(2, t, 1) for i in range(200)))
        for s in seqs:
            await s.close()
        return [n for b in blocks for n in b]

    got = asyncio.run(main())
    assert sorted(got) == list(range(len(got)))  # one prefix of 0..1023, no gaps, no overlap
    assert 0 < len(got) <= SIZE


def test_real_redis_refuses_a_host_clock_25_s_off(redis_url: str, prefix: str) -> None:
    seq = RedisSequence(redis_url, key_prefix=prefix)
    T = now_ms() - LAYOUT.epoch_ms
    assert seq.reserve(3, T, 1)
    with pytest.raises(SequenceUnavailable, match=r"refused a millisecond 2\d{4} ms away"):
        seq.reserve(3, T + 25_000, 1)
    seq.close()


def test_generators_with_clocks_50_ms_apart_either_way_make_no_duplicates(redis_url: str, prefix: str) -> None:
    def host(offset: int) -> Any:
        seq = RedisSequence(redis_url, key_prefix=prefix, block_size=64)
        return generator_class("KeyGenerator")(LAYOUT, sequence=seq, clock=lambda: now_ms() + offset)

    ahead, behind = host(+50), host(-50)
    from_ahead: list[int] = []
    from_behind: list[int] = []
    overlap: set[int] = set()
    deadline = time.monotonic() + 20  # until 100 milliseconds were used by both
    while len(overlap) <= 100 and time.monotonic() < deadline:
        for _ in range(100):
            from_ahead += ahead.next_keys(8, 50)
            from_behind += behind.next_keys(8, 50)
            from_behind.append(behind.next_key(8))
        overlap = {k >> LAYOUT.time_shift for k in from_ahead} & {k >> LAYOUT.time_shift for k in from_behind}
    keys = from_ahead + from_behind
    assert len(overlap) > 100, "the skewed clocks never used the same milliseconds: the test proved nothing"
    assert_unique(keys)
    for gen in (ahead, behind):
        assert isinstance(gen.sequence, RedisSequence)
        gen.sequence.close()


def test_async_generator_with_the_async_source(redis_url: str, prefix: str) -> None:
    async def main() -> list[int]:
        seqs = [AsyncRedisSequence(redis_url, key_prefix=prefix) for _ in range(2)]
        gens = [generator_class("AsyncKeyGenerator")(LAYOUT, sequence=s) for s in seqs]

        async def take(gen: Any) -> list[int]:
            out: list[int] = []
            for _ in range(40):
                out += await gen.next_keys(5, 500)
                out.append(await gen.next_key(5))
            return out

        parts = await asyncio.gather(*(take(g) for g in gens))
        for s in seqs:
            await s.close()
        return [k for part in parts for k in part]

    keys = asyncio.run(main())
    assert len(keys) == 2 * 40 * 501
    assert_unique(keys)


def test_hv_key_new_processes_side_by_side(redis_url: str) -> None:
    hv = os.path.join(os.path.dirname(sys.executable), "hv")
    if not os.path.exists(hv):
        missing_service("the hv command is not installed (pip install -e .)")
    cmd = [hv, "key", "new", "--shard", "21", "--count", "20000", "--sequence", redis_url]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    keys: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        lines = out.split()
        assert len(lines) == 20000
        keys += map(int, lines)
    assert_unique(keys)


# ---------------------------------------------------------------- real Redis: fork


@pytest.mark.parametrize("via", ["generator", "reserve"])
def test_child_after_fork_reserves_its_own_blocks(redis_url: str, prefix: str, via: str) -> None:
    seq = RedisSequence(redis_url, key_prefix=prefix)
    if via == "generator":  # the generator's fork hook calls seq.after_fork_in_child() and drops its blocks
        gen = generator_class("KeyGenerator")(LAYOUT, sequence=seq)

        def make(n: int) -> list[int]:
            return list(gen.next_keys(6, n))
    else:  # the source notices the new pid by itself

        def make(n: int) -> list[int]:
            return make_ids(seq, 6, n, wanted=1)

    before = make(3000)  # the parent has a connection and sizes before the fork
    parent_client = seq._client
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            ids = make(20_000)
            own = seq._client is not parent_client
            seq.close()  # must not end the parent's session
            with os.fdopen(write_end, "wb") as out:
                out.write(bytes([own]) + array.array("q", ids).tobytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    during = make(20_000)
    with os.fdopen(read_end, "rb") as inp:
        raw = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw[0] == 1, "the child kept using the parent's client"
    child = array.array("q")
    child.frombytes(raw[1:])
    assert len(child) == 20_000
    after = make(3000)  # the parent's connection survived the child's close()
    assert_unique(before + during + list(child) + after)
    seq.close()


# ---------------------------------------------------------------- real Redis: faults


@pytest.mark.redis  # a redis-server of its own
@pytest.mark.parametrize("via", ["generator", "reserve"])
def test_redis_stopped_mid_run_raises_within_the_bound(
    own_redis: tuple[subprocess.Popen[bytes], str], via: str
) -> None:
    proc, url = own_redis
    seq = RedisSequence(url, connect_timeout=0.5, read_timeout=0.5, retries=1)
    gen = generator_class("KeyGenerator")(LAYOUT, sequence=seq)

    def make(n: int) -> list[int]:
        return list(gen.next_keys(1, n)) if via == "generator" else make_ids(seq, 1, n, wanted=1)

    issued: list[int] = []
    failure: list[tuple[BaseException, float]] = []
    started = threading.Event()

    def run() -> None:
        while True:
            t0 = time.monotonic()
            try:
                issued.extend(make(200))
            except BaseException as exc:
                failure.append((exc, time.monotonic() - t0))
                return
            started.set()

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(10)
    time.sleep(0.2)
    proc.terminate()  # a real stop of a real server
    proc.wait(10)
    worker.join(seq.max_wait + 5)
    assert not worker.is_alive(), "reserve() hung after Redis stopped"
    ((exc, took),) = failure
    assert isinstance(exc, SequenceUnavailable), repr(exc)
    assert took <= seq.max_wait + 0.5
    assert len(issued) > 1000
    assert_unique(issued)
    seq.close()


@pytest.mark.slow
@pytest.mark.redis  # a redis-server of its own, restarted
@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "control-unguarded"])
def test_counters_lost_in_a_restart_are_not_served_again(guarded: bool) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    options: dict[str, Any] = {"max_skew_ms": 1000, "check_clock": guarded}  # max_wait 4 s > the 1.8 s wait
    proc = start_redis(port)
    try:
        client = redis.Redis.from_url(url)
        warm(client)
        client.close()
        host_a = RedisSequence(url, **options)
        before: list[int] = []
        stop = time.monotonic() + 1.0
        while time.monotonic() < stop:
            before += make_ids(host_a, 1, 2000, wanted=1)
        stop_redis(proc)
        proc = start_redis(port)  # no persistence: every counter, and the born key, is gone
        host_b = RedisSequence(url, **options)  # a host whose clock is 800 ms behind A's
        after = make_ids(host_b, 1, 20_000, offset_ms=-800, wanted=1)
        a_ms = {i >> LAYOUT.time_shift for i in before}
        b_ms = {i >> LAYOUT.time_shift for i in after}
        if guarded:
            assert not a_ms & b_ms, "B was served milliseconds that A used before the restart"
            assert_unique(before + after)
        else:  # the hazard the born key guards against is real
            assert a_ms & b_ms
            assert len(set(before + after)) < len(before) + len(after)
        host_a.close()
        host_b.close()
    finally:
        stop_redis(proc)


@pytest.mark.redis  # a redis-server of its own
def test_a_frozen_redis_times_out_within_the_bound_then_recovers(
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = own_redis
    seq = RedisSequence(url, connect_timeout=0.3, read_timeout=0.3, retries=1)
    first = make_ids(seq, 2, 5000, wanted=1)
    os.kill(proc.pid, signal.SIGSTOP)  # accepts nothing, answers nothing: the hang case
    try:
        t0 = time.monotonic()
        with pytest.raises(SequenceUnavailable, match=r"2 attempt\(s\)"):
            seq.reserve(3, now_ms() - LAYOUT.epoch_ms, 1)  # a shard with nothing used up locally
        took = time.monotonic() - t0
        assert 0.5 <= took <= seq.max_wait + 0.5  # the bound, plus slack for a busy machine
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    later = make_ids(seq, 2, 5000, wanted=1)  # no fallback was used, and the source works again
    assert_unique(first + later)
    seq.close()


@pytest.mark.redis  # a redis-server of its own
def test_async_source_times_out_within_the_bound(own_redis: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = own_redis

    async def main() -> float:
        seq = AsyncRedisSequence(url, connect_timeout=0.3, read_timeout=0.3, retries=0)
        await seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(SequenceUnavailable):
                await seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1)
            return time.monotonic() - t0
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            await seq.close()

    took = asyncio.run(main())
    assert took <= 0.6 + 0.5  # max_wait (one attempt), plus slack for a busy machine


def test_datastores_take_a_redis_url_with_any_layout(redis_url: str) -> None:
    import asyncio

    import hvcore

    servers = [dict(shards="0-8", name="redis-url-a"), dict(shards="8-16", name="redis-url-b")]
    with hvcore.Datastore(servers, backend="memory", layout="hypervault", sequence=redis_url) as db:
        keys = [db.put(12, 1, n=str(i)) for i in range(300)] + db.put_many(12, 1, [{"n": "x"}] * 300)
        assert len(set(keys)) == 600
        assert type(keys[0]).layout == hvcore.KeyLayout.HYPERVAULT
        assert db.get(keys[0]) is not None

    async def async_puts() -> list[hvcore.Key]:
        async with hvcore.AsyncDatastore(servers, backend="memory", layout="hypervault", sequence=redis_url) as adb:
            return [await adb.put(3, 1, n=str(i)) for i in range(100)]

    async_keys = asyncio.run(async_puts())
    assert len(set(async_keys)) == 100 and {k.shard_id for k in async_keys} == {3}


def test_datastores_take_url_options(redis_url: str, prefix: str) -> None:
    import hvcore

    servers = [dict(shards="0-16", name="redis-url-options")]
    url = f"{redis_url}?key_prefix={prefix}&block_size=64&client_name=hvtest"
    with hvcore.Datastore(servers, backend="memory", sequence=url) as db:
        keys = [db.put(4, 1, n=str(i)) for i in range(200)]
    assert len(set(keys)) == 200
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"{prefix}:4:*")  # the counters are under the URL's prefix
    finally:
        client.close()


# ---------------------------------------------------------------- wait_replicas (a primary + replica of the test's own)


@pytest.mark.parametrize("cls", [RedisSequence, AsyncRedisSequence])
def test_wait_replicas_from_the_url_and_its_time_bound(cls: type[RedisSequence | AsyncRedisSequence]) -> None:
    seq = cls("redis://127.0.0.1:1/0?wait_replicas=2&wait_timeout=0.25&read_timeout=0.5&connect_timeout=0.25&retries=1")
    assert (seq.wait_replicas, seq.wait_timeout) == (2, 0.25)
    assert seq.max_wait == pytest.approx(2 * (0.25 + 0.5 + 0.25))  # each attempt may wait for the replicas too
    kwargs = seq._client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    assert kwargs["socket_timeout"] == pytest.approx(0.75)  # WAIT's reply may come wait_timeout late
    assert "wait_replicas=2" in repr(seq)
    _close(seq)
    default = cls("redis://127.0.0.1:1/0")
    assert (default.wait_replicas, default.wait_timeout, default.max_wait) == (0, 0.5, 4.0)  # the wait is off
    assert "wait_replicas" not in repr(default)
    _close(default)
    with pytest.raises(ConfigError, match="wait_replicas is set twice"):
        cls("redis://127.0.0.1:1/0?wait_replicas=1", wait_replicas=2)


def test_wait_replicas_refuses_a_cluster_client_handed_in() -> None:
    import redis.asyncio.cluster

    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1)  # connects on its first command only
    with pytest.raises(ConfigError, match="wait_replicas=1 cannot be combined with cluster=True"):
        AsyncRedisSequence(client, wait_replicas=1)
    with pytest.raises(ConfigError, match="redis-py's cluster client sends WAIT to every primary"):
        RedisSequence("redis://127.0.0.1:1/0", cluster=True, wait_replicas=1)


def test_a_server_that_cannot_wait_is_a_typed_error(fake: fakeredis.FakeRedis) -> None:
    seq = RedisSequence(fake, wait_replicas=1)  # fakeredis has no WAIT: never a block without the acknowledgement
    with pytest.raises(SequenceUnavailable, match="unknown command 'wait'"):
        seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1)


def _replica_counters(client: redis.Redis, prefix: str = "hv:seq") -> dict[bytes, bytes | None]:
    keys = sorted(client.scan_iter(match=f"{prefix}:*:*", count=1000))
    return dict(zip(keys, client.mget(keys) if keys else [], strict=True))


@pytest.mark.redis  # a primary + replica of its own
def test_wait_replicas_hands_out_only_blocks_the_replica_holds(redis_replica_pair: RedisReplicaPair) -> None:
    pair = redis_replica_pair
    primary, replica = pair.client("primary"), pair.client("replica")
    warm(primary)
    seq = RedisSequence(pair.primary_url, wait_replicas=1, wait_timeout=2.0)
    ids: list[int] = []
    checked = 0
    deadline = time.monotonic() + 20
    while checked < 300 and time.monotonic() < deadline:  # reserve() by hand: each block checked on the replica
        t = now_ms() - LAYOUT.epoch_ms
        block = seq.reserve(4, t, 1)
        if not block:
            continue
        if checked == 150:
            primary.script_flush()  # the pipelined EVALSHA misses: the script is sent, with its WAIT, again
        held = int(replica.get(f"hv:seq:4:{t}") or 0)
        assert held >= block.stop, f"block {block} of ms {t} handed out, the replica's counter is only {held}"
        ids.extend(((t << LAYOUT.time_shift) | (4 << LAYOUT.shard_shift)) + n for n in block)
        checked += 1
    assert checked == 300
    gen = generator_class("KeyGenerator")(LAYOUT, sequence=seq)
    ids += gen.next_keys(4, 20_000)  # the generator's path: adaptive blocks
    assert_unique(ids)
    counters = _replica_counters(primary)
    assert counters and _replica_counters(replica) == counters  # every reservation reached the replica
    seq.close()
    primary.close()
    replica.close()


@pytest.mark.redis  # a primary + replica of its own
def test_async_wait_replicas_on_a_healthy_replica(redis_replica_pair: RedisReplicaPair) -> None:
    pair = redis_replica_pair
    with pair.client("primary") as primary:
        warm(primary)

    async def main() -> list[int]:
        seqs = [AsyncRedisSequence(pair.primary_url, wait_replicas=1, wait_timeout=2.0) for _ in range(2)]
        gens = [generator_class("AsyncKeyGenerator")(LAYOUT, sequence=s) for s in seqs]

        async def take(gen: Any) -> list[int]:
            out: list[int] = []
            for _ in range(20):
                out += await gen.next_keys(7, 500)
                out.append(await gen.next_key(7))
            return out

        parts = await asyncio.gather(*(take(g) for g in gens))
        for s in seqs:
            await s.close()
        return [k for part in parts for k in part]

    keys = asyncio.run(main())
    assert len(keys) == 2 * 20 * 501
    assert_unique(keys)
    with pair.client("primary") as primary, pair.client("replica") as replica:
        counters = _replica_counters(primary)
        assert counters and _replica_counters(replica) == counters


@pytest.mark.redis  # a primary + replica of its own, whose replica is frozen or killed
@pytest.mark.parametrize("fault", ["frozen", "killed"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reservations_fail_within_the_bound_when_the_replica_is_gone(
    redis_replica_pair: RedisReplicaPair, fault: str, mode: str
) -> None:
    pair = redis_replica_pair
    with pair.client("primary") as primary:
        warm(primary)
    options: dict[str, Any] = {"wait_replicas": 1, "wait_timeout": 0.3, "connect_timeout": 0.5, "read_timeout": 0.5}
    sync_seq = RedisSequence(pair.primary_url, **options)

    def attempt(shard: int) -> tuple[range | SequenceUnavailable, float, float]:
        """One reserve of ``shard``: (its block or error, seconds it took, the source's max_wait)."""

        async def in_loop() -> tuple[range | SequenceUnavailable, float, float]:
            async with AsyncRedisSequence(pair.primary_url, **options) as seq:  # clients are bound to their loop
                t0 = time.monotonic()
                try:
                    return await seq.reserve(shard, now_ms() - LAYOUT.epoch_ms, 1), time.monotonic() - t0, seq.max_wait
                except SequenceUnavailable as exc:
                    return exc, time.monotonic() - t0, seq.max_wait

        if mode == "async":
            return asyncio.run(in_loop())
        t0 = time.monotonic()
        try:
            return sync_seq.reserve(shard, now_ms() - LAYOUT.epoch_ms, 1), time.monotonic() - t0, sync_seq.max_wait
        except SequenceUnavailable as exc:
            return exc, time.monotonic() - t0, sync_seq.max_wait

    def flowing(shard: int) -> range | SequenceUnavailable:
        """Blocks flow (a busy machine may keep a healthy replica's ack past wait_timeout once: try again)."""
        deadline = time.monotonic() + 15
        while True:
            got, _, _ = attempt(shard)
            if (isinstance(got, range) and got) or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    got = flowing(1)
    assert isinstance(got, range) and got, f"no block while the replica was healthy: {got!r}"
    if fault == "frozen":
        pair.freeze_replica()
    else:
        pair.kill_replica()
    try:
        for shard in (2, 3):  # shards with nothing used up locally: each asks Redis
            got, took, max_wait = attempt(shard)
            assert isinstance(got, SequenceUnavailable), f"a block without the replica: {got!r}"
            assert re.search(r"0 replica\(s\) acknowledged .* wait_replicas=1 asked for", str(got)), str(got)
            assert took >= 0.5 * options["wait_timeout"]  # WAIT really waited for the replica
            assert took <= max_wait + 1.0  # within the documented bound, plus slack for a busy machine
    finally:
        if fault == "frozen":
            pair.thaw_replica()
    if fault == "frozen":  # the replica catches up: blocks flow again, the same source goes on
        got = flowing(2)
        assert isinstance(got, range) and got, f"no block after the replica was thawed: {got!r}"
    sync_seq.close()


@pytest.mark.redis  # a primary + replica of its own
def test_more_replicas_asked_than_there_are_is_refused_with_the_count(redis_replica_pair: RedisReplicaPair) -> None:
    with redis_replica_pair.client("primary") as primary:
        warm(primary)
    seq = RedisSequence(redis_replica_pair.primary_url, wait_replicas=2, wait_timeout=1.0)
    with pytest.raises(SequenceUnavailable, match=r"1 replica\(s\) acknowledged .* wait_replicas=2 asked for"):
        seq.reserve(0, now_ms() - LAYOUT.epoch_ms, 1)
    seq.close()


@pytest.mark.redis  # a primary + replica of its own; the replica is promoted
@pytest.mark.parametrize("wait_replicas", [1, 0], ids=["guarded", "control-unguarded"])
def test_a_promoted_replica_serves_no_number_the_old_primary_handed_out(
    redis_replica_pair: RedisReplicaPair, wait_replicas: int
) -> None:
    pair = redis_replica_pair
    primary, replica = pair.client("primary"), pair.client("replica")
    warm(primary)  # replicated: the promoted replica keeps this born guard, the gap wait_replicas closes
    options: dict[str, Any] = {"block_size": 64, "max_skew_ms": 5000, "wait_timeout": 1.0}
    host_a = RedisSequence(pair.primary_url, wait_replicas=wait_replicas, **options)
    t = now_ms() - LAYOUT.epoch_ms  # one millisecond for everyone: valid for max_skew_ms
    handed_out = list(host_a.reserve(1, t, 1)) + list(host_a.reserve(1, t, 1))
    deadline = time.monotonic() + 10  # the replica is in sync before the failover (without WAIT, it just lags)
    while replica.get(f"hv:seq:1:{t}") != b"128" or not replica.exists("hv:seq:born"):
        assert time.monotonic() < deadline, "the replica never caught up"
        time.sleep(0.01)
    replica.replicaof("NO", "ONE")  # the failover: the replica is the primary now
    # the old primary still takes writes from host A (as until Sentinel demotes it); the promoted one never sees them
    for _ in range(2):
        try:
            handed_out += host_a.reserve(1, t, 1)
        except SequenceUnavailable as exc:
            assert wait_replicas, f"failed without wait_replicas: {exc}"
            assert "0 replica(s) acknowledged" in str(exc)
    host_b = RedisSequence(pair.replica_url, **options)  # a host failed over to the promoted replica
    served_after = list(host_b.reserve(1, t, 1)) + list(host_b.reserve(1, t, 1))
    again = set(handed_out) & set(served_after)
    if wait_replicas:
        assert handed_out == list(range(128)) and not again
    else:  # the hazard is real: the promoted replica serves numbers the old primary already handed out
        assert handed_out == list(range(256)) and again == set(range(128, 256))
    for closing in (host_a, host_b, primary, replica):
        closing.close()


def test_the_options_are_listed_once_and_the_url_parser_knows_each() -> None:
    """The constructor's keywords are the options; `_configure` and the URL's table must name the same ones."""
    from hvplugin_redis._common import RedisSequenceBase

    keywords = {p.name for p in inspect.signature(AsyncRedisSequence).parameters.values() if p.kind is p.KEYWORD_ONLY}
    configure = set(inspect.signature(RedisSequenceBase._configure).parameters) - {"self"}
    assert keywords == configure
    assert set(SOURCE_OPTIONS) == keywords - {"layout"}  # a layout is not something a URL can say
