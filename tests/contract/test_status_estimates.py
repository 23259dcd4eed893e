"""``status(rows="estimated")`` (``hv status --watch``): rows from the server's statistics, no shard table read.

A watch round used to run ``count(*)`` on every shard table (a scan of every row, every few seconds). With
estimates it reads ``pg_stat_user_tables`` once per server: the figures converge on the exact ones once the
server's statistics are flushed, and a shard table locked by another session does not hold the round up.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import hvcore
from hvcore.cli import main

KIND = 1
ROWS = {1: 3, 5: 7, 12: 2}  # shard -> rows put


def _fill(db: Any) -> None:
    for shard, rows in ROWS.items():
        db.put_many(shard, KIND, [{"i": str(i)} for i in range(rows)])


def _estimates(db: Any) -> dict[int, int]:
    return {s: n for e in db.status(rows="estimated") for s, n in e["rows_per_shard"].items()}


def _settled(db: Any, backend_name: str) -> dict[int, int]:
    """The estimates once they have not moved for 10.5 s: a PostgreSQL session that wrote within a second of its
    last report holds its counts until it has been idle 10 s (PGSTAT_IDLE_INTERVAL), and sessions of earlier tests
    may still be open (a PgBouncer keeps its server sessions). The memory backend's are exact at once."""
    last = _estimates(db)
    if backend_name == "memory":
        return last
    deadline = time.monotonic() + 45
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1.5)
        now = _estimates(db)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 10.5:
            break
    return last


def test_estimated_rows_follow_the_rows_put(make_datastore: Any, backend_name: str) -> None:
    """The estimates move by the rows put. Compared with a reading before the puts: on tables that earlier tests
    filled and emptied, an estimate can be off by a constant (an ANALYZE that raced a DELETE sets the count to what
    its snapshot saw), which is why they are estimates."""
    db = make_datastore()
    before = _settled(db, backend_name)
    _fill(db)
    deadline = time.monotonic() + 30
    while True:
        status: list[dict[str, Any]] = db.status(rows="estimated")
        after = {s: n for e in status for s, n in e["rows_per_shard"].items()}
        grown = {s: n - before.get(s, 0) for s, n in after.items() if n != before.get(s, 0)}
        if grown == ROWS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert grown == ROWS
    assert all(e["rows_estimated"] for e in status)
    exact = db.status()
    assert not any(e["rows_estimated"] for e in exact)
    assert [e["rows"] for e in exact] == [10, 2]
    assert [e["provisioned_shards"] for e in status] == [e["provisioned_shards"] for e in exact]


def test_rows_must_be_exact_or_estimated(make_datastore: Any) -> None:
    db = make_datastore()
    with pytest.raises(hvcore.InvalidArgument, match=r"'exact'.*'estimated'"):
        db.status(rows="approximate")


@pytest.mark.postgres
def test_estimates_read_no_shard_table(pg_datastore_factory: Any) -> None:
    """A shard table locked ACCESS EXCLUSIVE by another session blocks an exact count, not an estimate."""
    db = pg_datastore_factory("jsonb")
    _fill(db)
    server = {k: v for k, v in db._config.servers[0].items() if k != "shards"}
    with psycopg.connect(**server) as locker:
        locker.execute('LOCK TABLE "shard0005".entities IN ACCESS EXCLUSIVE MODE')
        results: dict[str, Any] = {}

        def status(mode: str) -> None:
            results[mode] = db.status(rows=mode)

        estimated = threading.Thread(target=status, args=("estimated",), daemon=True)
        estimated.start()
        estimated.join(60)
        assert not estimated.is_alive(), "status(rows='estimated') waited for a lock on a shard table"
        exact = threading.Thread(target=status, args=("exact",), daemon=True)
        exact.start()
        exact.join(1.0)
        assert exact.is_alive(), "the exact count was expected to wait for the lock (the test's premise)"
        locker.rollback()
    exact.join(60)
    assert not exact.is_alive()
    assert results["exact"][0]["rows"] == 10


@pytest.mark.postgres
def test_hv_status_watch_estimates_and_says_so(pg_datastore_factory: Any, tmp_path: Path) -> None:
    db = pg_datastore_factory("jsonb")
    _fill(db)
    lines = ["backend = 'jsonb'"]
    for server in db._config.servers:
        lines.append("[[servers]]")
        lines += [
            f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in server.items()
        ]
    config = tmp_path / "hv.toml"
    config.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    main(["status", "--config", str(config), "--watch", "0.1", "--count", "1"], out=out)
    assert "rows (estimated)" in out.getvalue()
    out = io.StringIO()
    main(["status", "--config", str(config), "--watch", "0.1", "--count", "1", "--exact"], out=out)
    assert "rows (estimated)" not in out.getvalue() and " rows " in out.getvalue()
    out = io.StringIO()
    main(["status", "--config", str(config)], out=out)
    assert "rows (estimated)" not in out.getvalue()
