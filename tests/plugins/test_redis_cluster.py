"""The Redis sequence on a real Redis Cluster (3 masters started by the `redis_cluster` fixture): one slot per
script, groups spread over every node, no duplicate from threads, processes and asyncio, one warm-up for all
groups, and a node that lost its data serves none of its old milliseconds."""

from __future__ import annotations

import array
import asyncio
import importlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster
from fixtures.faults import start_redis, stop_redis
from fixtures.redis_cluster import (
    OWNER,
    PREFIX,
    RedisClusterServers,
    free_ports,
    is_our_node,
    start_node,
    sweep_orphan_clusters,
)
from fixtures.services import port_open
from redis.crc import key_slot

from hvcore._key import KeyLayout
from hvcore.errors import SequenceUnavailable
from hvplugin_redis import CLUSTER_GROUPS, AsyncRedisSequence, RedisSequence, make_sequence

pytestmark = pytest.mark.redis

LAYOUT = KeyLayout.DEFAULT


def now_ms() -> int:
    """Wall clock in Unix ms."""
    return time.time_ns() // 1_000_000


def generator_class(name: str) -> Any:
    """``KeyGenerator`` or ``AsyncKeyGenerator``."""
    return getattr(importlib.import_module("hvcore"), name)


def assert_unique(ids: Sequence[int]) -> None:
    dupes = len(ids) - len(set(ids))
    assert dupes == 0, f"{dupes} duplicate ids among {len(ids)}"


def tag(prefix: str, shard: int) -> str:
    return f"{{{prefix}:g{shard % CLUSTER_GROUPS}}}"


def cluster_url(cluster: RedisClusterServers, prefix: str, extra: str = "") -> str:
    return f"{cluster.url}?cluster=true&key_prefix={prefix}{extra}"


def one_id(seq: RedisSequence, shard: int) -> list[int]:
    """Ask until ``shard`` gets a non-empty block of the current millisecond (a fresh group warms up first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = now_ms() - LAYOUT.epoch_ms
        block = seq.reserve(shard, t, 1)
        if block:
            return [(t << LAYOUT.time_shift) | (shard << LAYOUT.shard_shift) | n for n in block]
        time.sleep(0.001)
    pytest.fail(f"shard {shard} got no block within 30 s")


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def cluster_prefix(cluster_client: redis.cluster.RedisCluster) -> str:
    """A key prefix of the test's own, every group's guard set an hour back (no warm-up wait)."""
    prefix = f"hvtest:{uuid.uuid4().hex[:10]}"
    for group in range(CLUSTER_GROUPS):
        cluster_client.set(f"{{{prefix}:g{group}}}:born", now_ms() - 3_600_000)
    return prefix


def node_of(cluster_client: redis.cluster.RedisCluster, key: str) -> int:
    """The port of the master holding ``key``."""
    node = cluster_client.nodes_manager.get_node_from_slot(key_slot(key.encode()))
    return int(node.port)


class CountingClient:
    """A cluster client standing in for the source's own, counting the script's ``HVYOUNG`` replies."""

    def __init__(self, client: redis.cluster.RedisCluster) -> None:
        self.client = client
        self.young = 0

    def _count(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except redis.ResponseError as exc:
            self.young += "HVYOUNG" in str(exc)
            raise

    def evalsha(self, sha: str, numkeys: int, /, *keys_and_args: Any) -> Any:
        return self._count(self.client.evalsha, sha, numkeys, *keys_and_args)

    def eval(self, script: str, numkeys: int, /, *keys_and_args: Any) -> Any:
        return self._count(self.client.eval, script, numkeys, *keys_and_args)

    def close(self) -> None:
        pass


def shards_on_every_node(cluster_client: redis.cluster.RedisCluster, prefix: str, per_node: int) -> list[int]:
    """The first ``per_node`` shards (of distinct groups) of every master."""
    by_node: dict[int, list[int]] = {}
    for shard in range(CLUSTER_GROUPS):
        found = by_node.setdefault(node_of(cluster_client, tag(prefix, shard)), [])
        if len(found) < per_node:
            found.append(shard)
    assert len(by_node) > 1
    return sorted(s for found in by_node.values() for s in found)


# ---------------------------------------------------------------- key placement


def test_each_scripts_keys_share_a_slot_and_groups_spread_over_every_node(
    redis_cluster: RedisClusterServers, cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    with RedisSequence(cluster_url(redis_cluster, cluster_prefix)) as seq:
        assert seq.cluster and "cluster" in repr(seq)
        ids = [i for shard in range(512) for i in one_id(seq, shard)]
    assert_unique(ids)
    counters: dict[int, list[str]] = {port: [] for port in redis_cluster.ports}
    for port in redis_cluster.ports:
        node = redis.Redis(port=port, socket_timeout=5)
        counters[port] = [k.decode() for k in node.scan_iter(match=f"{{{cluster_prefix}:g*}}:*", count=1000)]
        node.close()
    counters = {port: [k for k in keys if not k.endswith(":born")] for port, keys in counters.items()}
    assert sum(map(len, counters.values())) == 512  # one counter per shard (each asked once, in one millisecond)
    assert all(len(keys) > 512 // len(redis_cluster.ports) // 3 for keys in counters.values()), {
        port: len(keys) for port, keys in counters.items()
    }
    slots = set()
    for keys in counters.values():
        for key in keys:
            shard = int(key.split(":")[-2])
            born = f"{tag(cluster_prefix, shard)}:born"
            assert key.startswith(tag(cluster_prefix, shard))
            assert key_slot(key.encode()) == key_slot(born.encode())
            slots.add(key_slot(key.encode()))
    assert len(slots) > CLUSTER_GROUPS * 0.9  # 256 tags in 16384 slots: a collision or two is normal


# ---------------------------------------------------------------- uniqueness


def _worker(url: str, shards: list[int], rounds: int, start_at: float) -> tuple[bytes, float]:
    """A separate process: 2 threads sharing one generator make ids of every shard; returns them and the time."""
    gen = generator_class("KeyGenerator")(LAYOUT, sequence=make_sequence(url))
    out: list[list[int]] = [[], []]
    while time.time() < start_at:  # all processes start together, so they really share milliseconds
        time.sleep(0.001)
    began = time.perf_counter()

    def work(index: int) -> None:
        for r in range(rounds):
            for shard in shards[index::2] if r % 2 else shards:
                out[index] += gen.next_keys(shard, 200)
            out[index].append(gen.next_key(shards[r % len(shards)]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - began
    gen.sequence.close()
    return array.array("q", out[0] + out[1]).tobytes(), took


@pytest.mark.slow
def test_processes_and_threads_on_a_cluster_make_no_duplicates(
    redis_cluster: RedisClusterServers, cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    shards = shards_on_every_node(cluster_client, cluster_prefix, per_node=5)
    procs, rounds = 3, 20
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0
    url = cluster_url(redis_cluster, cluster_prefix)
    with ctx.Pool(procs) as pool:
        parts = pool.starmap(_worker, [(url, shards, rounds, start_at)] * procs)
    ids: list[int] = []
    per_ms: dict[tuple[int, int], set[int]] = {}
    for i, (raw, _) in enumerate(parts):
        got = array.array("q")
        got.frombytes(raw)
        ids.extend(got)
        for value in got:
            shard = (value >> LAYOUT.shard_shift) & LAYOUT.max_shard_id
            per_ms.setdefault((shard, value >> LAYOUT.time_shift), set()).add(i)
    per_thread = [sum(200 * len(shards[i::2] if r % 2 else shards) + 1 for r in range(rounds)) for i in range(2)]
    assert len(ids) == procs * sum(per_thread)
    assert_unique(ids)
    shared = sum(1 for owners in per_ms.values() if len(owners) > 1)
    assert shared > 0, "the processes never shared a (shard, millisecond): the test proved nothing"
    rate = len(ids) / max(took for _, took in parts)
    print(f"cluster: {len(ids)} ids from {procs} processes x 2 threads, {rate:,.0f} ids/s, {shared} shared ms")


def test_async_sources_on_a_cluster_make_unique_ids(redis_cluster: RedisClusterServers, cluster_prefix: str) -> None:
    url = cluster_url(redis_cluster, cluster_prefix)

    async def main() -> list[int]:
        seqs = [make_sequence(url, asyncio=True) for _ in range(2)]
        assert all(isinstance(s, AsyncRedisSequence) and s.cluster for s in seqs)
        gens = [generator_class("AsyncKeyGenerator")(LAYOUT, sequence=s) for s in seqs]

        async def take(gen: Any, shard: int) -> list[int]:
            out: list[int] = []
            for _ in range(20):
                out += await gen.next_keys(shard, 300)
                out.append(await gen.next_key(shard))
            return out

        parts = await asyncio.gather(*(take(g, shard) for g in gens for shard in range(0, 40, 5)))
        for s in seqs:
            await s.close()  # type: ignore[misc]
        return [k for part in parts for k in part]

    keys = asyncio.run(main())
    assert len(keys) == 2 * 8 * 20 * 301
    assert_unique(keys)


# ---------------------------------------------------------------- the born guards


def test_a_fresh_prefix_warms_up_once_for_every_group(
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    prefix = f"hvtest:{uuid.uuid4().hex[:10]}"  # no guard set: a fresh cluster for this prefix
    counting = CountingClient(cluster_client)
    seq = RedisSequence(counting, key_prefix=prefix, cluster=True, max_skew_ms=300)
    ids = [i for shard in range(64) for i in one_id(seq, shard)]  # 64 groups, asked one after the other
    assert_unique(ids)
    assert counting.young == 1, "every group warmed up on its own: each would have cost max_skew_ms"
    assert all(cluster_client.exists(f"{{{prefix}:g{g}}}:born") for g in range(CLUSTER_GROUPS))


def test_async_fresh_prefix_sets_every_guard_at_once(redis_cluster: RedisClusterServers) -> None:
    prefix = f"hvtest:{uuid.uuid4().hex[:10]}"

    async def main() -> range:
        seq = AsyncRedisSequence(cluster_url(redis_cluster, prefix), max_skew_ms=300)
        block = await seq.reserve(7, now_ms() - LAYOUT.epoch_ms, 1)
        await seq.close()
        return block

    assert asyncio.run(main()) == range(0)  # the group warms up
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        assert all(client.exists(f"{{{prefix}:g{g}}}:born") for g in range(CLUSTER_GROUPS))
    finally:
        client.close()


def test_a_node_that_lost_its_data_serves_none_of_its_old_milliseconds(
    redis_cluster: RedisClusterServers, cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    # a wide skew window (and max_wait above it), so a slow machine never turns the test into HVSKEW
    url = cluster_url(
        redis_cluster, cluster_prefix, "&block_size=1024&max_skew_ms=5000&connect_timeout=2&read_timeout=2"
    )
    lost_shard = 0
    lost_port = node_of(cluster_client, tag(cluster_prefix, lost_shard))
    kept_shard = next(s for s in range(1, 64) if node_of(cluster_client, tag(cluster_prefix, s)) != lost_port)
    first = RedisSequence(url)
    t = now_ms() - LAYOUT.epoch_ms
    assert first.reserve(lost_shard, t, 1) == range(1024)
    assert first.reserve(kept_shard, t, 1) == range(1024)
    node = redis.Redis(port=lost_port, socket_timeout=5)
    node.flushall()  # as a restart without persistence would: the counters and that node's guards are gone
    node.close()
    other = RedisSequence(url)  # another process asking for the same millisecond
    assert other.reserve(lost_shard, t, 1) == range(0), "a lost counter was served again from 0"
    assert other.reserve(kept_shard, t, 1) == range(0)  # this counter survived: used up, nothing more
    first.close()
    other.close()


def test_datastores_take_a_cluster_url(redis_cluster: RedisClusterServers, cluster_prefix: str) -> None:
    import hvcore

    servers = [dict(shards="0-64", name="redis-cluster-url")]
    with hvcore.Datastore(servers, backend="memory", sequence=cluster_url(redis_cluster, cluster_prefix)) as db:
        keys = [db.put(shard, 1, n=str(i)) for i in range(20) for shard in range(0, 64, 4)]
        assert db.get(keys[0]) is not None
    assert_unique(keys)


# ---------------------------------------------------------------- the fixture's own servers


def _node_gone(pid: int, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_our_node(pid, port):
            return True
        time.sleep(0.02)
    return False


def _wait_for_node(top: Path, port: int) -> int:
    pidfile = top / str(port) / "redis.pid"
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip() and port_open("127.0.0.1", port, timeout=0.1)):
        assert time.monotonic() < deadline, f"redis-server on port {port} did not start"
        time.sleep(0.02)
    return int(pidfile.read_text())


def test_nodes_of_a_killed_run_are_swept_by_the_next(redis_cluster: RedisClusterServers) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    top = Path(tempfile.mkdtemp(prefix=PREFIX))
    (top / OWNER).write_text(dead.stdout.strip())  # as if the run that started it had been killed
    port = free_ports(1)[0]
    proc = start_node(top, port)
    pid = _wait_for_node(top, port)
    swept = sweep_orphan_clusters()
    assert top in swept and not top.exists()
    assert proc.wait(timeout=10) == -signal.SIGKILL and _node_gone(pid, port)
    assert redis_cluster.top not in swept and redis_cluster.top.exists()  # a live run's cluster is left alone


def test_nodes_die_with_the_process_that_started_them() -> None:
    tests = Path(__file__).resolve().parents[1]
    code = (
        f"import sys, time; sys.path.insert(0, {str(tests)!r})\n"
        "from fixtures.redis_cluster import free_ports, new_cluster_dir, start_node\n"
        "top = new_cluster_dir(); port = free_ports(1)[0]; start_node(top, port)\n"
        "print(top, port, flush=True); time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    top_text, port_text = child.stdout.readline().split()
    top, port = Path(top_text), int(port_text)
    try:
        pid = _wait_for_node(top, port)
        child.kill()  # the "test run" dies without any teardown
        child.wait(timeout=10)
        assert _node_gone(pid, port), "the node outlived the process that started it"
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------- misuse and fork


def test_a_plain_url_to_a_cluster_node_says_to_use_cluster_mode(redis_cluster: RedisClusterServers) -> None:
    seq = RedisSequence(redis_cluster.url, retries=0)
    assert not seq.cluster
    with pytest.raises(SequenceUnavailable, match=r"Redis Cluster node: use cluster=True, or \?cluster=true"):
        seq.reserve(1, now_ms() - LAYOUT.epoch_ms, 1)
    seq.close()


def test_cluster_mode_on_a_plain_redis_is_sequence_unavailable() -> None:
    port = free_ports(1)[0]
    proc = start_redis(port)
    try:
        seq = RedisSequence(f"redis://127.0.0.1:{port}/0?cluster=true", retries=0)
        with pytest.raises(SequenceUnavailable, match=r"RedisClusterException.*[Cc]luster mode is not enabled"):
            seq.reserve(1, now_ms() - LAYOUT.epoch_ms, 1)
        seq.close()
    finally:
        stop_redis(proc)


def test_a_cluster_client_handed_in_means_cluster_mode(
    cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    seq = RedisSequence(cluster_client, key_prefix=cluster_prefix)
    assert seq.cluster and seq.name == "RedisCluster client"
    assert one_id(seq, 9)
    seq.close()
    assert cluster_client.ping()  # not ours to close


def test_a_forked_child_maps_the_cluster_again(redis_cluster: RedisClusterServers, cluster_prefix: str) -> None:
    seq = RedisSequence(cluster_url(redis_cluster, cluster_prefix, "&block_size=8"))
    gen = generator_class("KeyGenerator")(LAYOUT, sequence=seq)
    before = list(gen.next_keys(3, 500))
    parent_client = seq._client
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            ids = list(gen.next_keys(3, 2000))
            own = seq._client is not None and seq._client is not parent_client
            seq.close()  # must not end the parent's connections
            with os.fdopen(write_end, "wb") as out:
                out.write(bytes([own]) + array.array("q", ids).tobytes())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    during = list(gen.next_keys(3, 2000))
    with os.fdopen(read_end, "rb") as inp:
        raw = inp.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert raw[0] == 1, "the child kept using the parent's cluster client"
    child = array.array("q")
    child.frombytes(raw[1:])
    assert len(child) == 2000
    after = list(gen.next_keys(3, 500))  # the parent's client survived the child's close()
    assert_unique(before + during + list(child) + after)
    seq.close()
