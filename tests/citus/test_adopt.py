"""`hv citus adopt`: 64 shards × 1,000 rows written by hypervault to two plain servers, handed over to Citus.

The module's fleet is built once, as a user would (the README's "Outgrowing" commands): two plain PostgreSQL
servers hold the shards (one given as a conninfo string, one as separate keys); hypervault provisions them and
writes 64,000 rows; the servers are made ready for Citus (``shared_preload_libraries``, restart, ``CREATE EXTENSION
citus``: the README's ``psql`` line, run by psql on the second; the first one is also added as a worker node, the
second is left for the command to add); then
``hv citus adopt --config hv.toml --coordinator DSN`` prints the new config, saved as ``hv-citus.toml``.
Tests that write remove their rows afterwards, so the reference holds for every test in any order.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from citus.citus_helpers import (
    connect,
    dsn,
    preload_citus,
    readme_command,
    require_citus,
    run_hv,
    shard_table_on,
    write_config,
)
from fixtures.citus import CitusCluster
from fixtures.localpg import LocalServer, find_bin_dir

import hvcore
from hvcore import Datastore, Key, Record
from hvcore._shardmap import parse_shards

pytestmark = [pytest.mark.citus, pytest.mark.postgres]

SHARDS = 64
ROWS = 1000
BODY_INDEX_DDL = "CREATE INDEX entities_body_idx ON {schema}.entities USING gin (body jsonb_path_ops)"


@dataclasses.dataclass
class Fleet:
    """The adopted fleet and what was recorded before and right after adoption."""

    cluster: CitusCluster
    plain: list[LocalServer]
    servers: list[dict[str, Any]]  # connection settings of the two servers (the cluster's database)
    config: Path  # the config the fleet ran on (plain servers)
    citus_config: Path  # what hv citus adopt printed: one server, the coordinator
    output: str
    keys: list[Key]
    reference: dict[int, list[Record]]  # per shard, in key order, read from the plain servers
    filenodes: dict[int, int]  # shard → relfilenode of shardNNNN.entities on its plain server, before
    adopted: dict[int, tuple[int, str, int]]  # shard → (worker port, shard table, relfilenode), right after

    def holder(self, shard: int) -> dict[str, Any]:
        return self.servers[0] if shard < SHARDS // 2 else self.servers[1]

    def other(self, shard: int) -> dict[str, Any]:
        return self.servers[1] if shard < SHARDS // 2 else self.servers[0]

    def coordinator(self, **options: Any) -> Datastore:
        return Datastore.from_config(self.citus_config, **options)


def _body(shard: int, i: int) -> dict[str, Any]:
    return {"n": i, "shard": shard, "tag": "odd" if i % 2 else "even", "nested": {"i": i, "l": [i, str(i), None]}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_citus()
    cluster = CitusCluster(0)
    try:
        plain = [cluster.new_plain_server() for _ in range(2)]
        servers = [{**server.settings, "dbname": cluster.dbname} for server in plain]
        top = tmp_path_factory.mktemp("citus-adopt")
        config = write_config(
            top / "hv.toml",
            [{"shards": "0-32", "conninfo": dsn(servers[0])}, {"shards": "32-64", **servers[1]}],
        )
        keys: list[Key] = []
        with Datastore.from_config(config) as db:
            db.provision()
            for shard in range(SHARDS):
                keys += db.put_many(shard, shard % 3, [_body(shard, i) for i in range(ROWS)])
            reference = {shard: list(db.query(shards=[shard])) for shard in range(SHARDS)}
        with connect(servers[0]) as conn:  # the first server's shards as an earlier release made them: a body index
            for shard in range(SHARDS // 2):
                conn.execute(BODY_INDEX_DDL.format(schema=f"shard{shard:04d}"))
        filenodes = {}
        for shard in range(SHARDS):
            with connect(servers[0] if shard < 32 else servers[1]) as conn:
                row = conn.execute("SELECT pg_relation_filenode(%s)", (f"shard{shard:04d}.entities",)).fetchone()
                filenodes[shard] = int(row[0]) if row else -1
        cluster.add_worker(plain[0])  # preload, restart, extension and citus_add_node
        preload_citus(plain[1])  # then the README's psql line; left for hv citus adopt to add as a node
        argv, _ = readme_command("psql", {"host=db1 dbname=app": dsn(servers[1])})
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        done = subprocess.run([str(bin_dir / "psql"), "-X", *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

        citus_config = top / "hv-citus.toml"
        argv, saved_to = readme_command(
            "hv citus adopt",
            {
                "hv.toml": str(config),
                "host=citus0 dbname=app": dsn(cluster.coordinator),
                "hv-citus.toml": str(citus_config),
            },
        )
        code, output = run_hv(*argv)
        assert code == 0, output
        assert saved_to == str(citus_config)
        citus_config.write_text(output, encoding="utf-8")
        adopted = {}
        for shard in range(SHARDS):
            schema = f"shard{shard:04d}"
            ((_, port),) = cluster.schema_nodes(schema)
            table = cluster.shard_names(schema)[f"{schema}.entities"]
            with connect({**plain[0].settings, "port": port, "dbname": cluster.dbname}) as conn:
                row = conn.execute("SELECT pg_relation_filenode(%s)", (table,)).fetchone()
            adopted[shard] = (port, table, int(row[0]) if row and row[0] is not None else -1)
        yield Fleet(cluster, plain, servers, config, citus_config, output, keys, reference, filenodes, adopted)
    finally:
        cluster.stop()


def test_the_command_prints_the_report_and_the_new_config(fleet: Fleet) -> None:
    text = fleet.output
    assert "# adopted 64 shard(s) into Citus 13.0.5" in text
    assert f"{SHARDS * ROWS:,} rows in 64 shard(s) verified through the coordinator" in text
    assert f"#   added 127.0.0.1:{fleet.plain[1].port}/hv_citus as worker node 127.0.0.1:{fleet.plain[1].port}" in text
    config = tomllib.loads(text)  # the report is TOML comments: the output is the new config file
    assert config["backend"] == "jsonb"
    (server,) = config["servers"]
    assert server == {"shards": "0-64", "conninfo": dsn(fleet.cluster.coordinator)}
    assert fleet.cluster.active_workers() == sorted(("127.0.0.1", p.port) for p in fleet.plain)


def test_every_row_reads_back_identical_through_the_coordinator(fleet: Fleet) -> None:
    with fleet.coordinator() as db:
        assert db.servers[0].label == f"127.0.0.1:{fleet.cluster.coordinator['port']}/hv_citus"
        for shard in range(SHARDS):
            assert list(db.query(shards=[shard])) == fleet.reference[shard], f"shard {shard}"
        for key in fleet.keys[:: ROWS // 4]:
            record = db.get(key)
            assert record is not None and record.data == _body(key.shard_id, record.data["n"])


def test_get_many_and_query_in_key_order_match_the_per_shard_reference(fleet: Fleet) -> None:
    everything = sorted((r for rows in fleet.reference.values() for r in rows), key=lambda r: int(r.key))
    assert len(everything) == SHARDS * ROWS
    with fleet.coordinator() as db:
        found = db.get_many(fleet.keys)
        assert found == {r.key: r for r in everything}
        assert list(db.query()) == everything
        odd = [r for r in everything if r.kind == 1 and r.data["tag"] == "odd"]
        assert list(db.query(kind=1, where={"tag": "odd"}, limit=500)) == odd[:500]
        low, high = everything[10_000].key, everything[50_000].key
        assert list(db.query(since=low, until=high)) == everything[10_000:50_000]
        some = [7, 40, 63]
        assert list(db.query(shards=some)) == [r for r in everything if r.key.shard_id in some]


def test_no_row_was_copied_the_shard_tables_are_the_servers_own_files(fleet: Fleet) -> None:
    for shard in range(SHARDS):
        port, table, filenode = fleet.adopted[shard]
        assert port == fleet.holder(shard)["port"], f"shard {shard} went to another server"
        assert table == f"shard{shard:04d}.entities_{table.rsplit('_', 1)[1]}"
        assert filenode == fleet.filenodes[shard], f"shard {shard}: its table was rewritten or copied"
    with connect(fleet.cluster.coordinator) as conn:  # the coordinator keeps no rows, only the shells
        row = conn.execute(
            "SELECT sum(pg_relation_size(format('shard%s.entities', lpad(g::text, 4, '0'))))"
            " FROM generate_series(0, 63) g"
        ).fetchone()
        assert row == (0,)
    for settings in fleet.servers:
        with connect(settings) as conn:
            left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'hv\\_adopt\\_%'").fetchall()
            assert left == []


def test_puts_and_gets_through_the_coordinator_land_on_the_worker_holding_the_schema(fleet: Fleet) -> None:
    with fleet.coordinator() as db:
        for shard in (5, 40):
            schema = f"shard{shard:04d}"
            table = fleet.cluster.shard_names(schema)[f"{schema}.entities"]
            (node,) = fleet.cluster.schema_nodes(schema)
            holder = fleet.servers[0] if node[1] == fleet.servers[0]["port"] else fleet.servers[1]
            other = fleet.servers[1] if holder is fleet.servers[0] else fleet.servers[0]
            before = shard_table_on(holder, table)
            key = db.put(shard, 9, via="coordinator")
            batch = db.put_many(shard, 9, [{"i": i} for i in range(10)])
            assert db.get(key) == Record(key, 9, {"via": "coordinator"})
            assert db.update(key, more=1) and db.get(key) == Record(key, 9, {"via": "coordinator", "more": 1})
            assert shard_table_on(holder, table) == (before or 0) + 11  # on the worker holding the schema
            assert shard_table_on(other, table) is None  # and nowhere else
            with connect(holder) as conn:
                row = conn.execute(f"SELECT kind, body FROM {table} WHERE id = %s", (key,)).fetchone()
                assert row == (9, {"via": "coordinator", "more": 1})
            for k in (key, *batch):
                assert db.delete(k)
            assert shard_table_on(holder, table) == before


def test_processes_with_the_old_config_keep_working_through_the_workers(fleet: Fleet) -> None:
    """The servers are Citus workers with the cluster's metadata: statements to them are routed by Citus too."""
    with Datastore.from_config(fleet.config) as old, fleet.coordinator() as new:
        for shard in (3, 50):
            key = old.put(shard, 2, written="to the old server")
            assert new.get(key) == Record(key, 2, {"written": "to the old server"})
            assert old.get(key) == new.get(key)
            assert new.delete(key) and old.get(key) is None


def test_citus_schema_move_under_write_load_loses_no_write(fleet: Fleet) -> None:
    shard, others = 7, (8, 45)
    schema = f"shard{shard:04d}"
    ((_, source),) = fleet.cluster.schema_nodes(schema)
    target = fleet.servers[1]["port"] if source == fleet.servers[0]["port"] else fleet.servers[0]["port"]
    acknowledged: list[Key] = []
    failures: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(db: Datastore, target_shard: int) -> None:
        while not stop.is_set():
            try:
                key = db.put(target_shard, 4, t=time.time())
            except hvcore.HypervaultError as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                acknowledged.append(key)

    with fleet.coordinator() as db:
        threads = [threading.Thread(target=writer, args=(db, s)) for s in (shard, shard, *others)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        try:
            argv, _ = readme_command(
                "hv shard move", {"db2:5432": f"127.0.0.1:{target}", "hv-citus.toml": str(fleet.citus_config)}
            )
            assert argv[:3] == ["shard", "move", str(shard)]
            code, text = run_hv(*argv, "--json")

            time.sleep(0.3)  # writes go on after the switch
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert code == 0, text
        report = json.loads(text)
        assert (report["source"], report["target"]) == (f"127.0.0.1:{source}", f"127.0.0.1:{target}")
        assert report["engine"] == "Citus 13.0.5" and report["rows"] >= ROWS
        assert fleet.cluster.schema_nodes(schema) == [("127.0.0.1", target)]
        found = db.get_many(acknowledged)
        moved = [k for k in acknowledged if k.shard_id == shard]
        print(
            f"citus_schema_move of {report['rows']} rows in {report['seconds']:.2f} s; "
            f"{len(acknowledged)} acknowledged writes ({len(moved)} to the moved shard), "
            f"{len(acknowledged) - len(found)} lost, {len(failures)} failed"
        )
        assert len(moved) > 20 and len(acknowledged) - len(moved) > 20
        assert set(found) == set(acknowledged), "acknowledged writes lost"
        assert failures == []
        for key in acknowledged:
            db.delete(key)
        table = fleet.cluster.shard_names(schema)[f"{schema}.entities"]
        assert shard_table_on({**fleet.servers[0], "port": target}, table) == ROWS


def test_status_reads_the_nodes_from_citus_schemas(fleet: Fleet) -> None:
    argv, _ = readme_command("hv status", {"hv-citus.toml": str(fleet.citus_config)})
    code, text = run_hv(*argv, "--json")
    assert code == 0
    (entry,) = json.loads(text)
    assert entry["rows"] == SHARDS * ROWS and entry["provisioned_shards"] == SHARDS
    cluster = entry["cluster"]
    assert cluster["engine"] == "Citus 13.0.5"
    nodes = {n["node"]: n for n in cluster["nodes"]}
    assert set(nodes) == {f"127.0.0.1:{s['port']}" for s in fleet.servers}
    assert sum(n["shard_count"] for n in nodes.values()) == SHARDS
    for shard in range(SHARDS):
        ((_, port),) = fleet.cluster.schema_nodes(f"shard{shard:04d}")
        ranges, problems = parse_shards(nodes[f"127.0.0.1:{port}"]["shards"])
        assert not problems and any(shard in r for r in ranges)
    assert all(n["bytes"] > 0 for n in nodes.values())
    code, text = run_hv("status", "--config", str(fleet.citus_config))
    assert code == 0 and "is a Citus 13.0.5 coordinator; its shards live on these nodes:" in text


def test_adopting_again_changes_nothing(fleet: Fleet) -> None:
    code, text = run_hv(
        "citus", "adopt", "--config", str(fleet.config), "--coordinator", dsn(fleet.cluster.coordinator)
    )
    assert code == 0, text
    assert "# adopted 0 shard(s)" in text and "64 adopted before" in text


def test_a_move_to_an_unknown_node_names_the_servers_and_nodes(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_hv("shard", "move", "3", "--to", "10.9.9.9:5432", "--config", str(fleet.citus_config))
    assert code == 2
    error = capsys.readouterr().err
    assert "unknown server '10.9.9.9:5432'" in error and "Citus 13.0.5 cluster" in error
    assert all(f"127.0.0.1:{s['port']}" in error for s in fleet.servers)


def test_shards_with_a_body_index_keep_it_and_shards_without_get_none(fleet: Fleet) -> None:
    """The first server's shards had the body index (an earlier release's layout), the second's not (provisioned
    now): Citus's shard tables are as the servers' tables were, and the coordinator's tables the same."""
    for shard in (0, 31, 32, 63):
        port, table, _ = fleet.adopted[shard]
        schema, name = table.split(".")
        with connect({**fleet.servers[0], "port": port}) as conn:
            conn.execute("SET citus.override_table_visibility = off")  # Citus hides shard tables from the catalog
            indexes = [
                str(r[0])
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = %s", (schema, name)
                )
            ]
        assert any(i.startswith("entities_body_idx") for i in indexes) == (shard < SHARDS // 2), (shard, indexes)
        with connect(fleet.cluster.coordinator) as conn:
            shell = [
                str(r[0])
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'entities'", (schema,)
                )
            ]
        assert ("entities_body_idx" in shell) == (shard < SHARDS // 2), (shard, shell)
    with fleet.coordinator() as db:
        for shard in (0, 40):
            tag = [r for r in db.query(shards=[shard], where={"tag": "odd", "n": 7})]
            assert [r.key for r in tag] == [r.key for r in fleet.reference[shard] if r.data["n"] == 7]
