"""The Citus fixtures: a coordinator and two workers with schema-based sharding; plain servers adopted as workers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import psycopg
from fixtures.citus import CITUS_VERSION, INSTALL_SCRIPT, CitusCluster
from psycopg import sql


def test_a_distributed_schema_created_on_the_coordinator_lives_on_a_worker(citus_cluster: CitusCluster) -> None:
    cluster = citus_cluster
    schema = "shard0001"
    workers = [(w["host"], w["port"]) for w in cluster.workers]
    assert cluster.active_workers() == sorted(workers)
    with cluster.connect() as conn:
        version = conn.execute("SELECT citus_version()").fetchone()
        assert version is not None and f"Citus {CITUS_VERSION}" in version[0]
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        with cluster.connect() as conn:
            conn.execute(f"CREATE TABLE {schema}.items (id bigint PRIMARY KEY, body jsonb)")
            rows = "SELECT g, jsonb_build_object('n', g) FROM generate_series(1, 100) g"
            conn.execute(f"INSERT INTO {schema}.items {rows}")
            conn.execute("SELECT citus_schema_distribute(%s)", (schema,))
            assert conn.execute("SELECT schema_name::text FROM citus_schemas").fetchall() == [(schema,)]
            assert conn.execute(f"SELECT count(*), sum(id) FROM {schema}.items").fetchone() == (100, 5050)
            assert conn.execute(f"SELECT body->>'n' FROM {schema}.items WHERE id = 42").fetchone() == ("42",)
        (node,) = cluster.schema_nodes(schema)
        assert node in workers
        shard = cluster.shard_names(schema)[f"{schema}.items"]
        for settings in cluster.workers:
            with psycopg.connect(**settings, autocommit=True) as conn:
                conn.execute("SET citus.override_table_visibility = off")  # show the shard tables themselves
                held = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (shard,)).fetchone() == (True,)
                assert held == ((settings["host"], settings["port"]) == node)
                if held:
                    assert conn.execute(f"SELECT count(*) FROM {shard}").fetchone() == (100,)
    finally:
        with cluster.connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_plain_servers_with_data_become_the_workers(citus_cluster_factory: Callable[..., CitusCluster]) -> None:
    cluster = citus_cluster_factory(0)  # a coordinator alone
    assert cluster.active_workers() == []
    plain = [cluster.new_plain_server() for _ in range(2)]
    with psycopg.connect(**plain[0].settings, autocommit=True) as conn:
        assert conn.execute("SHOW shared_preload_libraries").fetchone() == ("",)
    with psycopg.connect(**{**plain[0].settings, "dbname": cluster.dbname}, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shard0002")
        conn.execute("CREATE TABLE shard0002.items (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO shard0002.items SELECT generate_series(1, 10)")
    adopted = [cluster.add_worker(server) for server in plain]
    assert cluster.active_workers() == sorted(("127.0.0.1", server.port) for server in plain)
    assert cluster.workers == adopted
    with psycopg.connect(**adopted[0], autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM shard0002.items").fetchone() == (10,)  # kept through the restart
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'citus'").fetchone() == ("citus",)
    move = "SELECT citus_schema_move('shard0003', '127.0.0.1', %s, 'block_writes')"
    with cluster.connect() as conn:  # a distributed schema moves between the adopted workers
        conn.execute("SET citus.enable_schema_based_sharding = on")
        conn.execute("CREATE SCHEMA shard0003")
        conn.execute("CREATE TABLE shard0003.items (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO shard0003.items SELECT generate_series(1, 5)")
        for server in (plain[0], plain[1]):
            if cluster.schema_nodes("shard0003") != [("127.0.0.1", server.port)]:
                conn.execute(move, (server.port,))
            assert cluster.schema_nodes("shard0003") == [("127.0.0.1", server.port)]
            assert conn.execute("SELECT count(*) FROM shard0003.items").fetchone() == (5,)


def test_the_install_script_does_nothing_once_citus_is_installed(citus_cluster: CitusCluster) -> None:
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == result.stderr == ""
