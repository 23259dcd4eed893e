"""What hypervault checks before touching Citus, and provisioning on a coordinator.

The unsupported version is real: a database whose ``citus`` extension is at 11.3-1 (created with Citus's own
``citus.enable_version_checks = off``, as an extension never updated after a library upgrade would be).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from citus.citus_helpers import connect, dsn, run_hv, write_config
from fixtures.citus import CitusCluster
from psycopg import sql

from hvbackend_postgres._citus import check_citus_version
from hvcore import ConfigError, Datastore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


@pytest.mark.parametrize(
    ("extversion", "library", "message"),
    [
        ("11.3-1", None, "at version 11.3-1: hypervault needs Citus 12.0 or newer"),
        ("10.2-4", "Citus 10.2.9 on x86_64", "needs Citus 12.0 or newer"),
        ("14.0-1", "Citus 14.0.0 on x86_64", "supports Citus 12.0 up to, not including, 14.0"),
        ("12.1-1", "Citus 13.0.5 on x86_64", "loads the Citus 13.0 library but its extension is at 12.1-1"),
        ("banana", None, "cannot read"),
    ],
)
def test_unsupported_citus_versions_are_refused_by_name(extversion: str, library: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match="the coordinator") as refused:
        check_citus_version(extversion, library, "the coordinator")
    assert message in str(refused.value)


def test_supported_citus_versions_pass() -> None:
    assert check_citus_version("13.0-1", "Citus 13.0.5 on x86_64-pc-linux-gnu, 64-bit", "x") == "13.0.5"
    assert check_citus_version("12.1-1", "Citus 12.1.6 on x86_64", "x") == "12.1.6"


def test_a_coordinator_whose_citus_extension_is_too_old_gets_a_clear_error(
    citus_cluster: CitusCluster, pg_main: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dbname = "hv_citus_old_extension"
    server = citus_cluster.coordinator_server.settings
    with connect(server) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    old = {**server, "dbname": dbname}
    try:
        with connect(old) as conn:
            conn.execute("SET citus.enable_version_checks = off")
            conn.execute("CREATE EXTENSION citus VERSION '11.3-1'")
        config = write_config(tmp_path / "hv.toml", [{"shards": "0-4", **pg_main}])

        code, _ = run_hv("citus", "adopt", "--config", str(config), "--coordinator", dsn(old))

        assert code == 2
        error = capsys.readouterr().err
        assert f"127.0.0.1:{server['port']}/{dbname} has the Citus extension at version 11.3-1" in error
        assert "hypervault needs Citus 12.0 or newer" in error and "ALTER EXTENSION citus UPDATE" in error
        with Datastore([{"shards": "0-4", **old}], backend="jsonb") as db, pytest.raises(ConfigError, match=r"11\.3-1"):
            db.provision()
    finally:
        with connect(server) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def test_adopting_into_a_server_without_citus_says_what_to_install(
    pg_main: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "hv.toml", [{"shards": "0-4", **pg_main}])
    code, _ = run_hv("citus", "adopt", "--config", str(config), "--coordinator", dsn(pg_main))
    assert code == 2
    error = capsys.readouterr().err
    assert "is not a Citus coordinator: install Citus 12.0 or newer there" in error


def test_a_config_server_without_citus_is_named_with_what_to_do(
    citus_cluster: CitusCluster, pg_main: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path / "hv.toml", [{"shards": "0-4", **pg_main}])
    code, _ = run_hv("citus", "adopt", "--config", str(config), "--coordinator", dsn(citus_cluster.coordinator))
    assert code == 2
    error = capsys.readouterr().err
    assert f"{pg_main['host']}:{pg_main['port']}/{pg_main['dbname']} holds shards but has no Citus" in error
    assert "shared_preload_libraries = 'citus'" in error
    assert citus_cluster.schema_nodes("shard0000") == []  # nothing was touched


def test_provisioning_on_a_coordinator_creates_and_distributes_every_shard_schema(
    citus_cluster: CitusCluster, tmp_path: Path
) -> None:
    shards = range(200, 217)
    with citus_cluster.connect() as conn:  # a shard schema that exists on the coordinator as a local table
        conn.execute("CREATE SCHEMA shard0216")
        conn.execute(
            "CREATE TABLE shard0216.entities (id bigint PRIMARY KEY, kind smallint NOT NULL, body jsonb NOT NULL)"
        )
    config = write_config(tmp_path / "hv.toml", [{"shards": "200-217", **citus_cluster.coordinator}])
    try:
        code, text = run_hv("init", "--config", str(config), "--json")
        assert code == 0, text
        workers = {(w["host"], w["port"]) for w in citus_cluster.workers}
        with citus_cluster.connect() as conn:
            distributed = {r[0] for r in conn.execute("SELECT schema_name::text FROM citus_schemas").fetchall()}
        assert {f"shard{s:04d}" for s in shards} <= distributed
        for shard in shards:
            (node,) = citus_cluster.schema_nodes(f"shard{shard:04d}")
            assert node in workers, f"shard {shard} lives on {node}, not a worker"
        with Datastore.from_config(config) as db:
            key = db.put(216, 1, on="a worker")
            assert db.get(key) is not None and db.get(key).data == {"on": "a worker"}  # type: ignore[union-attr]
            assert db.provision()[0].created == 0  # idempotent
        with citus_cluster.connect() as conn:
            row = conn.execute("SELECT pg_relation_size('shard0216.entities')").fetchone()
            assert row == (0,)  # the coordinator's table is Citus's shell: the row lives on the worker
    finally:
        with citus_cluster.connect() as conn:
            for shard in shards:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"shard{shard:04d}")))
