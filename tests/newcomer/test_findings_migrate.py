"""A newcomer's findings on migration files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hvcore


def test_a_migration_file_with_an_upper_case_extension_is_not_silently_skipped(
    pg_fresh_db: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (id int);")
    (tmp_path / "0002_b.SQL").write_text("CREATE TABLE b (id int);")
    servers = [{**pg_fresh_db, "shards": "0-2"}]
    with hvcore.Datastore(servers, backend="jsonb") as db:
        db.provision()
        try:
            report = db.migrate(tmp_path)
        except hvcore.MigrationError as exc:  # refusing the name, as for 002_b.sql, is fine too
            assert "0002_b.SQL" in str(exc)
            return
        assert [run.name for run in report.runs] == ["0001_a.sql", "0002_b.SQL"]
