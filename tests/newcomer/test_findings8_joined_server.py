"""Eighth newcomer: ``provision()`` (``hv init``) on a config that adds a server whose shards already exist records
the deployment's unique index and migrations on that server, reports success, and leaves its shards without them:
the unique index is not enforced there and the migration's column is missing, with nothing said but "recorded index
..., which other servers record".

README (Moving shards and growing the fleet, `provision`): "Index definitions (the body index too) and migrations
are a deployment's, not a server's: before creating shards, what any server records is recorded on the servers
that lack it ..., so every new shard is created with the deployment's indexes (a unique one enforced there too)
and migrations". That holds for shards provision creates. A server that was provisioned on its own first (``hv
init`` with a config naming only it, to check it, or a server taken over from another deployment) has shards
already: provision records the definitions there, creates nothing, and returns; ``hv init`` exits 0. The server's
shards keep taking duplicate values of the unique field, and ``hv index list`` / ``hv migrate --status`` show them
as missing / behind only if asked.

Reproduce: server A (shards 0-8) provisioned, ``create_index(1, "email", unique=True)`` and a migration adding a
column; server B (shards 8-16) provisioned alone; a Datastore over both, ``provision()``: B's report notes only
"recorded migration(s) 0001_extra.sql ..." and "recorded index ... which other servers record"; shard 8 has
neither the index nor the column, and two rows with one email go into shard 9 while shard 3 refuses the second.
Expected: after ``provision()`` every shard has the deployment's indexes and migrations (built/applied as for a
new shard), or the report says which shards lack them and the command that completes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

import hvcore


def test_a_joined_server_with_shards_gets_or_reports_the_deployments_index_and_migration(
    pg_fresh_db: dict[str, Any], pg_fresh_db2: dict[str, Any], tmp_path: Path
) -> None:
    server_a = {**pg_fresh_db, "shards": "0-8"}
    server_b = {**pg_fresh_db2, "shards": "8-16"}
    (tmp_path / "0001_extra.sql").write_text("ALTER TABLE entities ADD COLUMN IF NOT EXISTS extra int;\n")
    with hvcore.Datastore([server_a], backend="jsonb", worker=None) as db:
        db.provision()
        db.create_index(1, "email", unique=True)
        db.migrate(tmp_path)
    with hvcore.Datastore([server_b], backend="jsonb", worker=None) as db:
        db.provision()
    with hvcore.Datastore([server_a, server_b], backend="jsonb", worker=None) as db:
        reports = db.provision()
        notes = [note for report in reports for note in report.notes]
        duplicates_stored = 0
        for _ in range(2):
            try:
                db.put(9, 1, email="ada@example.org")
                duplicates_stored += 1
            except hvcore.HypervaultError:
                pass
    direct_b = {k: pg_fresh_db2[k] for k in ("host", "port", "user", "dbname")}
    with psycopg.connect(**direct_b) as conn:
        state = conn.execute(
            "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = 'shard0008' AND indexname LIKE 'hv_k1_%'),"
            " (SELECT count(*) FROM information_schema.columns WHERE table_schema = 'shard0008'"
            "  AND table_name = 'entities' AND column_name = 'extra')"
        ).fetchone()
    told = any("index create" in note or "migrate" in note.replace("migration(s)", "") for note in notes)
    assert (state == (1, 1) and duplicates_stored == 1) or told, (
        f"shard 8 index/column: {state}; duplicate emails stored in shard 9: {duplicates_stored}; notes: {notes}"
    )
