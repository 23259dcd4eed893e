"""`hv shard export --format citus`, executed against Citus by psql: the copying path Citus documents.

Four plain servers, given every way a config can give one (separate keys; a conninfo keyword string; a URL; a URL
whose port and dbname are overridden by separate keys, which win), hold 16 shards. As the export's header says: the
servers preload Citus, the shard schemas are dumped and restored on the coordinator (pg_dump | psql) and renamed
on the servers; then psql runs the export on the coordinator. It must add exactly those four servers as workers
(an export naming a wrong host or port fails there), distribute every schema and put each on its server.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from citus.citus_helpers import connect, dsn, prepare_for_citus, run_hv, write_config
from fixtures.citus import CitusCluster
from fixtures.localpg import find_bin_dir

from hvcore import Datastore

pytestmark = [pytest.mark.citus, pytest.mark.postgres]


def _psql(bin_dir: Path, script: Path, settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    command = [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script), dsn(settings)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_the_citus_export_runs_on_citus_for_every_way_a_server_is_given(
    citus_cluster_factory: Any, tmp_path: Path
) -> None:
    cluster: CitusCluster = citus_cluster_factory(0)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    plain = [cluster.new_plain_server() for _ in range(4)]
    ports = [server.port for server in plain]
    config = write_config(
        tmp_path / "hv.toml",
        [
            {"shards": "0-4", "host": "127.0.0.1", "port": ports[0], "user": "postgres", "dbname": cluster.dbname},
            {"shards": "4-8", "conninfo": f"host=127.0.0.1 port={ports[1]} dbname={cluster.dbname} user=postgres"},
            {
                "shards": "8-12",
                "conninfo": "postgresql://postgres@127.0.0.1:1/not_this_db",
                "port": ports[2],
                "dbname": cluster.dbname,
            },
            {"shards": "12-16", "conninfo": f"postgresql://postgres@127.0.0.1:{ports[3]}/{cluster.dbname}"},
        ],
    )
    with Datastore.from_config(config) as db:
        db.provision()
        keys = [k for shard in range(16) for k in db.put_many(shard, 1, [{"s": shard, "i": i} for i in range(100)])]
        reference = db.get_many(keys)
    for server in plain:
        prepare_for_citus(cluster, server)
        source = {**server.settings, "dbname": cluster.dbname}
        dump = subprocess.run(
            [str(bin_dir / "pg_dump"), "--schema=shard*", "--no-owner", dsn(source)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        restore = tmp_path / f"dump-{server.port}.sql"
        restore.write_text(dump.stdout, encoding="utf-8")
        done = _psql(bin_dir, restore, cluster.coordinator)
        assert done.returncode == 0, done.stderr
        with connect(source) as conn:  # the copies on the coordinator are the ones Citus distributes
            for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shard%'").fetchall():
                conn.execute(f"ALTER SCHEMA {name} RENAME TO copied_{name}")
    assert cluster.active_workers() == []

    code, text = run_hv("shard", "export", "--format", "citus", "--config", str(config))
    assert code == 0
    script = tmp_path / "citus.sql"
    script.write_text(text, encoding="utf-8")
    done = _psql(bin_dir, script, cluster.coordinator)

    assert done.returncode == 0, done.stderr
    assert cluster.active_workers() == sorted(("127.0.0.1", port) for port in ports)
    for shard in range(16):
        assert cluster.schema_nodes(f"shard{shard:04d}") == [("127.0.0.1", ports[shard // 4])], f"shard {shard}"
    with Datastore([{"shards": "0-16", **cluster.coordinator}], backend="jsonb") as db:
        assert db.get_many(keys) == reference
    again = _psql(bin_dir, script, cluster.coordinator)  # idempotent: nothing left to add, distribute or move
    assert again.returncode == 0, again.stderr
    for shard in range(16):
        assert cluster.schema_nodes(f"shard{shard:04d}") == [("127.0.0.1", ports[shard // 4])]
