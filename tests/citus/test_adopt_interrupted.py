"""`hv citus adopt` interrupted (SIGKILL) and resumed, and adoption while processes keep writing.

Nothing is faked: the command runs as a process and is killed for real; the writers are `Datastore`s on the
servers' old config and on the coordinator, writing while shards are staged, distributed and handed over.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from citus.citus_helpers import connect, dsn, prepare_for_citus, run_hv, write_config
from fixtures.citus import CitusCluster

import hvcore
from hvcore import Datastore, Key, Record
from hvcore._distributed import adopt_shards

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


def _fleet(cluster: CitusCluster, top: Path, shards: int, rows: int) -> tuple[Path, list[dict[str, Any]], list[Key]]:
    """Two plain servers holding ``shards`` shards of ``rows`` rows, ready for Citus (not yet worker nodes)."""
    plain = [cluster.new_plain_server() for _ in range(2)]
    servers = [{**server.settings, "dbname": cluster.dbname} for server in plain]
    half = shards // 2
    config = write_config(
        top / "hv.toml", [{"shards": f"0-{half}", **servers[0]}, {"shards": f"{half}-{shards}", **servers[1]}]
    )
    keys: list[Key] = []
    with Datastore.from_config(config) as db:
        db.provision()
        for shard in range(shards):
            keys += db.put_many(shard, 1, [{"shard": shard, "i": i} for i in range(rows)])
    for server in plain:
        prepare_for_citus(cluster, server)
    return config, servers, keys


def _adopted(cluster: CitusCluster) -> int:
    with cluster.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_dist_schema").fetchone()
        return int(row[0]) if row else 0


def test_an_adoption_killed_midway_resumes_where_it_stopped(citus_cluster_factory: Any, tmp_path: Path) -> None:
    cluster = citus_cluster_factory(0)
    config, servers, keys = _fleet(cluster, tmp_path, 32, 200)
    with Datastore.from_config(config) as db:
        before = db.get_many(keys)
    command = [
        sys.executable,
        "-m",
        "hvcore.cli",
        "citus",
        "adopt",
        "--config",
        str(config),
        "--coordinator",
        dsn(cluster.coordinator),
        "--batch",
        "4",
    ]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 60
        while _adopted(cluster) < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        running = process.poll() is None
        process.send_signal(signal.SIGKILL)
    assert running, "the adoption ended before it could be interrupted"
    partial = _adopted(cluster)
    staged = []
    for settings in servers:
        with connect(settings) as conn:
            staged += [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hv_adopt_%'")]
    print(f"killed with {partial} of 32 schemas distributed, {len(staged)} staged")
    assert 10 <= partial < 32

    code, text = run_hv("citus", "adopt", "--config", str(config), "--coordinator", dsn(cluster.coordinator))

    assert code == 0, text
    assert _adopted(cluster) == 32
    citus_config = tmp_path / "hv-citus.toml"
    citus_config.write_text(text, encoding="utf-8")
    with Datastore.from_config(citus_config) as db:
        assert db.get_many(keys) == before
        assert sum(1 for _ in db.query()) == len(keys)
    for settings in servers:
        with connect(settings) as conn:
            assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'hv\\_adopt\\_%'").fetchone() == (
                0,
            )
    for shard in range(32):
        ((_, port),) = cluster.schema_nodes(f"shard{shard:04d}")
        assert port == servers[0 if shard < 16 else 1]["port"]


def test_writes_while_shards_are_handed_over_are_refused_or_kept_never_lost(
    citus_cluster_factory: Any, tmp_path: Path
) -> None:
    """Old-config writers keep writing to the servers during the whole adoption; a writer on the coordinator
    writes into each batch's shards between their distribution and their hand-over (rows then merged)."""
    cluster = citus_cluster_factory(0)
    shards = 16
    config, _, keys = _fleet(cluster, tmp_path, shards, 100)
    acknowledged: list[Key] = []
    refused: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(offset: int) -> None:
        with Datastore.from_config(config, pool_block_timeout=10) as db:
            i = 0
            while not stop.is_set():
                shard = (offset + i) % shards
                i += 1
                try:
                    key = db.put(shard, 2, by="old config", i=i)
                except hvcore.NotProvisioned as exc:  # the shard's schema is set aside on its server right now
                    with lock:
                        refused.append(str(exc))
                    continue
                with lock:
                    acknowledged.append(key)

    coordinator_writes: list[Key] = []
    to_be_merged = [0]  # writes into shards distributed but not handed over yet
    coordinator = Datastore([{"shards": f"0-{shards}", **cluster.coordinator}], backend="jsonb", allow_gaps=True)

    def progress(phase: str, done: int, total: int) -> None:
        if phase != "hand-over":
            return
        written = 0
        for shard in range(shards):  # the batch's shards are distributed, not handed over: into the empty tables
            try:
                coordinator_writes.append(coordinator.put(shard, 3, by="coordinator", before=done))
            except hvcore.NotProvisioned:
                continue  # not distributed yet
            written += 1
        to_be_merged[0] += written - done  # the first `done` shards (earlier batches) were handed over already

    threads = [threading.Thread(target=writer, args=(n * 5,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        with (
            Datastore.from_config(config, pool_max=2) as source,
            Datastore(
                [{"shards": f"0-{shards}", "conninfo": dsn(cluster.coordinator)}], backend="jsonb", pool_max=2
            ) as target,
        ):
            report = adopt_shards(source, target, progress=progress, batch=4)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        written_by_coordinator = len(coordinator_writes)
        found = coordinator.get_many([*keys, *acknowledged, *coordinator_writes])
        print(
            f"adopted {report.adopted} shards in {report.seconds:.2f} s while writing: {len(acknowledged)} old-config "
            f"writes acknowledged, {len(refused)} refused (NotProvisioned), {written_by_coordinator} written through "
            f"the coordinator mid-adoption, {report.merged_rows} rows merged; phases {report.phases}"
        )
        assert report.adopted == shards and report.verified == shards
        assert set(found) == {*keys, *acknowledged, *coordinator_writes}, "an acknowledged write was lost"
        assert to_be_merged[0] == shards  # each batch's 4 shards took a write between distribution and hand-over
        assert report.merged_rows >= to_be_merged[0]  # (old-config writes routed by Citus meanwhile add to it)
        assert len(acknowledged) > 50
        assert all("not provisioned" in text for text in refused)
        for key in coordinator_writes:
            record = found[key]
            assert record == Record(key, 3, record.data) and record.data["by"] == "coordinator"
    finally:
        coordinator.close()
    with connect(cluster.coordinator) as conn:
        assert conn.execute("SELECT count(*) FROM pg_dist_schema").fetchone() == (shards,)


def test_an_hstore_fleet_with_a_shard_moved_by_hypervault_is_adopted_where_the_shard_lives(
    citus_cluster_factory: Any, tmp_path: Path
) -> None:
    """hstore bodies; shard 3 was moved to the second server by ``hv shard move`` before (its first server keeps a
    forwarding stub under the shard's schema name, which must make way for the schema Citus creates there)."""
    cluster = citus_cluster_factory(0)
    plain = [cluster.new_plain_server() for _ in range(2)]
    servers = [{**server.settings, "dbname": cluster.dbname} for server in plain]
    config = write_config(
        tmp_path / "hv.toml", [{"shards": "0-4", **servers[0]}, {"shards": "4-8", **servers[1]}], backend="hstore"
    )
    with Datastore.from_config(config) as db:
        db.provision()
        keys = [k for shard in range(8) for k in db.put_many(shard, 1, [{"v": str(i)} for i in range(50)])]
        db.move_shard(3, 1)
        reference = db.get_many(keys)
    for server in plain:
        prepare_for_citus(cluster, server)

    code, text = run_hv("citus", "adopt", "--config", str(config), "--coordinator", dsn(cluster.coordinator))

    assert code == 0, text
    assert f"renamed the leftover shard0003 on 127.0.0.1:{servers[0]['port']}/hv_citus to hv_retired_0003" in text
    assert cluster.schema_nodes("shard0003") == [("127.0.0.1", servers[1]["port"])]
    citus_config = tmp_path / "hv-citus.toml"
    citus_config.write_text(text, encoding="utf-8")
    with Datastore.from_config(citus_config) as db:
        assert db.backend == "hstore"
        assert db.get_many(keys) == reference
        assert [r.data for r in db.query(shards=[3], where={"v": "7"})] == [{"v": "7"}]
